"""Upload modes (`--upload-mode direct|atomic`): where an upload's bytes live while it runs, and what is left
when it breaks off. Atomic uploads write to a temporary name and rename on success; an aborted upload of a new file
is moved to its final name so that REST/APPE can resume it; an existing file is never replaced by a partial one."""
import ftplib
import hashlib
import io
import os

import paramiko
import pytest

from helpers_files import wait_until
from helpers_ftplib import close_quietly, code, connect, home, send


def temp_files(directory):
    return [p.name for p in directory.iterdir() if ".ferry-upload-" in p.name]


def start_upload(ftp, name, first_chunk):
    """Starts STOR, sends the first chunk and returns the open data connection."""
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(first_chunk)
    return conn


def abort_upload(ftp, conn):
    """ABOR while the data connection is still open: 426 then 226 (or 226 if the server was already done)."""
    reply = ftp.abort()
    conn.close()
    if reply.startswith("426"):
        assert ftp.getresp().startswith("226")


@pytest.fixture
def atomic(ferry_factory):
    server = ferry_factory("--failed-login-delay-ms", "0", "--upload-mode", "atomic")
    server.add_user("alice", "secret")
    return server


def test_atomic_upload_is_invisible_until_complete(atomic):
    d = home(atomic)
    (d / "report.bin").write_bytes(b"old contents")
    data = os.urandom(3_000_000)
    ftp = connect(atomic)
    conn = start_upload(ftp, "report.bin", data[:1_000_000])
    # While the upload runs, the old file is untouched and the new bytes go to a temporary name.
    wait_until(lambda: temp_files(d))
    assert (d / "report.bin").read_bytes() == b"old contents"
    conn.sendall(data[1_000_000:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert hashlib.sha256((d / "report.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert temp_files(d) == []
    close_quietly(ftp)


def test_atomic_aborted_new_upload_is_kept_for_resume(atomic):
    d = home(atomic)
    data = os.urandom(2_000_000)
    ftp = connect(atomic)
    conn = start_upload(ftp, "new.bin", data[:500_000])
    # Abort only once the server has stored some of it, so that there is something to resume.
    wait_until(lambda: any((d / n).stat().st_size > 0 for n in temp_files(d)))
    abort_upload(ftp, conn)
    kept = (d / "new.bin").read_bytes()
    assert 0 < len(kept) <= 500_000 and data.startswith(kept)
    assert temp_files(d) == []
    # Resume from what the server has.
    offset = ftp.size("new.bin")
    assert offset == len(kept)
    ftp.storbinary("STOR new.bin", io.BytesIO(data[offset:]), rest=offset)
    assert (d / "new.bin").read_bytes() == data
    close_quietly(ftp)


def test_atomic_aborted_upload_never_replaces_an_existing_file(atomic):
    d = home(atomic)
    (d / "keep.txt").write_bytes(b"precious")
    ftp = connect(atomic)
    conn = start_upload(ftp, "keep.txt", os.urandom(300_000))
    abort_upload(ftp, conn)
    assert (d / "keep.txt").read_bytes() == b"precious"
    assert temp_files(d) == []
    close_quietly(ftp)


def test_atomic_mode_appends_in_place(atomic):
    d = home(atomic)
    (d / "log.txt").write_bytes(b"line1\n")
    ftp = connect(atomic)
    ftp.storbinary("APPE log.txt", io.BytesIO(b"line2\n"))
    assert (d / "log.txt").read_bytes() == b"line1\nline2\n"
    assert temp_files(d) == []
    close_quietly(ftp)


def test_direct_aborted_upload_keeps_the_partial_file(ferry):
    d = home(ferry)
    data = os.urandom(1_000_000)
    ftp = connect(ferry)
    conn = start_upload(ftp, "partial.bin", data[:400_000])
    abort_upload(ftp, conn)
    kept = (d / "partial.bin").read_bytes()
    assert data.startswith(kept)
    ftp.sendcmd(f"REST {len(kept)}")
    ftp.storbinary("STOR partial.bin", io.BytesIO(data[len(kept):]))
    assert (d / "partial.bin").read_bytes() == data
    close_quietly(ftp)


def test_direct_aborted_upload_over_a_longer_file_keeps_only_what_arrived(ferry):
    d = home(ferry)
    (d / "replaced.bin").write_bytes(b"o" * 3_000_000)
    data = os.urandom(1_000_000)
    ftp = connect(ferry)
    conn = start_upload(ftp, "replaced.bin", data[:400_000])
    abort_upload(ftp, conn)
    kept = (d / "replaced.bin").read_bytes()
    assert len(kept) <= 400_000 and data.startswith(kept)
    close_quietly(ftp)


def test_a_file_being_replaced_keeps_its_old_contents_until_the_new_ones_arrive(ferry):
    """A replaced file is emptied with its first write, not when STOR opens it; an upload that arrives whole is
    written over the old bytes and cut at its end, so readers never see an empty file in between."""
    d = home(ferry)
    (d / "page.html").write_bytes(b"<old page>" * 1000)
    ftp = connect(ferry)
    conn = ftp.transfercmd("STOR page.html")
    assert (d / "page.html").read_bytes() == b"<old page>" * 1000
    conn.sendall(b"<new page>")
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert (d / "page.html").read_bytes() == b"<new page>"
    close_quietly(ftp)


@pytest.mark.parametrize("size", [0, 10, 3_000_000])
def test_stor_replaces_a_file_of_any_length_with_exactly_the_new_bytes(ferry, size):
    d = home(ferry)
    data = os.urandom(size)
    ftp = connect(ferry)
    for old in (b"", b"x" * 100, b"y" * 5_000_000):
        (d / "r.bin").write_bytes(old)
        ftp.storbinary("STOR r.bin", io.BytesIO(data))
        assert (d / "r.bin").read_bytes() == data, (len(old), size)
    close_quietly(ftp)


def test_upload_events_report_failure_and_success(ferry):
    ftp = connect(ferry)
    conn = start_upload(ftp, "ev.bin", b"x" * 100_000)
    abort_upload(ftp, conn)
    ferry.wait_for_log(r"upload failed.*path=\"?/ev\.bin")
    ftp.storbinary("STOR ev2.bin", io.BytesIO(b"y" * 10))
    ferry.wait_for_log(r"upload ok.*path=\"?/ev2\.bin")
    assert code(send(ftp, "NOOP")) == 200
    close_quietly(ftp)


def test_temporary_files_are_out_of_every_other_session_s_reach(atomic):
    """Another session could rename or delete an upload's temporary file: its data stayed, uncounted, or a file that
    was never counted was given back. Their names are now reserved on every protocol."""
    d = home(atomic)
    (d / "x.bin").write_bytes(b"old")
    data = os.urandom(200_000)
    ftp = connect(atomic)
    conn = start_upload(ftp, "x.bin", data[:100_000])
    wait_until(lambda: temp_files(d))
    temp = temp_files(d)[0]
    other = connect(atomic)
    assert other.nlst() == ["x.bin"]
    lines = []
    other.retrlines("LIST", lines.append)
    assert len(lines) == 1 and lines[0].endswith(" x.bin")
    assert [name for name, facts in other.mlsd() if facts.get("type") == "file"] == ["x.bin"]
    for command in ("SIZE", "MDTM", "MLST", "DELE", "RNFR"):
        assert code(send(other, f"{command} {temp}")) == 550, command
    assert code(send(other, f"MKD {temp}")) == 553
    host, port = atomic.addresses["sftp"]
    transport = paramiko.Transport((host, port))
    transport.connect(username="alice", password="secret")
    sftp = paramiko.SFTPClient.from_transport(transport)
    try:
        assert sftp.listdir("/") == ["x.bin"]
        with pytest.raises(FileNotFoundError):
            sftp.remove(temp)
        with pytest.raises(FileNotFoundError):
            sftp.posix_rename(temp, "stolen.bin")
        with pytest.raises(FileNotFoundError):
            sftp.stat(temp)
    finally:
        sftp.close()
        transport.close()
    conn.sendall(data[100_000:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert (d / "x.bin").read_bytes() == data
    assert sorted(p.name for p in d.iterdir()) == ["x.bin"]
    close_quietly(other)
    close_quietly(ftp)


def test_atomic_upload_does_not_replace_a_file_created_meanwhile_without_overwrite(ferry_factory):
    server = ferry_factory("--failed-login-delay-ms", "0", "--upload-mode", "atomic")
    server.add_user("alice", "secret", "--perm", "list,download,upload,delete,rename")
    d = home(server)
    ftp = connect(server)
    conn = start_upload(ftp, "n.bin", b"a" * 1000)
    wait_until(lambda: temp_files(d))
    other = connect(server)
    other.storbinary("STOR n.bin", io.BytesIO(b"precious"))
    conn.close()
    with pytest.raises(ftplib.error_perm) as refused:
        ftp.voidresp()
    assert str(refused.value).startswith("550")
    assert (d / "n.bin").read_bytes() == b"precious"
    assert temp_files(d) == []
    close_quietly(other)
    close_quietly(ftp)


@pytest.mark.parametrize("mode", ["direct", "atomic"])
def test_rang_then_stor_overwrites_the_range_and_keeps_the_rest(ferry_factory, mode):
    server = ferry_factory("--failed-login-delay-ms", "0", "--upload-mode", mode)
    server.add_user("alice", "secret")
    d = home(server)
    (d / "x").write_bytes(b"0123456789")
    ftp = connect(server)
    ftp.voidcmd("TYPE I")
    assert code(send(ftp, "RANG 0 1")) == 350
    ftp.storbinary("STOR x", io.BytesIO(b"AB"))
    assert (d / "x").read_bytes() == b"AB23456789"
    close_quietly(ftp)
