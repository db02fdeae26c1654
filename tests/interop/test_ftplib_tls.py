"""Python ftplib (FTP_TLS) against ferry: explicit FTPS with AUTH TLS, PBSZ and PROT (RFC 4217, RFC 2228),
implicit FTPS, --require-tls, and TLS session resumption on data connections."""
import ftplib
import os
import socket
import ssl

import pytest

from helpers_files import wait_until
from helpers_ftplib import (
    TIMEOUT,
    ImplicitFTP_TLS,
    SessionReusingFTP_TLS,
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
    tls_client_context,
)


def tls_connect(server, login=True, cls=ftplib.FTP_TLS):
    """Connects, upgrades with AUTH TLS and (by default) logs in."""
    client = connect(server, login=False, cls=cls, context=tls_client_context())
    reply = client.auth()
    assert code(reply) == 234, reply
    if login:
        client.login("alice", "secret")
    return client


@pytest.fixture
def ftps(ferry):
    client = tls_connect(ferry)
    yield client
    close_quietly(client)


def test_auth_tls_replies_234_and_secures_the_control_connection(ferry):
    client = tls_connect(ferry, login=False)
    assert isinstance(client.sock, ssl.SSLSocket)
    assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert code(client.login("alice", "secret")) == 230
    assert code(client.sendcmd("NOOP")) == 200
    close_quietly(client)


def test_auth_with_an_unsupported_mechanism_gets_504(ferry):
    client = connect(ferry, login=False)
    reply = send(client, "AUTH KERBEROS_V4")
    assert code(reply) in (431, 502, 504, 534), reply  # RFC 2228 section 5: 504 for an unsupported mechanism
    assert code(send(client, "NOOP")) == 200
    close_quietly(client)


def test_pbsz_0_and_prot_p_reply_200(ftps):
    reply = send(ftps, "PBSZ 0")
    assert code(reply) == 200, reply
    reply = send(ftps, "PROT P")
    assert code(reply) == 200, reply


def test_prot_p_transfers_round_trip_with_hash_check(ferry, ftps):
    ftps.prot_p()
    data = os.urandom(2_000_000 + 17)
    stor_bytes(ftps, "secure.bin", data)
    assert file_sha256(home(ferry) / "secure.bin") == sha256(data)
    assert sha256(retr_bytes(ftps, "secure.bin")) == sha256(data)


def test_prot_p_listings(ferry, ftps):
    (home(ferry) / "one.txt").write_bytes(b"1")
    (home(ferry) / "two").mkdir()
    ftps.prot_p()
    entries = dict(ftps.mlsd())
    assert entries["one.txt"]["type"] == "file"
    assert entries["one.txt"]["size"] == "1"
    assert entries["two"]["type"] == "dir"
    assert {"one.txt", "two"} <= set(ftps.nlst())
    lines = []
    ftps.dir(lines.append)
    assert any(line.endswith(" one.txt") for line in lines), lines


def test_prot_p_in_active_mode(ferry, ftps):
    ftps.prot_p()
    ftps.set_pasv(False)
    data = os.urandom(500_000)
    stor_bytes(ftps, "active-tls.bin", data)
    assert file_sha256(home(ferry) / "active-tls.bin") == sha256(data)
    assert retr_bytes(ftps, "active-tls.bin") == data


def test_prot_c_transfers_in_the_clear_after_auth_tls(ferry, ftps):
    ftps.voidcmd("PBSZ 0")
    reply = ftps.prot_c()
    assert code(reply) == 200, reply
    data = os.urandom(300_000)
    stor_bytes(ftps, "clear.bin", data)
    assert (home(ferry) / "clear.bin").read_bytes() == data
    assert retr_bytes(ftps, "clear.bin") == data


def test_prot_without_pbsz_gets_503(ftps):
    reply = send(ftps, "PROT P")
    assert code(reply) == 503, f"RFC 4217 section 9 / RFC 2228: PBSZ must precede PROT: {reply}"


def test_pbsz_without_auth_gets_503(ferry):
    client = connect(ferry)
    reply = send(client, "PBSZ 0")
    assert code(reply) == 503, f"RFC 2228: PBSZ before a security exchange is a bad sequence: {reply}"
    close_quietly(client)


def test_unknown_prot_level_is_rejected(ftps):
    assert code(send(ftps, "PBSZ 0")) == 200
    reply = send(ftps, "PROT X")
    assert code(reply) in (501, 504), reply


def test_prot_p_refuses_a_plaintext_data_connection(ferry, ftps):
    secret = os.urandom(100_000)
    (home(ferry) / "protected.bin").write_bytes(secret)
    ftps.prot_p()
    ftps.voidcmd("TYPE I")
    host, port = ftps.makepasv()
    conn = socket.create_connection((host, port), timeout=TIMEOUT)
    reply = send(ftps, "RETR protected.bin")
    if code(reply) in (125, 150):
        conn.sendall(b"this is not a TLS ClientHello\r\n")
        conn.settimeout(3)
        try:
            received = read_all(conn)
        except (socket.timeout, ConnectionResetError):
            received = b""
        conn.close()
        assert secret[:64] not in received, "file data was sent in the clear despite PROT P"
        final = ftps.getmultiline()
        assert code(final) >= 400, final
    else:
        conn.close()
        assert code(reply) >= 400, reply
    assert code(send(ftps, "NOOP")) == 200


