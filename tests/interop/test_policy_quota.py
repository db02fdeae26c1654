"""Byte and file-count quotas: enforced during uploads (552), freed by deletes, rescanned, persistent."""
import re
import signal

import pytest

from helpers_files import home_usage, put_file, random_bytes
from helpers_ftp import ftp_login, store, upload_expecting_failure

QUOTA = 1_000_000


def avbl(ftp, path=None):
    """AVBL (draft-ietf-ftpext2-avbl): `213 <bytes available>`."""
    reply = ftp.sendcmd("AVBL" + (f" {path}" if path else ""))
    assert reply.startswith("213"), reply
    return int(re.findall(r"\d+", reply[3:])[0])


def assert_quota_exceeded(reply):
    assert reply.startswith("552"), f"expected 552 (exceeded storage allocation), got {reply!r}"


def quota_user(server):
    """Adds user `q` (password `qpw`) with a 1,000,000-byte quota and returns its home."""
    return server.add_user("q", "qpw", "--quota-bytes", str(QUOTA))


def test_upload_larger_than_quota_is_cut_off_with_552(ferry):
    home = quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    reply = upload_expecting_failure(ftp, "STOR big.bin", random_bytes(3_000_000, seed=71))
    assert_quota_exceeded(reply)
    # The session is still usable.
    ftp.voidcmd("NOOP")
    ftp.quit()
    big = home / "big.bin"
    if big.exists():
        assert big.stat().st_size <= QUOTA
    assert home_usage(home) <= QUOTA


def test_uploads_within_quota_work_until_it_is_full_and_delete_frees_space(ferry):
    home = quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    a, b, c = (random_bytes(400_000, seed=s) for s in (72, 73, 74))
    store(ftp, "a.bin", a)
    store(ftp, "b.bin", b)
    assert (home / "a.bin").read_bytes() == a and (home / "b.bin").read_bytes() == b
    # A third 400 kB file would need 1.2 MB.
    assert_quota_exceeded(upload_expecting_failure(ftp, "STOR c.bin", c))
    assert home_usage(home) <= QUOTA
    ftp.delete("a.bin")
    store(ftp, "c.bin", c)
    ftp.quit()
    assert (home / "c.bin").read_bytes() == c
    assert not (home / "a.bin").exists()
    assert home_usage(home) == 800_000


def test_append_counts_against_quota(ferry):
    home = quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    store(ftp, "grow.bin", random_bytes(600_000, seed=75))
    assert_quota_exceeded(upload_expecting_failure(ftp, "APPE grow.bin", random_bytes(600_000, seed=76)))
    ftp.quit()
    assert home_usage(home) <= QUOTA


def test_overwriting_a_file_counts_only_the_difference(ferry):
    home = quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    store(ftp, "same.bin", random_bytes(700_000, seed=77))
    # Replacing a 700 kB file with another 700 kB file needs no extra space.
    new = random_bytes(700_000, seed=78)
    store(ftp, "same.bin", new)
    ftp.quit()
    assert (home / "same.bin").read_bytes() == new


def test_avbl_reports_remaining_bytes(ferry):
    quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    assert avbl(ftp) == QUOTA
    store(ftp, "x.bin", random_bytes(250_000, seed=79))
    assert avbl(ftp) == QUOTA - 250_000
    ftp.delete("x.bin")
    assert avbl(ftp) == QUOTA
    ftp.quit()


def test_file_count_quota_refuses_the_third_file(ferry):
    home = ferry.add_user("qf", "qfpw", "--quota-files", "2")
    ftp = ftp_login(ferry, "qf", "qfpw")
    store(ftp, "one.bin", b"1")
    store(ftp, "two.bin", b"2")
    assert_quota_exceeded(upload_expecting_failure(ftp, "STOR three.bin", b"3"))
    # Overwriting an existing file does not add a file.
    store(ftp, "two.bin", b"2 again")
    ftp.delete("one.bin")
    store(ftp, "three.bin", b"3")
    ftp.quit()
    files = sorted(p.name for p in home.rglob("*") if p.is_file())
    assert files == ["three.bin", "two.bin"]
    assert (home / "two.bin").read_bytes() == b"2 again"


def test_rescan_picks_up_files_added_on_disk(ferry):
    home = quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    store(ftp, "via-ftp.bin", random_bytes(100_000, seed=80))
    assert avbl(ftp) == QUOTA - 100_000
    ftp.quit()
    # An operator copies files straight into the home; the server cannot know until a rescan.
    put_file(home / "on-disk/a.bin", random_bytes(500_000, seed=81))
    put_file(home / "on-disk/b.bin", random_bytes(200_000, seed=82))
    ferry.user("rescan", "q")
    ftp = ftp_login(ferry, "q", "qpw")
    assert avbl(ftp) == QUOTA - 800_000
    # And the enforcement uses the rescanned usage: 300 kB no longer fits.
    assert_quota_exceeded(upload_expecting_failure(ftp, "STOR more.bin", random_bytes(300_000, seed=83)))
    assert home_usage(home) <= QUOTA
    if (home / "more.bin").exists():  # a server may keep the part that fit; it counts, so remove it
        ftp.delete("more.bin")
    store(ftp, "fits.bin", random_bytes(150_000, seed=84))
    ftp.quit()
    assert home_usage(home) <= QUOTA


