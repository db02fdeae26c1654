"""Python ftplib against ferry: working directory, directory and file management (RFC 959 4.1.1-4.1.3, App. II)."""
import ftplib
import os

import pytest

from helpers_ftplib import close_quietly, code, connect, home, retr_bytes, send


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


def test_pwd_is_root_after_login(ftp):
    reply = send(ftp, "PWD")
    assert code(reply) == 257, reply
    assert ftplib.parse257(reply) == "/"


def test_xpwd_is_pwd(ftp):
    reply = send(ftp, "XPWD")
    assert code(reply) == 257, reply
    assert ftplib.parse257(reply) == "/"


def test_cwd_into_a_directory_and_back(ferry, ftp):
    (home(ferry) / "docs" / "inner").mkdir(parents=True)
    assert code(send(ftp, "CWD docs")) == 250
    assert ftp.pwd() == "/docs"
    assert code(send(ftp, "CWD inner")) == 250
    assert ftp.pwd() == "/docs/inner"
    assert code(send(ftp, "CWD /")) == 250
    assert ftp.pwd() == "/"
    assert code(send(ftp, "CWD /docs/inner")) == 250
    assert ftp.pwd() == "/docs/inner"
    assert code(send(ftp, "CWD ..")) == 250
    assert ftp.pwd() == "/docs"


def test_xcwd_changes_directory(ferry, ftp):
    (home(ferry) / "docs").mkdir()
    assert code(send(ftp, "XCWD docs")) == 250
    assert ftp.pwd() == "/docs"


def test_cdup_goes_to_the_parent(ferry, ftp):
    (home(ferry) / "a" / "b").mkdir(parents=True)
    ftp.cwd("/a/b")
    reply = send(ftp, "CDUP")
    assert code(reply) in (200, 250), reply  # RFC 959 says 200; RFC 1123 4.1.2.3 allows 250 too
    assert ftp.pwd() == "/a"
    reply = send(ftp, "XCUP")
    assert code(reply) in (200, 250), reply
    assert ftp.pwd() == "/"


def test_cannot_go_above_the_home_directory(ftp):
    send(ftp, "CDUP")
    assert ftp.pwd() == "/"
    send(ftp, "CWD ..")
    assert ftp.pwd() == "/"
    send(ftp, "CWD /../../..")
    assert ftp.pwd() == "/"


def test_relative_paths_resolve_against_the_working_directory(ferry, ftp):
    (home(ferry) / "d").mkdir()
    (home(ferry) / "d" / "f.txt").write_bytes(b"inside d")
    (home(ferry) / "top.txt").write_bytes(b"at the top")
    ftp.cwd("d")
    assert retr_bytes(ftp, "f.txt") == b"inside d"
    assert retr_bytes(ftp, "../top.txt") == b"at the top"
    assert retr_bytes(ftp, "/top.txt") == b"at the top"
    assert retr_bytes(ftp, "/d/f.txt") == b"inside d"


def test_cwd_to_a_file_gets_550(ferry, ftp):
    (home(ferry) / "plain.txt").write_bytes(b"x")
    reply = send(ftp, "CWD plain.txt")
    assert code(reply) == 550, reply
    assert ftp.pwd() == "/"


def test_cwd_to_a_missing_directory_gets_550(ftp):
    reply = send(ftp, "CWD no-such-dir")
    assert code(reply) == 550, reply
    assert ftp.pwd() == "/"


def test_mkd_creates_a_directory_and_replies_257_with_its_quoted_path(ferry, ftp):
    reply = send(ftp, "MKD newdir")
    assert code(reply) == 257, reply
    assert reply[4] == '"', f"257 reply must start with the quoted pathname: {reply}"
    assert ftplib.parse257(reply) in ("/newdir", "newdir")
    assert (home(ferry) / "newdir").is_dir()


def test_mkd_in_a_subdirectory_returns_a_usable_path(ferry, ftp):
    (home(ferry) / "parent").mkdir()
    ftp.cwd("parent")
    reply = send(ftp, "MKD child")
    assert code(reply) == 257, reply
    created = ftplib.parse257(reply)
    assert created in ("/parent/child", "child")
    # RFC 959 Appendix II: the returned name must be usable with CWD.
    ftp.cwd(created)
    assert ftp.pwd() == "/parent/child"
    assert (home(ferry) / "parent" / "child").is_dir()


def test_mkd_doubles_quotes_in_the_257_reply(ferry, ftp):
    reply = send(ftp, 'MKD say"hi')
    assert code(reply) == 257, reply
    assert 'say""hi' in reply, f'RFC 959 Appendix II: embedded quotes are doubled: {reply}'
    assert ftplib.parse257(reply).endswith('say"hi')
    assert (home(ferry) / 'say"hi').is_dir()


def test_xmkd_creates_a_directory(ferry, ftp):
    reply = send(ftp, "XMKD xdir")
    assert code(reply) == 257, reply
    assert (home(ferry) / "xdir").is_dir()


def test_rmd_removes_an_empty_directory(ferry, ftp):
    (home(ferry) / "gone").mkdir()
    reply = send(ftp, "RMD gone")
    assert code(reply) == 250, reply
    assert not (home(ferry) / "gone").exists()


def test_xrmd_removes_an_empty_directory(ferry, ftp):
    (home(ferry) / "xgone").mkdir()
    reply = send(ftp, "XRMD xgone")
    assert code(reply) == 250, reply
    assert not (home(ferry) / "xgone").exists()


def test_dele_removes_a_file(ferry, ftp):
    (home(ferry) / "trash.txt").write_bytes(b"bye")
    reply = send(ftp, "DELE trash.txt")
    assert code(reply) == 250, reply
    assert not (home(ferry) / "trash.txt").exists()


def test_rnfr_rnto_renames_a_file(ferry, ftp):
    data = os.urandom(4096)
    (home(ferry) / "old.bin").write_bytes(data)
    reply = send(ftp, "RNFR old.bin")
    assert code(reply) == 350, reply
    reply = send(ftp, "RNTO new.bin")
    assert code(reply) == 250, reply
    assert not (home(ferry) / "old.bin").exists()
    assert (home(ferry) / "new.bin").read_bytes() == data


def test_rnfr_rnto_moves_a_file_into_a_directory(ferry, ftp):
    (home(ferry) / "dest").mkdir()
    (home(ferry) / "mover.txt").write_bytes(b"moving")
    assert code(send(ftp, "RNFR mover.txt")) == 350
    assert code(send(ftp, "RNTO dest/moved.txt")) == 250
    assert (home(ferry) / "dest" / "moved.txt").read_bytes() == b"moving"
    assert not (home(ferry) / "mover.txt").exists()


def test_rnfr_rnto_renames_a_directory(ferry, ftp):
    (home(ferry) / "olddir").mkdir()
    (home(ferry) / "olddir" / "kept.txt").write_bytes(b"kept")
    assert code(send(ftp, "RNFR olddir")) == 350
    assert code(send(ftp, "RNTO newdir")) == 250
    assert (home(ferry) / "newdir" / "kept.txt").read_bytes() == b"kept"
    assert not (home(ferry) / "olddir").exists()


def test_ftplib_rename_helper_works(ferry, ftp):
    (home(ferry) / "a.txt").write_bytes(b"a")
    ftp.rename("a.txt", "b.txt")
    assert (home(ferry) / "b.txt").read_bytes() == b"a"


def test_paths_with_spaces_and_unicode(ferry, ftp):
    name = "my dir ünïcødé 世界"
    ftp.mkd(name)
    assert (home(ferry) / name).is_dir()
    ftp.cwd(name)
    assert ftp.pwd() == "/" + name
