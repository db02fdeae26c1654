"""Python ftplib against ferry: login, session commands and feature negotiation (RFC 959, RFC 2389, RFC 3659)."""
import ftplib
import socket

import pytest

from helpers_ftplib import (
    TIMEOUT,
    close_quietly,
    code,
    connect,
    feat_lines,
    feature,
    home,
    parse_mlst_entry,
    retr_bytes,
    send,
    transfer_raw,
)


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


def test_greeting_is_220(ferry):
    client = ftplib.FTP(timeout=TIMEOUT)
    welcome = client.connect(ferry.host, ferry.port)
    assert code(welcome) == 220, welcome
    client.close()


def test_user_then_pass_logs_in_with_331_then_230(ferry):
    client = connect(ferry, login=False)
    assert code(send(client, "USER alice")) == 331
    reply = send(client, "PASS secret")
    assert code(reply) == 230, reply
    assert code(send(client, "NOOP")) == 200
    close_quietly(client)


def test_ftplib_login_returns_230(ferry):
    client = connect(ferry, login=False)
    reply = client.login("alice", "secret")
    assert code(reply) == 230, reply
    close_quietly(client)


def test_wrong_password_gets_530_and_a_retry_can_succeed(ferry):
    client = connect(ferry, login=False)
    assert code(send(client, "USER alice")) == 331
    reply = send(client, "PASS wrong-password")
    assert code(reply) == 530, reply
    assert code(send(client, "PWD")) == 530
    assert code(send(client, "USER alice")) == 331
    assert code(send(client, "PASS secret")) == 230
    close_quietly(client)


def test_ftplib_login_with_wrong_password_raises_error_perm_530(ferry):
    client = connect(ferry, login=False)
    with pytest.raises(ftplib.error_perm) as excinfo:
        client.login("alice", "not-the-password")
    assert str(excinfo.value).startswith("530")
    client.close()


def test_unknown_user_cannot_log_in(ferry):
    client = connect(ferry, login=False)
    user_reply = send(client, "USER nobody")
    # Servers either ask for a password anyway (so as not to reveal which names exist) or refuse at once.
    assert code(user_reply) in (331, 530), user_reply
    if code(user_reply) == 331:
        reply = send(client, "PASS secret")
        assert code(reply) == 530, reply
    close_quietly(client)


def test_pass_without_user_is_rejected(ferry):
    client = connect(ferry, login=False)
    reply = send(client, "PASS secret")
    assert code(reply) in (503, 530), reply
    close_quietly(client)


@pytest.mark.parametrize(
    "command",
    ["PWD", "XPWD", "CWD /", "CDUP", "MKD created-before-login", "RMD x", "DELE x", "RETR x", "SIZE x",
     "MDTM x", "RNFR x", "PASV", "EPSV", "STAT /", "HASH x"],
)
def test_commands_before_login_get_530(ferry, command):
    client = connect(ferry, login=False)
    reply = send(client, command)
    assert code(reply) == 530, f"{command} -> {reply}"
    assert not (home(ferry) / "created-before-login").exists()
    close_quietly(client)


def test_acct_after_login_is_superfluous(ftp):
    # RFC 959: ACCT when no account is needed is "202 Command not implemented, superfluous at this site"
    # (230 is also a listed reply).
    reply = send(ftp, "ACCT billing")
    assert code(reply) in (202, 230), reply
    assert code(send(ftp, "NOOP")) == 200


def test_acct_before_user_is_bad_sequence(ferry):
    client = connect(ferry, login=False)
    reply = send(client, "ACCT billing")
    assert code(reply) in (503, 530), reply
    close_quietly(client)


def test_rein_logs_out_and_requires_a_new_login(ferry):
    client = connect(ferry)
    assert code(send(client, "CWD /")) == 250
    reply = send(client, "REIN")
    assert code(reply) == 220, reply
    assert code(send(client, "PWD")) == 530
    assert code(client.login("alice", "secret")) == 230
    assert ftplib.parse257(send(client, "PWD")) == "/"
    close_quietly(client)


def test_rein_resets_the_transfer_type_and_epsv_all(ferry):
    (home(ferry) / "lines.txt").write_bytes(b"a\nb\n")
    client = connect(ferry)
    assert code(send(client, "TYPE A")) == 200
    assert code(send(client, "EPSV ALL")) == 200
    assert code(send(client, "REIN")) == 220
    assert code(client.login("alice", "secret")) == 230
    assert code(send(client, "PASV")) == 227  # refused after EPSV ALL, until REIN
    client.set_pasv(True)
    assert transfer_raw(client, "RETR lines.txt") == b"a\nb\n"  # binary again: no CR added
    close_quietly(client)


def test_quit_replies_221_and_closes_the_connection(ferry):
    client = connect(ferry)
    reply = send(client, "QUIT")
    assert code(reply) == 221, reply
    client.sock.settimeout(5)
    assert client.file.read() == ""  # end of stream: the server closed the control connection
    client.close()


