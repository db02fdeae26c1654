"""Fixtures that start a real `ferry serve` on ephemeral loopback ports for each test.

The server binary comes from $FERRY_BIN (scripts/test sets it after building). Each server gets its own data
directory under pytest's tmp_path, so tests run in parallel without sharing state.
"""
import os
import re
import resource
import subprocess
import threading
import time
from pathlib import Path

import pytest

FERRY_BIN = os.environ.get("FERRY_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/ferry-target")) / "release/ferry"
)
LISTEN_RE = re.compile(r"^ferry: (\w+) listening on (\S+)")
PASSWORD_RE = re.compile(r'^ferry: created account "(\w+)" with password: (\S+)')


def run_ferry(*args, input=None, check=True):
    """Runs a ferry sub-command (not the server) and returns the CompletedProcess."""
    return subprocess.run(
        [FERRY_BIN, *args], input=input, capture_output=True, text=True, check=check, timeout=60
    )


class FerryServer:
    """A running `ferry serve`. `addresses` maps a listener name (ftp, ftps, sftp) to (host, port)."""

    def __init__(self, data_dir: Path, args, nofile=None):
        self.data_dir = data_dir
        self.addresses = {}
        self.admin_password = None
        self.output = []
        self._ready = threading.Event()
        cmd = [FERRY_BIN, "serve", "--data-dir", str(data_dir), *args]
        if not any(a.startswith("--ftp") and not a.startswith("--ftps") for a in args):
            cmd += ["--ftp", "127.0.0.1:0"]
        if not any(a.startswith("--sftp") for a in args):
            cmd += ["--sftp", "127.0.0.1:0"]
        # `nofile` sets the server's open-file limit, hard and soft.
        limit = None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=limit
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError("ferry serve did not become ready:\n" + "".join(self.output))
        if self.proc.poll() is not None:
            raise RuntimeError("ferry serve exited:\n" + "".join(self.output))

    def _pump(self):
        for line in self.proc.stdout:
            self.output.append(line)
            m = LISTEN_RE.match(line)
            if m:
                host, _, port = m.group(2).rpartition(":")
                self.addresses[m.group(1)] = (host.strip("[]"), int(port))
            m = PASSWORD_RE.match(line)
            if m:
                self.admin_password = m.group(2)
            if line.startswith("ferry: ready"):
                self._ready.set()
        self._ready.set()

    @property
    def host(self):
        return self.addresses["ftp"][0]

    @property
    def port(self):
        return self.addresses["ftp"][1]

    def log(self):
        return "".join(self.output)

    def wait_for_log(self, pattern, timeout=10):
        """Waits until a server output line matches `pattern` (a regex) and returns the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.output):
                m = rx.search(line)
                if m:
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no log line matched {pattern!r}:\n{self.log()}")

    def user(self, *args, input=None, check=True):
        """Runs `ferry user ARGS --data-dir DIR`."""
        return run_ferry("user", *args, "--data-dir", str(self.data_dir), input=input, check=check)

    def add_user(self, name, password="secret", *args):
        self.user("add", name, "--password-stdin", *args, input=password + "\n")
        return self.home(name)

    def home(self, name):
        return self.data_dir / "files" / name

    def stop(self, sig=None):
        if self.proc.poll() is None:
            if sig is None:
                self.proc.kill()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def ferry_factory(tmp_path):
    """Starts servers with extra `ferry serve` arguments: `ferry_factory("--upload-mode", "atomic")`."""
    servers = []

    def start(*args, data_dir=None, nofile=None):
        d = data_dir or tmp_path / f"data{len(servers)}"
        server = FerryServer(d, list(args), nofile=nofile)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def ferry(ferry_factory):
    """A server with a user `alice` (password `secret`, all permissions) and fast failed-login handling."""
    server = ferry_factory("--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    return server
