"""curl against ferry: plain FTP, explicit and implicit FTPS, listings, and resumed uploads/downloads."""
import subprocess
import time

import pytest

from helpers_clients import child_env, require, run_client
from helpers_files import put_file, random_bytes, sha256_bytes, sha256_file, wait_until, write_random


@pytest.fixture(autouse=True)
def _curl():
    require("curl")


def curl(tmp_path, *args, check=True, timeout=60):
    # -sS: quiet but show errors; --fail-early: any failing URL fails the run; no proxies, no ~/.curlrc (-q).
    return run_client(
        ["curl", "-q", "-sS", "--noproxy", "*", "--connect-timeout", "10", *args],
        tmp_path,
        check=check,
        timeout=timeout,
    )


def url(server, path="", user="alice", password="secret", scheme="ftp", port=None):
    return f"{scheme}://{user}:{password}@{server.host}:{port or server.port}/{path}"


def test_curl_upload_creates_file_with_identical_bytes(ferry, tmp_path):
    digest = write_random(tmp_path / "up.bin", 1_234_567, seed=11)
    curl(tmp_path, "-T", str(tmp_path / "up.bin"), url(ferry, "up.bin"))
    stored = ferry.home("alice") / "up.bin"
    assert sha256_file(stored) == digest


def test_curl_upload_into_new_nested_directories(ferry, tmp_path):
    digest = write_random(tmp_path / "n.bin", 50_000, seed=12)
    curl(tmp_path, "--ftp-create-dirs", "-T", str(tmp_path / "n.bin"), url(ferry, "d1/d2/d3/n.bin"))
    assert sha256_file(ferry.home("alice") / "d1/d2/d3/n.bin") == digest


def test_curl_download_returns_identical_bytes(ferry, tmp_path):
    digest = write_random(ferry.home("alice") / "sub/down.bin", 2_000_003, seed=13)
    out = tmp_path / "down.bin"
    curl(tmp_path, "-o", str(out), url(ferry, "sub/down.bin"))
    assert sha256_file(out) == digest


def test_curl_download_of_missing_file_fails(ferry, tmp_path):
    p = curl(tmp_path, "-o", str(tmp_path / "x"), url(ferry, "no-such-file.bin"), check=False)
    # curl exit 78: "The resource referenced in the URL does not exist" (550 to SIZE/RETR).
    assert p.returncode == 78, (p.returncode, p.stderr)


def test_curl_listing_shows_files_and_directories(ferry, tmp_path):
    home = ferry.home("alice")
    write_random(home / "listed/alpha.bin", 10, seed=1)
    write_random(home / "listed/beta.txt", 20, seed=2)
    (home / "listed/gamma_dir").mkdir()
    # A URL ending in "/" makes curl send LIST.
    long_listing = curl(tmp_path, url(ferry, "listed/")).stdout
    lines = [l for l in long_listing.splitlines() if l.strip()]
    assert len(lines) == 3, long_listing
    by_name = {l.split()[-1]: l for l in lines}
    assert set(by_name) == {"alpha.bin", "beta.txt", "gamma_dir"}, long_listing
    assert by_name["gamma_dir"].startswith("d"), long_listing
    assert by_name["alpha.bin"].startswith("-"), long_listing
    # --list-only makes curl send NLST: bare names, one per line.
    names = curl(tmp_path, "--list-only", url(ferry, "listed/")).stdout.split()
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == ["alpha.bin", "beta.txt", "gamma_dir"]


def test_curl_explicit_ftps_upload_and_download(ferry, tmp_path):
    digest = write_random(tmp_path / "tls-up.bin", 777_777, seed=14)
    p = curl(tmp_path, "-v", "--ssl-reqd", "-k", "-T", str(tmp_path / "tls-up.bin"), url(ferry, "tls-up.bin"))
    # The control connection was upgraded and the data connection protected.
    assert "AUTH TLS" in p.stderr or "AUTH SSL" in p.stderr, p.stderr
    assert "PROT P" in p.stderr, p.stderr
    assert sha256_file(ferry.home("alice") / "tls-up.bin") == digest
    out = tmp_path / "tls-down.bin"
    curl(tmp_path, "--ssl-reqd", "-k", "-o", str(out), url(ferry, "tls-up.bin"))
    assert sha256_file(out) == digest
    listing = curl(tmp_path, "--ssl-reqd", "-k", "--list-only", url(ferry, "")).stdout.split()
    assert "tls-up.bin" in listing


