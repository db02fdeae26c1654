"""rclone's FTP backend against ferry, with an on-the-fly `:ftp:` remote (no config file)."""
import json
import subprocess

import pytest

from helpers_clients import child_env, require, run_client
from helpers_files import assert_same_tree, make_tree, random_bytes, sha256_bytes, sha256_file, write_random


@pytest.fixture(autouse=True)
def _rclone():
    require("rclone")


@pytest.fixture
def rclone(tmp_path):
    """Returns run(server, *args, tls=False, check=True) for rclone with an on-the-fly :ftp: remote."""
    config = tmp_path / "rclone.conf"
    config.write_text("")
    obscured = {}

    def run(server, *args, tls=False, check=True, stdin_path=None, user="alice", password="secret"):
        if password not in obscured:
            obscured[password] = run_client(["rclone", "obscure", password], tmp_path).stdout.strip()
        flags = [
            "--config", str(config),
            "--ftp-host", server.host,
            "--ftp-port", str(server.port),
            "--ftp-user", user,
            "--ftp-pass", obscured[password],
            "--retries", "1",
            "--low-level-retries", "2",
            "--contimeout", "10s",
            "--timeout", "30s",
        ]
        if tls:
            flags += ["--ftp-explicit-tls", "--ftp-no-check-certificate"]
        cmd = ["rclone", *args, *flags]
        if stdin_path is None:
            return run_client(cmd, tmp_path, check=check, cwd=tmp_path, timeout=90)
        with open(stdin_path, "rb") as f:
            p = subprocess.run(cmd, stdin=f, env=child_env(tmp_path), capture_output=True, text=True, timeout=90)
        assert not check or p.returncode == 0, f"{cmd!r} failed ({p.returncode}):\n{p.stderr}"
        return p

    return run


def test_rclone_copy_tree_check_and_copy_back(ferry, rclone, tmp_path):
    local = tmp_path / "localtree"
    make_tree(local)
    rclone(ferry, "copy", str(local), ":ftp:dst", "--create-empty-src-dirs")
    assert_same_tree(local, ferry.home("alice") / "dst")
    # `check --download` compares every file byte for byte (FTP has no hashes); exit 0 = identical.
    rclone(ferry, "check", str(local), ":ftp:dst", "--download")
    rclone(ferry, "copy", ":ftp:dst", str(tmp_path / "back"), "--create-empty-src-dirs")
    assert_same_tree(local, tmp_path / "back")


def test_rclone_check_detects_a_changed_remote_file(ferry, rclone, tmp_path):
    local = tmp_path / "t"
    make_tree(local)
    rclone(ferry, "copy", str(local), ":ftp:chk")
    changed = ferry.home("alice") / "chk/a/b/two.bin"
    data = bytearray(changed.read_bytes())
    data[1000] ^= 0xFF  # same size, different content
    changed.write_bytes(bytes(data))
    differ = tmp_path / "differ.txt"
    p = rclone(ferry, "check", str(local), ":ftp:chk", "--download", "--differ", str(differ), check=False)
    assert p.returncode != 0
    assert differ.read_text().split() == ["a/b/two.bin"], p.stderr


def test_rclone_listing_reports_sizes_and_directories(ferry, rclone, tmp_path):
    home = ferry.home("alice")
    write_random(home / "ls/one.bin", 1_001, seed=51)
    write_random(home / "ls/sub/two.bin", 22_222, seed=52)
    (home / "ls/emptysub").mkdir(parents=True)
    out = rclone(ferry, "lsjson", "-R", ":ftp:ls").stdout
    entries = {e["Path"]: e for e in json.loads(out)}
    assert set(entries) == {"one.bin", "sub", "sub/two.bin", "emptysub"}, entries
    assert entries["one.bin"]["Size"] == 1_001 and not entries["one.bin"]["IsDir"]
    assert entries["sub/two.bin"]["Size"] == 22_222
    assert entries["sub"]["IsDir"] and entries["emptysub"]["IsDir"]


def test_rclone_missing_remote_directory_is_reported_as_not_found(ferry, rclone, tmp_path):
    # rclone maps a 550 reply to MLSD/LIST of a missing directory to "directory not found".
    p = rclone(ferry, "lsf", ":ftp:does-not-exist", check=False)
    assert p.returncode != 0
    assert "not found" in p.stderr.lower(), p.stderr


def test_rclone_rcat_moveto_copyto_and_purge(ferry, rclone, tmp_path):
    home = ferry.home("alice")
    data = random_bytes(1_048_583, seed=53)
    (tmp_path / "stream.bin").write_bytes(data)
    # rcat streams stdin to the server (an upload of unknown size).
    rclone(ferry, "rcat", ":ftp:work/streamed.bin", stdin_path=tmp_path / "stream.bin")
    assert sha256_file(home / "work/streamed.bin") == sha256_bytes(data)
    rclone(ferry, "moveto", ":ftp:work/streamed.bin", ":ftp:work/moved/renamed.bin")
    assert not (home / "work/streamed.bin").exists()
    assert sha256_file(home / "work/moved/renamed.bin") == sha256_bytes(data)
    rclone(ferry, "copyto", ":ftp:work/moved/renamed.bin", str(tmp_path / "fetched.bin"))
    assert sha256_file(tmp_path / "fetched.bin") == sha256_bytes(data)
    rclone(ferry, "purge", ":ftp:work")
    assert not (home / "work").exists()


def test_rclone_explicit_tls_copy_check_and_copy_back(ferry, rclone, tmp_path):
    local = tmp_path / "tlstree"
    make_tree(local)
    rclone(ferry, "copy", str(local), ":ftp:tlsdst", "--create-empty-src-dirs", tls=True)
    assert_same_tree(local, ferry.home("alice") / "tlsdst")
    rclone(ferry, "check", str(local), ":ftp:tlsdst", "--download", tls=True)
    rclone(ferry, "copy", ":ftp:tlsdst", str(tmp_path / "tlsback"), "--create-empty-src-dirs", tls=True)
    assert_same_tree(local, tmp_path / "tlsback")


def test_rclone_wrong_password_fails(ferry, rclone, tmp_path):
    p = rclone(ferry, "lsf", ":ftp:", password="not-the-password", check=False)
    assert p.returncode != 0
    assert "530" in p.stderr, p.stderr
