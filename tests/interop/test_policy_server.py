"""Operating the server: live account changes, graceful shutdown, audit events, xferlog, JSON logs, secrets."""
import json
import os
import re
import signal
import socket
import tempfile
import time

import pytest

from helpers_files import put_file, random_bytes, sha256_bytes, wait_until
from helpers_ftp import RawFtp, ftp_login, login_reply, parse_pasv, retrieve, store


# --- accounts changed while the server runs ---------------------------------------------------------------


def test_user_added_while_running_can_log_in_immediately(ferry):
    ferry.add_user("carol", "carolpw")
    ftp = ftp_login(ferry, "carol", "carolpw")
    store(ftp, "hello.txt", b"hi\n")
    ftp.quit()
    assert (ferry.home("carol") / "hello.txt").read_bytes() == b"hi\n"


def test_passwd_takes_effect_without_restart(ferry):
    assert login_reply(ferry, "alice", "secret").startswith("230")
    ferry.user("passwd", "alice", "--password-stdin", input="n3w-pa55word\n")
    assert login_reply(ferry, "alice", "secret").startswith("530")
    assert login_reply(ferry, "alice", "n3w-pa55word").startswith("230")


def test_removed_user_cannot_log_in(ferry):
    ferry.add_user("dave", "davepw")
    assert login_reply(ferry, "dave", "davepw").startswith("230")
    ferry.user("remove", "dave")
    assert login_reply(ferry, "dave", "davepw").startswith("530")
    # Other accounts are untouched.
    assert login_reply(ferry, "alice", "secret").startswith("230")


def test_user_list_shows_accounts_but_no_secrets(ferry):
    ferry.add_user("erin", "Erin-Pa55-unique")
    out = ferry.user("list").stdout
    assert "alice" in out and "erin" in out, out
    assert "Erin-Pa55-unique" not in out
    assert "$argon2" not in out


# --- graceful shutdown ---------------------------------------------------------------------------------------


def test_sigterm_lets_a_running_download_finish_then_exits_0(ferry):
    data = random_bytes(12 * 1024 * 1024, seed=111)
    put_file(ferry.home("alice") / "long.bin", data)
    c = RawFtp(ferry.host, ferry.port)
    assert c.login().startswith("230")
    assert c.cmd("TYPE I").startswith("200")
    host, port = parse_pasv(c.cmd("PASV"))
    d = socket.socket()
    d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    d.settimeout(15)
    d.connect((host, port))
    assert c.cmd("RETR long.bin").startswith(("150", "125"))
    received = bytearray(d.recv(65536))
    ferry.proc.send_signal(signal.SIGTERM)
    while True:
        chunk = d.recv(256 * 1024)
        if not chunk:
            break
        received += chunk
        time.sleep(0.01)  # a slow reader
    d.close()
    assert sha256_bytes(bytes(received)) == sha256_bytes(data), f"got {len(received)} of {len(data)} bytes"
    assert c.reply().startswith("226")
    # While it shuts down, the server takes no new sessions (refused, or 421 and closed).
    try:
        probe = RawFtp(ferry.host, ferry.port, timeout=3)
        refused_new = not probe.greeting.startswith("220")
        probe.close()
    except OSError:
        refused_new = True
    try:
        c.cmd("QUIT")
    except OSError:
        pass
    c.close()
    assert ferry.proc.wait(20) == 0, ferry.log()
    assert refused_new, "a new connection was greeted with 220 during shutdown"


def test_sigterm_closes_idle_sessions_and_exits_0(ferry):
    c = RawFtp(ferry.host, ferry.port)
    assert c.login().startswith("230")
    ferry.proc.send_signal(signal.SIGTERM)
    assert c.closed_within(15), "an idle session kept the server from shutting down"
    assert all(line.startswith("421") for line in c.pending), c.pending
    c.close()
    assert ferry.proc.wait(15) == 0, ferry.log()


def test_sigint_also_shuts_down(ferry):
    ferry.proc.send_signal(signal.SIGINT)
    assert ferry.proc.wait(15) in (0, 130), ferry.log()


# --- events -----------------------------------------------------------------------------------------------


def event_pattern(event, *needles):
    """A regex matching a log line that contains the event name as a word and every needle."""
    parts = [rf"(?=.*(?<![\w-]){re.escape(event)}(?![\w-]))"] + [f"(?=.*{re.escape(n)})" for n in needles]
    return "^" + "".join(parts)


