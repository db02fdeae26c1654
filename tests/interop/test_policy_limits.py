"""Connection, session, timeout, login-failure, line-length and source-address limits."""
import ftplib
import socket
import time
from pathlib import Path

import pytest

from helpers_clients import client_env
from helpers_files import put_file, random_bytes, run, sha256_bytes, wait_until
from helpers_ftp import RawFtp, ftp_login, parse_pasv, retrieve, store
from helpers_sftp import SSH_OPTS, _without_batch, askpass_env

FAST = ("--failed-login-delay-ms", "0")


def connect_until_greeted(server, source_address=None, timeout=10):
    """Opens connections until one gets a 220 greeting (a freed slot may take a moment to be noticed)."""

    def attempt():
        c = RawFtp(server.host, server.port, source_address=source_address)
        if c.greeting.startswith("220"):
            return c
        c.close()
        return None

    return wait_until(attempt, timeout=timeout, interval=0.1, message="a 220 greeting")


def assert_refused_and_closed(c, codes=("421",)):
    assert c.greeting.startswith(codes), f"expected {codes}, got {c.greeting!r}"
    assert c.closed_within(5), "the server must close a refused connection"


def test_max_connections_refuses_the_third_with_421(ferry_factory):
    server = ferry_factory("--max-connections", "2", *FAST)
    server.add_user("alice", "secret")
    c1 = RawFtp(server.host, server.port)
    c2 = RawFtp(server.host, server.port)
    assert c1.greeting.startswith("220") and c2.greeting.startswith("220")
    c3 = RawFtp(server.host, server.port)
    assert_refused_and_closed(c3)
    # The two admitted connections are unaffected and can log in.
    assert c1.login().startswith("230")
    assert c2.login().startswith("230")
    # Closing one frees its slot.
    c1.cmd("QUIT")
    c1.close()
    c4 = connect_until_greeted(server)
    assert c4.login().startswith("230")
    for c in (c2, c3, c4):
        c.close()


def test_connection_cap_fits_the_open_file_limit(ferry_factory):
    """With 128 descriptors the cap comes down to 64 connections (the rest kept for listeners, files and data
    connections): the connections past it are refused with 421 instead of waiting unanswered for a descriptor,
    and the sessions admitted still transfer files."""
    server = ferry_factory(*FAST, nofile=128)
    server.add_user("alice", "secret")
    admitted, refused = [], []
    for _ in range(140):
        c = RawFtp(server.host, server.port, timeout=5)
        (admitted if c.greeting.startswith("220") else refused).append(c)
    assert len(admitted) == 64, f"{len(admitted)} admitted, {len(refused)} refused"
    for c in refused:
        assert_refused_and_closed(c)
        c.close()
    for c in admitted[1:]:
        assert c.login().startswith("230")
    admitted[0].close()
    ftp = wait_until(lambda: try_ftp_login(server), timeout=10, interval=0.1, message="a login")
    data = random_bytes(256 * 1024)
    store(ftp, "fits.bin", data)
    assert sha256_bytes(retrieve(ftp, "fits.bin")) == sha256_bytes(data)
    ftp.quit()
    for c in admitted[1:]:
        c.close()


def test_one_address_holds_at_most_256_connections_by_default(ferry_factory):
    """Without the cap one address could take every slot and keep it for the login timeout."""
    server = ferry_factory(*FAST)
    server.add_user("alice", "secret")
    held = [RawFtp(server.host, server.port) for _ in range(256)]
    assert all(c.greeting.startswith("220") for c in held)
    assert_refused_and_closed(RawFtp(server.host, server.port), codes=("421",))
    other = RawFtp(server.host, server.port, source_address=("127.0.0.2", 0))
    assert other.login().startswith("230")
    for c in held + [other]:
        c.close()


def try_ftp_login(server):
    try:
        return ftp_login(server)
    except (ftplib.error_temp, EOFError, OSError):
        return None


def test_max_connections_per_ip(ferry_factory):
    server = ferry_factory("--max-connections-per-ip", "1", *FAST)
    server.add_user("alice", "secret")
    c1 = RawFtp(server.host, server.port)
    assert c1.greeting.startswith("220")
    c2 = RawFtp(server.host, server.port)
    assert_refused_and_closed(c2)
    # Another client address still gets in.
    other = RawFtp(server.host, server.port, source_address=("127.0.0.2", 0))
    assert other.greeting.startswith("220"), other.greeting
    assert other.login().startswith("230")
    c1.cmd("QUIT")
    c1.close()
    c3 = connect_until_greeted(server)
    assert c3.login().startswith("230")
    for c in (c2, other, c3):
        c.close()


