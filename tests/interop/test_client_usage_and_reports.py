"""The `ferry` client's command-line checks and reports: a URL whose password holds a bare `/` is refused before any
connection without showing the password, counts of 0 and `--segments` where nothing is downloaded are usage errors,
an upload that is complete already is reported as a complete download is, and `mirror --delete` reports what it
deletes."""
import pytest

from helpers_ferry_client import TRUST, fc, json_lines, url
from helpers_files import write_random

# Addresses that are never listened on, so that nothing can answer even if a command went on to connect; every
# reading of these URLs names 127.0.0.1 only (user name 127.0.0.1), so no host name is ever looked up.
CLOSED = "127.0.0.1:9"
# (URL, fragments of its password that must not appear in any output).
BAD_PASSWORD_URLS = [
    # Read naively: user 127.0.0.1, password "pw", host 127.0.0.1, the rest of the password in the path.
    (f"{{scheme}}://127.0.0.1:pw@127.0.0.1/s3cr:et@{CLOSED}/dir/", ["pw@", "s3cr", "et@"]),
    # Read naively: host 127.0.0.1, port 7, the rest of the password in the path.
    (f"{{scheme}}://127.0.0.1:7/Xyzzy@{CLOSED}/dir/", [":7/", "Xyzzy"]),
]


def commands(bad, tmp_path):
    """Every command that takes URLs, with `bad` in a URL's place."""
    local = tmp_path / "local.txt"
    local.write_text("local\n")
    (tmp_path / "tree").mkdir(exist_ok=True)
    return [
        ["ls", bad],
        ["get", bad, tmp_path / "out"],
        ["put", local, bad],
        ["rm", bad],
        ["mkdir", bad],
        ["mv", bad, "new-name"],
        ["cat", bad],
        ["hash", bad],
        ["mirror", bad, tmp_path / "tree"],
        ["mirror", tmp_path / "tree", bad],
    ]


@pytest.mark.parametrize("scheme", ["ftp", "ftps", "ftps+implicit", "sftp"])
@pytest.mark.parametrize("template,fragments", BAD_PASSWORD_URLS, ids=["past-the-host", "as-a-port"])
def test_a_password_with_a_bare_slash_is_refused_before_connecting_and_never_shown(
    tmp_path, scheme, template, fragments
):
    bad = template.format(scheme=scheme)
    for args in commands(bad, tmp_path):
        p = fc(tmp_path, *args, "--retries", "0", "--timeout", "5", check=False, timeout=30)
        shown = p.stdout + p.stderr
        assert p.returncode == 2, (args, p.returncode, shown)
        assert "%2F" in p.stderr, (args, shown)
        assert "cannot connect" not in shown, (args, shown)
        for fragment in fragments:
            assert fragment not in shown, (args, fragment, shown)


@pytest.mark.parametrize(
    "args",
    [
        ["get", "-j", "0", f"ftp://{CLOSED}/x"],
        ["get", "--segments", "0", f"ftp://{CLOSED}/x"],
        ["mirror", "-j", "0", f"ftp://{CLOSED}/d", "d"],
        ["put", "--segments", "4", "local.txt", f"sftp://{CLOSED}/x"],
        ["mirror", "--segments", "4", ".", f"sftp://{CLOSED}/d"],
    ],
)
def test_counts_of_zero_and_segments_without_a_download_are_usage_errors(tmp_path, args):
    (tmp_path / "local.txt").write_text("local\n")
    p = fc(tmp_path, *args, "--retries", "0", "--timeout", "5", check=False, timeout=30)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "cannot connect" not in p.stderr, p.stderr


@pytest.fixture
def server(ferry_factory):
    """A ferry server with FTP and SFTP listeners and the user alice/secret."""
    s = ferry_factory("--failed-login-delay-ms", "0")
    s.add_user("alice", "secret")
    return s


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_an_upload_that_is_complete_already_is_reported_like_a_complete_download(server, tmp_path, scheme):
    size = 3_000_000
    digest = write_random(tmp_path / "up6.bin", size, seed=6)
    target = url(server, scheme, "up6.bin")
    p = fc(tmp_path, "put", "--json", *TRUST, "up6.bin", target)
    [first] = json_lines(p.stdout)
    assert first["skipped"] is False and first["bytes"] == size, first

    p = fc(tmp_path, "put", *TRUST, "up6.bin", target)
    assert p.stdout.strip() == f"up6.bin: already complete ({size} bytes)", p.stdout
    p = fc(tmp_path, "put", "--json", *TRUST, "up6.bin", target)
    [again] = json_lines(p.stdout)
    assert again["skipped"] is True and again["bytes"] == 0, again
    # Still verified, as documented: the server computes sha256.
    assert again["verified"] == "checksum" and again["checksum"] == digest, again
    assert (server.home("alice") / "up6.bin").stat().st_size == size

    # The same report as a download of a complete file.
    fc(tmp_path, "get", *TRUST, target, "down.bin")
    p = fc(tmp_path, "get", "--json", *TRUST, target, "down.bin")
    [down] = json_lines(p.stdout)
    keys = ["size", "bytes", "resumed_from", "skipped", "segments", "verified"]
    assert {k: again[k] for k in keys} == {k: down[k] for k in keys}, (again, down)


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_mirror_delete_reports_each_deletion(server, tmp_path, scheme):
    src = tmp_path / "site"
    write_random(src / "index.html", 5000, seed=1)
    home = server.home("alice")
    for stale in ["www/old/a.txt", "www/old/b.txt", "www/gone.txt"]:
        (home / stale).parent.mkdir(parents=True, exist_ok=True)
        (home / stale).write_text("stale")
    remote = url(server, scheme, "www")

    # Deletions after copies, in text.
    p = fc(tmp_path, "mirror", "--delete", *TRUST, src, remote)
    lines = p.stdout.splitlines()
    for line in ["deleted old/a.txt", "deleted old/b.txt", "deleted gone.txt", "deleted directory old"]:
        assert line in lines, p.stdout
    assert not (home / "www/old").exists() and not (home / "www/gone.txt").exists()

    # Deletions alone, as JSON: one object per deletion, as the dry run prints them.
    (home / "www/late.txt").write_text("stale")
    (home / "www/late").mkdir()
    p = fc(tmp_path, "mirror", "--delete", "--dry-run", "--json", *TRUST, src, remote)
    planned = json_lines(p.stdout)
    p = fc(tmp_path, "mirror", "--delete", "--json", *TRUST, src, remote)
    done = json_lines(p.stdout)
    assert done == planned, (done, planned)
    assert {"action": "delete", "path": "late.txt", "dir": False} in done, done
    assert {"action": "delete", "path": "late", "dir": True} in done, done
    assert not (home / "www/late.txt").exists() and not (home / "www/late").exists()

    # Downwards too, in text.
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy/extra.txt").write_text("not at the source")
    p = fc(tmp_path, "mirror", "--delete", *TRUST, remote, tmp_path / "copy")
    assert "deleted extra.txt" in p.stdout.splitlines(), p.stdout
    assert not (tmp_path / "copy/extra.txt").exists()
