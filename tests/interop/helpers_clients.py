"""Helpers for driving command-line FTP clients (curl, lftp, tnftp, rclone) against ferry."""
import os
import shutil

import pytest

from helpers_files import run

# Proxies from the environment must never redirect the clients away from the local server.
NO_PROXY_ENV = {
    "http_proxy": "",
    "https_proxy": "",
    "ftp_proxy": "",
    "all_proxy": "",
    "HTTP_PROXY": "",
    "HTTPS_PROXY": "",
    "FTP_PROXY": "",
    "ALL_PROXY": "",
    "no_proxy": "*",
    "NO_PROXY": "*",
}


def require(binary):
    """Skips the test if a client is not installed (scripts/test installs them all)."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def client_env(tmp_path, extra=None):
    """An environment with no proxies and a private HOME, so user config files (~/.lftprc, ~/.netrc,
    rclone.conf) cannot influence the run."""
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    env = dict(NO_PROXY_ENV)
    env["HOME"] = str(home)
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run_client(cmd, tmp_path, timeout=60, input=None, cwd=None, check=True, env=None):
    return run(cmd, timeout=timeout, input=input, env=client_env(tmp_path, env), cwd=cwd, check=check)


def child_env(tmp_path, extra=None):
    """Full environment (os.environ + client_env) for subprocess.Popen."""
    env = dict(os.environ)
    env.update(client_env(tmp_path, extra))
    return env