def test_max_sessions_per_user(ferry):
    ferry.add_user("solo", "solopw", "--max-sessions", "1")
    c1 = RawFtp(ferry.host, ferry.port)
    assert c1.login("solo", "solopw").startswith("230")
    c2 = RawFtp(ferry.host, ferry.port)
    reply = c2.login("solo", "solopw")
    assert reply.startswith(("530", "421")), reply
    # Other users are not limited by solo's setting.
    c3 = RawFtp(ferry.host, ferry.port)
    assert c3.login().startswith("230")
    c1.cmd("QUIT")
    c1.close()

    def second_login():
        c = RawFtp(ferry.host, ferry.port)
        r = c.login("solo", "solopw")
        c.close()
        return r.startswith("230")

    wait_until(second_login, timeout=10, interval=0.2, message="solo's session slot to be freed")
    for c in (c2, c3):
        c.close()


def test_idle_timeout_closes_an_idle_session_with_421(ferry_factory):
    server = ferry_factory("--idle-timeout", "2", *FAST)
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    assert c.login().startswith("230")
    start = time.monotonic()
    assert c.closed_within(10), "idle session was not closed"
    assert time.monotonic() - start >= 1.0, "closed long before the idle timeout"
    assert any(line.startswith("421") for line in c.pending), c.pending
    c.close()


def test_commands_keep_a_session_alive_past_the_idle_timeout(ferry_factory):
    server = ferry_factory("--idle-timeout", "2", *FAST)
    server.add_user("alice", "secret")
    ftp = ftp_login(server)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        ftp.voidcmd("NOOP")
        time.sleep(0.5)
    assert ftp.pwd() == "/"
    ftp.quit()


def test_idle_timeout_does_not_abort_a_running_transfer(ferry_factory):
    server = ferry_factory("--idle-timeout", "1", *FAST)
    server.add_user("alice", "secret")
    data = random_bytes(8 * 1024 * 1024, seed=91)
    put_file(server.home("alice") / "slow.bin", data)
    c = RawFtp(server.host, server.port)
    assert c.login().startswith("230")
    assert c.cmd("TYPE I").startswith("200")
    host, port = parse_pasv(c.cmd("PASV"))
    d = socket.socket()
    d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    d.settimeout(10)
    d.connect((host, port))
    first = c.cmd("RETR slow.bin")
    assert first.startswith(("150", "125")), first
    # Read slowly (about 2.5 MB/s, so ~3 s): the control connection is quiet, but the session is not idle.
    received = bytearray()
    while True:
        chunk = d.recv(128 * 1024)
        if not chunk:
            break
        received += chunk
        time.sleep(0.05)
    d.close()
    final = c.reply()
    assert final.startswith("226"), final
    assert sha256_bytes(bytes(received)) == sha256_bytes(data)
    c.close()


def test_login_timeout_closes_a_connection_that_never_logs_in(ferry_factory):
    server = ferry_factory("--login-timeout", "2", "--idle-timeout", "60", *FAST)
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    assert c.cmd("USER alice").startswith("331")
    assert c.closed_within(10), "connection without a login was not closed"
    assert any(line.startswith("421") for line in c.pending), c.pending
    c.close()
    # A prompt login is not affected.
    c = RawFtp(server.host, server.port)
    assert c.login().startswith("230")
    time.sleep(0.1)
    assert c.cmd("NOOP").startswith("200")
    c.close()


def test_login_timeout_is_not_extended_by_noops(ferry_factory):
    server = ferry_factory("--login-timeout", "2", "--idle-timeout", "60", *FAST)
    c = RawFtp(server.host, server.port)
    deadline = time.monotonic() + 8
    closed = False
    while time.monotonic() < deadline:
        try:
            r = c.cmd("NOOP")
        except OSError:
            closed = True
            break
        if r == "" or r.startswith("421"):
            closed = True
            break
        time.sleep(0.3)
    assert closed, "NOOPs kept an unauthenticated connection open past the login timeout"
    c.close()


def test_data_timeout_when_client_never_connects_to_passive_port(ferry_factory):
    server = ferry_factory("--data-timeout", "2", *FAST)
    server.add_user("alice", "secret")
    put_file(server.home("alice") / "f.bin", b"data")
    c = RawFtp(server.host, server.port)
    assert c.login().startswith("230")
    c.cmd("PASV")
    c.send("RETR f.bin")
    reply = c.reply()
    if reply.startswith(("150", "125")):
        reply = c.reply()
    assert reply.startswith("425"), reply
    # The session survives a failed data connection.
    assert c.cmd("NOOP").startswith("200")
    c.close()


def solo_logs_in(server):
    c = RawFtp(server.host, server.port)
    ok = c.login("solo", "solopw").startswith("230")
    c.close()
    return ok


