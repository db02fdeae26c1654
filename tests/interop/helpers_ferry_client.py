"""Runs the `ferry` client sub-commands (ls, get, put, ...) in a private HOME, and builds URLs for a test server."""
import json
import os
import subprocess
import time
from pathlib import Path

from conftest import FERRY_BIN

# Listener names in `ferry.addresses` for each URL scheme.
LISTENER = {"ftp": "ftp", "ftps": "ftp", "ftps+implicit": "ftps", "sftp": "sftp"}
# Flags that trust the test servers' self-signed certificate and new host key.
TRUST = ["--insecure", "--accept-new-host-key"]


def client_home(tmp_path) -> Path:
    home = tmp_path / "ferry-client-home"
    home.mkdir(exist_ok=True)
    return home


def client_env(tmp_path, extra=None):
    """The environment for a client run: a private HOME (no ~/.netrc, ~/.ssh of the user), no ssh-agent, no
    FERRY_PASSWORD unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "FERRY_PASSWORD", "NETRC")}
    env["HOME"] = str(client_home(tmp_path))
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def fc(tmp_path, *args, env=None, check=True, input=None, cwd=None, timeout=120):
    """Runs `ferry ARGS` as a client; with `check`, a non-zero exit fails the test with the full output."""
    p = subprocess.run(
        [FERRY_BIN, *map(str, args)],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=client_env(tmp_path, env),
        cwd=cwd or tmp_path,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"ferry {' '.join(map(str, args))} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


def spawn(tmp_path, *args, env=None, cwd=None):
    """Starts `ferry ARGS` in the background (for interrupting it)."""
    return subprocess.Popen(
        [FERRY_BIN, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(tmp_path, env),
        cwd=cwd or tmp_path,
    )


def url(server, scheme, path="", user="alice", password="secret"):
    """`scheme://user:password@host:port/path` for the server's listener of that scheme."""
    host, port = server.addresses[LISTENER[scheme]]
    cred = user if password is None else f"{user}:{password}"
    return f"{scheme}://{cred}@{host}:{port}/{path}"


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for_size(path, at_least, timeout=60, proc=None):
    """Waits until the file at `path` has at least `at_least` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(path).stat().st_size >= at_least:
                return
        except FileNotFoundError:
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"client ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {at_least} bytes")


def run_in_terminal(tmp_path, *args, answers=(), env=None, timeout=60):
    """Runs `ferry ARGS` on a fresh pseudo-terminal (its controlling terminal, as for a person at a shell) and
    answers its questions: `answers` are (regex, reply) pairs, each reply typed once its regex has appeared in the
    output, or (regex, reply, "secret") for a password: typed only once the program has also turned the terminal's
    echo off (it prints the prompt first, and a reply typed before that would be echoed). Returns (exit code,
    everything the terminal showed)."""
    import pty
    import re
    import select
    import termios

    def echo_off(fd):
        return not termios.tcgetattr(fd)[3] & termios.ECHO

    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(tmp_path)
            os.execve(FERRY_BIN, [FERRY_BIN, *map(str, args)], client_env(tmp_path, env))
        finally:
            os._exit(127)
    shown = b""
    answered_at = 0  # a question is looked for only in what came after the last answer
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if pending and re.search(pending[0][0], shown[answered_at:].decode("utf-8", "replace")):
                secret = pending[0][2:] == ("secret",)
                if not secret or echo_off(fd):
                    os.write(fd, (pending.pop(0)[1] + "\n").encode())
                    answered_at = len(shown)
        else:
            os.kill(pid, 9)
            raise AssertionError(f"ferry {' '.join(map(str, args))} did not finish:\n{shown.decode(errors='replace')}")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert not pending, f"never asked {pending[0][0]!r}:\n{shown.decode(errors='replace')}"
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")
