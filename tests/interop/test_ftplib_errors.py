"""Python ftplib against ferry: error replies, hostile input, confinement and permissions (RFC 959 4.2,
RFC 3659, RFC 2577)."""
import ftplib
import io
import os
import socket
import time

import pytest

from helpers_ftplib import (
    TIMEOUT,
    close_quietly,
    code,
    connect,
    home,
    read_all,
    read_reply_raw,
    retr_bytes,
    send,
    send_raw,
    stor_bytes,
    wait_until,
)


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


def _server_still_serves(server):
    client = connect(server)
    assert code(client.sendcmd("NOOP")) == 200
    close_quietly(client)


def test_unknown_command_gets_500_or_502(ftp):
    reply = send(ftp, "XYZZY")
    assert code(reply) in (500, 502), reply
    assert code(send(ftp, "NOOP")) == 200


def test_unknown_command_before_login_gets_500_502_or_530(ferry):
    client = connect(ferry, login=False)
    assert code(send(client, "XYZZY")) in (500, 502, 530)
    close_quietly(client)


@pytest.mark.parametrize("command", ["RETR", "STOR", "APPE", "MKD", "RMD", "DELE", "RNFR", "RNTO", "SIZE",
                                     "MDTM", "PORT", "EPRT", "TYPE", "STRU", "MODE", "REST", "USER"])
def test_command_without_its_required_argument_gets_501(ftp, command):
    reply = send(ftp, command)
    if command == "RNTO":
        assert code(reply) in (501, 503), f"{command} -> {reply}"
    else:
        assert code(reply) == 501, f"{command} -> {reply}"
    assert code(send(ftp, "NOOP")) == 200


def test_5000_byte_command_line_is_rejected_without_harm(ferry):
    client = connect(ferry)
    try:
        client.sock.sendall(b"MKD " + b"a" * 5000 + b"\r\n")
        reply = client.getmultiline()
    except (EOFError, ConnectionError, socket.timeout):
        reply = None  # closing the connection is an acceptable answer too
    if reply:
        # 500 "command line too long" (RFC 959 4.2), or a refusal of the over-long name (501/550/553).
        assert code(reply) in (421, 500, 501, 550, 553), reply
        if code(reply) != 421:
            assert code(send(client, "NOOP")) == 200
    client.close()
    assert os.listdir(home(ferry)) == []
    _server_still_serves(ferry)


