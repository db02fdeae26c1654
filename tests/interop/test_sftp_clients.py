"""curl (libssh2) and rclone (Go's x/crypto/ssh and pkg/sftp) against ferry's SFTP server."""
import pytest

from helpers_clients import require, run_client
from helpers_files import assert_same_tree, make_tree, sha256_file, write_random


def curl(ferry, tmp_path, *args, check=True):
    require("curl")
    return run_client(["curl", "-sS", "--insecure", "--user", "alice:secret", *args], tmp_path, check=check)


def url(ferry, path=""):
    host, port = ferry.addresses["sftp"]
    return f"sftp://{host}:{port}/{path}"


def test_curl_download_upload_and_listing(ferry, tmp_path):
    home = ferry.home("alice")
    digest = write_random(home / "d/file.bin", 1_000_001, seed=1)
    curl(ferry, tmp_path, url(ferry, "d/file.bin"), "-o", str(tmp_path / "got.bin"))
    assert sha256_file(tmp_path / "got.bin") == digest
    up = write_random(tmp_path / "up.bin", 700_000, seed=2)
    curl(ferry, tmp_path, "--ftp-create-dirs", "-T", str(tmp_path / "up.bin"), url(ferry, "new/dir/"))
    assert sha256_file(home / "new/dir/up.bin") == up
    listing = curl(ferry, tmp_path, url(ferry, "d/")).stdout
    assert "file.bin" in listing and "1000001" in listing, listing


def test_curl_resumes_a_download(ferry, tmp_path):
    home = ferry.home("alice")
    digest = write_random(home / "r.bin", 500_000, seed=3)
    (tmp_path / "r.bin").write_bytes((home / "r.bin").read_bytes()[:123_456])
    curl(ferry, tmp_path, "-C", "-", url(ferry, "r.bin"), "-o", str(tmp_path / "r.bin"))
    assert sha256_file(tmp_path / "r.bin") == digest


def test_curl_quote_commands(ferry, tmp_path):
    home = ferry.home("alice")
    write_random(home / "a.bin", 10, seed=4)
    curl(ferry, tmp_path, "-Q", "rename /a.bin /b.bin", "-Q", "mkdir /m", "-Q", "chmod 700 /m", url(ferry), "-o",
         "/dev/null")
    assert (home / "b.bin").exists() and not (home / "a.bin").exists()
    assert (home / "m").stat().st_mode & 0o777 == 0o700


def test_curl_wrong_password_fails(ferry, tmp_path):
    require("curl")
    p = run_client(["curl", "-sS", "--insecure", "--user", "alice:nope", url(ferry, "x")], tmp_path, check=False)
    assert p.returncode == 67, p.stderr  # CURLE_LOGIN_DENIED


@pytest.fixture
def rclone_remote(ferry, tmp_path):
    require("rclone")
    obscured = run_client(["rclone", "obscure", "secret"], tmp_path).stdout.strip()
    host, port = ferry.addresses["sftp"]
    return f":sftp,host={host},port={port},user=alice,pass={obscured}:"


def rclone(tmp_path, *args, check=True):
    return run_client(["rclone", "--config", "/dev/null", "--low-level-retries", "1", "--retries", "1", *args],
                      tmp_path, check=check, timeout=120)


def test_rclone_copy_and_check(ferry, tmp_path, rclone_remote):
    make_tree(tmp_path / "src")
    rclone(tmp_path, "copy", str(tmp_path / "src"), rclone_remote + "dst")
    assert_same_tree(tmp_path / "src", ferry.home("alice") / "dst", check_empty_dirs=False)
    p = rclone(tmp_path, "check", str(tmp_path / "src"), rclone_remote + "dst")
    # rclone found the server's md5sum command and compared real hashes, not just sizes.
    assert "0 differences found" in p.stderr, p.stderr
    assert "no common hash" not in p.stderr.lower(), p.stderr
    rclone(tmp_path, "copy", rclone_remote + "dst", str(tmp_path / "back"))
    assert_same_tree(tmp_path / "src", tmp_path / "back", check_empty_dirs=False)


def test_rclone_check_notices_a_changed_file(ferry, tmp_path, rclone_remote):
    make_tree(tmp_path / "src")
    rclone(tmp_path, "copy", str(tmp_path / "src"), rclone_remote + "dst")
    target = ferry.home("alice") / "dst/top.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF  # same size, different content: only a hash can tell
    target.write_bytes(bytes(data))
    p = rclone(tmp_path, "check", str(tmp_path / "src"), rclone_remote + "dst", check=False)
    assert p.returncode != 0
    assert "1 differences found" in p.stderr, p.stderr
