"""Python ftplib against ferry: file transfers, resume, representation types and ABOR (RFC 959, RFC 1123,
RFC 3659 section 5)."""
import hashlib
import io
import os
import re
import socket
import threading

import pytest

from helpers_ftplib import (
    TIMEOUT,
    close_quietly,
    code,
    connect,
    file_sha256,
    home,
    read_all,
    retr_bytes,
    send,
    sha256,
    stor_bytes,
    transfer_raw,
)

MB = 1024 * 1024


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


def test_stor_then_retr_round_trips_random_bytes(ferry, ftp):
    data = os.urandom(3 * MB + 12345)
    stor_bytes(ftp, "random.bin", data)
    assert file_sha256(home(ferry) / "random.bin") == sha256(data)
    assert sha256(retr_bytes(ftp, "random.bin")) == sha256(data)


def test_retr_of_a_file_written_on_disk(ferry, ftp):
    data = os.urandom(2 * MB + 1)
    (home(ferry) / "disk.bin").write_bytes(data)
    assert sha256(retr_bytes(ftp, "disk.bin")) == sha256(data)


def test_empty_file_round_trips(ferry, ftp):
    stor_bytes(ftp, "empty.bin", b"")
    assert (home(ferry) / "empty.bin").read_bytes() == b""
    assert retr_bytes(ftp, "empty.bin") == b""


def test_stor_replaces_a_longer_existing_file(ferry, ftp):
    (home(ferry) / "replace.bin").write_bytes(os.urandom(100_000))
    data = os.urandom(1000)
    stor_bytes(ftp, "replace.bin", data)
    assert (home(ferry) / "replace.bin").read_bytes() == data


def test_stor_into_a_subdirectory_by_relative_and_absolute_path(ferry, ftp):
    (home(ferry) / "sub").mkdir()
    stor_bytes(ftp, "sub/rel.bin", b"relative")
    stor_bytes(ftp, "/sub/abs.bin", b"absolute")
    assert (home(ferry) / "sub" / "rel.bin").read_bytes() == b"relative"
    assert (home(ferry) / "sub" / "abs.bin").read_bytes() == b"absolute"


def test_file_names_with_spaces_and_unicode_round_trip(ferry, ftp):
    name = "report final ünïcødé 世界.bin"
    data = os.urandom(10_000)
    stor_bytes(ftp, name, data)
    assert (home(ferry) / name).read_bytes() == data
    assert retr_bytes(ftp, name) == data


def test_stou_stores_under_a_unique_name_announced_in_the_1xx_reply(ferry, ftp):
    (home(ferry) / "existing.txt").write_bytes(b"keep me")
    before = set(os.listdir(home(ferry)))
    data = os.urandom(50_000)
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        preliminary = ftp.sendcmd("STOU")
        # RFC 1123 4.1.2.9: the 125/150 reply carries the name, exactly as "150 FILE: pppp".
        m = re.match(r"^(?:125|150) FILE: (.+)$", preliminary.splitlines()[0])
        assert m, f"STOU preliminary reply must be '150 FILE: name' (RFC 1123 4.1.2.9): {preliminary}"
        conn.sendall(data)
    final = ftp.voidresp()
    assert code(final) in (226, 250), final
    announced = m.group(1).strip()
    stored = home(ferry) / announced.lstrip("/")
    assert stored.read_bytes() == data
    assert (home(ferry) / "existing.txt").read_bytes() == b"keep me"
    assert set(os.listdir(home(ferry))) - before == {stored.name}


def test_stou_twice_creates_two_distinct_files(ferry, ftp):
    names = []
    for payload in (b"first", b"second"):
        ftp.voidcmd("TYPE I")
        host, port = ftp.makepasv()
        with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
            preliminary = ftp.sendcmd("STOU")
            conn.sendall(payload)
        ftp.voidresp()
        m = re.search(r"FILE: (.+)$", preliminary.splitlines()[0])
        assert m, preliminary
        names.append(m.group(1).strip().lstrip("/"))
    assert names[0] != names[1]
    assert (home(ferry) / names[0]).read_bytes() == b"first"
    assert (home(ferry) / names[1]).read_bytes() == b"second"


