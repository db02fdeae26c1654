"""paramiko's SFTPClient against ferry: transfers, listings, attributes, resume by append and by seek, out-of-order
writes, links, and the status codes paramiko turns into Python exceptions."""
import errno
import os
import stat
import threading

import paramiko
import pytest

from helpers_files import random_bytes, sha256_bytes, sha256_file, write_random
from helpers_sftp import add_key_user, read_remote, sftp_client, write_remote


def test_put_get_with_password_and_key(ferry, tmp_path):
    digest = write_random(tmp_path / "f.bin", 1_500_000, seed=1)
    with sftp_client(ferry) as sftp:
        attrs = sftp.put(str(tmp_path / "f.bin"), "f.bin")
        assert attrs.st_size == 1_500_000
        sftp.get("f.bin", str(tmp_path / "back.bin"))
    assert sha256_file(ferry.home("alice") / "f.bin") == digest
    assert sha256_file(tmp_path / "back.bin") == digest
    home, key = add_key_user(ferry, tmp_path, "bob")
    with sftp_client(ferry, "bob", key=key) as sftp:
        sftp.put(str(tmp_path / "f.bin"), "k.bin")
    assert sha256_file(home / "k.bin") == digest


def test_get_of_a_large_file_asks_for_every_block_at_once(ferry, tmp_path):
    """paramiko's get prefetches: it sends a READ for every 32 KiB block of the file before reading any reply (1,024
    requests here, far past the server's in-flight budget of 64). The server must go on reading them while its
    replies wait for the channel (it hung here, each side waiting for the other)."""
    size = 32 * 1024 * 1024
    digest = write_random(ferry.home("alice") / "big.bin", size, seed=7)
    result = {}

    def get():
        with sftp_client(ferry) as sftp:
            sftp.get("big.bin", str(tmp_path / "big.bin"))
            result["done"] = True

    worker = threading.Thread(target=get, daemon=True)
    worker.start()
    worker.join(120)
    assert result.get("done"), "paramiko get did not finish within 120 s"
    assert sha256_file(tmp_path / "big.bin") == digest


def test_a_file_opened_with_trunc_is_empty_before_the_first_write(ferry):
    """O_TRUNC semantics: FSTAT and READ on a handle opened with TRUNC see an empty file, not the old data."""
    (ferry.home("alice") / "old.txt").write_bytes(b"old data\n")
    with sftp_client(ferry) as sftp:
        with sftp.open("old.txt", "w+") as f:
            assert f.stat().st_size == 0
            assert f.read() == b""
            f.write(b"new\n")
    assert (ferry.home("alice") / "old.txt").read_bytes() == b"new\n"


def test_create_exclusive_and_trunc_apply_without_the_write_flag(ferry):
    """CREAT, EXCL and TRUNC act as open(2)'s flags on a handle opened only for reading, as OpenSSH's sftp-server
    passes them on: paramiko's open(name, "x") is a lock that fails when the file exists. Before, they were ignored
    unless WRITE was set, so the lock was taken twice."""
    home = ferry.home("alice")
    (home / "lock").write_bytes(b"")
    (home / "full.txt").write_bytes(b"some data\n")
    READ, CREAT, TRUNC, EXCL = 0x1, 0x8, 0x10, 0x20

    def open_flags(sftp, name, flags):
        t, msg = sftp._request(paramiko.sftp.CMD_OPEN, name, flags, paramiko.SFTPAttributes())
        sftp._request(paramiko.sftp.CMD_CLOSE, msg.get_binary())

    with sftp_client(ferry) as sftp:
        with pytest.raises(IOError):
            sftp.open("lock", "x")
        with pytest.raises(IOError):
            open_flags(sftp, "lock", READ | CREAT | EXCL)
        sftp.open("new-lock", "x").close()
        open_flags(sftp, "created.txt", READ | CREAT)
        open_flags(sftp, "lock", READ | CREAT)
        open_flags(sftp, "full.txt", READ | TRUNC)
        with pytest.raises(IOError):
            open_flags(sftp, "missing.txt", READ | TRUNC)
    assert (home / "new-lock").read_bytes() == b""
    assert (home / "created.txt").read_bytes() == b""
    assert (home / "full.txt").read_bytes() == b""
    assert not (home / "missing.txt").exists()