def test_curl_implicit_ftps_listener(ferry_factory, tmp_path):
    server = ferry_factory("--ftps", "127.0.0.1:0", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    assert "ftps" in server.addresses, server.log()
    host, port = server.addresses["ftps"]
    digest = write_random(tmp_path / "imp.bin", 600_001, seed=15)
    base = f"ftps://alice:secret@{host}:{port}/"
    curl(tmp_path, "-k", "-T", str(tmp_path / "imp.bin"), base + "imp.bin")
    assert sha256_file(server.home("alice") / "imp.bin") == digest
    out = tmp_path / "imp-down.bin"
    curl(tmp_path, "-k", "-o", str(out), base + "imp.bin")
    assert sha256_file(out) == digest
    # A plain-text client talking to the implicit port must not get a usable FTP session.
    p = curl(tmp_path, "--max-time", "3", url(server, "", port=port), check=False)
    assert p.returncode != 0


def test_curl_resumes_upload_onto_partial_remote_file(ferry, tmp_path):
    data = random_bytes(1_500_000, seed=16)
    (tmp_path / "full.bin").write_bytes(data)
    remote = ferry.home("alice") / "resume-up.bin"
    put_file(remote, data[:456_789])  # what an interrupted upload left behind
    p = curl(tmp_path, "-v", "-C", "-", "-T", str(tmp_path / "full.bin"), url(ferry, "resume-up.bin"))
    # curl asks SIZE and sends only the rest (APPE, or REST + STOR).
    assert "SIZE resume-up.bin" in p.stderr, p.stderr
    assert "APPE resume-up.bin" in p.stderr or "REST 456789" in p.stderr, p.stderr
    assert sha256_file(remote) == sha256_bytes(data)


def test_curl_resumes_upload_after_killed_transfer(ferry, tmp_path):
    data = random_bytes(3_000_000, seed=17)
    local = tmp_path / "killed.bin"
    local.write_bytes(data)
    remote = ferry.home("alice") / "killed.bin"
    # A throttled upload that gets killed part-way, like a dropped connection.
    proc = subprocess.Popen(
        ["curl", "-q", "-sS", "--noproxy", "*", "--limit-rate", "300K", "-T", str(local), url(ferry, "killed.bin")],
        env=child_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: remote.exists() and remote.stat().st_size >= 200_000, timeout=15,
                   message="part of the upload to reach the server")
    finally:
        proc.kill()
        proc.wait()

    def stable_size():
        before = remote.stat().st_size if remote.exists() else -1
        time.sleep(0.3)
        after = remote.stat().st_size if remote.exists() else -1
        return after if after == before else None

    partial = wait_until(stable_size, timeout=10, message="the partial upload to settle")
    assert 0 < partial < len(data), partial
    assert remote.read_bytes() == data[:partial], "the partial file must be a prefix of what was sent"

    curl(tmp_path, "-C", "-", "-T", str(local), url(ferry, "killed.bin"))
    assert sha256_file(remote) == sha256_bytes(data)


def test_curl_resumes_download_into_partial_local_file(ferry, tmp_path):
    data = random_bytes(2_500_000, seed=18)
    put_file(ferry.home("alice") / "resume-down.bin", data)
    out = tmp_path / "resume-down.bin"
    out.write_bytes(data[:1_000_001])
    p = curl(tmp_path, "-v", "-C", "-", "-o", str(out), url(ferry, "resume-down.bin"))
    assert "REST 1000001" in p.stderr, p.stderr
    assert sha256_file(out) == sha256_bytes(data)


def test_curl_resumed_download_over_tls(ferry, tmp_path):
    data = random_bytes(900_000, seed=19)
    put_file(ferry.home("alice") / "r-tls.bin", data)
    out = tmp_path / "r-tls.bin"
    out.write_bytes(data[:300_000])
    curl(tmp_path, "--ssl-reqd", "-k", "-C", "-", "-o", str(out), url(ferry, "r-tls.bin"))
    assert sha256_file(out) == sha256_bytes(data)


def test_curl_repeated_tls13_uploads_all_complete(ferry, tmp_path):
    """Every TLS 1.3 upload must complete: curl closes the data connection right after sending, so anything the
    server left unread on it (e.g. session tickets it sent after the handshake) must not turn into a reset that
    loses the tail of the file."""
    data = random_bytes(600_001, seed=20)
    (tmp_path / "rep.bin").write_bytes(data)
    failures = []
    for i in range(10):
        p = curl(tmp_path, "--ssl-reqd", "-k", "--tlsv1.3", "-T", str(tmp_path / "rep.bin"),
                 url(ferry, f"rep{i}.bin"), check=False)
        stored = ferry.home("alice") / f"rep{i}.bin"
        if p.returncode != 0 or not stored.exists() or sha256_file(stored) != sha256_bytes(data):
            failures.append((i, p.returncode, p.stderr.strip()))
    assert not failures, f"{len(failures)} of 10 TLS uploads failed: {failures}"
