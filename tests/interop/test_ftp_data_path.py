"""The FTP data path's fast paths: sendfile for binary downloads over plain TCP (warm and cold page cache, REST,
RANG, ABOR, byte counts), uploads from filled buffers and, while the client is ahead, spliced from the socket into
the file (many buffers in order, resumption, quota cut-off, ABOR while data streams in), and passive ports bound
again and again."""
import io
import os
import socket
import threading

from helpers_files import random_bytes, sha256_bytes, wait_until
from helpers_ftp import ftp_login, retrieve, store, upload_expecting_failure
from test_policy_passive import free_port_range
from test_policy_server import check_xferlog_line, xferlog_lines

MB = 1024 * 1024


def drop_from_page_cache(path):
    """Writes the file's pages back and asks the kernel to drop them, so that the next read goes to the disk (no
    effect on file systems that keep everything in memory, such as tmpfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def retr_from(ftp, path, rest):
    chunks = []
    ftp.retrbinary(f"RETR {path}", chunks.append, rest=rest)
    return b"".join(chunks)


def test_large_binary_retr_with_rest_offsets_matches_the_file(ferry):
    # Several page-cache windows (2 MiB), offsets inside and at the edge of one.
    data = random_bytes(9 * MB + 4321, seed=501)
    (ferry.home("alice") / "big.bin").write_bytes(data)
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    for rest in (0, 1, 2 * MB - 1, 2 * MB, 5 * MB + 77, len(data) - 1, len(data)):
        got = retr_from(ftp, "big.bin", rest)
        assert len(got) == len(data) - rest, rest
        assert sha256_bytes(got) == sha256_bytes(data[rest:]), rest
    ftp.quit()


def test_retr_of_a_file_not_in_the_page_cache_matches_the_file(ferry):
    data = random_bytes(7 * MB + 3, seed=502)
    path = ferry.home("alice") / "cold.bin"
    path.write_bytes(data)
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    drop_from_page_cache(path)
    assert sha256_bytes(retrieve(ftp, "cold.bin")) == sha256_bytes(data)
    drop_from_page_cache(path)
    assert sha256_bytes(retr_from(ftp, "cold.bin", 3 * MB + 5)) == sha256_bytes(data[3 * MB + 5 :])
    ftp.quit()


def test_rang_limits_a_binary_retr(ferry):
    data = random_bytes(5 * MB, seed=503)
    (ferry.home("alice") / "ranged.bin").write_bytes(data)
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    start, end = 2 * MB - 10, 4 * MB + 10
    assert ftp.sendcmd(f"RANG {start} {end}").startswith("350")
    chunks = []
    ftp.retrbinary("RETR ranged.bin", chunks.append)
    assert b"".join(chunks) == data[start : end + 1]
    ftp.quit()


def test_ascii_retr_still_converts_line_endings(ferry):
    (ferry.home("alice") / "text.txt").write_bytes(b"one\ntwo\n" * 100_000)
    ftp = ftp_login(ferry)
    lines = []
    ftp.retrlines("RETR text.txt", lines.append)
    assert lines == ["one", "two"] * 100_000
    ftp.voidcmd("TYPE I")
    assert retrieve(ftp, "text.txt") == b"one\ntwo\n" * 100_000
    ftp.quit()


def test_xferlog_counts_the_bytes_of_a_resumed_binary_download(ferry_factory, tmp_path):
    xferlog = tmp_path / "xferlog"
    server = ferry_factory("--xferlog", str(xferlog), "--failed-login-delay-ms", "0")
    home = server.add_user("alice", "secret")
    data = random_bytes(3 * MB + 11, seed=504)
    (home / "r.bin").write_bytes(data)
    ftp = ftp_login(server)
    ftp.voidcmd("TYPE I")
    assert retr_from(ftp, "r.bin", MB) == data[MB:]
    ftp.quit()
    (line,) = xferlog_lines(xferlog, 1)
    check_xferlog_line(line, size=len(data) - MB, path="/r.bin", direction="o")


def test_abor_during_a_binary_retr_then_a_resumed_retr_completes(ferry):
    data = random_bytes(64 * MB, seed=505)
    (ferry.home("alice") / "abort.bin").write_bytes(data)
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR abort.bin")
    received = conn.recv(65536)
    assert len(received) > 0
    assert ftp.abort().startswith("426")
    assert ftp.getresp().startswith("226")
    conn.close()
    got = retr_from(ftp, "abort.bin", len(received))
    assert sha256_bytes(received + got) == sha256_bytes(data)
    ftp.quit()


def test_multi_megabyte_uploads_land_in_order_whole_and_resumed(ferry):
    # Many 1 MiB buffers, each written while the next fills: from a fast client (one large send) and from one that
    # sends in odd-sized pieces, then resumed with REST+STOR and with APPE across buffer boundaries.
    data = random_bytes(24 * MB + 12345, seed=508)
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    store(ftp, "fast.bin", data)
    ftp.storbinary("STOR pieces.bin", io.BytesIO(data), blocksize=777_777)
    cut = 5 * MB + 3
    store(ftp, "rest.bin", data[:cut])
    ftp.storbinary("STOR rest.bin", io.BytesIO(data[cut:]), rest=cut)
    store(ftp, "appe.bin", data[:cut])
    ftp.storbinary("APPE appe.bin", io.BytesIO(data[cut:]))
    for name in ("fast.bin", "pieces.bin", "rest.bin", "appe.bin"):
        assert sha256_bytes((ferry.home("alice") / name).read_bytes()) == sha256_bytes(data), name
    ftp.quit()


def test_abor_while_a_fast_upload_streams_in_keeps_what_arrived_in_order(ferry):
    # The client is still sending when ABOR comes, so the upload is being moved by the kernel (the client is ahead of
    # the file) when it is cut off; what was stored is a prefix of what was sent, and the session goes on.
    block = random_bytes(MB, seed=510)
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR stream.bin")
    stop = threading.Event()

    def send():
        try:
            while not stop.is_set():
                conn.sendall(block)
        except OSError:
            pass  # the server closed the data connection

    sender = threading.Thread(target=send)
    sender.start()
    path = ferry.home("alice") / "stream.bin"
    wait_until(lambda: path.exists() and path.stat().st_size >= 16 * MB, message="16 MiB stored")
    reply = ftp.abort()
    stop.set()
    if reply.startswith("426"):
        assert ftp.getresp().startswith("226")
    sender.join(timeout=10)
    conn.close()
    stored = path.read_bytes()
    assert len(stored) >= 16 * MB
    for at in range(0, len(stored), MB):
        piece = stored[at:at + MB]
        assert piece == block[:len(piece)], f"stored bytes differ at {at}"
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


def test_quota_cuts_off_a_multi_megabyte_upload_at_a_whole_chunk(ferry):
    quota = 2_500_000
    home = ferry.add_user("q", "qpw", "--quota-bytes", str(quota))
    data = random_bytes(6 * MB, seed=506)
    ftp = ftp_login(ferry, "q", "qpw")
    ftp.voidcmd("TYPE I")
    reply = upload_expecting_failure(ftp, "STOR big.bin", data)
    assert reply.startswith("552"), reply
    stored = (home / "big.bin").read_bytes()
    assert len(stored) <= quota
    assert stored == data[: len(stored)]
    # What the cut-off upload did not store is not counted: the rest of the quota can still be used.
    rest = random_bytes(quota - len(stored), seed=507)
    store(ftp, "rest.bin", rest)
    assert (home / "rest.bin").read_bytes() == rest
    ftp.quit()


def test_many_sequential_transfers_reuse_a_few_passive_ports(ferry_factory):
    # Each port is bound again while the data connections of earlier transfers on it are in TIME_WAIT.
    low, high = free_port_range(3)
    server = ferry_factory("--passive-ports", f"{low}-{high}", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    ftp = ftp_login(server)
    ftp.voidcmd("TYPE I")
    for i in range(60):
        payload = f"file {i}\n".encode() * (i + 1)
        store(ftp, f"f{i}.txt", payload)
        assert retrieve(ftp, f"f{i}.txt") == payload
        port = int(ftp.sendcmd("EPSV").split("|")[3])
        assert low <= port <= high, port
    ftp.quit()


def test_default_passive_ports_come_from_the_ephemeral_range(ferry):
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    ftp = ftp_login(ferry)
    for _ in range(20):
        port = int(ftp.sendcmd("EPSV").split("|")[3])
        assert low <= port <= high, port
        # The listener is there for this client.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    ftp.quit()