def test_endless_line_without_crlf_is_bounded(ferry):
    raw = socket.create_connection((ferry.host, ferry.port), timeout=TIMEOUT)
    assert read_reply_raw(raw).startswith(b"220")
    try:
        raw.sendall(b"USER " + b"x" * (1 << 20) + b"\r\nNOOP\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed the connection while we were still sending: bounded, as required
    except socket.timeout:
        raise AssertionError("the server neither reads an over-long line nor closes the connection")
    replies = []
    try:
        while True:
            reply = read_reply_raw(raw, timeout=10)
            if not reply:
                break
            replies.append(reply)
            if reply.startswith(b"200") or reply.startswith(b"421") or len(replies) > 300:
                break
    except (ConnectionResetError, socket.timeout):
        pass
    raw.close()
    for reply in replies[:-1]:
        assert reply[:1] in (b"5", b"4"), replies[:5]
    _server_still_serves(ferry)


def test_invalid_utf8_in_a_path_is_rejected(ferry):
    client = connect(ferry, encoding="latin-1")
    before = set(os.listdir(home(ferry)))
    # (No 0xFF bytes: on the control connection 0xFF is the Telnet IAC escape, RFC 959 / RFC 854.)
    reply = send_raw(client, b"MKD bad-\xc3\x28-\x80-name\r\n")
    assert code(reply) in (501, 550, 553), reply
    reply = send_raw(client, b"DELE \xc3\x28.txt\r\n")
    assert code(reply) in (501, 550, 553), reply
    reply = send_raw(client, b"CWD \xfe\xfe\r\n")
    assert code(reply) in (501, 550, 553), reply
    assert code(send(client, "NOOP")) == 200
    assert set(os.listdir(home(ferry))) == before
    close_quietly(client)
    _server_still_serves(ferry)


def test_nul_byte_in_a_path_is_rejected(ferry, ftp):
    (home(ferry) / "a").write_bytes(b"a")
    # A server that cut the name at the NUL would answer for the existing file "a".
    reply = send_raw(ftp, b"SIZE a\x00b\r\n")
    assert code(reply) in (501, 550, 553), reply
    reply = send_raw(ftp, b"DELE a\x00b\r\n")
    assert code(reply) in (501, 550, 553), reply
    reply = send_raw(ftp, b"MKD x\x00y\r\n")
    assert code(reply) in (501, 550, 553), reply
    assert code(send(ftp, "NOOP")) == 200
    assert (home(ferry) / "a").read_bytes() == b"a"
    assert not (home(ferry) / "x").exists()


def test_rnto_without_rnfr_gets_503(ftp):
    reply = send(ftp, "RNTO whatever.txt")
    assert code(reply) == 503, reply


def test_rnto_after_another_command_gets_503(ferry, ftp):
    (home(ferry) / "keep.txt").write_bytes(b"k")
    assert code(send(ftp, "RNFR keep.txt")) == 350
    assert code(send(ftp, "PWD")) == 257
    assert code(send(ftp, "RNTO moved.txt")) == 503
    assert (home(ferry) / "keep.txt").exists()


def test_out_of_range_client_input_gets_a_client_error_not_a_local_one(ferry, ftp):
    root = home(ferry)
    (root / "f.bin").write_bytes(b"0123456789")
    (root / "dir").mkdir()
    with pytest.raises(ftplib.error_perm) as excinfo:
        retr_bytes(ftp, "f.bin", rest=2**64 - 1)
    assert str(excinfo.value)[:3] in ("501", "554"), excinfo.value
    reply = send(ftp, f"XMD5 f.bin {2**64 - 2} {2**64 - 1}")
    assert code(reply) in (501, 554), reply
    assert code(send(ftp, "RNFR dir")) == 350
    reply = send(ftp, "RNTO dir/sub")
    assert code(reply) in (501, 550, 553), reply
    assert (root / "dir").is_dir()
    assert "local error" not in ferry.log().lower(), ferry.log()


def test_rnfr_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "RNFR nothing-here")) == 550


def test_retr_of_a_missing_file_gets_550(ftp):
    with pytest.raises(ftplib.error_perm) as excinfo:
        retr_bytes(ftp, "missing.bin")
    assert str(excinfo.value).startswith("550")
    assert code(send(ftp, "NOOP")) == 200


def test_retr_of_a_directory_gets_550(ferry, ftp):
    (home(ferry) / "dir").mkdir()
    with pytest.raises(ftplib.error_perm) as excinfo:
        retr_bytes(ftp, "dir")
    assert str(excinfo.value).startswith("550")


def test_stor_into_a_missing_directory_gets_550(ftp):
    with pytest.raises(ftplib.error_perm) as excinfo:
        stor_bytes(ftp, "no/such/dir/file.bin", b"x")
    assert str(excinfo.value)[:3] in ("550", "553")


def test_dele_of_a_directory_gets_550(ferry, ftp):
    (home(ferry) / "keepdir").mkdir()
    assert code(send(ftp, "DELE keepdir")) == 550
    assert (home(ferry) / "keepdir").is_dir()


def test_dele_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "DELE missing.bin")) == 550


def test_rmd_of_a_non_empty_directory_gets_550(ferry, ftp):
    (home(ferry) / "full").mkdir()
    (home(ferry) / "full" / "content.txt").write_bytes(b"c")
    assert code(send(ftp, "RMD full")) == 550
    assert (home(ferry) / "full" / "content.txt").exists()


def test_rmd_of_a_file_gets_550(ferry, ftp):
    (home(ferry) / "afile").write_bytes(b"f")
    assert code(send(ftp, "RMD afile")) == 550
    assert (home(ferry) / "afile").exists()


def test_mkd_of_an_existing_directory_fails(ferry, ftp):
    (home(ferry) / "exists").mkdir()
    reply = send(ftp, "MKD exists")
    assert code(reply) in (521, 550), reply


def test_mkd_over_an_existing_file_fails(ferry, ftp):
    (home(ferry) / "occupied").write_bytes(b"file")
    assert code(send(ftp, "MKD occupied")) in (521, 550)
    assert (home(ferry) / "occupied").read_bytes() == b"file"


