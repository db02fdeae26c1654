"""Resume after the server is killed mid-transfer: the client is slowed with --limit-rate, the ferry server is
killed once part of the file has moved, a new server is started on the same data directory, and the same command
run again continues from what is there. The result is checked by hash."""
import time

import pytest

from helpers_ferry_client import TRUST, fc, json_lines, spawn, url, wait_for_size
from helpers_files import sha256_file, write_random

# Large enough that what the kernel's socket buffers hold when the server dies (several MB on loopback) is not
# the whole rest of the file.
SIZE = 32_000_000
RATE = "4m"
SMALL = 8_000_000


def restart(ferry_factory, server):
    """Kills `server` and starts a new one on its data directory (new ports)."""
    server.stop()
    return ferry_factory("--failed-login-delay-ms", "0", data_dir=server.data_dir)


@pytest.mark.parametrize("scheme", ["ftp", "ftps", "sftp"])
def test_download_resumes_after_the_server_is_killed(ferry, ferry_factory, tmp_path, scheme):
    digest = write_random(ferry.home("alice") / "big.bin", SIZE, seed=7)
    proc = spawn(tmp_path, "get", "--retries", "0", "--limit-rate", RATE, *TRUST,
                 url(ferry, scheme, "big.bin"), "big.bin")
    wait_for_size(tmp_path / "big.bin.part", SIZE // 8, proc=proc)
    server = restart(ferry_factory, ferry)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "big.bin" in err
    # The partial file is never presented as complete.
    assert not (tmp_path / "big.bin").exists()
    part = (tmp_path / "big.bin.part").stat().st_size
    assert 0 < part < SIZE

    p = fc(tmp_path, "get", "--json", *TRUST, url(server, scheme, "big.bin"), "big.bin")
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] > 0 and r["resumed_from"] <= part, r
    assert r["bytes"] == SIZE - r["resumed_from"]
    assert r["verified"] == "checksum" and r["checksum"] == digest
    assert sha256_file(tmp_path / "big.bin") == digest
    assert not (tmp_path / "big.bin.part").exists()


@pytest.mark.parametrize("scheme", ["ftp", "ftps", "sftp"])
def test_upload_resumes_after_the_server_is_killed(ferry, ferry_factory, tmp_path, scheme):
    digest = write_random(tmp_path / "big.bin", SIZE, seed=8)
    remote = ferry.home("alice") / "big.bin"
    proc = spawn(tmp_path, "put", "--retries", "0", "--limit-rate", RATE, *TRUST,
                 "big.bin", url(ferry, scheme, "big.bin"))
    wait_for_size(remote, SIZE // 8, proc=proc)
    server = restart(ferry_factory, ferry)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    partial = remote.stat().st_size
    assert 0 < partial < SIZE

    p = fc(tmp_path, "put", "--json", *TRUST, "big.bin", url(server, scheme, "big.bin"))
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == partial, r
    assert r["bytes"] == SIZE - partial
    assert r["checksum"] == digest
    assert sha256_file(remote) == digest


def test_a_part_that_does_not_match_is_downloaded_again(ferry, tmp_path):
    """ferry's FTP server hashes byte ranges (HASH with RANG): a .part whose bytes differ is not continued."""
    digest = write_random(ferry.home("alice") / "f.bin", 1_000_000, seed=1)
    write_random(tmp_path / "f.bin.part", 300_000, seed=2)
    p = fc(tmp_path, "get", "--json", url(ferry, "ftp", "f.bin"), "f.bin")
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == 0
    assert sha256_file(tmp_path / "f.bin") == digest


def test_no_resume_starts_over(ferry, tmp_path):
    digest = write_random(ferry.home("alice") / "f.bin", 500_000, seed=1)
    (tmp_path / "f.bin.part").write_bytes((ferry.home("alice") / "f.bin").read_bytes()[:1000])
    p = fc(tmp_path, "get", "--no-resume", "--json", url(ferry, "ftp", "f.bin"), "f.bin")
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == 0 and r["bytes"] == 500_000
    assert sha256_file(tmp_path / "f.bin") == digest


def test_retries_reconnect_and_resume_when_the_server_comes_back(ferry_factory, tmp_path):
    server = ferry_factory("--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    port = server.addresses["ftp"][1]
    digest = write_random(server.home("alice") / "big.bin", SMALL, seed=5)
    proc = spawn(tmp_path, "get", "--retries", "5", "--limit-rate", RATE, "--json",
                 url(server, "ftp", "big.bin"), "big.bin")
    wait_for_size(tmp_path / "big.bin.part", SMALL // 4, proc=proc)
    server.stop()
    ferry_factory("--failed-login-delay-ms", "0", "--ftp", f"127.0.0.1:{port}", data_dir=server.data_dir)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "retry 1" in err, err
    [r] = json_lines(out)
    assert r["resumed_from"] >= SMALL // 4, r
    assert r["checksum"] == digest
    assert sha256_file(tmp_path / "big.bin") == digest


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_a_killed_segmented_download_resumes_without_gaps(ferry, tmp_path, scheme):
    """Segments write all over the .part file; when the client dies, the next run cuts the part back to what was
    written without gaps (recorded beside it) before resuming."""
    digest = write_random(ferry.home("alice") / "big.bin", SMALL, seed=6)
    proc = spawn(tmp_path, "get", "--segments", "4", "--limit-rate", "500k", *TRUST,
                 url(ferry, scheme, "big.bin"), "big.bin")
    wait_for_size(tmp_path / "big.bin.part", 1, proc=proc)
    time.sleep(1.5)
    proc.kill()
    proc.wait(10)
    assert (tmp_path / "big.bin.part.segments").exists()

    p = fc(tmp_path, "get", "--json", *TRUST, url(ferry, scheme, "big.bin"), "big.bin")
    [r] = json_lines(p.stdout)
    assert 0 < r["resumed_from"] < SMALL, r
    assert r["checksum"] == digest
    assert sha256_file(tmp_path / "big.bin") == digest
    assert not (tmp_path / "big.bin.part.segments").exists()
