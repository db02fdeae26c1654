"""The client's retry policy: connecting is retried with backoff when the server is not there (yet), for every
command; permanent failures (a refused login, a missing file) are not retried and keep their exit codes."""
import re
import subprocess

import pytest

from conftest import FerryServer, run_ferry
from helpers_ferry_client import TRUST, fc, spawn, url
from helpers_files import sha256_file, write_random
from peers import free_port

RETRY_LINE = re.compile(r"retry (\d+) in [\d.]+ s")


def read_until_retry(proc):
    """Reads the client's standard error until it announces its first retry; returns what it read."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if RETRY_LINE.search(line):
            return "".join(seen)
    raise AssertionError(f"client ended ({proc.wait()}) without retrying:\n{''.join(seen)}")


def late_server(tmp_path, scheme):
    """Reserves a port and prepares a ferry data directory with alice/secret; the server is started later by
    the returned function, on that port."""
    port = free_port()
    data = tmp_path / "late-data"
    run_ferry("user", "add", "alice", "--password-stdin", "--data-dir", str(data), input="secret\n")
    listener = "--sftp" if scheme == "sftp" else "--ftp"

    def start():
        return FerryServer(data, ["--failed-login-delay-ms", "0", listener, f"127.0.0.1:{port}"])

    return port, data, start


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_ls_waits_for_a_server_that_comes_up_late(tmp_path, scheme):
    port, data, start = late_server(tmp_path, scheme)
    (data / "files/alice").mkdir(parents=True, exist_ok=True)
    write_random(data / "files/alice/hello.bin", 100, seed=1)
    proc = spawn(tmp_path, "ls", "--retries", "6", *TRUST, f"{scheme}://alice:secret@127.0.0.1:{port}/")
    server = None
    try:
        read_until_retry(proc)
        server = start()
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert out.split() == ["hello.bin"], out
    finally:
        if proc.poll() is None:
            proc.kill()
        if server:
            server.stop()


def test_get_waits_for_a_server_that_comes_up_late(tmp_path):
    """The first connection of a transfer command is retried too, then the file is transferred."""
    port, data, start = late_server(tmp_path, "ftp")
    digest = write_random(data / "files/alice/big.bin", 300_000, seed=2)
    proc = spawn(tmp_path, "get", "--retries", "6", f"ftp://alice:secret@127.0.0.1:{port}/big.bin", "big.bin")
    server = None
    try:
        read_until_retry(proc)
        server = start()
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert sha256_file(tmp_path / "big.bin") == digest
    finally:
        if proc.poll() is None:
            proc.kill()
        if server:
            server.stop()


@pytest.mark.parametrize("command", [
    ["ls"], ["cat"], ["hash"], ["rm"], ["mkdir"], ["get"],
])
def test_no_retries_fails_at_once_with_exit_3(tmp_path, command):
    target = f"ftp://alice:secret@127.0.0.1:{free_port()}/x"
    p = fc(tmp_path, *command, "--retries", "0", target, check=False, timeout=30)
    assert p.returncode == 3, p.stderr
    assert "cannot connect" in p.stderr and not RETRY_LINE.search(p.stderr), p.stderr


def test_retries_are_announced_and_then_give_up_with_exit_3(tmp_path):
    target = f"sftp://alice:secret@127.0.0.1:{free_port()}/x"
    p = fc(tmp_path, "cat", "--retries", "2", *TRUST, target, check=False, timeout=60)
    assert p.returncode == 3, p.stderr
    assert [int(n) for n in RETRY_LINE.findall(p.stderr)] == [1, 2], p.stderr


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
@pytest.mark.parametrize("command", [["ls"], ["get"], ["put", "local.txt"]])
def test_a_wrong_password_is_not_retried(ferry, tmp_path, scheme, command):
    (tmp_path / "local.txt").write_text("x")
    (ferry.home("alice") / "local.txt").write_text("x")
    args = [*command, url(ferry, scheme, "local.txt", password="wrong")]
    p = fc(tmp_path, args[0], "--retries", "5", *TRUST, *args[1:], check=False, timeout=60)
    assert p.returncode == 3, p.stderr
    assert "login" in p.stderr and not RETRY_LINE.search(p.stderr), p.stderr
    # The server saw exactly one failed login (SFTP: one password attempt).
    ferry.wait_for_log("login failed")
    assert ferry.log().count("login failed") == 1, ferry.log()


def test_a_missing_file_is_not_retried(ferry, tmp_path):
    for command in (["cat"], ["hash"], ["ls"], ["get"]):
        p = fc(tmp_path, *command, "--retries", "5", url(ferry, "ftp", "missing.bin"), check=False, timeout=60)
        assert p.returncode == 1, p.stderr
        assert "missing.bin" in p.stderr and not RETRY_LINE.search(p.stderr), p.stderr


def test_an_unknown_host_key_is_not_retried(ferry, tmp_path):
    """In a script without --accept-new-host-key the key is refused at once: exit 3, no retry."""
    p = fc(tmp_path, "ls", "--retries", "5", url(ferry, "sftp", ""), check=False, timeout=60)
    assert p.returncode == 3, p.stderr
    assert "unknown host key" in p.stderr and not RETRY_LINE.search(p.stderr), p.stderr


def test_a_changed_host_key_is_refused_without_retry(ferry, tmp_path):
    host, port = ferry.addresses["sftp"]
    known = tmp_path / "known_hosts"
    # A key of the right type that is not the server's.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    known.write_text(f"[{host}]:{port} {other[0]} {other[1]}\n")
    p = fc(tmp_path, "ls", "--retries", "5", "--known-hosts", known, url(ferry, "sftp", ""), check=False,
           timeout=60)
    assert p.returncode == 3, p.stderr
    assert "HOST KEY CHANGED" in p.stderr and not RETRY_LINE.search(p.stderr), p.stderr
