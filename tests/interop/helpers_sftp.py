"""Helpers for the SSH interop tests: OpenSSH clients (sftp, scp, ssh) with key or password login, and paramiko."""
import subprocess

import paramiko

from helpers_clients import client_env, require
from helpers_files import run

# Never trust or record the test server's host key, never prompt, never read the user's own keys or config.
SSH_OPTS = [
    "-F", "/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "IdentitiesOnly=yes",
    "-o", "ConnectTimeout=10",
]


def make_key(tmp_path, name="id_ed25519", key_type="ed25519"):
    """Generates an unencrypted key pair with ssh-keygen and returns the private key's path."""
    require("ssh-keygen")
    path = tmp_path / name
    if not path.exists():
        extra = ["-b", "2048"] if key_type == "rsa" else []
        subprocess.run(
            ["ssh-keygen", "-q", "-t", key_type, *extra, "-N", "", "-C", f"test-{name}", "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return path


def add_key_user(server, tmp_path, name="bob", *extra, key_name=None):
    """Creates `name` with a fresh key (`ferry user add NAME --key KEY.pub`); returns (home, private key path)."""
    key = make_key(tmp_path, key_name or f"{name}_key")
    server.user("add", name, "--password-stdin", "--key", f"{key}.pub", *extra, input="unused-password\n")
    return server.home(name), key


def sftp_addr(server):
    return server.addresses["sftp"]


def _env(tmp_path, extra=None):
    return client_env(tmp_path, extra)


def sftp_batch(server, tmp_path, user, key, commands, cwd=None, check=True, timeout=60, extra=()):
    """Runs OpenSSH `sftp -b -` with `commands` (a list of lines) as `user` with `key`; returns the result."""
    require("sftp")
    host, port = sftp_addr(server)
    cmd = ["sftp", *SSH_OPTS, *extra, "-i", str(key), "-P", str(port), "-b", "-", f"{user}@{host}"]
    return run(cmd, input="\n".join(commands) + "\n", env=_env(tmp_path), cwd=cwd or tmp_path, check=check,
               timeout=timeout)


def askpass_env(tmp_path, password):
    """Environment that makes OpenSSH read `password` from an askpass program instead of a terminal."""
    script = tmp_path / "askpass.sh"
    script.write_text(f"#!/bin/sh\necho '{password}'\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def sftp_batch_password(server, tmp_path, user, password, commands, cwd=None, check=True):
    """`sftp -b -` with password login (BatchMode must be off before -b turns it on, and -o comes first)."""
    require("sftp")
    host, port = sftp_addr(server)
    cmd = ["sftp", "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", *_without_batch(SSH_OPTS),
           "-P", str(port), "-b", "-", f"{user}@{host}"]
    return run(cmd, input="\n".join(commands) + "\n", env=_env(tmp_path, askpass_env(tmp_path, password)),
               cwd=cwd or tmp_path, check=check)


def _without_batch(opts):
    out = []
    skip = False
    for i, o in enumerate(opts):
        if skip:
            skip = False
            continue
        if o == "-o" and i + 1 < len(opts) and opts[i + 1].startswith("BatchMode"):
            skip = True
            continue
        out.append(o)
    return out


def scp(server, tmp_path, key, *args, legacy=False, check=True, timeout=60):
    """Runs `scp` (with -O for the legacy protocol). Remote paths are written as `user@HOST:path` with the literal
    word HOST, replaced here by the server's address."""
    require("scp")
    host, port = sftp_addr(server)
    args = [a.replace("@HOST:", f"@{host}:") for a in map(str, args)]
    cmd = ["scp", *SSH_OPTS, "-i", str(key), "-P", str(port), *(["-O"] if legacy else []), *args]
    return run(cmd, env=_env(tmp_path), cwd=tmp_path, check=check, timeout=timeout)


def ssh_exec(server, tmp_path, user, key, command, input=None, check=False, extra=()):
    """Runs `ssh user@server COMMAND` and returns the CompletedProcess (not checked by default)."""
    require("ssh")
    host, port = sftp_addr(server)
    cmd = ["ssh", *SSH_OPTS, "-i", str(key), "-p", str(port), *extra, f"{user}@{host}"]
    if command is not None:
        cmd.append(command)
    return run(cmd, input=input, env=_env(tmp_path), cwd=tmp_path, check=check, timeout=30)


class Paramiko:
    """A paramiko SSH connection with an SFTP client; use as a context manager."""

    def __init__(self, server, user="alice", password="secret", key=None):
        host, port = sftp_addr(server)
        self.transport = paramiko.Transport((host, port))
        self.transport.banner_timeout = 10
        if key is not None:
            pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
            self.transport.connect(username=user, pkey=pkey)
        else:
            self.transport.connect(username=user, password=password)
        self.sftp = paramiko.SFTPClient.from_transport(self.transport)

    def __enter__(self):
        return self.sftp

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sftp.close()
        finally:
            self.transport.close()


def sftp_client(server, user="alice", password="secret", key=None):
    return Paramiko(server, user, password, key)


def write_remote(sftp, path, data: bytes, mode="wb"):
    with sftp.open(path, mode) as f:
        f.set_pipelined(True)
        f.write(data)


def read_remote(sftp, path) -> bytes:
    with sftp.open(path, "rb") as f:
        f.prefetch()
        return f.read()
