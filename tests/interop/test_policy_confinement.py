"""Confinement: a user can never read, write or list anything outside their home, whatever path or link is used."""
import ftplib
import os
import socket

import pytest

from helpers_files import put_file
from helpers_ftp import RawFtp, expect_error, ftp_login, parse_pasv, retrieve, store, upload_expecting_failure

SECRET = b"TOP SECRET outside the home\n"


@pytest.fixture
def setup(ferry, tmp_path):
    """alice's home plus files outside it: another user's file, a sibling of the homes, and one far away."""
    ferry.add_user("bob", "bobpw")
    home = ferry.home("alice")
    home.mkdir(parents=True, exist_ok=True)
    put_file(home / "mine.txt", b"alice's own file\n")
    outside = {
        "bob": put_file(ferry.home("bob") / "bob-secret.txt", SECRET),
        "sibling": put_file(home.parent / "secret.txt", SECRET),  # data_dir/files/secret.txt
        "far": put_file(tmp_path / "far" / "far-secret.txt", SECRET),
    }
    return home, outside


def assert_outside_untouched(ferry, tmp_path):
    for p in (ferry.home("bob") / "bob-secret.txt", ferry.home("alice").parent / "secret.txt",
              tmp_path / "far" / "far-secret.txt"):
        assert p.read_bytes() == SECRET, f"{p} was modified"


def test_cwd_dotdot_at_root_stays_at_root(ferry, setup):
    ftp = ftp_login(ferry)
    assert ftp.pwd() == "/"
    for target in ("..", "../..", "/..", "/../../..", "../../../../../../.."):
        try:
            ftp.cwd(target)
        except ftplib.error_perm as e:
            assert str(e).startswith("550"), e
        assert ftp.pwd() == "/", f"after CWD {target}"
    # CDUP at the root is the same thing.
    try:
        ftp.sendcmd("CDUP")
    except ftplib.error_perm as e:
        assert str(e).startswith("550"), e
    assert ftp.pwd() == "/"
    # And the root really is the home: alice's own file is there, nothing from the parent directory is.
    names = ftp.nlst()
    assert any(n.rsplit("/", 1)[-1] == "mine.txt" for n in names), names
    assert not any(n.rsplit("/", 1)[-1] in ("bob", "secret.txt", "alice") for n in names), names
    ftp.quit()


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "/../../../../../../etc/passwd",
        "../bob/bob-secret.txt",
        "/../bob/bob-secret.txt",
        "../secret.txt",
        "sub/../../secret.txt",
        "./../secret.txt",
        "..\\secret.txt",
        "%2e%2e/secret.txt",
    ],
)
def test_retr_outside_home_is_refused(ferry, setup, path):
    ftp = ftp_login(ferry)
    ftp.voidcmd("TYPE I")
    expect_error("550", retrieve, ftp, path)
    # SIZE and MDTM must not leak information about files outside the home either.
    expect_error("550", ftp.sendcmd, f"SIZE {path}")
    ftp.quit()


def test_dotdot_resolves_inside_the_home(ferry, setup):
    """`/sub/../mine.txt` is alice's /mine.txt: `..` is resolved in the virtual tree, not refused blindly."""
    ftp = ftp_login(ferry)
    home, _ = setup
    (home / "sub").mkdir()
    assert retrieve(ftp, "sub/../mine.txt") == b"alice's own file\n"
    assert retrieve(ftp, "/sub/./../mine.txt") == b"alice's own file\n"
    ftp.quit()


@pytest.mark.parametrize("link_kind", ["absolute", "relative", "other-user"])
def test_symlink_to_outside_file_cannot_be_read_or_written(ferry, setup, tmp_path, link_kind):
    home, _ = setup
    target = {
        "absolute": str(tmp_path / "far" / "far-secret.txt"),
        "relative": "../secret.txt",
        "other-user": "../bob/bob-secret.txt",
    }[link_kind]
    os.symlink(target, home / "link.txt")
    ftp = ftp_login(ferry)
    expect_error("550", retrieve, ftp, "link.txt")
    # Writing through the link must not reach the outside file. (Replacing the link itself by a regular
    # file would be acceptable; following it is not.)
    upload_expecting_failure(ftp, "STOR link.txt", b"overwritten through a symlink\n")
    upload_expecting_failure(ftp, "APPE link.txt", b"appended through a symlink\n")
    ftp.quit()
    assert_outside_untouched(ferry, tmp_path)


