"""Account administration with `ferry user` against a running server: the first `admin` account, empty passwords,
revoking SSH keys, clearing restrictions, and client-chosen names in the log."""
import paramiko
import pytest

from conftest import run_ferry
from helpers_ftp import RawFtp, login_reply
from helpers_sftp import add_key_user, make_key, sftp_addr, sftp_batch


def test_removing_every_account_does_not_bring_admin_back(ferry_factory):
    first = ferry_factory("--failed-login-delay-ms", "0")
    password = first.admin_password
    assert password, first.log()
    first.user("remove", "admin")
    first.stop()
    assert first.user("list").stdout.splitlines()[1:] == []

    again = ferry_factory("--failed-login-delay-ms", "0", data_dir=first.data_dir)
    assert again.admin_password is None, again.log()
    assert "created account" not in again.log(), again.log()
    assert login_reply(again, "admin", password).startswith("530")
    assert "admin" not in again.user("list").stdout


def test_a_database_made_by_user_add_gets_no_admin(ferry_factory, tmp_path):
    data = tmp_path / "data"
    run_ferry("user", "add", "alice", "--password-stdin", "--data-dir", str(data), input="secret\n")
    server = ferry_factory("--failed-login-delay-ms", "0", data_dir=data)
    assert server.admin_password is None, server.log()
    assert login_reply(server, "alice", "secret").startswith("230")


def test_user_commands_but_add_need_an_existing_database(tmp_path):
    missing = tmp_path / "typo"
    p = run_ferry("user", "list", "--data-dir", str(missing), check=False)
    assert p.returncode != 0
    assert "no account database" in p.stderr, p.stderr
    assert not (missing / "ferry.db").exists()


@pytest.mark.parametrize("command", ["add", "passwd"])
def test_an_empty_password_is_refused(ferry, command):
    name = "eve" if command == "add" else "alice"
    for how in (["--password", ""], ["--password-stdin"]):
        p = ferry.user(command, name, *how, input="\n", check=False)
        assert p.returncode != 0, p.stdout
        assert "empty password" in p.stderr, p.stderr
    assert "eve" not in ferry.user("list").stdout
    assert login_reply(ferry, "alice", "secret").startswith("230")
    assert login_reply(ferry, "alice", "").startswith("530")


def test_a_revoked_key_no_longer_logs_in(ferry, tmp_path):
    _, key = add_key_user(ferry, tmp_path, "bob")
    pub = (tmp_path / f"{key.name}.pub").read_text().strip()
    assert sftp_batch(ferry, tmp_path, "bob", key, ["ls"], check=False).returncode == 0
    ferry.user("edit", "bob", "--remove-key", pub)
    assert ferry.user("keys", "bob").stdout.strip() == ""
    p = sftp_batch(ferry, tmp_path, "bob", key, ["ls"], check=False)
    assert p.returncode != 0
    assert "Permission denied" in p.stderr, p.stderr


def test_a_key_is_revoked_by_its_base64_part_and_never_listed_twice(ferry, tmp_path):
    _, key = add_key_user(ferry, tmp_path, "bob")
    other = make_key(tmp_path, "other")
    ferry.user("edit", "bob", "--key", f"{key}.pub", "--key", f"{other}.pub", "--key", f"{key}.pub")
    listed = ferry.user("keys", "bob").stdout.split("\n")
    assert len([l for l in listed if l.strip()]) == 2, listed
    blob = (tmp_path / f"{key.name}.pub").read_text().split()[1]
    ferry.user("edit", "bob", "--remove-key", blob)
    assert sftp_batch(ferry, tmp_path, "bob", key, ["ls"], check=False).returncode != 0
    assert sftp_batch(ferry, tmp_path, "bob", other, ["ls"], check=False).returncode == 0
    p = ferry.user("edit", "bob", "--remove-key", blob, check=False)
    assert p.returncode != 0 and "no key matching" in p.stderr, p.stderr
    ferry.user("edit", "bob", "--clear-keys")
    assert sftp_batch(ferry, tmp_path, "bob", other, ["ls"], check=False).returncode != 0


def test_clear_allow_ip_lets_the_account_log_in_from_anywhere_again(ferry):
    ferry.add_user("carol", "carolpw", "--allow-ip", "192.0.2.0/24")
    assert login_reply(ferry, "carol", "carolpw").startswith("530")
    ferry.user("edit", "carol", "--clear-allow-ip")
    assert login_reply(ferry, "carol", "carolpw").startswith("230")


def test_clear_dir_perms_removes_directory_rules(ferry):
    home = ferry.add_user("dan", "danpw", "--dir-perm", "/locked=list")
    (home / "locked").mkdir(parents=True)
    c = RawFtp(ferry.host, ferry.port)
    assert c.login("dan", "danpw").startswith("230")
    assert c.cmd("MKD /locked/sub").startswith("550")
    c.close()
    ferry.user("edit", "dan", "--clear-dir-perms")
    c = RawFtp(ferry.host, ferry.port)
    assert c.login("dan", "danpw").startswith("230")
    assert c.cmd("MKD /locked/sub").startswith("257")
    c.close()


def test_a_user_name_with_a_newline_cannot_forge_a_log_line(ferry):
    host, port = sftp_addr(ferry)
    marker = "FORGED-LINE-4711"
    transport = paramiko.Transport((host, port))
    try:
        transport.banner_timeout = 10
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password(f"mallory\n2026-01-01T00:00:00Z  INFO {marker} user=admin login ok", "x")
    finally:
        transport.close()
    ferry.wait_for_log(r"login-failed.*" + marker)
    # Every line holding the forged text is the one that logged the failed login, with the newline escaped.
    lines = [l for l in ferry.log().splitlines() if marker in l]
    assert all('user="mallory\\n' in l for l in lines), lines
