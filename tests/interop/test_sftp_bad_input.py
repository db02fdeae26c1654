"""Malformed and hostile SFTP traffic, sent raw over an SSH channel: the server answers with a status or closes the
SFTP session cleanly, never crashes, never writes outside the home, and keeps serving other clients."""
import struct

import paramiko
import pytest

from helpers_sftp import sftp_client

SSH_FXP_INIT, SSH_FXP_VERSION, SSH_FXP_OPEN, SSH_FXP_READ, SSH_FXP_WRITE = 1, 2, 3, 5, 6
SSH_FXP_OPENDIR, SSH_FXP_READDIR, SSH_FXP_EXTENDED = 11, 12, 200
SSH_FXP_STATUS, SSH_FXP_HANDLE, SSH_FXP_DATA, SSH_FXP_NAME = 101, 102, 103, 104
FX_OK, FX_EOF, FX_FAILURE, FX_BAD_MESSAGE, FX_OP_UNSUPPORTED = 0, 1, 4, 5, 8


def string(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


class RawSftp:
    """An SFTP channel on which the test writes raw packets."""

    def __init__(self, server, init=True):
        host, port = server.addresses["sftp"]
        self.transport = paramiko.Transport((host, port))
        self.transport.connect(username="alice", password="secret")
        self.chan = self.transport.open_session()
        self.chan.settimeout(10)
        self.chan.invoke_subsystem("sftp")
        if init:
            self.send(bytes([SSH_FXP_INIT]) + struct.pack(">I", 3))
            kind, body = self.recv()
            assert kind == SSH_FXP_VERSION and struct.unpack(">I", body[:4])[0] == 3

    def send_raw(self, data):
        self.chan.sendall(data)

    def send(self, payload):
        self.send_raw(struct.pack(">I", len(payload)) + payload)

    def request(self, kind, request_id, body=b""):
        self.send(bytes([kind]) + struct.pack(">I", request_id) + body)

    def _read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.chan.recv(n - len(out))
            if not chunk:
                raise EOFError("channel closed")
            out += chunk
        return out

    def recv(self):
        (length,) = struct.unpack(">I", self._read(4))
        data = self._read(length)
        return data[0], data[1:]

    def reply(self, request_id):
        kind, body = self.recv()
        assert struct.unpack(">I", body[:4])[0] == request_id, (kind, body)
        return kind, body[4:]

    def status(self, request_id):
        kind, body = self.reply(request_id)
        assert kind == SSH_FXP_STATUS, (kind, body)
        return struct.unpack(">I", body[:4])[0]

    def closed(self):
        try:
            return self.chan.recv(1) == b""
        except OSError:
            return True

    def close(self):
        self.transport.close()


@pytest.fixture
def raw(ferry):
    conn = RawSftp(ferry)
    yield conn
    conn.close()


def open_file(raw, request_id, path, flags):
    raw.request(SSH_FXP_OPEN, request_id, string(path) + struct.pack(">II", flags, 0))
    kind, body = raw.reply(request_id)
    assert kind == SSH_FXP_HANDLE, (kind, body)
    return body[4:4 + struct.unpack(">I", body[:4])[0]]


def assert_server_still_serves(ferry):
    with sftp_client(ferry) as sftp:
        assert sftp.normalize(".") == "/"


def test_unknown_and_truncated_requests_get_a_status(ferry, raw):
    raw.request(99, 1)
    assert raw.status(1) == FX_OP_UNSUPPORTED
    raw.send(bytes([SSH_FXP_OPEN]) + struct.pack(">I", 2) + struct.pack(">I", 1000) + b"short")
    assert raw.status(2) == FX_BAD_MESSAGE
    raw.request(SSH_FXP_EXTENDED, 3, string("no-such@example.com"))
    assert raw.status(3) == FX_OP_UNSUPPORTED
    raw.request(SSH_FXP_EXTENDED, 4, string("posix-rename@openssh.com") + string("only-one-argument"))
    assert raw.status(4) == FX_BAD_MESSAGE
    assert_server_still_serves(ferry)


def test_handles_that_do_not_exist(ferry, raw):
    raw.request(SSH_FXP_READ, 1, string("424242") + struct.pack(">QI", 0, 100))
    assert raw.status(1) == FX_FAILURE
    raw.request(SSH_FXP_WRITE, 2, string("") + struct.pack(">Q", 0) + string(b"data"))
    assert raw.status(2) == FX_FAILURE
    raw.request(SSH_FXP_READDIR, 3, string("x" * 300))
    assert raw.status(3) == FX_FAILURE


def test_huge_read_lengths_are_capped(ferry, raw):
    (ferry.home("alice") / "big").write_bytes(b"z" * 600_000)
    handle = open_file(raw, 1, "big", 1)
    raw.request(SSH_FXP_READ, 2, string(handle) + struct.pack(">QI", 0, 0xFFFFFFFF))
    kind, body = raw.reply(2)
    assert kind == SSH_FXP_DATA
    (length,) = struct.unpack(">I", body[:4])
    assert 0 < length <= 255 * 1024 and body[4:] == b"z" * length
    raw.request(SSH_FXP_READ, 3, string(handle) + struct.pack(">QI", 2**63, 10))
    assert raw.status(3) == FX_EOF


def test_reading_a_directory_handle_as_a_file_and_back(ferry, raw):
    (ferry.home("alice") / "f").write_bytes(b"f")
    raw.request(SSH_FXP_OPENDIR, 1, string("/"))
    kind, body = raw.reply(1)
    assert kind == SSH_FXP_HANDLE
    dir_handle = body[4:4 + struct.unpack(">I", body[:4])[0]]
    raw.request(SSH_FXP_READ, 2, string(dir_handle) + struct.pack(">QI", 0, 10))
    assert raw.status(2) == FX_FAILURE
    file_handle = open_file(raw, 3, "f", 1)
    raw.request(SSH_FXP_READDIR, 4, string(file_handle))
    assert raw.status(4) == FX_FAILURE


def test_writes_far_past_the_end_are_bounded_by_the_quota(ferry):
    home = ferry.add_user("q", "pw", "--quota-bytes", "100000")
    conn = RawSftp.__new__(RawSftp)
    host, port = ferry.addresses["sftp"]
    conn.transport = paramiko.Transport((host, port))
    conn.transport.connect(username="q", password="pw")
    conn.chan = conn.transport.open_session()
    conn.chan.settimeout(10)
    conn.chan.invoke_subsystem("sftp")
    try:
        conn.send(bytes([SSH_FXP_INIT]) + struct.pack(">I", 3))
        conn.recv()
        handle = open_file(conn, 1, "sparse", 0x02 | 0x08)
        conn.request(SSH_FXP_WRITE, 2, string(handle) + struct.pack(">Q", 2**40) + string(b"x"))
        assert conn.status(2) == FX_FAILURE
        conn.request(4, 3, string(handle))  # CLOSE: the failed write is reported again
        assert conn.status(3) == FX_FAILURE
    finally:
        conn.close()
    assert (home / "sparse").stat().st_size == 0


def test_names_with_line_breaks_cannot_be_made(ferry):
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        for name in ("evil\n226 Fake", "evil\r226 Fake"):
            with pytest.raises(IOError):
                sftp.open(name, "w").close()
            with pytest.raises(IOError):
                sftp.mkdir(name + "-dir")
        sftp.open("plain", "w").close()
        with pytest.raises(IOError):
            sftp.rename("plain", "plain\nx")
    assert sorted(p.name for p in home.iterdir()) == ["plain"]


def test_oversized_packet_ends_the_session_cleanly(ferry, raw):
    raw.send_raw(struct.pack(">I", 0x7FFFFFFF) + b"\x03")
    assert raw.closed()
    assert_server_still_serves(ferry)


def test_first_packet_must_be_init(ferry):
    conn = RawSftp(ferry, init=False)
    try:
        conn.request(SSH_FXP_OPENDIR, 1, string("/"))
        assert conn.closed()
    finally:
        conn.close()
    assert_server_still_serves(ferry)


def test_disconnect_with_requests_in_flight(ferry):
    """Dozens of pipelined writes, then the connection drops: the server winds the upload up without hanging."""
    conn = RawSftp(ferry)
    handle = open_file(conn, 1, "cut.bin", 0x02 | 0x08 | 0x10)
    for i in range(60):
        conn.request(SSH_FXP_WRITE, 10 + i, string(handle) + struct.pack(">Q", i * 32768) + string(b"y" * 32768))
    conn.close()
    ferry.wait_for_log(r"upload failed.*cut\.bin")
    size = (ferry.home("alice") / "cut.bin").stat().st_size
    assert size % 32768 == 0 and size <= 60 * 32768
    assert_server_still_serves(ferry)


def test_open_directories_are_limited(ferry, raw):
    (ferry.home("alice") / "d").mkdir(parents=True)
    for i in range(64):  # SftpLimits::max_dir_handles
        raw.request(SSH_FXP_OPENDIR, i + 1, string("d"))
        kind, _ = raw.reply(i + 1)
        assert kind == SSH_FXP_HANDLE
    raw.request(SSH_FXP_OPENDIR, 100, string("d"))
    assert raw.status(100) == FX_FAILURE
    # Files can still be opened.
    (ferry.home("alice") / "f").write_bytes(b"f")
    open_file(raw, 101, "f", 1)


def test_a_connection_that_stops_taking_data_is_cut_off_after_the_idle_timeout(ferry_factory):
    """scp -f with a window the client never opens, and more input sent meanwhile: the scp task waits to write and
    takes no input, russh's connection task waits to hand the input over, and its own idle timeout with it. The
    client goes away. Before the outside watch, the connection (here: alice's only session) stayed for ever."""
    from helpers_files import wait_until

    server = ferry_factory("--idle-timeout", "3", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret", "--max-sessions", "1")
    (server.home("alice") / "big.bin").write_bytes(b"b" * (4 << 20))
    host, port = server.addresses["sftp"]
    transport = paramiko.Transport((host, port))
    transport.connect(username="alice", password="secret")
    chan = transport.open_session(window_size=32768, max_packet_size=32768)
    chan.settimeout(10)
    chan.exec_command("scp -f big.bin")
    chan.sendall(b"\0")
    assert chan.recv(100).startswith(b"C")
    chan.sendall(b"\0")
    for _ in range(150):
        chan.send(b"\0")
    transport.close()

    def logs_in():
        try:
            with sftp_client(server) as sftp:
                return sftp.normalize(".") == "/"
        except (paramiko.SSHException, OSError):
            return False

    wait_until(logs_in, timeout=30, interval=0.5, message="alice's session slot to be freed")
    server.wait_for_log(r"no traffic")


def test_past_the_waiting_bound_the_channel_is_closed(ferry):
    """64 reads of 255 KiB held by a 32 KiB window, then more requests than a session may hold waiting: the session
    ends and its channel closes, although replies were still due (the writer used to be waited for, for ever)."""
    from helpers_files import wait_until

    (ferry.home("alice")).mkdir(parents=True, exist_ok=True)
    (ferry.home("alice") / "big.bin").write_bytes(b"b" * (16 << 20))
    host, port = ferry.addresses["sftp"]
    transport = paramiko.Transport((host, port))
    transport.connect(username="alice", password="secret")
    try:
        chan = transport.open_session(window_size=32768, max_packet_size=32768)
        chan.settimeout(20)
        chan.invoke_subsystem("sftp")
        conn = RawSftp.__new__(RawSftp)
        conn.transport, conn.chan = transport, chan
        conn.send(bytes([SSH_FXP_INIT]) + struct.pack(">I", 3))
        assert conn.recv()[0] == SSH_FXP_VERSION
        handle = open_file(conn, 1, "big.bin", 1)
        for i in range(64):
            conn.request(SSH_FXP_READ, 100 + i, string(handle) + struct.pack(">QI", i * 261120, 261120))
        # 4 KiB requests (unknown extended ones), 17,000 of them: more than the 64 MiB a session may hold waiting.
        filler = bytes([SSH_FXP_EXTENDED]) + struct.pack(">I", 7) + string(b"x" * (4096 - 13))
        blob = (struct.pack(">I", len(filler)) + filler) * 1000
        for _ in range(17):
            try:
                chan.sendall(blob)
            except (OSError, paramiko.SSHException):
                break
        # Nothing is read here, so the window stays shut on the replies still due.
        wait_until(lambda: chan.closed or chan.eof_received, timeout=20, message="the channel to close")
    finally:
        transport.close()
    assert_server_still_serves(ferry)


def test_open_handles_are_limited_per_account(ferry):
    """256 handles per session, and 1,024 for one account over all its sessions: one account's connections could
    otherwise take every file descriptor of the server (2,562 per connection with 10 channels each). Another
    account still opens files, and closed handles are given back."""
    from helpers_files import wait_until
    from helpers_sftp import sftp_client

    ferry.add_user("bob", "bobpw")
    (ferry.home("alice")).mkdir(parents=True, exist_ok=True)
    (ferry.home("alice") / "f").write_bytes(b"f")
    (ferry.home("bob") / "g").write_bytes(b"g")
    sessions = [sftp_client(ferry) for _ in range(5)]
    try:
        held = []
        for session in sessions[:4]:
            for _ in range(256):
                held.append(session.sftp.open("f", "rb"))
            with pytest.raises(IOError, match="too many open handles"):
                session.sftp.open("f", "rb")
        with pytest.raises(IOError, match="for this account"):
            sessions[4].sftp.open("f", "rb")
        with sftp_client(ferry, "bob", "bobpw") as bob:
            assert bob.open("g", "rb").read() == b"g"
        for f in held[:10]:
            f.close()

        def opens():
            # A closed handle's share comes back when its task has wound up, just after the reply to CLOSE.
            try:
                return sessions[4].sftp.open("f", "rb").read() == b"f"
            except IOError:
                return False

        wait_until(opens, timeout=10, message="a closed handle's share to come back")
    finally:
        for session in sessions:
            session.close()