def test_appe_appends_to_an_existing_file(ferry, ftp):
    first, second = os.urandom(300_000), os.urandom(200_001)
    stor_bytes(ftp, "log.bin", first)
    stor_bytes(ftp, "log.bin", second, command="APPE")
    assert file_sha256(home(ferry) / "log.bin") == sha256(first + second)


def test_appe_creates_a_missing_file(ferry, ftp):
    stor_bytes(ftp, "fresh.bin", b"created by APPE", command="APPE")
    assert (home(ferry) / "fresh.bin").read_bytes() == b"created by APPE"


def test_rest_then_retr_returns_the_tail(ferry, ftp):
    data = os.urandom(1 * MB)
    (home(ferry) / "tail.bin").write_bytes(data)
    ftp.voidcmd("TYPE I")
    reply = send(ftp, "REST 300000")
    assert code(reply) == 350, reply
    received = transfer_raw(ftp, "RETR tail.bin")
    assert sha256(received) == sha256(data[300000:])


def test_ftplib_retrbinary_with_rest_resumes_a_download(ferry, ftp):
    data = os.urandom(700_000)
    (home(ferry) / "resume.bin").write_bytes(data)
    partial = data[:123_457]
    rest = retr_bytes(ftp, "resume.bin", rest=len(partial))
    assert sha256(partial + rest) == sha256(data)


def test_rest_then_stor_resumes_at_offset(ferry, ftp):
    data = os.urandom(1 * MB + 7)
    n = 400_000
    stor_bytes(ftp, "upload.bin", data[:n])  # an interrupted upload left the first n bytes
    assert ftp.size("upload.bin") == n
    stor_bytes(ftp, "upload.bin", data[n:], rest=n)
    assert file_sha256(home(ferry) / "upload.bin") == sha256(data)


def test_rest_marker_applies_to_one_transfer_only(ferry, ftp):
    data = os.urandom(10_000)
    (home(ferry) / "once.bin").write_bytes(data)
    assert retr_bytes(ftp, "once.bin", rest=5000) == data[5000:]
    assert retr_bytes(ftp, "once.bin") == data


def test_a_rest_marker_is_used_up_by_a_transfer_command_that_fails(ferry, ftp):
    """REST 1000, then STOR refused for want of a data connection (425): the marker must not carry over to the
    next STOR, which would cut the file at 1000 bytes and write from there."""
    (home(ferry) / "second.bin").write_bytes(os.urandom(5000))
    ftp.voidcmd("TYPE I")
    assert code(send(ftp, "REST 1000")) == 350
    assert code(send(ftp, "STOR first.bin")) == 425
    data = os.urandom(3000)
    stor_bytes(ftp, "second.bin", data)
    assert (home(ferry) / "second.bin").read_bytes() == data
    assert code(send(ftp, "REST 1000")) == 350
    assert code(send(ftp, "LIST")) == 425
    assert retr_bytes(ftp, "second.bin") == data


def test_rest_beyond_end_of_file_then_retr_is_rejected(ferry, ftp):
    (home(ferry) / "short.bin").write_bytes(b"x" * 1000)
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    with socket.create_connection((host, port), timeout=TIMEOUT):
        assert code(send(ftp, "REST 5000")) == 350
        reply = send(ftp, "RETR short.bin")
        # RFC 3659 5.4: 554 "invalid REST parameter"; other 5xx refusals are acceptable too.
        assert 500 <= code(reply) < 600, reply
    assert code(send(ftp, "NOOP")) == 200
    assert retr_bytes(ftp, "short.bin") == b"x" * 1000


def test_rest_with_a_non_numeric_marker_gets_501(ftp):
    reply = send(ftp, "REST abc")
    assert code(reply) == 501, reply