def test_symlinked_directory_pointing_outside_is_not_traversable(ferry, setup, tmp_path):
    home, _ = setup
    os.symlink(str(tmp_path / "far"), home / "linkdir")
    ftp = ftp_login(ferry)
    # Listing through the link fails, or at least shows nothing from outside.
    for cmd in ("LIST linkdir", "NLST linkdir", "MLSD linkdir", "LIST linkdir/", "NLST linkdir/."):
        lines = []
        try:
            ftp.retrlines(cmd, lines.append)
        except ftplib.error_perm:
            pass
        assert not any("far-secret" in l for l in lines), (cmd, lines)
    try:
        ftp.cwd("linkdir")
        entered = True
    except ftplib.error_perm as e:
        assert str(e).startswith("550"), e
        entered = False
    if entered:
        lines = []
        try:
            ftp.retrlines("LIST", lines.append)
        except ftplib.error_perm:
            pass
        assert not any("far-secret" in l for l in lines), lines
        ftp.cwd("/")
    expect_error("550", retrieve, ftp, "linkdir/far-secret.txt")
    upload_expecting_failure(ftp, "STOR linkdir/planted.txt", b"planted\n")
    try:
        ftp.mkd("linkdir/planted-dir")
    except ftplib.error_perm:
        pass
    ftp.quit()
    assert sorted(os.listdir(tmp_path / "far")) == ["far-secret.txt"]
    assert_outside_untouched(ferry, tmp_path)


def test_rename_cannot_move_files_out_of_the_home(ferry, setup, tmp_path):
    home, _ = setup
    ftp = ftp_login(ferry)
    for dest in ("../moved.txt", "/../../moved.txt", "../bob/moved.txt"):
        try:
            ftp.rename("mine.txt", dest)
        except ftplib.error_perm:
            pass
        # Wherever it went, it is still inside alice's home.
        assert not (home.parent / "moved.txt").exists()
        assert not (ferry.home("bob") / "moved.txt").exists()
        found = [p for p in home.rglob("*") if p.name in ("mine.txt", "moved.txt")]
        assert len(found) == 1, found
        if found[0].name == "moved.txt":
            ftp.rename(found[0].relative_to(home).as_posix(), "mine.txt")
    # Renaming something from outside into the home is refused too.
    expect_error("550", ftp.rename, "../secret.txt", "stolen.txt")
    expect_error("550", ftp.rename, "../bob/bob-secret.txt", "stolen.txt")
    assert not (home / "stolen.txt").exists()
    ftp.quit()
    assert_outside_untouched(ferry, tmp_path)


def test_delete_outside_home_is_refused(ferry, setup, tmp_path):
    ftp = ftp_login(ferry)
    for path in ("../secret.txt", "../bob/bob-secret.txt", "/../secret.txt"):
        expect_error("550", ftp.delete, path)
    for path in ("../bob", "/../bob", ".."):
        expect_error("550", ftp.rmd, path)
    ftp.quit()
    assert_outside_untouched(ferry, tmp_path)
    assert ferry.home("bob").is_dir()
    assert (ferry.home("alice") / "mine.txt").is_file()


def test_mkd_dotdot_creates_nothing_outside_home(ferry, setup):
    home, _ = setup
    files_dir = home.parent
    data_dir = ferry.data_dir
    before_files = sorted(os.listdir(files_dir))
    ftp = ftp_login(ferry)
    for path in ("../escape", "/../../escape2", "../../escape3", "sub/../../escape4"):
        try:
            reply = ftp.mkd(path)
        except ftplib.error_perm:
            continue
        # If it was accepted, the directory was made inside the home, and the reply names a virtual path.
        assert not reply.startswith(str(files_dir)), reply
    ftp.quit()
    assert sorted(os.listdir(files_dir)) == before_files
    for name in ("escape", "escape2", "escape3", "escape4"):
        for parent in (files_dir, data_dir, data_dir.parent):
            assert not (parent / name).exists(), parent / name


def test_stor_dotdot_writes_inside_home_only(ferry, setup, tmp_path):
    home, _ = setup
    files_dir = home.parent
    before = sorted(os.listdir(files_dir))
    ftp = ftp_login(ferry)
    for path in ("../up-escape.txt", "/../../up-escape.txt", "../bob/up-escape.txt"):
        reply = upload_expecting_failure(ftp, f"STOR {path}", b"escape attempt\n")
        assert reply[:1] in "25", reply
    ftp.quit()
    assert sorted(os.listdir(files_dir)) == before
    assert not (ferry.home("bob") / "up-escape.txt").exists()
    assert_outside_untouched(ferry, tmp_path)


