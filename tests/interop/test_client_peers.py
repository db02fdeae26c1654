"""The `ferry` client against other servers: vsftpd (FTP: no MLSD, no HASH, LIST only), pure-ftpd and ProFTPD (FTP
with MLSD, no checksums) and OpenSSH's sshd with sftp-server (checksums through `sha256sum` run by the user's
shell). get, put, resume after the client is killed mid-transfer, and mirror with --delete.

Each FTP server is tested in plain FTP, explicit FTPS and implicit FTPS (where it has it; see peers.py), with TLS
required for the login and the data, and the server's self-signed certificate trusted through --ca-file."""
import time

import pytest

from helpers_ferry_client import fc, json_lines, spawn, wait_for_size
from helpers_files import sha256_file, write_random
from peers import ftp_peer, sshd  # noqa: F401  (fixtures)

SIZE = 6_000_000
PEERS = [(name, mode) for name in ("vsftpd", "pure_ftpd", "proftpd") for mode in ("plain", "explicit", "implicit")]


@pytest.fixture(params=[*PEERS, ("sshd", "plain")], ids=lambda p: p[0] if p[1] == "plain" else f"{p[0]}-{p[1]}")
def peer(request):
    """A server, with `url(path)`, `flags()` and `root` (the local directory its URLs point into)."""
    name, mode = request.param
    if name == "sshd":
        return request.getfixturevalue("sshd")
    return request.getfixturevalue("ftp_peer")(name, mode)


def test_get_and_put(peer, tmp_path):
    digest = write_random(tmp_path / "up.bin", 2_000_000, seed=1)
    p = fc(tmp_path, "put", "--json", *peer.flags(), "up.bin", peer.url("up.bin"))
    [r] = json_lines(p.stdout)
    assert r["bytes"] == 2_000_000
    assert sha256_file(peer.root / "up.bin") == digest
    # The FTP servers offer no checksum (verified by size); sshd runs sha256sum.
    assert r["verified"] == ("checksum" if peer.__class__.__name__ == "Sshd" else "size"), r
    p = fc(tmp_path, "get", "--json", *peer.flags(), peer.url("up.bin"), "down.bin")
    assert sha256_file(tmp_path / "down.bin") == digest
    p = fc(tmp_path, "ls", "-l", *peer.flags(), peer.url(""))
    assert "up.bin" in p.stdout and " 2000000 " in p.stdout, p.stdout
    fc(tmp_path, "mkdir", *peer.flags(), peer.url("d"))
    fc(tmp_path, "mv", *peer.flags(), peer.url("up.bin"), "moved.bin")
    fc(tmp_path, "rm", *peer.flags(), peer.url("moved.bin"))
    assert (peer.root / "d").is_dir() and not (peer.root / "moved.bin").exists()
    p = fc(tmp_path, "get", *peer.flags(), peer.url("missing.bin"), check=False)
    assert p.returncode == 1 and "missing.bin" in p.stderr, p.stderr


def test_download_resumes_after_the_client_is_killed(peer, tmp_path):
    digest = write_random(peer.root / "big.bin", SIZE, seed=2)
    proc = spawn(tmp_path, "get", "--limit-rate", "2m", *peer.flags(), peer.url("big.bin"), "big.bin")
    wait_for_size(tmp_path / "big.bin.part", SIZE // 4, proc=proc)
    proc.kill()
    proc.wait(10)
    assert not (tmp_path / "big.bin").exists()
    p = fc(tmp_path, "get", "--json", *peer.flags(), peer.url("big.bin"), "big.bin")
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] >= SIZE // 4, r
    assert sha256_file(tmp_path / "big.bin") == digest


