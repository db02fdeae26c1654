"""FTP bounce protection (RFC 2577): active-mode targets and passive data connections must belong to the client."""
import io
import socket
import time

import pytest

from helpers_files import put_file
from helpers_ftp import RawFtp, ftp_login, parse_epsv, parse_pasv

CONTENT = b"not for third parties\n" * 1000


@pytest.fixture
def victim():
    """A listener on 127.0.0.2 standing for a third-party host the attacker wants the server to connect to."""
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.listen(5)
    s.settimeout(0.5)
    yield s
    s.close()


def assert_no_connection(listener):
    try:
        conn, addr = listener.accept()
    except (socket.timeout, TimeoutError):
        return
    conn.close()
    raise AssertionError(f"the server connected to the third-party address {addr}")


def logged_in(ferry):
    put_file(ferry.home("alice") / "file.bin", CONTENT)
    c = RawFtp(ferry.host, ferry.port)
    assert c.login().startswith("230")
    assert c.cmd("TYPE I").startswith("200")
    return c


def test_port_to_another_address_is_refused(ferry, victim):
    c = logged_in(ferry)
    port = victim.getsockname()[1]
    reply = c.cmd(f"PORT 127,0,0,2,{port >> 8},{port & 255}")
    assert reply.startswith(("500", "501", "504")), reply
    # Even if the client goes on as if it had been accepted, the server never connects to the target.
    r = c.cmd("RETR file.bin")
    assert not r.startswith(("150", "125", "226")), r
    assert_no_connection(victim)
    ferry.wait_for_log(r"(?i)bounce")
    assert c.cmd("NOOP").startswith("200")
    c.close()


def test_eprt_to_another_address_is_refused(ferry, victim):
    c = logged_in(ferry)
    port = victim.getsockname()[1]
    reply = c.cmd(f"EPRT |1|127.0.0.2|{port}|")
    assert reply.startswith(("500", "501", "504")), reply
    r = c.cmd("LIST")
    assert not r.startswith(("150", "125", "226")), r
    assert_no_connection(victim)
    ferry.wait_for_log(r"(?i)bounce")
    c.close()


@pytest.mark.parametrize(
    "command",
    [
        "PORT 10,0,0,1,0,21",
        "PORT 192,168,1,1,0,25",
        "EPRT |1|10.0.0.1|25|",
        "EPRT |2|::1|2121|",
    ],
)
def test_port_and_eprt_to_foreign_hosts_are_refused(ferry, command):
    c = logged_in(ferry)
    reply = c.cmd(command)
    # 522 is EPRT's "network protocol not supported" (RFC 2428) for an IPv6 target on an IPv4 session.
    assert reply.startswith(("500", "501", "504", "522")), reply
    c.close()


def test_malformed_port_arguments_are_refused(ferry):
    c = logged_in(ferry)
    for cmd in ("PORT 127,0,0,1,300,1", "PORT 127,0,0,1", "PORT a,b,c,d,e,f", "PORT 127,0,0,1,-1,5",
                "EPRT |1|127.0.0.1|99999|", "EPRT |9|127.0.0.1|2000|", "EPRT garbage"):
        reply = c.cmd(cmd)
        assert reply.startswith(("500", "501", "504", "522")), (cmd, reply)
    assert c.cmd("NOOP").startswith("200")
    c.close()


def test_port_to_the_clients_own_address_works(ferry):
    """Active mode itself is fine when the target is the client (ftplib in active mode sends PORT)."""
    put_file(ferry.home("alice") / "file.bin", CONTENT)
    ftp = ftp_login(ferry)
    ftp.set_pasv(False)
    buf = io.BytesIO()
    ftp.retrbinary("RETR file.bin", buf.write)
    assert buf.getvalue() == CONTENT
    ftp.storbinary("STOR active-up.bin", io.BytesIO(CONTENT))
    ftp.quit()
    assert (ferry.home("alice") / "active-up.bin").read_bytes() == CONTENT


def test_eprt_to_the_clients_own_address_works(ferry):
    c = logged_in(ferry)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    assert c.cmd(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
    c.send("RETR file.bin")
    conn, addr = listener.accept()
    assert addr[0] == "127.0.0.1"
    data = bytearray()
    conn.settimeout(10)
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    assert c.reply().startswith(("150", "125"))
    assert c.reply().startswith("226")
    assert bytes(data) == CONTENT
    listener.close()
    c.close()


def recv_all(sock, timeout=10):
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, socket.timeout, TimeoutError):
        pass
    return bytes(data)


@pytest.mark.parametrize("passive", ["PASV", "EPSV"])
def test_passive_data_connection_from_another_address_is_refused(ferry_factory, passive):
    server = ferry_factory("--data-timeout", "2", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    put_file(server.home("alice") / "file.bin", CONTENT)
    c = RawFtp(server.host, server.port)  # control connection from 127.0.0.1
    assert c.login().startswith("230")
    c.cmd("TYPE I")
    reply = c.cmd(passive)
    if passive == "PASV":
        host, port = parse_pasv(reply)
    else:
        host, port = server.host, parse_epsv(reply)
    # A third party (127.0.0.2) races to the passive port.
    intruder = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
    c.send("RETR file.bin")
    stolen = recv_all(intruder, timeout=4)
    intruder.close()
    assert stolen == b"", f"the server sent {len(stolen)} bytes to a foreign data connection"
    # The transfer must not report success (it fails with 425, or 150 followed by 425/426).
    replies = []
    c.sock.settimeout(10)
    while True:
        r = c.reply()
        replies.append(r)
        if not r or not r.startswith(("150", "125")):
            break
    assert replies[-1].startswith(("425", "426", "450", "451", "550")), replies
    c.close()


def test_passive_data_connection_from_another_address_does_not_block_the_client(ferry):
    """After a foreign connection is rejected, the real client can still connect and get the file."""
    put_file(ferry.home("alice") / "file.bin", CONTENT)
    c = RawFtp(ferry.host, ferry.port)
    assert c.login().startswith("230")
    c.cmd("TYPE I")
    host, port = parse_pasv(c.cmd("PASV"))
    intruder = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
    time.sleep(0.2)
    try:
        legit = socket.create_connection((host, port), timeout=5)
    except OSError:
        # The server closed the passive listener after the intrusion: it must then fail the transfer.
        c.send("RETR file.bin")
        r = c.reply()
        if r.startswith(("150", "125")):
            r = c.reply()
        assert r.startswith(("425", "426")), r
        intruder.close()
        c.close()
        return
    c.send("RETR file.bin")
    r1 = c.reply()
    data = recv_all(legit)
    stolen = recv_all(intruder, timeout=1)
    if r1.startswith(("150", "125")):
        final = c.reply()
    else:
        final = r1
    assert stolen == b""
    if final.startswith("226"):
        assert data == CONTENT
    else:
        assert final.startswith(("425", "426")), final
    legit.close()
    intruder.close()
    c.close()