def test_allo_is_accepted(ftp):
    reply = send(ftp, "ALLO 1000")
    assert code(reply) in (200, 202), reply


def test_type_i_transfers_line_endings_untouched(ferry, ftp):
    data = b"a\r\nb\nc\r\r\n\n\rd"
    stor_bytes(ftp, "bytes.bin", data)
    assert (home(ferry) / "bytes.bin").read_bytes() == data
    assert retr_bytes(ftp, "bytes.bin") == data


def test_type_a_retr_sends_crlf_line_endings(ferry, ftp):
    (home(ferry) / "unix.txt").write_bytes(b"a\nb\n")
    assert code(send(ftp, "TYPE A")) == 200
    assert transfer_raw(ftp, "RETR unix.txt") == b"a\r\nb\r\n"


def test_retrlines_reads_a_text_file_line_by_line(ferry, ftp):
    (home(ferry) / "lines.txt").write_bytes(b"first\nsecond\nthird\n")
    lines = []
    ftp.retrlines("RETR lines.txt", lines.append)
    assert lines == ["first", "second", "third"]


def test_type_a_stor_stores_lf_line_endings(ferry, ftp):
    assert code(send(ftp, "TYPE A")) == 200
    transfer_raw(ftp, "STOR dos.txt", upload=b"x\r\ny\r\n")
    assert (home(ferry) / "dos.txt").read_bytes() == b"x\ny\n"


def test_storlines_uploads_a_text_file(ferry, ftp):
    ftp.storlines("STOR lines.txt", io.BytesIO(b"one\ntwo\n"))
    assert (home(ferry) / "lines.txt").read_bytes() == b"one\ntwo\n"


def test_type_a_with_non_print_format_is_accepted(ftp):
    assert code(send(ftp, "TYPE A N")) == 200
    assert code(send(ftp, "TYPE I")) == 200


def test_type_l_8_is_accepted_as_image(ftp):
    # RFC 959: "L 8" (local byte size 8) is the same data representation as Image.
    assert code(send(ftp, "TYPE L 8")) == 200


def test_unsupported_or_invalid_type_is_rejected(ftp):
    reply = send(ftp, "TYPE E")
    assert code(reply) in (501, 504), reply
    reply = send(ftp, "TYPE Z")
    assert code(reply) in (501, 504), reply


def test_stru_f_and_mode_s_are_accepted(ftp):
    assert code(send(ftp, "STRU F")) == 200
    assert code(send(ftp, "MODE S")) == 200


@pytest.mark.parametrize("command", ["STRU R", "STRU P", "MODE B", "MODE C"])
def test_unsupported_structures_and_modes_get_504(ftp, command):
    reply = send(ftp, command)
    assert code(reply) == 504, f"{command} -> {reply}"


def _make_sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def test_abor_during_retr_replies_426_then_226_and_session_continues(ferry, ftp):
    _make_sparse(home(ferry) / "big.bin", 200 * MB)
    (home(ferry) / "small.bin").write_bytes(b"still works")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    assert len(conn.recv(65536)) > 0
    # ftplib sends "ABOR\r\n" as TCP urgent data and returns the first reply.
    first = ftp.abort()
    assert code(first) == 426, f"RFC 959: ABOR during a transfer first gets 426, got {first}"
    second = ftp.getresp()
    assert code(second) == 226, f"RFC 959: then 226 for the ABOR itself, got {second}"
    conn.close()
    assert code(ftp.sendcmd("NOOP")) == 200
    assert retr_bytes(ftp, "small.bin") == b"still works"


def test_in_band_abor_during_retr_replies_426_then_226(ferry, ftp):
    _make_sparse(home(ferry) / "big.bin", 200 * MB)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    assert len(conn.recv(65536)) > 0
    ftp.putcmd("ABOR")
    first = ftp.getmultiline()
    assert code(first) == 426, first
    second = ftp.getmultiline()
    assert code(second) == 226, second
    conn.close()
    assert code(ftp.sendcmd("NOOP")) == 200


