"""Python ftplib against ferry: passive and active data connections, IPv4 and IPv6 (RFC 959, RFC 2428),
and refusal of FTP bounce (RFC 2577)."""
import ftplib
import os
import random
import socket

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
)


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


def _ipv6_available():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback on this machine")


def test_pasv_reply_gives_a_reachable_ipv4_address_and_port(ferry, ftp):
    data = os.urandom(100_000)
    (home(ferry) / "pasv.bin").write_bytes(data)
    ftp.voidcmd("TYPE I")
    reply = send(ftp, "PASV")
    assert code(reply) == 227, reply
    host, port = ftplib.parse227(reply)
    assert host == "127.0.0.1", f"PASV must advertise the control connection's address: {reply}"
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        assert code(send(ftp, "RETR pasv.bin")) in (125, 150)
        received = read_all(conn)
    assert code(ftp.voidresp()) == 226
    assert received == data


def test_epsv_reply_gives_a_reachable_port(ferry, ftp):
    data = os.urandom(100_000)
    (home(ferry) / "epsv.bin").write_bytes(data)
    ftp.voidcmd("TYPE I")
    reply = send(ftp, "EPSV")
    assert code(reply) == 229, reply
    host, port = ftplib.parse229(reply, ftp.sock.getpeername())
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        assert code(send(ftp, "RETR epsv.bin")) in (125, 150)
        received = read_all(conn)
    assert code(ftp.voidresp()) == 226
    assert received == data


def test_epsv_with_protocol_1_on_ipv4(ftp):
    reply = send(ftp, "EPSV 1")
    assert code(reply) == 229, reply


def test_epsv_with_an_unknown_protocol_gets_522(ftp):
    reply = send(ftp, "EPSV 7")
    assert code(reply) == 522, f"RFC 2428: unsupported network protocol gets 522: {reply}"


def test_epsv_all_then_other_data_commands_are_refused(ferry, ftp):
    (home(ferry) / "after-all.txt").write_bytes(b"epsv only")
    reply = send(ftp, "EPSV ALL")
    assert code(reply) // 100 == 2, reply
    # RFC 2428 section 4: after EPSV ALL, every data connection setup command other than EPSV is refused.
    assert 500 <= code(send(ftp, "PASV")) < 600
    assert 500 <= code(send(ftp, "PORT 127,0,0,1,200,10")) < 600
    assert 500 <= code(send(ftp, "EPRT |1|127.0.0.1|51210|")) < 600
    ftp.af = socket.AF_INET6  # makes ftplib use EPSV for its own transfers
    assert retr_bytes(ftp, "after-all.txt") == b"epsv only"


def test_passive_transfers_with_ftplib(ferry, ftp):
    data = os.urandom(1_500_000)
    stor_bytes(ftp, "p.bin", data)
    assert retr_bytes(ftp, "p.bin") == data
    assert file_sha256(home(ferry) / "p.bin") == sha256(data)


def test_active_mode_port_transfers_both_ways(ferry, ftp):
    ftp.set_pasv(False)
    data = os.urandom(1_500_000)
    stor_bytes(ftp, "active.bin", data)
    assert file_sha256(home(ferry) / "active.bin") == sha256(data)
    assert sha256(retr_bytes(ftp, "active.bin")) == sha256(data)
    lines = []
    ftp.retrlines("NLST", lines.append)
    assert "active.bin" in lines


def test_port_command_reply_is_200(ftp):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        reply = send(ftp, f"PORT 127,0,0,1,{port >> 8},{port & 0xFF}")
        assert code(reply) == 200, reply


def test_eprt_on_ipv4_transfers(ferry, ftp):
    data = os.urandom(300_000)
    (home(ferry) / "eprt.bin").write_bytes(data)
    ftp.voidcmd("TYPE I")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        reply = send(ftp, f"EPRT |1|127.0.0.1|{port}|")
        assert code(reply) == 200, reply
        assert code(send(ftp, "RETR eprt.bin")) in (125, 150)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            received = read_all(conn)
    assert code(ftp.voidresp()) == 226
    assert received == data


def test_eprt_with_an_unknown_protocol_gets_522(ftp):
    reply = send(ftp, "EPRT |3|127.0.0.1|5282|")
    assert code(reply) == 522, f"RFC 2428: unsupported network protocol gets 522: {reply}"


@pytest.mark.parametrize("command", ["PORT 1,2,3", "PORT 127,0,0,1,300,1", "PORT a,b,c,d,e,f",
                                     "EPRT |1|127.0.0.1|", "EPRT |1|not-an-ip|2000|", "EPRT garbage"])
def test_malformed_port_and_eprt_get_501(ftp, command):
    reply = send(ftp, command)
    assert code(reply) in (500, 501), f"{command} -> {reply}"