def test_listdir_attr_and_stat(ferry):
    home = ferry.home("alice")
    (home / "d").mkdir(parents=True)
    (home / "f").write_bytes(b"12345")
    os.utime(home / "f", (1_600_000_000, 1_600_000_000))
    os.chmod(home / "f", 0o640)
    with sftp_client(ferry) as sftp:
        entries = {a.filename: a for a in sftp.listdir_attr(".")}
        assert set(entries) == {"d", "f"}
        assert stat.S_ISDIR(entries["d"].st_mode)
        assert stat.S_ISREG(entries["f"].st_mode) and entries["f"].st_size == 5
        assert entries["f"].longname.startswith("-rw-r-----")
        st = sftp.stat("f")
        assert st.st_size == 5 and int(st.st_mtime) == 1_600_000_000
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert sftp.normalize(".") == "/"
        assert sftp.normalize("d/../d/./") == "/d"


def test_rename_mkdir_rmdir_remove_chmod_utime(ferry):
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "a.txt", b"a")
        sftp.mkdir("dir")
        sftp.rename("a.txt", "dir/b.txt")
        sftp.chmod("dir/b.txt", 0o604)
        sftp.utime("dir/b.txt", (1_500_000_000, 1_500_000_001))
        assert sftp.listdir("dir") == ["b.txt"]
        st = sftp.stat("dir/b.txt")
        assert stat.S_IMODE(st.st_mode) == 0o604 and int(st.st_mtime) == 1_500_000_001
        # Plain SFTP v3 RENAME does not replace an existing file; posix-rename does.
        write_remote(sftp, "c.txt", b"c")
        with pytest.raises(IOError):
            sftp.rename("c.txt", "dir/b.txt")
        sftp.posix_rename("c.txt", "dir/b.txt")
        assert read_remote(sftp, "dir/b.txt") == b"c"
        with pytest.raises(IOError):
            sftp.rmdir("dir")  # not empty
        sftp.remove("dir/b.txt")
        sftp.rmdir("dir")
    assert list(home.iterdir()) == []


def test_resume_upload_by_append(ferry):
    data = random_bytes(800_000, seed=2)
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "r.bin", data[:300_000])
        with sftp.open("r.bin", "a") as f:
            f.set_pipelined(True)
            f.write(data[300_000:])
    assert sha256_file(home / "r.bin") == sha256_bytes(data)


def test_resume_upload_by_seeking(ferry):
    data = random_bytes(800_000, seed=3)
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "r.bin", data[:250_000])
        size = sftp.stat("r.bin").st_size
        with sftp.open("r.bin", "r+") as f:
            f.seek(size)
            f.set_pipelined(True)
            f.write(data[size:])
    assert sha256_file(home / "r.bin") == sha256_bytes(data)


def test_resume_download_by_seeking(ferry):
    data = random_bytes(600_000, seed=4)
    (ferry.home("alice") / "d.bin").write_bytes(data)
    with sftp_client(ferry) as sftp:
        with sftp.open("d.bin", "rb") as f:
            f.seek(123_457)
            assert f.read() == data[123_457:]


def test_out_of_order_writes_land_at_their_offsets(ferry):
    """SFTP clients may write blocks in any order (e.g. several threads on one handle)."""
    home = ferry.home("alice")
    blocks = [random_bytes(32_768, seed=i) for i in range(8)]
    with sftp_client(ferry) as sftp:
        with sftp.open("o.bin", "w") as f:
            for i in (3, 0, 7, 1, 6, 2, 5, 4):
                f.seek(i * 32_768)
                f.write(blocks[i])
                f.flush()
        # And rewriting a block in the middle of an existing file keeps the rest.
        with sftp.open("o.bin", "r+") as f:
            f.seek(2 * 32_768)
            f.write(b"X" * 100)
    expected = bytearray(b"".join(blocks))
    expected[2 * 32_768:2 * 32_768 + 100] = b"X" * 100
    assert (home / "o.bin").read_bytes() == bytes(expected)


