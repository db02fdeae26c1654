"""TLS policy (RFC 4217): --require-tls refuses clear-text logins and clear data; explicit FTPS works."""
import ftplib
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess

import pytest

from helpers_clients import require, run_client
from helpers_files import put_file, random_bytes, sha256_bytes, sha256_file, wait_until, write_random
from helpers_ftp import TIMEOUT, RawFtp, expect_error, ftps_login, parse_pasv, retrieve, store


@pytest.fixture
def tls_server(ferry_factory):
    server = ferry_factory("--require-tls", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    return server


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_require_tls_refuses_user_before_auth_tls(tls_server):
    c = RawFtp(tls_server.host, tls_server.port)
    reply = c.cmd("USER alice")
    assert reply.startswith(("530", "534")), reply
    # Even a client that sends the password anyway is not logged in.
    reply = c.cmd("PASS secret")
    assert not reply.startswith("230"), reply
    assert not c.cmd("PWD").startswith("257")
    c.close()


def test_require_tls_feat_advertises_auth_tls(tls_server):
    c = RawFtp(tls_server.host, tls_server.port)
    reply = c.cmd("FEAT")
    assert reply.startswith("211"), reply
    assert "AUTH TLS" in reply, reply
    assert "PBSZ" in reply and "PROT" in reply, reply
    c.close()


def test_require_tls_refuses_prot_c(tls_server):
    ftp = ftps_login(tls_server, protect_data=False)
    expect_error("5", ftp.prot_c)  # 534 or 536 per RFC 4217
    ftp.quit()


def test_require_tls_refuses_clear_data_connection_without_prot_p(tls_server):
    """The default data protection is Clear; with TLS required, a transfer before PROT P must be refused."""
    put_file(tls_server.home("alice") / "f.bin", b"secret data\n")
    ftp = ftps_login(tls_server, protect_data=False)
    ftp.voidcmd("PBSZ 0")
    # 521 "data connection cannot be opened with this PROT setting" (RFC 4217), or another 5xx.
    expect_error("5", retrieve, ftp, "f.bin")
    ftp.quit()


def test_require_tls_works_with_auth_tls_and_prot_p(tls_server):
    data = random_bytes(1_500_000, seed=101)
    ftp = ftps_login(tls_server)  # AUTH TLS, USER/PASS, PBSZ 0, PROT P
    store(ftp, "tls.bin", data)
    assert retrieve(ftp, "tls.bin") == data
    names = ftp.nlst()
    assert any(n.rsplit("/", 1)[-1] == "tls.bin" for n in names), names
    lines = []
    ftp.retrlines("LIST", lines.append)
    assert any(l.endswith(" tls.bin") for l in lines), lines
    ftp.quit()
    assert sha256_file(tls_server.home("alice") / "tls.bin") == sha256_bytes(data)


def test_require_tls_curl_ssl_reqd(tls_server, tmp_path):
    require("curl")
    digest = write_random(tmp_path / "c.bin", 700_000, seed=102)
    base = f"ftp://alice:secret@{tls_server.host}:{tls_server.port}/"
    run_client(["curl", "-q", "-sS", "--noproxy", "*", "--ssl-reqd", "-k", "-T", str(tmp_path / "c.bin"),
                base + "c.bin"], tmp_path)
    assert sha256_file(tls_server.home("alice") / "c.bin") == digest
    run_client(["curl", "-q", "-sS", "--noproxy", "*", "--ssl-reqd", "-k", "-o", str(tmp_path / "back.bin"),
                base + "c.bin"], tmp_path)
    assert sha256_file(tmp_path / "back.bin") == digest
    # And a plain curl (no TLS) cannot log in.
    p = run_client(["curl", "-q", "-sS", "--noproxy", "*", "-o", str(tmp_path / "plain.bin"), base + "c.bin"],
                   tmp_path, check=False)
    assert p.returncode != 0
    assert not (tmp_path / "plain.bin").exists()


def test_data_connection_tls_works_without_require_tls(ferry):
    """Without --require-tls, both clear and protected sessions work on the same listener."""
    data = random_bytes(300_000, seed=103)
    ftp = ftps_login(ferry)
    store(ftp, "p.bin", data)
    assert retrieve(ftp, "p.bin") == data
    ftp.prot_c()  # back to clear data on a TLS control connection is allowed here
    assert retrieve(ftp, "p.bin") == data
    ftp.quit()
    plain = ftplib.FTP(timeout=TIMEOUT)
    plain.connect(ferry.host, ferry.port)
    plain.login("alice", "secret")
    assert retrieve(plain, "p.bin") == data
    plain.quit()


def test_auth_tls_handshake_rejects_garbage_and_server_survives(ferry):
    c = RawFtp(ferry.host, ferry.port)
    assert c.cmd("AUTH TLS").startswith("234")
    c.sock.sendall(b"this is not a TLS ClientHello\r\n" * 10)
    assert c.closed_within(10)
    c.close()
    ftp = ftps_login(ferry)
    ftp.voidcmd("NOOP")
    ftp.quit()


def test_generated_certificate_and_key_permissions(ferry):
    tls_dir = ferry.data_dir / "tls"
    cert = tls_dir / "cert.pem"
    assert cert.is_file(), sorted(os.listdir(ferry.data_dir))
    keys = [p for p in tls_dir.iterdir() if p != cert and "key" in p.name]
    assert keys, sorted(os.listdir(tls_dir))
    for key in keys:
        mode = stat.S_IMODE(key.stat().st_mode)
        assert mode & 0o077 == 0, f"{key} has mode {oct(mode)}"
    # The certificate served is the one on disk.
    ftp = ftplib.FTP_TLS(context=tls_context(), timeout=TIMEOUT)
    ftp.connect(ferry.host, ferry.port)
    ftp.auth()
    served = ftp.sock.getpeercert(binary_form=True)
    ftp.close()
    pem = cert.read_text()
    first_block = pem[: pem.index("-----END CERTIFICATE-----")] + "-----END CERTIFICATE-----\n"
    assert ssl.PEM_cert_to_DER_cert(first_block) == served


def test_prot_p_data_connection_is_a_tls_session(ferry):
    """With PROT P the data connection speaks TLS (a hand-made session: AUTH TLS, PBSZ 0, PROT P, PASV, RETR)."""
    data = b"PLAINTEXT-MARKER " * 5000
    put_file(ferry.home("alice") / "marker.txt", data)
    ctx = tls_context()
    c = RawFtp(ferry.host, ferry.port)
    assert c.cmd("AUTH TLS").startswith("234")
    c.sock = ctx.wrap_socket(c.sock, server_hostname=ferry.host)
    c.file = c.sock.makefile("rb")
    assert c.login().startswith("230")
    assert c.cmd("PBSZ 0").startswith("200")
    assert c.cmd("PROT P").startswith("200")
    assert c.cmd("TYPE I").startswith("200")
    host, port = parse_pasv(c.cmd("PASV"))
    raw = socket.create_connection((host, port), timeout=10)
    c.send("RETR marker.txt")
    assert c.reply().startswith(("150", "125"))
    tls_data = ctx.wrap_socket(raw, server_hostname=ferry.host)
    received = bytearray()
    while chunk := tls_data.recv(65536):
        received += chunk
    tls_data.close()
    assert bytes(received) == data
    assert c.reply().startswith("226")
    c.close()


# --- reloading the certificate (SIGHUP) -------------------------------------------------------------------


def make_certificate(directory, name):
    """A self-signed certificate for `name` and its key (openssl), as PEM files; returns (cert, key, DER)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}", "-days", "2"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key, ssl.PEM_cert_to_DER_cert(cert.read_text())


def install(source, target):
    """Replaces `target` by a copy of `source` the way certificate tools do: a new file renamed into place."""
    partial = target.with_suffix(".new")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def served_certificate(server, implicit=False):
    if implicit:
        host, port = server.addresses["ftps"]
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            with tls_context().wrap_socket(raw, server_hostname=host) as tls:
                return tls.getpeercert(binary_form=True)
    ftp = ftplib.FTP_TLS(context=tls_context(), timeout=TIMEOUT)
    ftp.connect(server.host, server.port)
    ftp.auth()
    served = ftp.sock.getpeercert(binary_form=True)
    ftp.close()
    return served


def server_with_live_certificate(ferry_factory, tmp_path, *args):
    """A server whose --tls-cert/--tls-key are copies of a certificate "first": (server, live cert, live key,
    first's cert file, first's key file, first's DER)."""
    first_cert, first_key, first = make_certificate(tmp_path, "first")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    install(first_cert, cert)
    install(first_key, key)
    server = ferry_factory("--tls-cert", str(cert), "--tls-key", str(key), "--failed-login-delay-ms", "0", *args)
    server.add_user("alice", "secret")
    return server, cert, key, first_cert, first_key, first


def test_sighup_reloads_the_certificate_and_sessions_go_on(ferry_factory, tmp_path):
    server, cert, key, _, _, first = server_with_live_certificate(ferry_factory, tmp_path, "--ftps", "127.0.0.1:0")
    second_cert, second_key, second = make_certificate(tmp_path, "second")
    old_session = ftps_login(server)
    assert old_session.sock.getpeercert(binary_form=True) == first
    store(old_session, "before.bin", b"before the reload")

    install(second_cert, cert)
    install(second_key, key)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(r"TLS certificate reloaded")
    assert served_certificate(server) == second
    assert served_certificate(server, implicit=True) == second
    # The session opened before goes on, with protected data connections.
    data = random_bytes(200_000, seed=211)
    store(old_session, "after.bin", data)
    assert retrieve(old_session, "after.bin") == data
    old_session.quit()
    new_session = ftps_login(server)
    assert retrieve(new_session, "before.bin") == b"before the reload"
    new_session.quit()


def test_a_broken_certificate_is_not_loaded_and_the_server_goes_on(ferry_factory, tmp_path):
    server, cert, key, first_cert, first_key, first = server_with_live_certificate(ferry_factory, tmp_path)
    _, other_key, _ = make_certificate(tmp_path, "other")

    # A key that is not the certificate's (a renewal copied half-way), then a certificate file cut short.
    install(other_key, key)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(r"TLS certificate not reloaded.*(mismatch|[Kk]ey)")
    assert served_certificate(server) == first
    install(first_key, key)
    cert.write_text(first_cert.read_text()[:200])
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: server.log().count("TLS certificate not reloaded") >= 2, timeout=10,
               message="a second refused reload")
    assert served_certificate(server) == first
    ftp = ftps_login(server)
    store(ftp, "still.bin", b"still serving")
    assert retrieve(ftp, "still.bin") == b"still serving"
    ftp.quit()
    assert server.proc.poll() is None
