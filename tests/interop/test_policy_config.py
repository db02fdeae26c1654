"""Configuration sources: --config TOML file, FERRY_* environment variables, flags; flags > env > file > defaults."""
import os
import subprocess
from pathlib import Path

import pytest

from helpers_files import wait_until
from helpers_ftp import RawFtp

FERRY_BIN = os.environ.get("FERRY_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/ferry-target")) / "release/ferry"
)


def write_config(tmp_path, text):
    path = tmp_path / "ferry.toml"
    path.write_text(text)
    return path


def admitted_connections(server, attempts):
    """Opens `attempts` connections at once and returns how many were greeted with 220 (the rest get 421)."""
    conns = [RawFtp(server.host, server.port) for _ in range(attempts)]
    greeted = [c for c in conns if c.greeting.startswith("220")]
    refused = [c for c in conns if not c.greeting.startswith("220")]
    for c in refused:
        assert c.greeting.startswith("421") or c.greeting == "", c.greeting
    for c in conns:
        c.close()
    return len(greeted)


def test_config_file_sets_limits_and_timeouts(ferry_factory, tmp_path):
    cfg = write_config(tmp_path, "max_connections = 1\nidle_timeout = 2\nfailed_login_delay_ms = 0\n")
    server = ferry_factory("--config", str(cfg))
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    assert c.greeting.startswith("220")
    second = RawFtp(server.host, server.port)
    assert second.greeting.startswith("421"), second.greeting
    second.close()
    assert c.login().startswith("230")
    assert c.closed_within(10), "idle_timeout from the config file was not applied"
    assert any(l.startswith("421") for l in c.pending), c.pending
    c.close()


def test_config_file_listener_addresses(ferry_factory, tmp_path):
    cfg = write_config(tmp_path, 'ftps = "127.0.0.1:0"\n')
    server = ferry_factory("--config", str(cfg))
    assert "ftps" in server.addresses, server.log()


def test_environment_overrides_config_file(ferry_factory, tmp_path, monkeypatch):
    cfg = write_config(tmp_path, "max_connections = 1\n")
    monkeypatch.setenv("FERRY_MAX_CONNECTIONS", "2")
    server = ferry_factory("--config", str(cfg))
    assert admitted_connections(server, 3) == 2


def test_flag_overrides_environment_and_config_file(ferry_factory, tmp_path, monkeypatch):
    cfg = write_config(tmp_path, "max_connections = 1\n")
    monkeypatch.setenv("FERRY_MAX_CONNECTIONS", "2")
    server = ferry_factory("--config", str(cfg), "--max-connections", "3")
    assert admitted_connections(server, 4) == 3


def test_environment_alone_configures_the_server(ferry_factory, monkeypatch):
    monkeypatch.setenv("FERRY_MAX_CONNECTIONS", "1")
    monkeypatch.setenv("FERRY_IDLE_TIMEOUT", "2")
    monkeypatch.setenv("FERRY_FAILED_LOGIN_DELAY_MS", "0")
    server = ferry_factory()
    server.add_user("alice", "secret")
    assert admitted_connections(server, 2) == 1

    def greeted():  # the connections closed above free their slot asynchronously
        c = RawFtp(server.host, server.port)
        if c.greeting.startswith("220"):
            return c
        c.close()
        return None

    c = wait_until(greeted, timeout=10, interval=0.1, message="a free connection slot")
    assert c.login().startswith("230")
    assert c.closed_within(10), "FERRY_IDLE_TIMEOUT was not applied"
    c.close()


def run_serve(tmp_path, *args, env=None):
    """Runs `ferry serve` expecting it to refuse to start; fails (instead of hanging) if it starts serving."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [FERRY_BIN, "serve", "--data-dir", str(tmp_path / "data"), "--ftp", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"ferry serve started despite the invalid configuration:\n{out}{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_invalid_config_value_is_a_startup_error(tmp_path):
    cfg = write_config(tmp_path, 'max_connections = "lots"\n')
    p = run_serve(tmp_path, "--config", str(cfg))
    assert p.returncode != 0
    assert "max_connections" in p.stdout + p.stderr, p.stdout + p.stderr


def test_unknown_config_key_is_a_startup_error(tmp_path):
    cfg = write_config(tmp_path, "max_conections = 5\n")  # typo must not be silently ignored
    p = run_serve(tmp_path, "--config", str(cfg))
    assert p.returncode != 0
    assert "max_conections" in p.stdout + p.stderr, p.stdout + p.stderr


def test_invalid_environment_value_is_a_startup_error(tmp_path):
    p = run_serve(tmp_path, env={"FERRY_MAX_CONNECTIONS": "many"})
    assert p.returncode != 0
    assert "FERRY_MAX_CONNECTIONS" in p.stdout + p.stderr or "max" in (p.stdout + p.stderr).lower()


def test_missing_config_file_is_a_startup_error(tmp_path):
    p = run_serve(tmp_path, "--config", str(tmp_path / "does-not-exist.toml"))
    assert p.returncode != 0
    assert "does-not-exist.toml" in p.stdout + p.stderr


@pytest.mark.parametrize("option", ["--idle-timeout", "--login-timeout", "--data-timeout", "--shutdown-grace"])
def test_huge_timeouts_are_a_startup_error_naming_the_option(tmp_path, option):
    # u64::MAX seconds once started a server whose sessions panicked adding the timeout to the clock.
    p = run_serve(tmp_path, option, "18446744073709551615")
    assert p.returncode != 0
    assert option in p.stderr, p.stderr


@pytest.mark.parametrize("option", ["--idle-timeout", "--login-timeout", "--data-timeout"])
def test_zero_timeouts_are_a_startup_error(tmp_path, option):
    p = run_serve(tmp_path, option, "0")
    assert p.returncode != 0
    assert option in p.stderr, p.stderr


def test_huge_timeout_in_the_environment_is_a_startup_error(tmp_path):
    p = run_serve(tmp_path, env={"FERRY_LOGIN_TIMEOUT": "18446744073709551615"})
    assert p.returncode != 0
    assert "--login-timeout" in p.stderr, p.stderr


def test_bad_passive_port_range_names_the_option_and_the_value(tmp_path):
    p = run_serve(tmp_path, "--passive-ports", "5000-x")
    assert p.returncode != 0
    assert "--passive-ports" in p.stderr and "5000-x" in p.stderr, p.stderr