def test_abor_during_a_protected_retr(ferry, ftps):
    with open(home(ferry) / "big.bin", "wb") as f:
        f.truncate(200 * 1024 * 1024)
    ftps.prot_p()
    ftps.voidcmd("TYPE I")
    conn = ftps.transfercmd("RETR big.bin")
    assert len(conn.recv(65536)) > 0
    ftps.putcmd("ABOR")  # in band: urgent data cannot be sent through TLS
    first = ftps.getmultiline()
    assert code(first) == 426, first
    second = ftps.getmultiline()
    assert code(second) == 226, second
    conn.close()
    (home(ferry) / "small.bin").write_bytes(b"after abort")
    assert retr_bytes(ftps, "small.bin") == b"after abort"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_data_connections_resume_the_control_tls_session(ferry, version):
    # FileZilla resumes the control connection's session on every data connection, and some servers insist on it.
    # With TLS 1.3 that means the same ticket is offered again and again, so the server's tickets must be reusable.
    context = tls_client_context()
    context.maximum_version = version
    client = connect(ferry, login=False, cls=SessionReusingFTP_TLS, context=context)
    assert code(client.auth()) == 234
    client.login("alice", "secret")
    client.prot_p()
    assert client.sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    assert client.sock.session is not None
    data = os.urandom(400_000)
    stor_bytes(client, "resumed.bin", data)
    assert retr_bytes(client, "resumed.bin") == data
    assert "resumed.bin" in client.nlst()
    assert client.data_sessions_reused == [True, True, True], (
        "each data connection must resume the control connection's TLS session"
    )
    close_quietly(client)


@pytest.fixture
def implicit(ferry_factory):
    server = ferry_factory("--ftps", "127.0.0.1:0", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    return server


def test_implicit_ftps_transfers_with_hash_check(implicit):
    assert "ftps" in implicit.addresses, implicit.log()
    client = connect(implicit, login=False, address=implicit.addresses["ftps"], cls=ImplicitFTP_TLS,
                     context=tls_client_context())
    assert isinstance(client.sock, ssl.SSLSocket)
    assert code(client.welcome) == 220
    assert code(client.login("alice", "secret")) == 230
    client.prot_p()
    data = os.urandom(1_000_000)
    stor_bytes(client, "implicit.bin", data)
    assert file_sha256(home(implicit) / "implicit.bin") == sha256(data)
    assert sha256(retr_bytes(client, "implicit.bin")) == sha256(data)
    assert dict(client.mlsd())["implicit.bin"]["size"] == str(len(data))
    close_quietly(client)


def test_implicit_ftps_port_does_not_speak_plain_ftp(implicit):
    with socket.create_connection(implicit.addresses["ftps"], timeout=TIMEOUT) as raw:
        raw.settimeout(2)
        try:
            first = raw.recv(100)
        except socket.timeout:
            first = b""
    assert not first.startswith(b"220"), "implicit FTPS listener sent a plaintext greeting"


def test_implicit_ftps_connections_count_against_the_cap_before_their_handshake(ferry_factory):
    """Connections that never start TLS hold a slot: past --max-connections-per-ip the next one is closed at once,
    and a slot freed by closing one lets a real client in."""
    server = ferry_factory("--ftps", "127.0.0.1:0", "--max-connections-per-ip", "2", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    silent = [socket.create_connection(server.addresses["ftps"], timeout=TIMEOUT) for _ in range(2)]
    with socket.create_connection(server.addresses["ftps"], timeout=TIMEOUT) as third:
        third.settimeout(TIMEOUT)
        assert third.recv(100) == b"", "a connection over the cap must be closed"
    for s in silent:
        s.close()

    def logged_in():
        try:
            client = connect(server, login=False, address=server.addresses["ftps"], cls=ImplicitFTP_TLS,
                             context=tls_client_context())
        except (OSError, EOFError):
            return None
        return client

    client = wait_until(logged_in, timeout=10, interval=0.1, message="an implicit FTPS connection")
    assert code(client.login("alice", "secret")) == 230
    close_quietly(client)


def test_plain_listener_still_works_next_to_implicit_ftps(implicit):
    client = connect(implicit)
    assert code(client.sendcmd("NOOP")) == 200
    close_quietly(client)


@pytest.fixture
def require_tls(ferry_factory):
    server = ferry_factory("--require-tls", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    return server


def test_require_tls_refuses_user_before_auth_tls(require_tls):
    client = connect(require_tls, login=False)
    reply = send(client, "USER alice")
    assert code(reply) in (521, 530, 534, 550), reply
    close_quietly(client)


def test_require_tls_allows_login_after_auth_tls(require_tls):
    client = tls_connect(require_tls)
    client.prot_p()
    data = os.urandom(200_000)
    stor_bytes(client, "required.bin", data)
    assert (home(require_tls) / "required.bin").read_bytes() == data
    assert retr_bytes(client, "required.bin") == data
    close_quietly(client)
