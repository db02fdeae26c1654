"""Transfer rates of an account (`ferry user add --upload-rate/--download-rate`): each session's transfers are held
to them, in every protocol and on every data path (sendfile and splice are given up for paced sessions). Only lower
bounds on time are checked: a busy machine can make a transfer slower, never faster than its rate."""
import ftplib
import time

import pytest

from helpers_files import random_bytes, sha256_bytes, sha256_file, write_random
from helpers_ftp import TIMEOUT, ftps_login, retrieve, store
from helpers_sftp import add_key_user, read_remote, scp, sftp_client, write_remote

RATE = 256 * 1024
SIZE = 512 * 1024
# SIZE at RATE takes 2 s; a pace lets through at most a tenth of a second's worth after an idle time.
AT_LEAST = SIZE / RATE - 0.1 - 0.2  # and some rounding of clocks


@pytest.fixture
def slow(ferry):
    ferry.add_user("slow", "slowpw", "--upload-rate", "256KiB", "--download-rate", "256KiB")
    return ferry


def timed(action):
    start = time.monotonic()
    result = action()
    return result, time.monotonic() - start


def plain_ftp(server):
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(server.host, server.port)
    ftp.login("slow", "slowpw")
    return ftp


@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_ftp_transfers_keep_to_the_rates(slow, tls):
    data = random_bytes(SIZE, seed=301)
    ftp = ftps_login(slow, "slow", "slowpw") if tls else plain_ftp(slow)
    _, up = timed(lambda: store(ftp, "up.bin", data))
    assert up >= AT_LEAST, f"upload of {SIZE} took {up:.2f} s"
    assert sha256_file(slow.home("slow") / "up.bin") == sha256_bytes(data)
    back, down = timed(lambda: retrieve(ftp, "up.bin"))
    assert down >= AT_LEAST, f"download of {SIZE} took {down:.2f} s"
    assert back == data
    ftp.quit()


def test_sftp_transfers_keep_to_the_rates(slow):
    data = random_bytes(SIZE, seed=302)
    with sftp_client(slow, "slow", "slowpw") as sftp:
        _, up = timed(lambda: write_remote(sftp, "up.bin", data))
        assert up >= AT_LEAST, f"upload of {SIZE} took {up:.2f} s"
        back, down = timed(lambda: read_remote(sftp, "up.bin"))
        assert down >= AT_LEAST, f"download of {SIZE} took {down:.2f} s"
    assert back == data


def test_parallel_sftp_downloads_share_the_session_rate(slow):
    """OpenSSH's sftp and paramiko run requests in parallel; two files on one session together take the rate."""
    half = SIZE // 2
    for name in ("a.bin", "b.bin"):
        write_random(slow.home("slow") / name, half, seed=303)
    with sftp_client(slow, "slow", "slowpw") as sftp:
        first, second = sftp.open("a.bin", "rb"), sftp.open("b.bin", "rb")
        first.prefetch()
        second.prefetch()
        _, both = timed(lambda: (first.read(), second.read()))
        first.close()
        second.close()
    assert both >= AT_LEAST, f"two downloads of {half} took {both:.2f} s"


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp", "legacy"])
def test_scp_transfers_keep_to_the_rates(slow, tmp_path, legacy):
    home, key = add_key_user(slow, tmp_path, "scpslow", "--upload-rate", "256KiB", "--download-rate", "256KiB")
    home.mkdir(parents=True, exist_ok=True)
    digest = write_random(tmp_path / "f.bin", SIZE, seed=304)
    _, up = timed(lambda: scp(slow, tmp_path, key, "f.bin", "scpslow@HOST:f.bin", legacy=legacy))
    assert up >= AT_LEAST, f"upload of {SIZE} took {up:.2f} s"
    _, down = timed(lambda: scp(slow, tmp_path, key, "scpslow@HOST:f.bin", "back.bin", legacy=legacy))
    assert down >= AT_LEAST, f"download of {SIZE} took {down:.2f} s"
    assert sha256_file(home / "f.bin") == digest == sha256_file(tmp_path / "back.bin")


def test_rates_are_listed_changed_and_cleared(ferry):
    ferry.add_user("r", "rpw", "--download-rate", "1.5MiB")
    row = next(l.split() for l in ferry.user("list").stdout.splitlines()[1:] if l.split()[0] == "r")
    assert row[6:8] == ["-", "1.50MiB/s"], row
    ferry.user("edit", "r", "--upload-rate", "100kB", "--download-rate", "0")
    row = next(l.split() for l in ferry.user("list").stdout.splitlines()[1:] if l.split()[0] == "r")
    assert row[6:8] == ["97.66KiB/s", "-"], row
    bad = ferry.user("edit", "r", "--upload-rate", "fast", check=False)
    assert bad.returncode == 2 and "fast" in bad.stderr, bad


def test_a_new_rate_applies_from_the_next_login(ferry):
    data = random_bytes(SIZE, seed=305)
    ferry.add_user("later", "laterpw")
    (ferry.home("later")).mkdir(parents=True, exist_ok=True)
    (ferry.home("later") / "f.bin").write_bytes(data)
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(ferry.host, ferry.port)
    ftp.login("later", "laterpw")
    ferry.user("edit", "later", "--download-rate", "256KiB")
    again = ftplib.FTP(timeout=TIMEOUT)
    again.connect(ferry.host, ferry.port)
    again.login("later", "laterpw")
    back, down = timed(lambda: retrieve(again, "f.bin"))
    assert down >= AT_LEAST and back == data, f"{down:.2f} s"
    assert retrieve(ftp, "f.bin") == data  # the session from before keeps going (no bound on its time)
    ftp.quit()
    again.quit()