def test_interleaved_writes_to_several_handles(ferry):
    """Pipelined requests on different handles are served in parallel, each handle's in order."""
    files = {f"i{i}.bin": random_bytes(12 * 32_768, seed=10 + i) for i in range(4)}
    with sftp_client(ferry) as sftp:
        handles = {name: sftp.open(name, "wb") for name in files}
        for f in handles.values():
            f.set_pipelined(True)
        for block in range(12):
            for name, f in handles.items():
                f.write(files[name][block * 32_768:(block + 1) * 32_768])
        for f in handles.values():
            f.close()
        for name, data in files.items():
            assert sha256_bytes(read_remote(sftp, name)) == sha256_bytes(data)


def test_parallel_sftp_channels_on_one_connection(ferry):
    """One SSH connection, one SFTP channel per thread (paramiko's SFTPClient itself is not thread-safe)."""
    files = {f"c{i}.bin": random_bytes(400_000, seed=20 + i) for i in range(4)}
    errors = []
    client = sftp_client(ferry)

    def upload(name, data):
        try:
            with paramiko.SFTPClient.from_transport(client.transport) as sftp:
                write_remote(sftp, name, data)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=upload, args=item) for item in files.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        for name, data in files.items():
            assert sha256_file(ferry.home("alice") / name) == sha256_bytes(data)
    finally:
        client.close()


def test_truncate_and_extend(ferry):
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "t.bin", b"0123456789")
        sftp.truncate("t.bin", 4)
        assert (home / "t.bin").read_bytes() == b"0123"
        with sftp.open("t.bin", "r+") as f:
            f.truncate(2)
            f.seek(2)
            f.write(b"ab")
        assert (home / "t.bin").read_bytes() == b"01ab"


def test_errors_map_to_errno(ferry):
    with sftp_client(ferry) as sftp:
        with pytest.raises(FileNotFoundError):
            sftp.stat("missing")
        with pytest.raises(FileNotFoundError):
            sftp.open("missing", "r")
        with pytest.raises(IOError):
            sftp.open("missing/x", "w")
        sftp.mkdir("d")
        with pytest.raises(IOError):
            sftp.mkdir("d")
        with pytest.raises(IOError):
            sftp.open("d", "r").read()


def test_symlinks_stay_inside_the_home(ferry):
    home = ferry.home("alice")
    (home / "sub").mkdir(parents=True)
    (home / "sub/t.txt").write_bytes(b"t")
    with sftp_client(ferry) as sftp:
        sftp.symlink("/sub/t.txt", "abs-link")
        sftp.symlink("t.txt", "sub/rel-link")
        assert sftp.readlink("abs-link") == "sub/t.txt"
        assert read_remote(sftp, "abs-link") == b"t"
        assert read_remote(sftp, "sub/rel-link") == b"t"
        assert stat.S_ISLNK(sftp.lstat("abs-link").st_mode)
        for target in ("../../../etc/passwd", "../..", "sub/../../x"):
            with pytest.raises(PermissionError):
                sftp.symlink(target, "evil")
        assert not os.path.lexists(home / "evil")


def test_many_entries_end_with_eof(ferry):
    home = ferry.home("alice")
    (home / "many").mkdir(parents=True)
    for i in range(333):
        (home / "many" / f"n{i}").write_bytes(b"")
    with sftp_client(ferry) as sftp:
        assert len(sftp.listdir("many")) == 333
        assert len(sftp.listdir_attr("many")) == 333


def test_bad_handles_and_closed_files(ferry):
    with sftp_client(ferry) as sftp:
        f = sftp.open("x", "w")
        f.write(b"abc")
        f.close()
        # paramiko refuses to use a closed file itself; ask the server directly about a handle it never gave out.
        with pytest.raises(IOError):
            sftp._request(paramiko.sftp.CMD_READ, b"no-such-handle", 0, 10)


