"""SSH commands without a shell: checksum commands and pwd are answered, everything else is refused clearly."""
import hashlib

import pytest

from helpers_files import random_bytes
from helpers_sftp import add_key_user, ssh_exec


@pytest.fixture
def bob(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    home.mkdir(parents=True, exist_ok=True)
    return home, key


@pytest.mark.parametrize("program,algorithm", [
    ("md5sum", "md5"), ("sha1sum", "sha1"), ("sha256sum", "sha256"), ("sha512sum", "sha512"),
])
def test_checksum_commands_match_hashlib(ferry, tmp_path, bob, program, algorithm):
    home, key = bob
    data = random_bytes(1_234_567, seed=1)
    (home / "sub").mkdir()
    (home / "sub/file name.bin").write_bytes(data)
    p = ssh_exec(ferry, tmp_path, "bob", key, f"{program} 'sub/file name.bin'")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{hashlib.new(algorithm, data).hexdigest()}  sub/file name.bin\n"


def test_checksum_of_several_files_reports_the_missing_one(ferry, tmp_path, bob):
    home, key = bob
    (home / "a").write_bytes(b"a")
    p = ssh_exec(ferry, tmp_path, "bob", key, "sha256sum a /missing ~/a")
    assert p.returncode == 1
    digest = hashlib.sha256(b"a").hexdigest()
    assert p.stdout == f"{digest}  a\n{digest}  ~/a\n"
    assert "sha256sum: /missing: No such file or directory" in p.stderr


def test_checksum_of_stdin(ferry, tmp_path, bob):
    _, key = bob
    p = ssh_exec(ferry, tmp_path, "bob", key, "md5sum", input="hello\n")
    assert p.returncode == 0
    digest = hashlib.md5(b"hello\n").hexdigest()
    assert p.stdout == f"{digest}  -\n"


def test_checksum_cannot_read_outside_the_home(ferry, tmp_path, bob):
    _, key = bob
    p = ssh_exec(ferry, tmp_path, "bob", key, "sha256sum ../../../../etc/passwd")
    assert p.returncode == 1
    assert "No such file or directory" in p.stderr


def test_pwd_is_the_home(ferry, tmp_path, bob):
    _, key = bob
    p = ssh_exec(ferry, tmp_path, "bob", key, "pwd")
    assert (p.returncode, p.stdout) == (0, "/\n")


@pytest.mark.parametrize("command", ["ls -l", "rm -rf /", "bash -c id", "cat /etc/passwd", "echo hi; id", "id | cat"])
def test_other_commands_are_refused(ferry, tmp_path, bob, command):
    _, key = bob
    p = ssh_exec(ferry, tmp_path, "bob", key, command)
    assert p.returncode in (1, 127)
    assert "ferry:" in p.stderr and p.stdout == ""


def test_shell_is_refused_with_a_message(ferry, tmp_path, bob):
    _, key = bob
    p = ssh_exec(ferry, tmp_path, "bob", key, None, input="id\n")
    assert p.returncode == 1
    assert "no shell" in p.stderr and "bob" in p.stderr
    assert "uid=" not in p.stdout


def test_pty_and_port_forwarding_are_refused(ferry, tmp_path, bob):
    _, key = bob
    p = ssh_exec(ferry, tmp_path, "bob", key, "pwd", extra=("-tt",))
    assert "PTY allocation request failed" in p.stderr
    # Remote forwarding needs the server to listen, which it refuses at once (local forwarding: see below).
    p = ssh_exec(ferry, tmp_path, "bob", key, "pwd",
                 extra=("-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22"))
    assert p.returncode != 0
    assert "forwarding" in p.stderr.lower()


def test_direct_tcpip_channels_are_refused(ferry, tmp_path, bob):
    import paramiko

    _, key = bob
    host, port = ferry.addresses["sftp"]
    t = paramiko.Transport((host, port))
    try:
        t.connect(username="bob", pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
        with pytest.raises(paramiko.ChannelException):
            t.open_channel("direct-tcpip", ("127.0.0.1", ferry.addresses["ftp"][1]), ("127.0.0.1", 1234))
        # The connection is still usable afterwards.
        chan = t.open_session()
        chan.exec_command("pwd")
        assert chan.makefile().read() == b"/\n"
        assert chan.recv_exit_status() == 0
    finally:
        t.close()