def test_parent_references_cannot_escape_the_home(ferry, ftp):
    outside = ferry.data_dir / "outside-secret.txt"
    outside.write_bytes(b"must stay private")
    for path in ("../outside-secret.txt", "../../outside-secret.txt", "/../outside-secret.txt",
                 "../../../../../../etc/passwd", "/../../etc/passwd"):
        with pytest.raises(ftplib.error_perm):
            retr_bytes(ftp, path)
    try:
        stor_bytes(ftp, "../../escaped.txt", b"escape")  # may be clamped to /escaped.txt inside the home
    except ftplib.error_perm:
        pass
    assert not (ferry.data_dir / "escaped.txt").exists()
    assert not (ferry.data_dir / "files" / "escaped.txt").exists()
    assert not (ferry.data_dir.parent / "escaped.txt").exists()


def test_symlink_pointing_outside_the_home_is_not_followed(ferry, ftp):
    outside = ferry.data_dir / "outside-dir"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"private")
    os.symlink(outside, home(ferry) / "escape")
    os.symlink(outside / "secret.txt", home(ferry) / "escape.txt")
    for path in ("escape/secret.txt", "escape.txt"):
        with pytest.raises(ftplib.error_perm) as excinfo:
            retr_bytes(ftp, path)
        assert str(excinfo.value)[:3] in ("550", "553")
    with pytest.raises(ftplib.error_perm):
        stor_bytes(ftp, "escape/planted.txt", b"planted")
    assert not (outside / "planted.txt").exists()
    reply = send(ftp, "CWD escape")
    if code(reply) == 250:
        with pytest.raises(ftplib.error_perm):
            retr_bytes(ftp, "secret.txt")


@pytest.fixture
def reader(ferry):
    bob_home = ferry.add_user("bob", "pw", "--perm", "read")
    bob_home.mkdir(parents=True, exist_ok=True)
    (bob_home / "readable.txt").write_bytes(b"read me")
    (bob_home / "dir").mkdir()
    client = connect(ferry, user="bob", password="pw")
    yield client, bob_home
    close_quietly(client)


def test_read_only_account_can_list_and_download(reader):
    client, _ = reader
    assert retr_bytes(client, "readable.txt") == b"read me"
    assert {"readable.txt", "dir"} <= set(client.nlst())


def test_read_only_account_cannot_modify_anything(reader):
    client, bob_home = reader
    with pytest.raises(ftplib.error_perm) as excinfo:
        stor_bytes(client, "new.txt", b"x")
    assert str(excinfo.value)[:3] in ("550", "553", "532")
    assert not (bob_home / "new.txt").exists()
    for command in ("DELE readable.txt", "MKD newdir", "RMD dir",
                    "SITE CHMOD 600 readable.txt", "MFMT 20200101000000 readable.txt"):
        reply = send(client, command)
        assert code(reply) in (550, 553, 532), f"{command} -> {reply}"
    reply = send(client, "RNFR readable.txt")  # the refusal may come at RNFR or at RNTO
    if code(reply) == 350:
        reply = send(client, "RNTO renamed.txt")
    assert code(reply) in (550, 553, 532), reply
    assert not (bob_home / "renamed.txt").exists()
    with pytest.raises(ftplib.error_perm):
        stor_bytes(client, "readable.txt", b"overwrite", command="APPE")
    assert (bob_home / "readable.txt").read_bytes() == b"read me"
    assert (bob_home / "dir").is_dir()
    assert not (bob_home / "newdir").exists()


def test_avbl_reports_available_bytes(ftp):
    reply = send(ftp, "AVBL")
    assert code(reply) == 213, reply
    assert int(reply[4:].split()[0]) > 0


def test_avbl_reports_the_remaining_quota(ferry):
    ferry.add_user("carol", "pw", "--quota-bytes", "1000000")
    client = connect(ferry, user="carol", password="pw")
    stor_bytes(client, "part.bin", os.urandom(300_000))
    reply = send(client, "AVBL")
    assert code(reply) == 213, reply
    assert int(reply[4:].split()[0]) == 700_000
    close_quietly(client)