def test_a_client_gone_while_a_command_waits_for_an_unopened_data_connection_frees_its_session(ferry_factory):
    """RETR with another command pipelined behind it, then the client goes without opening the data connection. The
    waiting command stopped the reading of the control connection, so the session was held until the data timeout
    (120 s here), and with it the account's only session slot."""
    server = ferry_factory("--data-timeout", "120", *FAST)
    server.add_user("solo", "solopw", "--max-sessions", "1")
    put_file(server.home("solo") / "f.bin", b"data")
    c = RawFtp(server.host, server.port)
    assert c.login("solo", "solopw").startswith("230")
    c.cmd("PASV")
    c.send("RETR f.bin")
    c.send("PWD")
    assert c.reply().startswith(("150", "125"))
    c.close()
    wait_until(lambda: solo_logs_in(server), timeout=10, interval=0.2, message="solo's session slot to be freed")


def test_an_upload_whose_data_connection_is_up_ends_whole_after_the_client_closes_the_control_connection(
    ferry_factory,
):
    """The lenient side of the rule above: once the data connection is up, a client that pipelined a command and
    closed the control connection still gets its upload stored whole."""
    server = ferry_factory(*FAST)
    server.add_user("solo", "solopw")
    data = random_bytes(4 * 1024 * 1024, seed=93)
    c = RawFtp(server.host, server.port)
    assert c.login("solo", "solopw").startswith("230")
    c.cmd("TYPE I")
    host, port = parse_pasv(c.cmd("PASV"))
    d = socket.create_connection((host, port))
    c.send("STOR up.bin")
    c.send("PWD")
    assert c.reply().startswith(("150", "125"))
    d.sendall(data)
    target = server.home("solo") / "up.bin"
    wait_until(lambda: target.exists() and target.stat().st_size > 0, timeout=10, message="the upload to start")
    c.close()
    d.close()
    wait_until(
        lambda: target.exists() and target.stat().st_size == len(data), timeout=10, message="the whole upload"
    )
    assert sha256_bytes(target.read_bytes()) == sha256_bytes(data)


def test_data_timeout_aborts_a_stalled_download(ferry_factory):
    server = ferry_factory("--data-timeout", "2", "--idle-timeout", "60", *FAST)
    server.add_user("alice", "secret")
    put_file(server.home("alice") / "big.bin", random_bytes(16 * 1024 * 1024, seed=92))
    c = RawFtp(server.host, server.port)
    assert c.login().startswith("230")
    c.cmd("TYPE I")
    host, port = parse_pasv(c.cmd("PASV"))
    d = socket.socket()
    d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    d.connect((host, port))
    assert c.cmd("RETR big.bin").startswith(("150", "125"))
    d.recv(1024)  # then stall: never read again
    c.sock.settimeout(15)
    final = c.reply()
    assert final.startswith(("426", "421", "451")), final
    d.close()
    c.close()


def test_failed_logins_are_delayed_and_limited(ferry_factory):
    server = ferry_factory("--failed-login-delay-ms", "300", "--max-login-failures", "2")
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    assert c.cmd("USER alice").startswith("331")
    t0 = time.monotonic()
    r = c.cmd("PASS wrong-1")
    assert r.startswith("530"), r
    assert time.monotonic() - t0 >= 0.25, "no delay after a failed login"
    assert c.cmd("USER alice").startswith("331")
    t0 = time.monotonic()
    r = c.cmd("PASS wrong-2")
    assert r == "" or r.startswith(("530", "421")), r
    assert time.monotonic() - t0 >= 0.25 or r == ""
    assert c.closed_within(5), "the connection stays open after max-login-failures"
    c.close()


def test_a_failed_login_can_be_followed_by_a_good_one(ferry_factory):
    server = ferry_factory("--failed-login-delay-ms", "300", "--max-login-failures", "2")
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    assert c.login("alice", "wrong").startswith("530")
    assert c.login("alice", "secret").startswith("230")
    c.close()