def test_events_are_logged_with_user_and_path(ferry):
    ftp = ftp_login(ferry)
    ftp.mkd("/evdir")
    store(ftp, "/evdir/up.bin", b"event data\n" * 100)
    assert retrieve(ftp, "/evdir/up.bin") == b"event data\n" * 100
    ftp.rename("/evdir/up.bin", "/evdir/renamed.bin")
    ftp.delete("/evdir/renamed.bin")
    ftp.mkd("/evdir/sub")
    ftp.rmd("/evdir/sub")
    ftp.quit()
    ferry.wait_for_log(event_pattern("login", "alice"))
    ferry.wait_for_log(event_pattern("mkdir", "alice", "/evdir"))
    ferry.wait_for_log(event_pattern("upload", "alice", "/evdir/up.bin"))
    ferry.wait_for_log(event_pattern("download", "alice", "/evdir/up.bin"))
    ferry.wait_for_log(event_pattern("rename", "alice", "/evdir/up.bin", "/evdir/renamed.bin"))
    ferry.wait_for_log(event_pattern("delete", "alice", "/evdir/renamed.bin"))
    ferry.wait_for_log(event_pattern("rmdir", "alice", "/evdir/sub"))
    ferry.wait_for_log(event_pattern("logout", "alice"))


def test_failed_login_is_logged(ferry):
    assert login_reply(ferry, "alice", "wrong-password").startswith("530")
    ferry.wait_for_log(r"(?i)(?=.*alice)(?=.*(login-failed|login failed|login refused|authentication failed))")