def test_unicode_and_space_names(ferry):
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        sftp.mkdir("dïr ñame")
        write_remote(sftp, "dïr ñame/fïlé 1.txt", b"u")
        assert sftp.listdir("dïr ñame") == ["fïlé 1.txt"]
    assert (home / "dïr ñame" / "fïlé 1.txt").read_bytes() == b"u"


def test_names_on_disk_that_are_not_utf8_are_listed_escaped_and_work_by_that_name(ferry):
    # A Latin-1 "café.txt": the byte that is not UTF-8 is shown as U+EF00 + byte, a name paramiko can use.
    home = os.fsencode(ferry.home("alice"))
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    escaped = "caf\uefe9.txt"
    with sftp_client(ferry) as sftp:
        assert sftp.listdir(".") == [escaped]
        assert sftp.stat(escaped).st_size == 12
        assert read_remote(sftp, escaped) == b"latin-1 name"
        sftp.rename(escaped, "\uefe9t\uefe9.txt")
        assert os.listdir(home) == [b"\xe9t\xe9.txt"]
        sftp.remove("\uefe9t\uefe9.txt")
        assert os.listdir(home) == []
        # Escapes that spell UTF-8 (C3 A9 is "é") would be a second name for "café.txt": refused.
        with open(os.path.join(home, "caf\u00e9.txt".encode()), "wb") as f:
            f.write(b"utf-8 name")
        with pytest.raises(IOError):
            sftp.remove("caf\uefc3\uefa9.txt")
        assert sftp.listdir(".") == ["caf\u00e9.txt"]


def test_client_disconnecting_mid_upload_leaves_a_resumable_file(ferry):
    home = ferry.home("alice")
    data = random_bytes(400_000, seed=5)
    client = sftp_client(ferry)
    f = client.sftp.open("cut.bin", "w")
    f.write(data[:200_000])
    f.flush()
    client.transport.close()  # no CLOSE: the connection just goes away
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (home / "cut.bin").stat().st_size < 200_000:
        time.sleep(0.05)
    assert (home / "cut.bin").read_bytes() == data[:200_000]
    with sftp_client(ferry) as sftp:
        with sftp.open("cut.bin", "a") as f:
            f.write(data[200_000:])
    assert (home / "cut.bin").read_bytes() == data
    ferry.wait_for_log(r"upload failed.*cut\.bin")


def test_events_name_the_protocol(ferry):
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "e.bin", b"e")
    ferry.wait_for_log(r"upload ok.*protocol=sftp.*path=\"/e\.bin\"")
    ferry.wait_for_log(r"login ok.*user=alice.*protocol=ssh")


def test_open_files_are_limited_by_errno_not_by_a_crash(ferry):
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "h", b"h")
        handles = []
        try:
            for _ in range(300):
                handles.append(sftp.open("h", "r"))
        except IOError as e:
            assert e.errno in (None, errno.EIO) or "handles" in str(e), e
        else:
            pytest.fail("300 open handles were allowed")
        assert len(handles) == 256
        for h in handles[:10]:
            h.close()
        assert read_remote(sftp, "h") == b"h"


def test_atomic_upload_mode_with_out_of_order_writes_and_resume(ferry_factory):
    server = ferry_factory("--upload-mode", "atomic")
    server.add_user("alice", "secret")
    home = server.home("alice")
    blocks = [random_bytes(32_768, seed=30 + i) for i in range(4)]
    with sftp_client(server) as sftp:
        with sftp.open("a.bin", "w") as f:
            for i in (2, 0, 3, 1):
                f.seek(i * 32_768)
                f.write(blocks[i])
                f.flush()
            # Invisible under its name until it is complete.
            assert not (home / "a.bin").exists()
        assert (home / "a.bin").read_bytes() == b"".join(blocks)
        with sftp.open("a.bin", "a") as f:
            f.write(b"tail")
    assert (home / "a.bin").read_bytes() == b"".join(blocks) + b"tail"
    assert sorted(p.name for p in home.iterdir()) == ["a.bin"]