def _assert_no_connection(listener):
    listener.settimeout(1.0)
    try:
        conn, peer = listener.accept()
    except socket.timeout:
        return
    conn.close()
    raise AssertionError(f"the server connected to a third-party address (FTP bounce): {peer}")


def _assert_retr_fails_without_data_connection(ftp):
    reply = send(ftp, "RETR secret.txt")
    if code(reply) in (125, 150):
        reply = ftp.getmultiline()  # "150 then 425" is also a valid way to fail (RFC 959 5.4)
    assert code(reply) >= 400, reply


def test_port_to_another_address_is_refused(ferry, ftp):
    (home(ferry) / "secret.txt").write_bytes(b"not for third parties")
    with socket.create_server(("127.0.0.2", 0)) as listener:
        port = listener.getsockname()[1]
        reply = send(ftp, f"PORT 127,0,0,2,{port >> 8},{port & 0xFF}")
        # RFC 2577: a PORT naming an address other than the client's is refused.
        assert 500 <= code(reply) < 600, f"bounce PORT must be refused: {reply}"
        _assert_retr_fails_without_data_connection(ftp)
        _assert_no_connection(listener)
    assert code(send(ftp, "NOOP")) == 200


def test_eprt_to_another_address_is_refused(ferry, ftp):
    (home(ferry) / "secret.txt").write_bytes(b"not for third parties")
    with socket.create_server(("127.0.0.2", 0)) as listener:
        port = listener.getsockname()[1]
        reply = send(ftp, f"EPRT |1|127.0.0.2|{port}|")
        assert 500 <= code(reply) < 600, f"bounce EPRT must be refused: {reply}"
        _assert_retr_fails_without_data_connection(ftp)
        _assert_no_connection(listener)
    assert code(send(ftp, "NOOP")) == 200


def test_passive_ports_stay_in_the_configured_range(ferry_factory):
    low = random.randrange(40000, 59000)
    high = low + 30
    server = ferry_factory("--passive-ports", f"{low}-{high}", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    client = connect(server)
    for i in range(5):
        assert low <= ftplib.parse227(send(client, "PASV"))[1] <= high
        assert low <= ftplib.parse229(send(client, "EPSV"), client.sock.getpeername())[1] <= high
    data = os.urandom(50_000)
    stor_bytes(client, "ranged.bin", data)
    assert retr_bytes(client, "ranged.bin") == data
    close_quietly(client)


def test_passive_host_is_advertised_in_pasv(ferry_factory):
    server = ferry_factory("--passive-host", "127.0.0.3", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    client = connect(server)
    host, _ = ftplib.parse227(send(client, "PASV"))
    assert host == "127.0.0.3"
    close_quietly(client)


@pytest.fixture
def ferry6(ferry_factory):
    if not _ipv6_available():
        pytest.skip("no IPv6 loopback on this machine")
    server = ferry_factory("--ftp", "[::1]:0", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    return server


@needs_ipv6
def test_ipv6_server_listens_on_loopback(ferry6):
    assert ferry6.host == "::1"
    client = connect(ferry6)
    assert client.af == socket.AF_INET6
    assert code(client.sendcmd("NOOP")) == 200
    close_quietly(client)


@needs_ipv6
def test_ipv6_epsv_transfers_both_ways(ferry6):
    client = connect(ferry6)  # ftplib uses EPSV on an IPv6 control connection
    reply = send(client, "EPSV")
    assert code(reply) == 229, reply
    data = os.urandom(1_200_000)
    stor_bytes(client, "v6.bin", data)
    assert file_sha256(home(ferry6) / "v6.bin") == sha256(data)
    assert sha256(retr_bytes(client, "v6.bin")) == sha256(data)
    close_quietly(client)


@needs_ipv6
def test_ipv6_eprt_transfers_both_ways(ferry6):
    client = connect(ferry6)
    client.set_pasv(False)  # ftplib sends EPRT |2|::1|port| on an IPv6 control connection
    data = os.urandom(1_200_000)
    stor_bytes(client, "v6-active.bin", data)
    assert file_sha256(home(ferry6) / "v6-active.bin") == sha256(data)
    assert sha256(retr_bytes(client, "v6-active.bin")) == sha256(data)
    close_quietly(client)


@needs_ipv6
def test_ipv6_explicit_eprt_reply_is_200(ferry6):
    client = connect(ferry6)
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as listener:
        port = listener.getsockname()[1]
        reply = send(client, f"EPRT |2|::1|{port}|")
        assert code(reply) == 200, reply
    close_quietly(client)


@needs_ipv6
def test_ipv6_listing_over_epsv(ferry6):
    (home(ferry6) / "listed.txt").write_bytes(b"x")
    client = connect(ferry6)
    assert "listed.txt" in client.nlst()
    assert "listed.txt" in {name for name, _ in client.mlsd()}
    close_quietly(client)