def test_upload_resumes_after_the_client_is_killed(peer, tmp_path):
    digest = write_random(tmp_path / "big.bin", SIZE, seed=3)
    proc = spawn(tmp_path, "put", "--limit-rate", "2m", *peer.flags(), "big.bin", peer.url("big.bin"))
    wait_for_size(peer.root / "big.bin", SIZE // 4, proc=proc)
    proc.kill()
    proc.wait(10)
    partial = (peer.root / "big.bin").stat().st_size
    assert partial < SIZE
    p = fc(tmp_path, "put", "--json", *peer.flags(), "big.bin", peer.url("big.bin"))
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == partial, r
    assert sha256_file(peer.root / "big.bin") == digest


def test_mirror_with_delete(peer, tmp_path):
    src = tmp_path / "src"
    sums = {rel: write_random(src / rel, size, seed=i) for i, (rel, size) in enumerate(
        [("a.bin", 10_000), ("sub/b.bin", 70_000), ("sub/deep/c.bin", 5)])}
    stale = peer.root / "mirror/stale/old.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    peer.own(peer.root / "mirror")
    fc(tmp_path, "mirror", "--delete", *peer.flags(), src, peer.url("mirror"))
    for rel, digest in sums.items():
        assert sha256_file(peer.root / "mirror" / rel) == digest, rel
    assert not (peer.root / "mirror/stale").exists()
    # Mirrored once: a second run has nothing to do.
    p = fc(tmp_path, "mirror", "--delete", "--dry-run", *peer.flags(), src, peer.url("mirror"))
    assert p.stdout.strip() == "", p.stdout
    # And back down.
    fc(tmp_path, "mirror", "--delete", *peer.flags(), peer.url("mirror"), tmp_path / "back")
    for rel, digest in sums.items():
        assert sha256_file(tmp_path / "back" / rel) == digest, rel


def test_segmented_and_parallel_downloads(peer, tmp_path):
    """vsftpd has no RANG: each segment is REST and RETR, and the data connection is closed once its bytes came.
    ProFTPD over TLS takes RANG but sends on to the end of the file, and ends the whole session when the client
    closes that data connection: the client logs in again instead of failing the segment (and retrying)."""
    digest = write_random(peer.root / "big.bin", SIZE, seed=4)
    p = fc(tmp_path, "get", "--segments", "3", "--json", *peer.flags(), peer.url("big.bin"), "big.bin")
    [r] = json_lines(p.stdout)
    assert "retry" not in p.stderr, p.stderr
    assert r["segments"] == 3
    assert sha256_file(tmp_path / "big.bin") == digest
    sums = {f"s{i}.bin": write_random(peer.root / "many" / f"s{i}.bin", 50_000 + i, seed=i) for i in range(5)}
    peer.own(peer.root / "many")
    fc(tmp_path, "get", "-j", "3", *peer.flags(), peer.url("many/*.bin"), tmp_path / "many")
    for name, digest in sums.items():
        assert sha256_file(tmp_path / "many" / name) == digest


def test_a_killed_segmented_download_resumes_without_gaps(peer, tmp_path):
    """vsftpd offers no checksum, so only the recorded gap-free length keeps a resumed .part honest."""
    digest = write_random(peer.root / "big.bin", SIZE, seed=5)
    proc = spawn(tmp_path, "get", "--segments", "3", "--limit-rate", "500k", *peer.flags(), peer.url("big.bin"),
                 "big.bin")
    wait_for_size(tmp_path / "big.bin.part", 1, proc=proc)
    time.sleep(1.5)
    proc.kill()
    proc.wait(10)
    p = fc(tmp_path, "get", "--json", *peer.flags(), peer.url("big.bin"), "big.bin")
    [r] = json_lines(p.stdout)
    assert 0 < r["resumed_from"] < SIZE, r
    assert sha256_file(tmp_path / "big.bin") == digest


def test_many_uploads_in_one_command(peer, tmp_path):
    """ProFTPD requires each FTPS data connection to resume the control connection's TLS session; rustls uses each
    TLS 1.3 ticket once and ProFTPD hands out two per login, so the third upload on one connection is refused.
    After that one refusal (and its retry) the client logs in again whenever no session is left to resume."""
    sums = {f"u{i}.bin": write_random(tmp_path / f"u{i}.bin", 30_000 + i, seed=10 + i) for i in range(7)}
    p = fc(tmp_path, "put", *peer.flags(), *sums, peer.url(""))
    for name, digest in sums.items():
        assert sha256_file(peer.root / name) == digest, name
    assert p.stderr.count("retry") <= 1, p.stderr