@pytest.mark.parametrize("verb", ["RETR", "MKD", "DELE", "CWD", "SIZE", "STOR"])
def test_nul_byte_in_path_is_refused(ferry, setup, verb):
    home, _ = setup
    with RawFtp(ferry.host, ferry.port) as c:
        assert c.login().startswith("230")
        c.cmd("TYPE I")
        # Open a passive data connection first, so a server that (wrongly) accepted the path would go on to
        # transfer instead of failing for want of a data connection.
        host, port = parse_pasv(c.cmd("PASV"))
        data = socket.create_connection((host, port), timeout=10)
        reply = c.cmd(f"{verb} mine.txt\x00../../secret.txt")
        data.close()
        assert reply[:1] == "5", f"{verb} with a NUL byte: {reply!r}"
    assert sorted(p.name for p in home.iterdir()) == ["mine.txt"]
    assert (home / "mine.txt").read_bytes() == b"alice's own file\n"
    ftp = ftp_login(ferry)
    ftp.voidcmd("NOOP")
    ftp.quit()


def test_listings_do_not_show_link_targets_outside_the_home(ferry, setup, tmp_path):
    """A link's target that leads outside the home would show the server's paths: LIST leaves it out (the link is
    still listed); a target inside the home is shown."""
    home, _ = setup
    os.symlink(str(tmp_path / "far" / "far-secret.txt"), home / "abs-link")
    os.symlink("../secret.txt", home / "rel-link")
    os.symlink("mine.txt", home / "inside-link")
    ftp = ftp_login(ferry)
    for cmd in ("LIST", "LIST -a"):
        lines = []
        ftp.retrlines(cmd, lines.append)
        by_name = {l.split(" -> ")[0].split()[-1]: l for l in lines}
        assert set(by_name) >= {"abs-link", "rel-link", "inside-link"}, lines
        assert by_name["inside-link"].endswith("inside-link -> mine.txt"), lines
        for name in ("abs-link", "rel-link"):
            assert by_name[name].endswith(f" {name}"), lines
        assert not any("far" in l or "secret" in l for l in lines), lines
    stat = ftp.sendcmd("STAT .")
    assert "secret" not in stat and "far" not in stat, stat
    ftp.quit()


def test_home_symlink_inside_home_still_works(ferry, setup):
    """Links that stay inside the home are not refused for being links (the check is about the target)."""
    home, _ = setup
    os.symlink("mine.txt", home / "inside-link.txt")
    ftp = ftp_login(ferry)
    try:
        data = retrieve(ftp, "inside-link.txt")
    except ftplib.error_perm as e:
        pytest.skip(f"server refuses all symlinks ({e}); acceptable but stricter than needed")
    assert data == b"alice's own file\n"
    ftp.quit()


def test_other_users_are_confined_to_their_own_home(ferry, setup, tmp_path):
    ftp = ftp_login(ferry, "bob", "bobpw")
    assert retrieve(ftp, "bob-secret.txt") == SECRET
    expect_error("550", retrieve, ftp, "../alice/mine.txt")
    store(ftp, "bob-new.txt", b"bob's\n")
    ftp.quit()
    assert (ferry.home("bob") / "bob-new.txt").read_bytes() == b"bob's\n"
    assert not (ferry.home("alice") / "bob-new.txt").exists()


def test_special_files_in_a_home_are_refused_at_once(ferry, setup):
    """A FIFO an administrator left in a home: opening it used to wait for its other end on a storage thread,
    for ever (RETR never answered, and enough of them took every storage thread). Now every way of opening it
    is refused at once, and the session goes on."""
    from helpers_sftp import sftp_client

    home, _ = setup
    os.mkfifo(home / "pipe")
    ftp = ftp_login(ferry)
    ftp.sock.settimeout(20)
    reply = expect_error("550", retrieve, ftp, "pipe")
    assert "regular file" in reply, reply
    expect_error("550", store, ftp, "pipe", b"data")
    expect_error("550", ftp.sendcmd, "XSHA256 pipe")
    assert retrieve(ftp, "mine.txt") == b"alice's own file\n"
    ftp.quit()
    with sftp_client(ferry) as sftp:
        sftp.get_channel().settimeout(20)
        for mode in ("rb", "wb", "ab"):
            with pytest.raises(IOError):
                sftp.open("pipe", mode)
        assert sftp.open("mine.txt", "rb").read() == b"alice's own file\n"
