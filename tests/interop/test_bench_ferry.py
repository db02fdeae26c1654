"""`ferry bench` against a ferry server from the fixture, with tiny numbers: checks that every scenario runs and
that its JSON has the shape bench/runner.py reads. Nothing here looks at how fast anything was."""
import ftplib
import json
import socket
import subprocess
import time

import pytest

from conftest import FERRY_BIN, run_ferry


def bench(*args):
    result = run_ferry("bench", *args, "--json")
    return json.loads(result.stdout.strip().splitlines()[-1])


def url(server, scheme="ftp"):
    host, port = server.addresses["sftp" if scheme == "sftp" else "ftp"]
    return f"{scheme}://alice:secret@{host}:{port}/"


def test_sessions_reports_logins_and_memory_per_session(ferry):
    report = bench("sessions", url(ferry), "-n", "5", "--pid", str(ferry.proc.pid), "--settle-ms", "0")
    assert report["scenario"] == "sessions"
    assert report["sessions_opened"] == 5 and report["failures"] == 0
    assert report["logins_per_sec"] > 0
    assert report["memory_before"]["pss_kib"] > 0 and report["memory_after"]["processes"] >= 1
    assert isinstance(report["per_session_kib"], float)
    assert "secret" not in json.dumps(report)


def test_sessions_spread_over_source_addresses(ferry):
    report = bench("sessions", url(ferry), "-n", "4", "--source-ips", "127.0.0.1-127.0.0.2", "--settle-ms", "0")
    assert report["sessions_opened"] == 4
    assert report["source_addresses"] == 2
    assert report["per_session_kib"] is None


def test_transfer_uploads_then_downloads_every_stream(ferry):
    report = bench("transfer", url(ferry) + "bench", "--size", "1MiB", "--streams", "2", "--pid", str(ferry.proc.pid))
    assert report["scenario"] == "transfer" and report["streams"] == 2
    for phase in ("upload", "download"):
        assert report[phase]["bytes"] == 2 * 1024 * 1024
        assert report[phase]["mib_per_sec"] > 0
    # The files are deleted at the end; the directory stays.
    assert list((ferry.home("alice") / "bench").iterdir()) == []


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_transfer_uploads_new_files_instead_of_replacing_old_ones(ferry, scheme):
    # A file left at a stream's name is deleted, not truncated: a hard link to it keeps the old bytes.
    home = ferry.home("alice")
    (home / "ferry-bench-transfer-0.bin").write_bytes(b"old")
    (home / "keep.bin").hardlink_to(home / "ferry-bench-transfer-0.bin")
    report = bench("transfer", url(ferry, scheme), "--size", "64KiB")
    assert report["upload"]["bytes"] == report["download"]["bytes"] == 65536
    assert (home / "keep.bin").read_bytes() == b"old"
    assert not (home / "ferry-bench-transfer-0.bin").exists()


def test_transfer_over_ftps(ferry):
    report = bench("transfer", url(ferry, "ftps"), "--size", "64KiB")
    assert report["protocol"] == "ftps"
    assert report["download"]["bytes"] == 65536


def test_transfer_over_sftp_with_aes128_gcm(ferry):
    # The benchmark's default cipher, which the comparison with OpenSSH is made with.
    report = bench("transfer", url(ferry, "sftp"), "--size", "64KiB")
    assert report["protocol"] == "sftp"
    assert report["upload"]["bytes"] == report["download"]["bytes"] == 65536


def test_transfer_over_sftp_with_another_cipher(ferry):
    report = bench("transfer", url(ferry, "sftp"), "--size", "64KiB", "--cipher", "aes256-gcm@openssh.com")
    assert report["download"]["bytes"] == 65536


def test_small_files_count_operations(ferry):
    report = bench("small", url(ferry), "--files", "6", "--size", "4KiB", "--clients", "3")
    assert report["scenario"] == "small" and report["files"] == 6 and report["clients"] == 3
    assert report["stor_ops_per_sec"] > 0 and report["retr_ops_per_sec"] > 0
    assert report["retr"]["bytes"] == 6 * 4096


def test_list_with_entries_created_on_disk(ferry):
    report = bench("list", url(ferry), "--entries", "50", "--local-dir", str(ferry.home("alice")),
                   "--pid", str(ferry.proc.pid))
    assert report["created_via"] == "local-dir"
    assert report["command"] == "MLSD"
    assert report["lines"] >= 50
    assert report["memory_peak"]["pss_kib"] >= report["memory_before"]["pss_kib"]


def test_list_with_entries_created_through_the_protocol(ferry):
    report = bench("list", url(ferry), "--entries", "5")
    assert report["created_via"] == "protocol"
    assert report["lines"] >= 5
    assert report["memory_before"] is None


def test_raw_tcp_copies_every_byte():
    report = bench("raw-tcp", "--size", "1MiB", "--streams", "2")
    assert report["bytes"] == 2 * 1024 * 1024


def test_non_loopback_targets_are_refused():
    result = run_ferry("bench", "transfer", "ftp://a:b@192.0.2.1:21/", check=False)
    assert result.returncode != 0
    assert "loopback" in result.stderr


def _null_ftp():
    """Starts `ferry bench null-ftp` on a free loopback port; returns the process and a logged-out ftplib client."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([FERRY_BIN, "bench", "null-ftp", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        ftp = ftplib.FTP(timeout=10)
        try:
            ftp.connect("127.0.0.1", port)
            return proc, port, ftp
        except ConnectionRefusedError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)


def test_null_ftp_answers_a_login_and_nothing_else():
    proc, port, ftp = _null_ftp()
    try:
        assert ftp.login("anyone", "any password").startswith("230")
        with pytest.raises(ftplib.error_perm, match="^502"):
            ftp.sendcmd("PWD")
        report = bench("sessions", f"ftp://bench:pw@127.0.0.1:{port}/", "-n", "20", "--settle-ms", "0",
                       "--pid", str(proc.pid))
        assert report["sessions_opened"] == 20 and report["failures"] == 0
        assert ftp.quit().startswith("221")
    finally:
        proc.kill()
        proc.wait()


def test_null_ftp_listens_on_loopback_only():
    result = run_ferry("bench", "null-ftp", "--listen", "0.0.0.0:0", check=False)
    assert result.returncode != 0 and "loopback" in result.stderr, result.stderr
