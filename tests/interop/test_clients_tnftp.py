"""tnftp (NetBSD ftp) against ferry: scripted interactive sessions and URL-mode transfers."""
import pytest

from helpers_clients import require, run_client
from helpers_files import put_file, random_bytes, sha256_bytes, sha256_file, write_random


@pytest.fixture(autouse=True)
def _tnftp():
    require("tnftp")


def tnftp_script(server, tmp_path, lines, user="alice", password="secret", login=True):
    """Runs `tnftp -n -i -v HOST PORT` with a command script on stdin (like a here-doc).

    -n: no auto-login (the script sends `user`), -i: no prompting (so e.g. `ls DIR FILE` does not eat the next
    line as an answer), -v: print server replies, which the tests inspect.
    """
    script = ([f"user {user} {password}"] if login else []) + list(lines) + ["bye"]
    return run_client(
        ["tnftp", "-n", "-i", "-v", server.host, str(server.port)],
        tmp_path,
        input="\n".join(script) + "\n",
        cwd=tmp_path,
        timeout=60,
    )


def test_tnftp_scripted_session_put_get_ls_mkdir_rename_delete(ferry, tmp_path):
    home = ferry.home("alice")
    digest = write_random(tmp_path / "tn.bin", 234_567, seed=31)
    p = tnftp_script(
        ferry,
        tmp_path,
        [
            "binary",
            "mkdir tndir",
            "cd tndir",
            "put tn.bin tn-up.bin",
            "get tn-up.bin tn-back.bin",
            "put tn.bin tn-second.bin",
            "rename tn-up.bin tn-renamed.bin",
            "ls . listing.txt",
            "delete tn-second.bin",
            "pwd",
        ],
    )
    out = p.stdout
    assert "230" in out, out
    assert sha256_file(tmp_path / "tn-back.bin") == digest
    assert (home / "tndir").is_dir()
    assert sha256_file(home / "tndir/tn-renamed.bin") == digest
    assert not (home / "tndir/tn-up.bin").exists()
    assert not (home / "tndir/tn-second.bin").exists()
    # `ls . FILE` saved the server's listing, taken after the rename and before the delete.
    listing = (tmp_path / "listing.txt").read_text()
    names = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    assert names == {"tn-renamed.bin", "tn-second.bin"}, listing
    assert '257 "/tndir"' in out, out  # PWD reply quotes the directory (RFC 959)


def test_tnftp_rmdir_and_missing_file_errors(ferry, tmp_path):
    home = ferry.home("alice")
    (home / "emptyd").mkdir(parents=True)
    write_random(home / "full/f.bin", 10, seed=32)
    p = tnftp_script(ferry, tmp_path, ["rmdir emptyd", "rmdir full", "get nope.bin nope.bin", "delete nope.bin"])
    assert not (home / "emptyd").exists()
    assert (home / "full/f.bin").exists(), "RMD of a non-empty directory must fail"
    replies = [l for l in p.stdout.splitlines() if l[:3].isdigit()]
    assert sum(1 for l in replies if l.startswith("550")) >= 3, p.stdout
    assert not (tmp_path / "nope.bin").exists() or (tmp_path / "nope.bin").stat().st_size == 0


def test_tnftp_active_mode_transfers(ferry, tmp_path):
    digest = write_random(tmp_path / "a.bin", 150_001, seed=33)
    p = tnftp_script(ferry, tmp_path, ["binary", "passive off", "put a.bin active.bin", "get active.bin a-back.bin"])
    assert "200" in p.stdout  # the PORT/EPRT command was accepted
    assert sha256_file(ferry.home("alice") / "active.bin") == digest
    assert sha256_file(tmp_path / "a-back.bin") == digest


def test_tnftp_mput_and_reget(ferry, tmp_path):
    home = ferry.home("alice")
    digests = {f"m{i}.bin": write_random(tmp_path / f"m{i}.bin", 20_000 * (i + 1), seed=40 + i) for i in range(3)}
    data = random_bytes(800_000, seed=34)
    put_file(home / "regot.bin", data)
    (tmp_path / "regot.bin").write_bytes(data[:300_000])  # an earlier, interrupted download
    p = tnftp_script(ferry, tmp_path, ["binary", "mkdir multi", "cd multi", "mput m*.bin", "cd /",
                                       "reget regot.bin regot.bin"])
    for name, digest in digests.items():
        assert sha256_file(home / "multi" / name) == digest
    assert sha256_file(tmp_path / "regot.bin") == sha256_bytes(data), p.stdout
    assert "350" in p.stdout, p.stdout  # REST was accepted


def test_tnftp_url_mode_download_and_upload(ferry, tmp_path):
    home = ferry.home("alice")
    digest = write_random(home / "pub/url.bin", 500_000, seed=35)
    base = f"ftp://alice:secret@{ferry.host}:{ferry.port}"
    run_client(["tnftp", "-V", "-o", str(tmp_path / "url-down.bin"), f"{base}/pub/url.bin"], tmp_path, timeout=60)
    assert sha256_file(tmp_path / "url-down.bin") == digest

    up_digest = write_random(tmp_path / "url-up.bin", 321_000, seed=36)
    run_client(["tnftp", "-V", "-u", f"{base}/pub/", "url-up.bin"], tmp_path, cwd=tmp_path, timeout=60)
    assert sha256_file(home / "pub/url-up.bin") == up_digest


def test_tnftp_url_mode_wrong_password_fails(ferry, tmp_path):
    write_random(ferry.home("alice") / "w.bin", 10, seed=37)
    p = run_client(
        ["tnftp", "-V", "-o", str(tmp_path / "w.bin"), f"ftp://alice:wrong@{ferry.host}:{ferry.port}/w.bin"],
        tmp_path,
        check=False,
        input="",
        timeout=60,
    )
    assert p.returncode != 0
    assert not (tmp_path / "w.bin").exists() or (tmp_path / "w.bin").stat().st_size == 0