def test_requests_on_a_handle_act_on_the_file_it_opened_after_its_name_is_taken(ferry):
    # OpenSSH's sftp-server works on the descriptor: a rename, and another file taking the name, change nothing.
    home = ferry.home("alice")
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "h.bin", b"B" * 2000)
        with sftp.open("h.bin", "r+") as f:
            sftp.rename("h.bin", "h-renamed.bin")
            write_remote(sftp, "h.bin", b"other")
            assert f.stat().st_size == 2000
            f.seek(1000)
            assert f.read(4) == b"BBBB"
            f.truncate(1)
            assert f.stat().st_size == 1
        assert (home / "h.bin").read_bytes() == b"other"
        assert (home / "h-renamed.bin").read_bytes() == b"B"


def test_a_handle_open_for_reading_acts_on_its_file_after_a_rename_and_a_remove(ferry):
    home = ferry.home("alice")
    data = random_bytes(100_000, seed=61)
    when = 1115269505
    with sftp_client(ferry) as sftp:
        write_remote(sftp, "gone.bin", data)
        with sftp.open("gone.bin", "rb") as f:
            assert f.read(10) == data[:10]
            sftp.rename("gone.bin", "moved.bin")
            write_remote(sftp, "gone.bin", b"other")
            f.chmod(0o600)
            f.utime((when, when))
            with pytest.raises(PermissionError):
                f.truncate(1)
            assert os.stat(home / "moved.bin").st_mtime == when
            assert stat.S_IMODE(os.stat(home / "moved.bin").st_mode) == 0o600
            assert os.stat(home / "gone.bin").st_mtime != when
            assert (home / "gone.bin").read_bytes() == b"other"
            sftp.remove("moved.bin")
            assert f.stat().st_size == len(data)
            f.seek(50_000)
            assert f.read(10) == data[50_000:50_010]
        assert sftp.stat("gone.bin").st_size == 5


def test_atomic_uploads_keep_times_set_on_their_handle_and_read_what_they_wrote(ferry_factory):
    # `sftp put -p`: OPEN with TRUNC, WRITEs, FSETSTAT, CLOSE; the times go to the file being written.
    server = ferry_factory("--upload-mode", "atomic")
    server.add_user("alice", "secret")
    home = server.home("alice")
    when = 1115269505
    (home / "old.bin").write_bytes(b"the old file")
    os.utime(home / "old.bin", (1262304000, 1262304000))
    with sftp_client(server) as sftp:
        for name in ("new.bin", "old.bin"):
            with sftp.open(name, "w") as f:
                f.write(b"new data")
                f.flush()
                f.chmod(0o600)
                f.utime((when, when))
            assert (home / name).read_bytes() == b"new data"
            assert os.stat(home / name).st_mtime == when
            assert stat.S_IMODE(os.stat(home / name).st_mode) == 0o600
        with sftp.open("old.bin", "w+") as f:
            f.write(b"xyz")
            f.flush()
            assert f.stat().st_size == 3
            f.seek(0)
            assert f.read() == b"xyz"
            f.truncate(2)
            assert f.stat().st_size == 2
            assert (home / "old.bin").read_bytes() == b"new data"
        assert (home / "old.bin").read_bytes() == b"xy"
    assert sorted(p.name for p in home.iterdir()) == ["new.bin", "old.bin"]


def test_a_read_handle_sees_what_was_appended_after_it_was_opened(ferry):
    """A read at an offset past the size the file had when the handle was opened returns what has been appended
    since, as with OpenSSH (the reviewer saw EOF there)."""
    path = ferry.home("alice") / "growing.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"a" * 100)
    with sftp_client(ferry) as sftp:
        with sftp.open("growing.log", "r") as f:
            assert len(f.read(10)) == 10
            with open(path, "ab") as out:
                out.write(b"b" * 50)
            f.seek(120)
            assert f.read(100) == b"b" * 30