def test_service_manager_hears_ready_reloading_and_stopping(ferry_factory, monkeypatch):
    """systemd's Type=notify protocol: datagrams on $NOTIFY_SOCKET."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # a socket path has to fit in 108 bytes
        path = os.path.join(d, "notify")
        manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        manager.bind(path)
        manager.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        server = ferry_factory("--failed-login-delay-ms", "0")

        def heard():
            return manager.recv(4096).decode().splitlines()

        assert "READY=1" in heard()
        ftp = ftp_login(server, "admin", server.admin_password)
        server.proc.send_signal(signal.SIGHUP)
        reloading = heard()
        assert "RELOADING=1" in reloading, reloading
        assert any(re.fullmatch(r"MONOTONIC_USEC=\d+", l) for l in reloading), reloading
        assert "READY=1" in heard()
        ftp.voidcmd("NOOP")
        ftp.quit()
        server.stop(signal.SIGTERM)
        assert server.proc.returncode == 0
        assert "STOPPING=1" in heard()
        manager.close()


# --- xferlog ----------------------------------------------------------------------------------------------


def xferlog_lines(path, count):
    def ready():
        if not path.exists():
            return None
        lines = [l for l in path.read_text().splitlines() if l.strip()]
        return lines if len(lines) >= count else None

    return wait_until(ready, timeout=10, message=f"{count} xferlog lines in {path}")


def check_xferlog_line(line, *, size, path, direction, user="alice"):
    f = line.split()
    assert len(f) == 18, f"xferlog line has {len(f)} fields: {line!r}"
    when = time.strptime(" ".join(f[0:5]), "%a %b %d %H:%M:%S %Y")
    assert abs(time.mktime(when) - time.time()) < 2 * 86400, line  # local time, give or take a zone
    assert f[5].isdigit(), line  # transfer time, seconds
    assert f[6] == "127.0.0.1", line  # remote host
    assert int(f[7]) == size, line  # bytes
    assert f[8].endswith(path), line  # file name
    assert f[9] == "b", line  # binary transfer
    assert f[10] == "_", line  # no special action
    assert f[11] == direction, line  # o = outgoing (download), i = incoming (upload)
    assert f[12] == "r", line  # real (not anonymous/guest) user
    assert f[13] == user, line
    assert f[14] == "ftp", line  # service name
    assert f[15] in ("0", "1"), line  # authentication method
    assert f[16] == "*", line  # authenticated user id
    assert f[17] == "c", line  # complete


def test_xferlog_has_one_line_per_completed_transfer(ferry_factory, tmp_path):
    xferlog = tmp_path / "xferlog"
    server = ferry_factory("--xferlog", str(xferlog), "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    data = random_bytes(123_456, seed=112)
    ftp = ftp_login(server)
    ftp.mkd("xl")
    store(ftp, "xl/up.bin", data)
    assert retrieve(ftp, "xl/up.bin") == data
    ftp.quit()
    lines = xferlog_lines(xferlog, 2)
    assert len(lines) == 2, lines
    check_xferlog_line(lines[0], size=len(data), path="/xl/up.bin", direction="i")
    check_xferlog_line(lines[1], size=len(data), path="/xl/up.bin", direction="o")


def test_xferlog_marks_anonymous_sessions(ferry_factory, tmp_path):
    xferlog = tmp_path / "xferlog"
    pub = tmp_path / "pub"
    put_file(pub / "readme.txt", b"read me\n")
    server = ferry_factory("--xferlog", str(xferlog), "--anonymous", str(pub), "--failed-login-delay-ms", "0")
    ftp = ftp_login(server, "anonymous", "guest@example.com")
    assert retrieve(ftp, "readme.txt") == b"read me\n"
    ftp.quit()
    (line,) = xferlog_lines(xferlog, 1)
    f = line.split()
    assert len(f) == 18, line
    assert f[11] == "o" and f[12] == "a" and f[17] == "c", line
    # wu-ftpd logs the guest's ID string (the password given) as the user name of an anonymous session.
    assert f[13] in ("guest@example.com", "anonymous", "ftp"), line
    assert f[16] == "*", line


def test_xferlog_rotated_away_goes_on_in_a_new_file_after_sighup(ferry_factory, tmp_path):
    """logrotate's way: rename the log, then SIGHUP; the lines after it go to a new file at the name."""
    xferlog = tmp_path / "xferlog"
    server = ferry_factory("--xferlog", str(xferlog), "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    ftp = ftp_login(server)
    store(ftp, "one.bin", b"1" * 1000)
    xferlog_lines(xferlog, 1)
    rotated = tmp_path / "xferlog.1"
    xferlog.rename(rotated)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(xferlog.exists, timeout=10, message="a new xferlog after SIGHUP")
    store(ftp, "two.bin", b"2" * 2000)
    ftp.quit()
    (line,) = xferlog_lines(xferlog, 1)
    check_xferlog_line(line, size=2000, path="/two.bin", direction="i")
    (old,) = xferlog_lines(rotated, 1)
    check_xferlog_line(old, size=1000, path="/one.bin", direction="i")
    assert server.proc.poll() is None


# --- log format and secrets --------------------------------------------------------------------------------


def test_json_log_format(ferry_factory):
    server = ferry_factory("--log-format", "json", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    ftp = ftp_login(server)
    store(ftp, "j.bin", b"json\n")
    ftp.quit()
    server.wait_for_log(r"upload")
    server.wait_for_log(r"logout")
    objects = []
    for line in server.log().splitlines():
        if not line.strip() or line.startswith("ferry: "):
            continue  # the startup banner lines are plain text by contract
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"non-JSON log line with --log-format json: {line!r}")
        assert isinstance(obj, dict), line
        objects.append(obj)
    upload = [o for o in objects if "upload" in json.dumps(o) and "/j.bin" in json.dumps(o)]
    assert upload, objects
    assert "alice" in json.dumps(upload[0])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_password_appears_in_logs(ferry_factory, tmp_path, log_format):
    good, bad = "Pw-Sup3rS3cret-xyzzy", "Wr0ng-Pa55-plugh"
    xferlog = tmp_path / "xferlog"
    server = ferry_factory("--log-format", log_format, "--xferlog", str(xferlog), "--failed-login-delay-ms", "0")
    server.add_user("frank", good)
    assert login_reply(server, "frank", bad).startswith("530")
    assert login_reply(server, "nosuchuser", bad).startswith("530")
    ftp = ftp_login(server, "frank", good)
    store(ftp, "f.bin", b"x")
    retrieve(ftp, "f.bin")
    ftp.quit()
    server.wait_for_log(r"logout")
    log = server.log()
    # The only password ferry may ever print is the generated admin one, once, on first start.
    log = "\n".join(l for l in log.splitlines() if not l.startswith('ferry: created account "admin"'))
    transfers = "\n".join(xferlog_lines(xferlog, 2))
    for secret in (good, bad):
        assert secret not in log, f"password {secret!r} found in the server log"
        assert secret not in transfers, f"password {secret!r} found in the xferlog"
    assert "$argon2" not in log