def test_abor_with_telnet_ip_and_synch_during_retr(ferry, ftp):
    # RFC 959 4.1.3: the user sends Telnet IP, then Synch (IAC as urgent data, then DM), then ABOR, as BSD ftp
    # and tnftp do.
    _make_sparse(home(ferry) / "big.bin", 200 * MB)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    assert len(conn.recv(65536)) > 0
    ftp.sock.sendall(b"\xff\xf4\xff", socket.MSG_OOB)
    ftp.sock.sendall(b"\xf2ABOR\r\n")
    first = ftp.getmultiline()
    assert code(first) == 426, first
    second = ftp.getmultiline()
    assert code(second) == 226, second
    conn.close()
    assert code(ftp.sendcmd("NOOP")) == 200


def test_a_fast_upload_that_slows_down_is_written_as_it_arrives(ferry, ftp):
    # After a fast start ferry asks the kernel to wake it only for larger amounts (SO_RCVLOWAT); data that trickles
    # in afterwards must still reach the file within moments, not wait for more data or the end of the upload.
    import time

    fast = os.urandom(16 * MB)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR slowing.bin")
    conn.sendall(fast)
    target = home(ferry) / "slowing.bin"
    sent = len(fast)
    for piece in (b"tail-1", b"tail-2", b"tail-3"):
        conn.sendall(piece)
        sent += len(piece)
        deadline = time.monotonic() + 10
        while (target.stat().st_size if target.exists() else 0) < sent:
            assert time.monotonic() < deadline, f"{target.stat().st_size} of {sent} bytes written"
            time.sleep(0.02)
    conn.close()
    assert code(ftp.voidresp()) == 226
    assert target.read_bytes() == fast + b"tail-1tail-2tail-3"


def test_abor_during_stor_keeps_the_session_usable(ferry, ftp):
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR aborted.bin")
    conn.sendall(os.urandom(256 * 1024))
    ftp.putcmd("ABOR")
    first = ftp.getmultiline()
    # Either the upload is still running (426 then 226) or the server had already finished it (226).
    assert code(first) in (225, 226, 426), first
    if code(first) == 426:
        assert code(ftp.getmultiline()) == 226
    conn.close()
    assert code(ftp.sendcmd("NOOP")) == 200
    stor_bytes(ftp, "after.bin", b"ok")
    assert (home(ferry) / "after.bin").read_bytes() == b"ok"


def test_abor_without_a_transfer_replies_225_or_226(ftp):
    reply = send(ftp, "ABOR")
    assert code(reply) in (225, 226), reply
    assert code(send(ftp, "NOOP")) == 200


def test_noop_and_stat_are_answered_during_a_retr(ferry, ftp):
    size = 64 * MB
    _make_sparse(home(ferry) / "zeros.bin", size)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR zeros.bin")
    # The data connection stays open and unread: the transfer cannot have completed.
    assert code(send(ftp, "NOOP")) == 200
    status = send(ftp, "STAT")
    assert code(status) in (211, 212, 213), f"RFC 959: STAT during a transfer reports its status: {status}"
    received = read_all(conn)
    conn.close()
    assert code(ftp.voidresp()) == 226
    assert len(received) == size
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(bytes(size)).hexdigest()


def test_concurrent_sessions_transfer_independently(ferry):
    payloads = {f"par{i}.bin": os.urandom(1 * MB + i) for i in range(4)}
    errors = []

    def upload_and_check(name, data):
        try:
            client = connect(ferry)
            stor_bytes(client, name, data)
            assert retr_bytes(client, name) == data
            close_quietly(client)
        except Exception as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=upload_and_check, args=item) for item in payloads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for name, data in payloads.items():
        assert file_sha256(home(ferry) / name) == sha256(data)


def test_many_small_transfers_on_one_session(ferry, ftp):
    for i in range(30):
        data = os.urandom(i * 97)
        stor_bytes(ftp, f"small{i}.bin", data)
        assert retr_bytes(ftp, f"small{i}.bin") == data