def test_quit_before_login_replies_221(ferry):
    client = connect(ferry, login=False)
    assert code(send(client, "QUIT")) == 221
    client.close()


def test_syst_reports_unix_type_l8(ftp):
    reply = ftp.sendcmd("SYST")
    assert reply.startswith("215 UNIX Type: L8"), reply


def test_noop_replies_200(ftp):
    assert code(ftp.sendcmd("NOOP")) == 200


def test_commands_are_case_insensitive(ftp):
    assert code(send(ftp, "noop")) == 200
    assert code(send(ftp, "Syst")) == 215
    assert ftplib.parse257(send(ftp, "pwd")) == "/"


def test_help_replies_214(ftp):
    reply = send(ftp, "HELP")
    assert code(reply) == 214, reply
    assert code(ftp.sendcmd("NOOP")) == 200


def test_help_for_a_command_replies_214_or_211(ftp):
    reply = send(ftp, "HELP RETR")
    assert code(reply) in (211, 214), reply


def test_feat_lists_the_supported_extensions(ftp):
    features = feat_lines(ftp)
    upper = {f.upper() for f in features}
    for required in ["UTF8", "SIZE", "MDTM", "REST STREAM", "EPSV", "EPRT", "AUTH TLS", "PBSZ", "PROT",
                     "MFMT", "AVBL"]:
        assert required in upper, f"FEAT lacks {required!r}: {features}"
    mlst = feature(features, "MLST")
    assert mlst, f"FEAT lacks MLST: {features}"
    facts = {f.rstrip("*").lower() for f in mlst.split(" ", 1)[1].split(";") if f}
    assert {"type", "size", "modify", "perm", "unique"} <= facts, mlst
    hash_line = feature(features, "HASH")
    assert hash_line, f"FEAT lacks HASH: {features}"


def test_feat_is_available_before_login(ferry):
    # Clients (lftp, curl) ask for FEAT before USER to learn about AUTH TLS (RFC 4217 section 6).
    client = connect(ferry, login=False)
    features = feat_lines(client)
    assert any(f.upper() == "AUTH TLS" for f in features), features
    close_quietly(client)


def test_opts_utf8_on_replies_200(ftp):
    reply = send(ftp, "OPTS UTF8 ON")
    assert code(reply) == 200, reply


def test_opts_mlst_selects_the_facts_shown(ferry, ftp):
    (home(ferry) / "facts.txt").write_bytes(b"12345")
    reply = send(ftp, "OPTS MLST type;size;")
    assert code(reply) == 200, reply
    # RFC 3659 7.9: the reply lists the facts now selected.
    listed = {f for f in reply.lower().split()[-1].split(";") if f}
    assert listed == {"type", "size"}, reply
    # RFC 3659 7.8: FEAT marks the selected facts with '*'.
    mlst = feature(feat_lines(ftp), "MLST")
    selected = {f[:-1].lower() for f in mlst.split(" ", 1)[1].split(";") if f.endswith("*")}
    assert selected == {"type", "size"}, mlst
    entry = ftp.sendcmd("MLST facts.txt").splitlines()[1]
    assert entry.startswith(" "), entry
    name, facts = parse_mlst_entry(entry[1:])
    assert set(facts) == {"type", "size"}, entry
    assert facts["type"] == "file" and facts["size"] == "5", entry


def test_anonymous_login_reads_the_anonymous_directory(ferry_factory, tmp_path):
    anon = tmp_path / "pub"
    anon.mkdir()
    (anon / "readme.txt").write_bytes(b"public data\n")
    server = ferry_factory("--anonymous", str(anon), "--failed-login-delay-ms", "0")
    client = connect(server, user="anonymous", password="guest@example.com")
    assert retr_bytes(client, "readme.txt") == b"public data\n"
    assert "readme.txt" in client.nlst()
    close_quietly(client)


def test_anonymous_login_is_refused_without_anonymous_directory(ferry):
    client = connect(ferry, login=False)
    with pytest.raises(ftplib.error_perm) as excinfo:
        client.login("anonymous", "guest@example.com")
    assert str(excinfo.value).startswith("530")
    client.close()


def test_two_sessions_are_independent(ferry):
    (home(ferry) / "sub").mkdir()
    first = connect(ferry)
    second = connect(ferry)
    first.cwd("sub")
    assert first.pwd() == "/sub"
    assert second.pwd() == "/"
    close_quietly(first)
    close_quietly(second)


def test_server_survives_client_disconnecting_without_quit(ferry):
    raw = socket.create_connection((ferry.host, ferry.port), timeout=TIMEOUT)
    raw.recv(1024)
    raw.sendall(b"USER alice\r\n")
    raw.close()
    client = connect(ferry)
    assert code(client.sendcmd("NOOP")) == 200
    close_quietly(client)
