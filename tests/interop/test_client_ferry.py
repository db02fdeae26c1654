"""The `ferry` client against a ferry server: every sub-command over ftp, ftps (explicit and implicit) and sftp,
recursive and parallel transfers, segmented downloads, mirror, JSON output and exit codes."""
import hashlib
import shlex
import subprocess

import pytest

from conftest import FERRY_BIN
from helpers_ferry_client import TRUST, client_env, fc, json_lines, url
from helpers_files import random_bytes, sha256_bytes, sha256_file, write_random

SCHEMES = ["ftp", "ftps", "sftp"]


@pytest.fixture
def server(ferry_factory):
    """A ferry server with FTP, implicit FTPS and SFTP listeners and the user alice/secret."""
    s = ferry_factory("--failed-login-delay-ms", "0", "--ftps", "127.0.0.1:0")
    s.add_user("alice", "secret")
    return s


@pytest.mark.parametrize("scheme", SCHEMES + ["ftps+implicit"])
def test_every_subcommand(server, tmp_path, scheme):
    home = server.home("alice")
    data = random_bytes(1_500_000, seed=1)
    (tmp_path / "up.bin").write_bytes(data)
    u = lambda p="": url(server, scheme, p)  # noqa: E731

    fc(tmp_path, "mkdir", *TRUST, u("dir"))
    assert (home / "dir").is_dir()
    fc(tmp_path, "mkdir", "-p", *TRUST, u("deep/er/est"))
    assert (home / "deep/er/est").is_dir()

    p = fc(tmp_path, "put", *TRUST, "up.bin", u("dir/"))
    assert "verified by sha256" in p.stdout, p.stdout
    assert (home / "dir/up.bin").read_bytes() == data

    p = fc(tmp_path, "ls", *TRUST, u("dir"))
    assert p.stdout.split() == ["up.bin"]
    p = fc(tmp_path, "ls", "-l", *TRUST, u(""))
    assert any(line.endswith(" dir/") and line.startswith("d") for line in p.stdout.splitlines()), p.stdout
    p = fc(tmp_path, "ls", "--json", *TRUST, u("dir"))
    [entry] = json_lines(p.stdout)
    assert entry["name"] == "up.bin" and entry["type"] == "file" and entry["size"] == len(data)

    p = fc(tmp_path, "get", *TRUST, u("dir/up.bin"), "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == data
    assert not (tmp_path / "down.bin.part").exists()

    (home / "hello.txt").write_text("hello, ferry\n")
    p = fc(tmp_path, "cat", *TRUST, u("hello.txt"))
    assert p.stdout == "hello, ferry\n"

    p = fc(tmp_path, "hash", *TRUST, u("dir/up.bin"))
    assert p.stdout.split()[0] == sha256_bytes(data)
    p = fc(tmp_path, "hash", "--algorithm", "md5", "--json", *TRUST, u("dir/up.bin"))
    [h] = json_lines(p.stdout)
    assert h["checksum"] == hashlib.md5(data).hexdigest()
    # ferry computes checksums itself: HASH over FTP, sha256sum-style commands over SSH.
    assert h["computed_by"] == "server"

    fc(tmp_path, "mv", *TRUST, u("dir/up.bin"), "renamed.bin")
    assert (home / "dir/renamed.bin").read_bytes() == data
    fc(tmp_path, "mv", *TRUST, u("dir/renamed.bin"), u("deep/"))
    assert (home / "deep/renamed.bin").exists()

    fc(tmp_path, "rm", *TRUST, u("deep/renamed.bin"))
    assert not (home / "deep/renamed.bin").exists()
    p = fc(tmp_path, "rm", *TRUST, u("deep"), check=False)
    assert p.returncode == 1 and "-r" in p.stderr
    fc(tmp_path, "rm", "-r", *TRUST, u("deep"))
    assert not (home / "deep").exists()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_recursive_get_and_put_keep_the_tree(server, tmp_path, scheme):
    src = tmp_path / "tree"
    sums = {rel: write_random(src / rel, size, seed=i) for i, (rel, size) in enumerate(
        [("a.bin", 1000), ("sub/b.bin", 200_000), ("sub/deeper/c.bin", 0), ("x y/ünï.bin", 777)])}
    fc(tmp_path, "put", "-r", *TRUST, src, url(server, scheme, ""))
    home = server.home("alice")
    for rel, digest in sums.items():
        assert sha256_file(home / "tree" / rel) == digest, rel
    fc(tmp_path, "get", "-r", *TRUST, url(server, scheme, "tree"), tmp_path / "back")
    for rel, digest in sums.items():
        assert sha256_file(tmp_path / "back/tree" / rel) == digest, rel


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parallel_uploads_and_segmented_download(server, tmp_path, scheme):
    names = [f"f{i}.bin" for i in range(6)]
    sums = {n: write_random(tmp_path / n, 300_000 + i, seed=i) for i, n in enumerate(names)}
    p = fc(tmp_path, "put", "-j", "3", "--json", *TRUST, *names, url(server, scheme, "par/"))
    reports = json_lines(p.stdout)
    assert sorted(r["path"] for r in reports) == names
    for n in names:
        assert sha256_file(server.home("alice") / "par" / n) == sums[n]

    big = write_random(server.home("alice") / "big.bin", 6_000_000, seed=9)
    p = fc(tmp_path, "get", "--segments", "4", "--json", *TRUST, url(server, scheme, "big.bin"), "big.bin")
    [r] = json_lines(p.stdout)
    assert r["segments"] == 4, r
    assert r["verified"] == "checksum" and r["checksum"] == big
    assert sha256_file(tmp_path / "big.bin") == big

    p = fc(tmp_path, "get", "-j", "4", "--json", *TRUST, url(server, scheme, "par/*.bin"), tmp_path / "many")
    assert len(json_lines(p.stdout)) == len(names)
    for n in names:
        assert sha256_file(tmp_path / "many" / n) == sums[n]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_json_reports_each_file(server, tmp_path, scheme):
    digest = write_random(tmp_path / "j.bin", 123_456, seed=4)
    p = fc(tmp_path, "put", "--json", *TRUST, "j.bin", url(server, scheme, "j.bin"))
    [r] = json_lines(p.stdout)
    assert r["path"] == "j.bin"
    assert r["bytes"] == 123_456 and r["size"] == 123_456
    assert r["resumed_from"] == 0
    assert r["checksum"] == digest and r["algorithm"] == "sha256"
    assert isinstance(r["seconds"], float)
    # The same file again: already complete at the destination, nothing moved.
    p = fc(tmp_path, "get", "--json", *TRUST, url(server, scheme, "j.bin"), "j.bin")
    [r] = json_lines(p.stdout)
    assert r["skipped"] is True and r["bytes"] == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_mirror_up_and_down_with_delete(server, tmp_path, scheme):
    src = tmp_path / "site"
    write_random(src / "index.html", 5000, seed=1)
    write_random(src / "img/logo.png", 40_000, seed=2)
    write_random(src / "tmp/cache.tmp", 100, seed=3)
    write_random(src / "notes.tmp", 100, seed=4)
    home = server.home("alice")
    remote = url(server, scheme, "www")
    stale = home / "www/old/stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    (home / "www/keep.tmp").write_text("excluded files are never deleted")

    p = fc(tmp_path, "mirror", "--dry-run", "--delete", "--exclude", "*.tmp", *TRUST, src, remote)
    assert "copy index.html" in p.stdout and "delete old/stale.txt" in p.stdout, p.stdout
    assert not (home / "www/index.html").exists()

    fc(tmp_path, "mirror", "--delete", "--exclude", "*.tmp", "-j", "2", *TRUST, src, remote)
    assert (home / "www/index.html").read_bytes() == (src / "index.html").read_bytes()
    assert (home / "www/img/logo.png").read_bytes() == (src / "img/logo.png").read_bytes()
    assert not (home / "www/old").exists()
    assert not (home / "www/notes.tmp").exists()
    assert (home / "www/keep.tmp").exists()

    # Nothing changed: nothing to do.
    p = fc(tmp_path, "mirror", "--dry-run", "--delete", "--exclude", "*.tmp", *TRUST, src, remote)
    assert p.stdout.strip() == "", p.stdout
    # A changed file (same size) is found by --checksum.
    write_random(src / "index.html", 5000, seed=99)
    p = fc(tmp_path, "mirror", "--checksum", "--json", "--exclude", "*.tmp", *TRUST, src, remote)
    assert [r["path"] for r in json_lines(p.stdout)] == ["index.html"]
    assert (home / "www/index.html").read_bytes() == (src / "index.html").read_bytes()

    # And back down, into a local directory that has an extra file.
    down = tmp_path / "down"
    down.mkdir()
    (down / "extra.txt").write_text("x")
    fc(tmp_path, "mirror", "--delete", *TRUST, remote, down)
    assert not (down / "extra.txt").exists()
    assert (down / "img/logo.png").read_bytes() == (src / "img/logo.png").read_bytes()
    assert (down / "keep.tmp").exists()


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_cat_into_a_pipe_closed_early_stops_quietly(server, tmp_path, scheme):
    """`ferry cat URL | head -c 10`: the closed pipe is not a lost connection to retry, and no error."""
    write_random(server.home("alice") / "big.bin", 8_000_000, seed=3)
    p = subprocess.run(
        f"{shlex.quote(FERRY_BIN)} cat {' '.join(TRUST)} {shlex.quote(url(server, scheme, 'big.bin'))} | head -c 10",
        shell=True, executable="/bin/bash", capture_output=True, timeout=60, env=client_env(tmp_path),
    )
    assert len(p.stdout) == 10
    assert p.stderr == b"", p.stderr


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_parallel_files_share_the_connections_a_server_allows(ferry_factory, tmp_path, scheme):
    """`get -j 3` from a server that takes one connection per address: every file arrives, one after another,
    over the one connection, instead of failing when their own connections are refused."""
    server = ferry_factory("--failed-login-delay-ms", "0", "--max-connections-per-ip", "1")
    server.add_user("alice", "secret")
    names = [f"f{i}.bin" for i in range(3)]
    digests = {n: write_random(server.home("alice") / n, 1_000_000, seed=i) for i, n in enumerate(names)}
    p = fc(tmp_path, "get", "-j", "3", "--limit-rate", "2m", *TRUST, *(url(server, scheme, n) for n in names), ".")
    assert {n: sha256_file(tmp_path / n) for n in names} == digests
    assert "retry 1" in p.stderr, p.stderr


def test_exit_codes(server, tmp_path):
    host, port = server.addresses["ftp"]
    p = fc(tmp_path, "ls", url(server, "ftp", "", password="wrong"), check=False)
    assert p.returncode == 3, p.stderr
    assert "login" in p.stderr and "wrong" not in p.stderr
    p = fc(tmp_path, "ls", *TRUST, url(server, "sftp", "", password="wrong"), check=False)
    assert p.returncode == 3, p.stderr
    p = fc(tmp_path, "get", url(server, "ftp", "missing.bin"), "x", check=False)
    assert p.returncode == 1 and "missing.bin: no such file" in p.stderr, p.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
    p = fc(tmp_path, "get", *TRUST, url(server, "sftp", "missing.bin"), "x", check=False)
    assert p.returncode == 1 and "missing.bin" in p.stderr, p.stderr
    p = fc(tmp_path, "get", "http://example.com/x", check=False)
    assert p.returncode == 2 and 'unknown scheme "http"' in p.stderr, p.stderr
    p = fc(tmp_path, "get", "--no-such-flag", url(server, "ftp", "x"), check=False)
    assert p.returncode == 2
    # Nothing listens on port 1: connection refused.
    p = fc(tmp_path, "ls", "--retries", "0", "ftp://alice:secret@127.0.0.1:1/", check=False)
    assert p.returncode == 3, p.stderr
    # A missing local file in an upload fails that file only.
    (tmp_path / "ok.txt").write_text("ok")
    p = fc(tmp_path, "put", "ok.txt", "nope.txt", url(server, "ftp", ""), check=False)
    assert p.returncode == 1 and "nope.txt" in p.stderr
    assert (server.home("alice") / "ok.txt").read_text() == "ok"
    p = fc(tmp_path, "help")
    assert "exit codes" in p.stdout.lower() and "verification failure" in p.stdout


def test_credentials_from_netrc_and_environment(server, tmp_path):
    host, port = server.addresses["ftp"]
    (server.home("alice") / "f.txt").write_text("netrc works")
    p = fc(tmp_path, "cat", f"ftp://alice@{host}:{port}/f.txt", check=False)
    assert p.returncode == 3  # no password anywhere, and no terminal to ask on
    home = tmp_path / "ferry-client-home"
    (home / ".netrc").write_text(f"machine {host} login alice password secret\n")
    (home / ".netrc").chmod(0o600)
    assert fc(tmp_path, "cat", f"ftp://{host}:{port}/f.txt").stdout == "netrc works"
    (home / ".netrc").unlink()
    p = fc(tmp_path, "cat", *TRUST, url(server, "sftp", "f.txt", password=None), env={"FERRY_PASSWORD": "secret"})
    assert p.stdout == "netrc works"


def test_sftp_host_keys_keys_and_ssh_config(server, tmp_path):
    from helpers_sftp import add_key_user

    _, key = add_key_user(server, tmp_path, "bob")
    host, port = server.addresses["sftp"]
    target = f"sftp://bob@{host}:{port}/"
    p = fc(tmp_path, "ls", "-i", key, target, check=False)
    assert p.returncode == 3 and "unknown host key" in p.stderr, p.stderr
    fc(tmp_path, "ls", "-i", key, "--accept-new-host-key", target)
    known = (tmp_path / "ferry-client-home/.ssh/known_hosts").read_text()
    assert f"[{host}]:{port}" in known
    # Now known: no flag needed. A host alias in ~/.ssh/config gives host, port, user and key.
    fc(tmp_path, "ls", "-i", key, target)
    (tmp_path / "ferry-client-home/.ssh/config").write_text(
        f"Host files\n  HostName {host}\n  Port {port}\n  User bob\n  IdentityFile {key}\n"
    )
    (server.home("bob") / "hi.txt").write_text("via ssh config")
    assert fc(tmp_path, "cat", "sftp://files/hi.txt").stdout == "via ssh config"
    # A changed host key is refused.
    (tmp_path / "ferry-client-home/.ssh/known_hosts").write_text(
        f"[{host}]:{port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIT7BdHUcEkafQIDWYoB1Hr4NmR3nkP3pNg0X3JeR0Xv\n"
    )
    p = fc(tmp_path, "ls", "-i", key, target, check=False)
    assert p.returncode == 3 and "HOST KEY CHANGED" in p.stderr, p.stderr


def test_ftps_certificate_is_verified_unless_pinned_or_insecure(server, tmp_path):
    import ssl

    target = url(server, "ftps", "")
    p = fc(tmp_path, "ls", target, check=False)
    assert p.returncode == 3 and "certificate" in p.stderr.lower(), p.stderr
    pem = (server.data_dir / "tls/cert.pem").read_text()
    der = ssl.PEM_cert_to_DER_cert(pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    fingerprint = hashlib.sha256(der).hexdigest()
    fc(tmp_path, "ls", "--tls-fingerprint", fingerprint, target)
    p = fc(tmp_path, "ls", "--tls-fingerprint", "00" * 32, target, check=False)
    assert p.returncode == 3


def test_ftps_data_connections_resume_the_control_tls_session(ferry_factory, tmp_path):
    server = ferry_factory("--failed-login-delay-ms", "0", "--require-tls-resumption", "--require-tls")
    server.add_user("alice", "secret")
    digest = write_random(tmp_path / "f.bin", 500_000, seed=6)
    fc(tmp_path, "put", *TRUST, "f.bin", url(server, "ftps", "f.bin"))
    fc(tmp_path, "get", *TRUST, url(server, "ftps", "f.bin"), "back.bin")
    assert sha256_file(tmp_path / "back.bin") == digest
    fc(tmp_path, "ls", *TRUST, url(server, "ftps", ""))