def test_quota_usage_survives_restart(ferry_factory):
    first = ferry_factory("--failed-login-delay-ms", "0")
    home = quota_user(first)
    ftp = ftp_login(first, "q", "qpw")
    store(ftp, "kept.bin", random_bytes(700_000, seed=85))
    ftp.quit()
    first.stop(signal.SIGTERM)

    second = ferry_factory("--failed-login-delay-ms", "0", data_dir=first.data_dir)
    ftp = ftp_login(second, "q", "qpw")
    assert avbl(ftp) == QUOTA - 700_000
    assert_quota_exceeded(upload_expecting_failure(ftp, "STOR more.bin", random_bytes(400_000, seed=86)))
    ftp.quit()
    assert home_usage(home) <= QUOTA


def test_quota_is_per_user(ferry):
    quota_user(ferry)
    alice_home = ferry.home("alice")
    ftp = ftp_login(ferry)  # alice has no quota
    store(ftp, "large.bin", random_bytes(2_000_000, seed=87))
    ftp.quit()
    assert (alice_home / "large.bin").stat().st_size == 2_000_000
    ftp = ftp_login(ferry, "q", "qpw")
    assert avbl(ftp) == QUOTA
    ftp.quit()


def test_rescan_of_a_home_with_more_directories_than_open_files(ferry):
    """1,500 directories under an open-file limit of 128: the walk used to hold a descriptor for every directory
    waiting to be walked and failed with "Too many open files"."""
    import resource
    import subprocess

    from conftest import FERRY_BIN

    home = ferry.add_user("wide", "widepw")
    for i in range(1500):
        (home / f"d{i:04}" / "inner").mkdir(parents=True)
    put_file(home / "d0007/inner/f.bin", b"x" * 1000)

    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    done = subprocess.run([FERRY_BIN, "user", "rescan", "wide", "--data-dir", str(ferry.data_dir)],
                          capture_output=True, text=True, timeout=60, preexec_fn=few_files)
    assert done.returncode == 0, done.stderr
    listed = [line.split() for line in ferry.user("list").stdout.splitlines()[1:]]
    used = [row[4:6] for row in listed if row[0] == "wide"]
    assert used == [["1000", "1"]], listed


def test_a_stor_whose_data_connection_never_comes_leaves_the_file_as_it_was(ferry):
    """A passive connection that a firewall or NAT blocks must not cost the user the file it was to replace."""
    home = quota_user(ferry)
    ftp = ftp_login(ferry, "q", "qpw")
    old = random_bytes(400_000, seed=80)
    store(ftp, "keep.bin", old)
    assert ftp.sendcmd("EPSV").startswith("229")
    ftp.putcmd("STOR keep.bin")
    assert ftp.getresp().startswith("150")
    reply = ftp.abort()  # before any data connection
    if reply.startswith("426"):
        assert ftp.getresp().startswith("226")
    assert (home / "keep.bin").read_bytes() == old
    assert avbl(ftp) == QUOTA - 400_000
    # The file is still counted: a second one of the same size does not fit beside it.
    assert_quota_exceeded(upload_expecting_failure(ftp, "STOR other.bin", random_bytes(700_000, seed=81)))
    ftp.quit()
    assert home_usage(home) <= QUOTA


@pytest.mark.parametrize("mode", ["direct", "atomic"])
def test_replacing_a_file_needs_room_only_for_the_result_in_either_upload_mode(ferry_factory, mode):
    """At 700 of 1,000 bytes, a 400-byte file is replaced by another 400 bytes: the result fits. Atomic mode writes
    the new copy beside the old one, and used to count both (552)."""
    server = ferry_factory("--failed-login-delay-ms", "0", "--upload-mode", mode)
    home = server.add_user("q", "qpw", "--quota-bytes", "1000")
    ftp = ftp_login(server, "q", "qpw")
    store(ftp, "f.bin", random_bytes(400, seed=90))
    store(ftp, "other.bin", random_bytes(300, seed=91))
    new = random_bytes(400, seed=92)
    assert store(ftp, "f.bin", new).startswith("226")
    assert (home / "f.bin").read_bytes() == new
    assert avbl(ftp) == 300
    # The new copy may take all the room the old one leaves, and not a byte more.
    largest = random_bytes(700, seed=93)
    assert store(ftp, "f.bin", largest).startswith("226")
    assert avbl(ftp) == 0
    assert_quota_exceeded(upload_expecting_failure(ftp, "STOR f.bin", random_bytes(701, seed=94)))
    if mode == "atomic":
        assert (home / "f.bin").read_bytes() == largest
    ftp.quit()
    assert home_usage(home) <= 1000
    assert sorted(p.name for p in home.iterdir()) == ["f.bin", "other.bin"]