def test_upload_beyond_the_quota_is_refused_with_552(ferry):
    ferry.add_user("carol", "pw", "--quota-bytes", "1000000")
    client = connect(ferry, user="carol", password="pw")
    stor_bytes(client, "first.bin", os.urandom(600_000))
    client.voidcmd("TYPE I")
    host, port = client.makepasv()
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        reply = send(client, "STOR second.bin")
        if code(reply) in (125, 150):
            try:
                conn.sendall(os.urandom(600_000))
            except (BrokenPipeError, ConnectionResetError):
                pass
            conn.close()
            reply = client.getmultiline()
    # RFC 959: 552 "Requested file action aborted. Exceeded storage allocation".
    assert code(reply) in (452, 552), reply
    assert code(send(client, "NOOP")) == 200
    close_quietly(client)


def test_site_help_replies_214(ftp):
    reply = send(ftp, "SITE HELP")
    assert code(reply) == 214, reply


def test_site_chmod_changes_the_mode(ferry, ftp):
    path = home(ferry) / "mode.txt"
    path.write_bytes(b"m")
    os.chmod(path, 0o644)
    reply = send(ftp, "SITE CHMOD 600 mode.txt")
    assert code(reply) == 200, reply
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_home_itself_keeps_its_mode(ferry, ftp):
    before = os.stat(home(ferry)).st_mode & 0o777
    assert code(send(ftp, "SITE CHMOD 000 /")) == 550
    assert code(send(ftp, "SITE CHMOD 000 .")) == 550
    assert os.stat(home(ferry)).st_mode & 0o777 == before
    assert code(send(ftp, "NOOP")) == 200


def test_site_chmod_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "SITE CHMOD 600 missing.txt")) == 550


def test_site_chmod_with_an_invalid_mode_gets_501(ferry, ftp):
    (home(ferry) / "mode.txt").write_bytes(b"m")
    assert code(send(ftp, "SITE CHMOD 9z9 mode.txt")) == 501


def test_unknown_site_command_is_rejected(ftp):
    assert code(send(ftp, "SITE FROBNICATE")) in (500, 501, 502, 504)


def test_idle_session_gets_421_and_is_closed(ferry_factory):
    server = ferry_factory("--idle-timeout", "2", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    client = connect(server)
    client.sock.settimeout(8)
    started = time.monotonic()
    reply = client.getline()
    assert reply.startswith("421"), reply
    assert time.monotonic() - started >= 1.0
    assert client.file.read() == ""
    client.close()


def test_login_timeout_closes_sessions_that_never_log_in(ferry_factory):
    server = ferry_factory("--login-timeout", "2", "--failed-login-delay-ms", "0")
    raw = socket.create_connection(server.addresses["ftp"], timeout=TIMEOUT)
    assert read_reply_raw(raw).startswith(b"220")
    raw.settimeout(8)
    rest = read_all(raw)
    raw.close()
    assert rest == b"" or rest.startswith(b"421"), rest


def test_max_connections_refuses_extra_clients_with_421(ferry_factory):
    server = ferry_factory("--max-connections", "1", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    first = connect(server)
    with socket.create_connection(server.addresses["ftp"], timeout=TIMEOUT) as second:
        greeting = read_reply_raw(second)
        assert greeting.startswith(b"421"), greeting
    close_quietly(first)

    def can_log_in():
        try:
            _server_still_serves(server)
            return True
        except (ftplib.Error, OSError, EOFError):
            return False

    assert wait_until(can_log_in, timeout=10, interval=0.2)


def test_a_trailing_slash_names_a_directory_not_a_file(ferry, ftp):
    """`STOR dir/` into a missing `dir` is refused rather than creating a file `dir` (vsftpd's open(2) refuses it
    with EISDIR), and `DELE file/` does not delete `file`."""
    h = home(ferry)
    (h / "file").write_bytes(b"keep")
    for command in ("STOR nodir/", "APPE nodir/"):
        with pytest.raises(ftplib.error_perm):
            ftp.storbinary(command, io.BytesIO(b"data"))
    with pytest.raises(ftplib.error_perm):
        ftp.delete("file/")
    assert not (h / "nodir").exists()
    assert (h / "file").read_bytes() == b"keep"
    stor_bytes(ftp, "file", b"replaced")
    assert (h / "file").read_bytes() == b"replaced"