def test_zero_max_login_failures_means_no_limit_per_connection(ferry_factory, tmp_path):
    server = ferry_factory("--failed-login-delay-ms", "0", "--max-login-failures", "0")
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    for i in range(6):
        assert c.login("alice", f"wrong-{i}").startswith("530")
    assert c.login("alice", "secret").startswith("230")
    c.close()
    # SSH too: OpenSSH's sftp tries three wrong passwords on one connection (the default limit), then the right one.
    answers = tmp_path / "answers"
    answers.write_text("wrong-1\nwrong-2\nwrong-3\nsecret\n")
    env = askpass_env(tmp_path, "unused")
    Path(env["SSH_ASKPASS"]).write_text(f"#!/bin/sh\nhead -n 1 {answers} && sed -i 1d {answers}\n")
    host, port = server.addresses["sftp"]
    done = run(
        ["sftp", "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=4",
         *_without_batch(SSH_OPTS), "-P", str(port), "-b", "-", f"alice@{host}"],
        input="pwd\n", env=client_env(tmp_path, env), cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert answers.read_text() == "", "not every password was tried"


def test_unknown_user_is_indistinguishable_from_wrong_password(ferry_factory):
    server = ferry_factory("--failed-login-delay-ms", "300", "--max-login-failures", "5")
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    # USER must not reveal whether the account exists.
    known = c.cmd("USER alice")
    t0 = time.monotonic()
    known_fail = c.cmd("PASS wrong")
    unknown = c.cmd("USER no-such-user")
    t1 = time.monotonic()
    unknown_fail = c.cmd("PASS wrong")
    unknown_elapsed = time.monotonic() - t1
    assert known[:3] == unknown[:3] == "331", (known, unknown)
    assert known_fail[:3] == unknown_fail[:3] == "530", (known_fail, unknown_fail)
    assert time.monotonic() - t0 >= 0.25
    assert unknown_elapsed >= 0.25, "an unknown user fails faster than a wrong password"
    c.close()


def test_failed_logins_are_limited_per_address_across_connections(ferry_factory):
    """20 wrong passwords from one address within 5 minutes (the defaults), spread over many connections: the
    address is then refused even the right password, over FTP and SSH alike, before any hash is computed; another
    address logs in as usual. Each connection on its own stays under --max-login-failures."""
    import paramiko

    from helpers_sftp import sftp_addr

    server = ferry_factory(*FAST)
    server.add_user("alice", "secret")
    for _ in range(10):
        c = RawFtp(server.host, server.port)
        assert c.login("alice", "wrong").startswith("530")
        assert c.login("no-such-user", "wrong").startswith("530")
        c.close()
    c = RawFtp(server.host, server.port)
    refused = c.login("alice", "secret")
    assert refused.startswith("530") and "failed logins" in refused, refused
    c.close()
    host, port = sftp_addr(server)
    transport = paramiko.Transport((host, port))
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.connect(username="alice", password="secret")
    finally:
        transport.close()
    other = RawFtp(server.host, server.port, source_address=("127.0.0.2", 0))
    assert other.login("alice", "secret").startswith("230")
    other.close()


def test_overlong_command_line_gets_500_and_server_survives(ferry):
    c = RawFtp(ferry.host, ferry.port)
    reply = c.cmd("NOOP " + "A" * 10_000)
    assert reply.startswith("500"), reply[:200]
    c.close()
    # An overlong line without any line ending, then the connection is dropped.
    raw = socket.create_connection((ferry.host, ferry.port), timeout=10)
    raw.recv(1024)
    try:
        raw.sendall(b"USER " + b"B" * 100_000)
    except OSError:
        pass
    raw.close()
    ftp = ftp_login(ferry)
    ftp.voidcmd("NOOP")
    ftp.quit()
    assert ferry.proc.poll() is None


def test_overlong_command_after_login_keeps_the_server_usable(ferry):
    c = RawFtp(ferry.host, ferry.port)
    assert c.login().startswith("230")
    reply = c.cmd("RETR " + "x/" * 5_000)
    assert reply.startswith("500"), reply[:200]
    c.close()
    ftp = ftp_login(ferry)
    assert ftp.pwd() == "/"
    ftp.quit()


def test_allow_ip_refuses_login_from_other_networks(ferry):
    ferry.add_user("remote", "remotepw", "--allow-ip", "10.0.0.0/8")
    c = RawFtp(ferry.host, ferry.port)
    reply = c.login("remote", "remotepw")
    assert reply.startswith("530"), reply
    c.close()


def test_allow_ip_admits_the_listed_address_only(ferry):
    ferry.add_user("pinned", "pinnedpw", "--allow-ip", "127.0.0.2/32")
    c = RawFtp(ferry.host, ferry.port)  # from 127.0.0.1
    assert c.login("pinned", "pinnedpw").startswith("530")
    c.close()
    c = RawFtp(ferry.host, ferry.port, source_address=("127.0.0.2", 0))
    assert c.login("pinned", "pinnedpw").startswith("230")
    c.close()


def test_allow_ip_accepts_any_of_several_networks(ferry):
    ferry.add_user("multi", "multipw", "--allow-ip", "10.0.0.0/8", "--allow-ip", "127.0.0.0/8")
    c = RawFtp(ferry.host, ferry.port)
    assert c.login("multi", "multipw").startswith("230")
    c.close()


@pytest.mark.parametrize("line", [b"\xc3\x28\xa0 invalid utf-8", b"FOOBAR arg", b"RETR"])
def test_garbage_commands_get_5xx_and_session_continues(ferry, line):
    c = RawFtp(ferry.host, ferry.port)
    c.sock.sendall(line + b"\r\n")
    reply = c.reply()
    assert reply.startswith("5"), reply
    assert c.login().startswith("230")
    c.close()
