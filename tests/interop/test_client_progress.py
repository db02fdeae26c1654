"""The progress display: bars (per file and a total) on a terminal, checked once under a pseudo-terminal made by
`script`; plain lines when output is not a terminal."""
import re
import shlex
import shutil
import subprocess

import pyte
import pytest

from conftest import FERRY_BIN
from helpers_ferry_client import client_env, fc, url
from helpers_files import sha256_file, write_random


def test_terminal_shows_progress_bars(ferry, tmp_path):
    if not shutil.which("script"):
        pytest.skip("script (util-linux) is not installed")
    digest = write_random(ferry.home("alice") / "big.bin", 3_000_000, seed=3)
    cmd = shlex.join([FERRY_BIN, "get", "--limit-rate", "3m", url(ferry, "ftp", "big.bin"), "big.bin"])
    p = subprocess.run(
        ["script", "-qefc", cmd, "/dev/null"],
        capture_output=True,
        timeout=60,
        env=client_env(tmp_path, {"TERM": "xterm", "COLUMNS": "120", "LINES": "30"}),
        cwd=tmp_path,
    )
    screen = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, screen
    # Bars are redrawn in place with terminal control sequences.
    assert "\x1b[" in screen, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "big.bin" in plain and "total" in plain, plain
    assert re.search(r"\d+(\.\d+)? (MiB|KiB)/s", plain), plain
    assert "ETA" in plain, plain
    assert "verified by sha256" in plain, plain
    assert sha256_file(tmp_path / "big.bin") == digest


def test_connection_retries_are_printed_above_the_bars(ferry_factory, tmp_path):
    """A notice that the pool could not open a connection, printed while bars are drawn, stays on the screen whole,
    and the bars' redrawing leaves no stale copies behind. The screen is rendered by pyte, a terminal emulator."""
    if not shutil.which("script"):
        pytest.skip("script (util-linux) is not installed")
    server = ferry_factory("--failed-login-delay-ms", "0", "--max-connections-per-ip", "1")
    server.add_user("alice", "secret")
    for i, name in enumerate(("a.bin", "b.bin")):
        write_random(server.home("alice") / name, 3_000_000, seed=i)
    # The second of two parallel downloads cannot connect (one connection per address) and retries while the
    # first one's bar is drawn, until the first one hands its connection over.
    get = shlex.join([FERRY_BIN, "get", "-j", "2", "--limit-rate", "2m",
                      url(server, "ftp", "a.bin"), url(server, "ftp", "b.bin"), "."])
    p = subprocess.run(
        ["script", "-qefc", f"stty cols 200 rows 40; {get}", "/dev/null"],
        capture_output=True,
        timeout=60,
        env=client_env(tmp_path, {"TERM": "xterm"}),
        cwd=tmp_path,
    )
    screen = pyte.Screen(200, 40)
    pyte.ByteStream(screen).feed(p.stdout)
    lines = [line.rstrip() for line in screen.display if line.strip()]
    retries = [line.split("; retry ")[1].split()[0] for line in lines if "; retry " in line]
    assert retries and retries == ["1", "2", "3"][: len(retries)], "\n".join(lines)
    # The second download then goes over the first one's connection.
    assert "a.bin: 3000000 bytes" in "\n".join(lines), "\n".join(lines)
    assert "b.bin: 3000000 bytes" in "\n".join(lines), "\n".join(lines)
    assert sum(line.startswith(("total", "a.bin ", "b.bin ")) for line in lines) == 1, "\n".join(lines)
    assert lines[-1].startswith("total"), "\n".join(lines)


def test_plain_lines_when_not_a_terminal(ferry, tmp_path):
    write_random(ferry.home("alice") / "a.bin", 10_000, seed=1)
    p = fc(tmp_path, "get", url(ferry, "ftp", "a.bin"))
    assert "\x1b[" not in p.stdout + p.stderr
    assert re.fullmatch(r"a\.bin: 10000 bytes in [\d.]+ s \(.*/s\), verified by sha256\n", p.stdout), p.stdout
    p = fc(tmp_path, "get", "--quiet", "--no-resume", url(ferry, "ftp", "a.bin"))
    assert p.stdout == "" and p.stderr == ""
