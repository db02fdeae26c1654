"""Quota accounting when one SFTP request changes a file that another handle is uploading to: the account must end
charged for what it stores, and must not be able to store more than its quota."""
import io

import paramiko
import pytest

from helpers_files import home_usage, random_bytes

QUOTA = 100_000
SIZE = 60_000


def used_bytes(server, name):
    """The byte usage `ferry user list` reports for `name` (the usage the server stored)."""
    for line in server.user("list").stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[4])
    raise AssertionError(f"{name} not listed")


@pytest.fixture
def sftp(ferry):
    home = ferry.add_user("q", "pw", "--quota-bytes", str(QUOTA))
    host, port = ferry.addresses["sftp"]
    transport = paramiko.Transport((host, port))
    transport.connect(username="q", password="pw")
    client = paramiko.SFTPClient.from_transport(transport)
    yield client, home
    client.close()
    transport.close()


def test_setstat_truncating_a_file_open_for_writing_does_not_make_its_rewrite_free(ferry, sftp):
    client, home = sftp
    client.putfo(io.BytesIO(random_bytes(SIZE, seed=1)), "f.bin")
    assert used_bytes(ferry, "q") == SIZE
    # OPEN for writing without TRUNC, SETSTAT size=0 on the path, then the old size written again at offset 0.
    handle = client.open("f.bin", "r+")
    client.truncate("f.bin", 0)
    handle.seek(0)
    handle.write(random_bytes(SIZE, seed=2))
    handle.close()
    assert home_usage(home) == SIZE
    assert used_bytes(ferry, "q") == home_usage(home)
    # Before the fix the rewrite was charged nothing, and a second file of the same size fitted the quota. paramiko
    # pipelines the upload's writes, and reports their refusal as a short file.
    with pytest.raises(OSError):
        client.putfo(io.BytesIO(random_bytes(SIZE, seed=3)), "g.bin")
    assert home_usage(home) <= QUOTA
    assert used_bytes(ferry, "q") == home_usage(home)


@pytest.fixture
def atomic_sftp(ferry_factory):
    server = ferry_factory("--failed-login-delay-ms", "0", "--upload-mode", "atomic")
    home = server.add_user("q", "pw", "--quota-bytes", str(QUOTA))
    host, port = server.addresses["sftp"]
    transport = paramiko.Transport((host, port))
    transport.connect(username="q", password="pw")
    client = paramiko.SFTPClient.from_transport(transport)
    yield server, client, home
    client.close()
    transport.close()


def test_an_atomic_replace_whose_old_file_is_removed_meanwhile_ends_within_the_quota(atomic_sftp):
    server, client, home = atomic_sftp
    client.putfo(io.BytesIO(random_bytes(SIZE, seed=4)), "f.bin")
    client.putfo(io.BytesIO(random_bytes(30_000, seed=5)), "other.bin")
    # 90,000 of 100,000 bytes: replacing the 60,000-byte file with as much fits, though both are on disk meanwhile.
    new = random_bytes(SIZE, seed=6)
    client.putfo(io.BytesIO(new), "f.bin")
    assert (home / "f.bin").read_bytes() == new
    assert used_bytes(server, "q") == home_usage(home) == SIZE + 30_000
    # REMOVE of the old file while the new copy is written: its bytes stay counted until the upload ends, so the
    # upload cannot use the room twice.
    handle = client.open("f.bin", "w", bufsize=0)
    handle.write(random_bytes(50_000, seed=7))
    client.remove("f.bin")
    handle.write(random_bytes(20_000, seed=8))
    with pytest.raises(OSError):
        handle.write(b"x")
    handle.close()
    assert home_usage(home) <= QUOTA
    assert used_bytes(server, "q") == home_usage(home)
