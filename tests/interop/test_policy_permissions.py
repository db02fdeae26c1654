"""Per-user and per-directory permissions, and read-only anonymous access."""
import ftplib
import os

import pytest

from helpers_files import put_file, random_bytes, sha256_bytes, tree_snapshot
from helpers_ftp import expect_error, ftp_login, retrieve, store, upload_expecting_failure

CONTENT = b"existing content\n"


def populate(home):
    home.mkdir(parents=True, exist_ok=True)
    put_file(home / "existing.txt", CONTENT)
    put_file(home / "dir/nested.txt", b"nested\n")
    (home / "emptydir").mkdir(exist_ok=True)
    os.utime(home / "existing.txt", (1_000_000_000, 1_000_000_000))
    os.chmod(home / "existing.txt", 0o644)


def snapshot(home):
    files, dirs = tree_snapshot(home)
    st = (home / "existing.txt").stat()
    return files, dirs, st.st_mtime, st.st_mode


def assert_refused(reply):
    assert reply.startswith("550"), reply


def assert_rename_refused(ftp, src, dst):
    """RNFR may already be refused (550); if the server defers the check, RNTO must be refused."""
    try:
        resp = ftp.sendcmd(f"RNFR {src}")
    except ftplib.error_perm as e:
        assert_refused(str(e))
        return
    assert resp.startswith("350"), resp
    assert_refused(expect_error("550", ftp.sendcmd, f"RNTO {dst}"))


@pytest.fixture
def reader(ferry):
    home = ferry.add_user("reader", "readpw", "--perm", "read")
    populate(home)
    return home


def test_read_only_user_can_list_and_download(ferry, reader):
    ftp = ftp_login(ferry, "reader", "readpw")
    names = sorted(n.rsplit("/", 1)[-1] for n in ftp.nlst())
    assert names == ["dir", "emptydir", "existing.txt"]
    lines = []
    ftp.retrlines("LIST dir", lines.append)
    assert any("nested.txt" in l for l in lines), lines
    assert retrieve(ftp, "existing.txt") == CONTENT
    assert retrieve(ftp, "dir/nested.txt") == b"nested\n"
    ftp.cwd("dir")
    ftp.cwd("/")
    ftp.quit()


def test_read_only_user_cannot_change_anything(ferry, reader):
    before = snapshot(reader)
    ftp = ftp_login(ferry, "reader", "readpw")
    assert_refused(upload_expecting_failure(ftp, "STOR new.txt", b"new\n"))
    assert_refused(upload_expecting_failure(ftp, "STOR existing.txt", b"overwrite\n"))
    assert_refused(upload_expecting_failure(ftp, "APPE existing.txt", b"append\n"))
    assert_refused(upload_expecting_failure(ftp, "STOU", b"unique\n"))
    assert_refused(expect_error("550", ftp.delete, "existing.txt"))
    assert_refused(expect_error("550", ftp.mkd, "newdir"))
    assert_refused(expect_error("550", ftp.rmd, "emptydir"))
    assert_rename_refused(ftp, "existing.txt", "renamed.txt")
    assert_rename_refused(ftp, "dir", "dir2")
    assert_refused(expect_error("550", ftp.sendcmd, "SITE CHMOD 777 existing.txt"))
    assert_refused(expect_error("550", ftp.sendcmd, "MFMT 20200102030405 existing.txt"))
    ftp.quit()
    assert snapshot(reader) == before


@pytest.fixture
def uploader(ferry):
    home = ferry.add_user("uploader", "uppw", "--perm", "list,download,upload")
    populate(home)
    return home


def test_upload_permission_allows_new_files(ferry, uploader):
    ftp = ftp_login(ferry, "uploader", "uppw")
    data = random_bytes(100_000, seed=61)
    store(ftp, "brand-new.bin", data)
    store(ftp, "dir/also-new.bin", data)
    ftp.quit()
    assert sha256_bytes((uploader / "brand-new.bin").read_bytes()) == sha256_bytes(data)
    assert (uploader / "dir/also-new.bin").read_bytes() == data


def test_upload_without_overwrite_cannot_replace_or_delete(ferry, uploader):
    ftp = ftp_login(ferry, "uploader", "uppw")
    assert_refused(upload_expecting_failure(ftp, "STOR existing.txt", b"replaced\n"))
    store(ftp, "mine.bin", b"first version\n")
    # Its own upload is now an existing file: replacing it needs `overwrite` too.
    assert_refused(upload_expecting_failure(ftp, "STOR mine.bin", b"second version\n"))
    assert_refused(expect_error("550", ftp.delete, "existing.txt"))
    assert_refused(expect_error("550", ftp.delete, "mine.bin"))
    assert_refused(expect_error("550", ftp.mkd, "newdir"))
    assert_rename_refused(ftp, "mine.bin", "other.bin")
    ftp.quit()
    assert (uploader / "existing.txt").read_bytes() == CONTENT
    assert (uploader / "mine.bin").read_bytes() == b"first version\n"
    assert not (uploader / "newdir").exists()


def test_overwrite_permission_allows_replacing(ferry):
    home = ferry.add_user("over", "overpw", "--perm", "list,download,upload,overwrite")
    populate(home)
    ftp = ftp_login(ferry, "over", "overpw")
    store(ftp, "existing.txt", b"replaced\n")
    assert_refused(expect_error("550", ftp.delete, "existing.txt"))
    ftp.quit()
    assert (home / "existing.txt").read_bytes() == b"replaced\n"


def test_dir_perm_allows_upload_only_in_incoming(ferry):
    home = ferry.add_user("dropper", "droppw", "--perm", "read", "--dir-perm", "/incoming=list,upload")
    populate(home)
    (home / "incoming").mkdir()
    ftp = ftp_login(ferry, "dropper", "droppw")
    data = random_bytes(50_000, seed=62)
    store(ftp, "/incoming/drop.bin", data)
    ftp.cwd("/incoming")
    store(ftp, "relative.bin", b"relative\n")
    ftp.cwd("/")
    assert (home / "incoming/drop.bin").read_bytes() == data
    assert (home / "incoming/relative.bin").read_bytes() == b"relative\n"
    # Outside /incoming the user is read-only.
    assert_refused(upload_expecting_failure(ftp, "STOR /outside.bin", b"no\n"))
    assert_refused(upload_expecting_failure(ftp, "STOR /dir/outside.bin", b"no\n"))
    # Inside /incoming only list and upload: no download, delete, overwrite, mkdir or rename.
    names = sorted(n.rsplit("/", 1)[-1] for n in ftp.nlst("/incoming"))
    assert names == ["drop.bin", "relative.bin"]
    assert_refused(expect_error("550", retrieve, ftp, "/incoming/drop.bin"))
    assert_refused(expect_error("550", ftp.delete, "/incoming/drop.bin"))
    assert_refused(upload_expecting_failure(ftp, "STOR /incoming/drop.bin", b"overwrite\n"))
    assert_refused(expect_error("550", ftp.mkd, "/incoming/sub"))
    assert_rename_refused(ftp, "/incoming/drop.bin", "/incoming/renamed.bin")
    # Moving a file into the upload area is a write there but a rename needs `rename`: refused.
    assert_rename_refused(ftp, "/existing.txt", "/incoming/existing.txt")
    # The rest of the home is still readable.
    assert retrieve(ftp, "/existing.txt") == CONTENT
    ftp.quit()
    assert not (home / "outside.bin").exists()
    assert not (home / "dir/outside.bin").exists()
    assert (home / "incoming/drop.bin").read_bytes() == data
    assert sorted(p.name for p in (home / "incoming").iterdir()) == ["drop.bin", "relative.bin"]


def test_dir_perm_applies_to_subdirectories(ferry):
    home = ferry.add_user("sub", "subpw", "--perm", "read", "--dir-perm", "/incoming=list,upload")
    populate(home)
    (home / "incoming/deeper/deepest").mkdir(parents=True)
    ftp = ftp_login(ferry, "sub", "subpw")
    store(ftp, "/incoming/deeper/deepest/x.bin", b"deep\n")
    ftp.quit()
    assert (home / "incoming/deeper/deepest/x.bin").read_bytes() == b"deep\n"


def test_dir_perm_does_not_match_a_prefix_sibling(ferry):
    """`/incoming` rules must not apply to `/incoming-other` (path components, not string prefixes)."""
    home = ferry.add_user("pre", "prepw", "--perm", "read", "--dir-perm", "/incoming=list,upload")
    populate(home)
    (home / "incoming").mkdir()
    (home / "incoming-other").mkdir()
    ftp = ftp_login(ferry, "pre", "prepw")
    assert_refused(upload_expecting_failure(ftp, "STOR /incoming-other/x.bin", b"no\n"))
    ftp.quit()
    assert not (home / "incoming-other/x.bin").exists()


def test_dir_perm_can_take_away_rights(ferry):
    """An all-permissions user with a read-only subtree cannot change that subtree."""
    home = ferry.add_user("mostly", "mostlypw", "--perm", "all", "--dir-perm", "/archive=list,download")
    populate(home)
    put_file(home / "archive/old.txt", b"old\n")
    ftp = ftp_login(ferry, "mostly", "mostlypw")
    store(ftp, "/free.txt", b"free\n")
    assert retrieve(ftp, "/archive/old.txt") == b"old\n"
    assert_refused(upload_expecting_failure(ftp, "STOR /archive/new.txt", b"no\n"))
    assert_refused(expect_error("550", ftp.delete, "/archive/old.txt"))
    ftp.quit()
    assert (home / "free.txt").read_bytes() == b"free\n"
    assert sorted(p.name for p in (home / "archive").iterdir()) == ["old.txt"]


def test_a_directory_with_rules_inside_cannot_be_moved_out_from_under_them(ferry):
    """Permissions follow paths: renaming /projects (which holds the read-only /projects/archive) to /p2 would let
    the archive be changed as /p2/archive. Such a rename is refused, over FTP as over SFTP (same core)."""
    home = ferry.add_user("mover", "moverpw", "--perm", "all", "--dir-perm", "/projects/archive=list,download")
    put_file(home / "projects/archive/old.txt", b"old\n")
    put_file(home / "projects/plain/a.txt", b"a\n")
    ftp = ftp_login(ferry, "mover", "moverpw")
    assert_refused(expect_error("550", ftp.rename, "/projects", "/p2"))
    assert_refused(expect_error("550", ftp.rename, "/projects/archive", "/archive2"))
    # Directories without rules inside still move, and so do files.
    ftp.rename("/projects/plain", "/plain2")
    ftp.rename("/plain2/a.txt", "/plain2/b.txt")
    assert_refused(expect_error("550", ftp.delete, "/projects/archive/old.txt"))
    ftp.quit()
    assert (home / "projects/archive/old.txt").read_bytes() == b"old\n"
    assert (home / "plain2/b.txt").read_bytes() == b"a\n"


def test_no_list_permission_refuses_listing(ferry):
    home = ferry.add_user("blind", "blindpw", "--perm", "download")
    populate(home)
    ftp = ftp_login(ferry, "blind", "blindpw")
    assert_refused(expect_error("550", ftp.retrlines, "LIST", lambda l: None))
    assert_refused(expect_error("550", ftp.nlst))
    assert retrieve(ftp, "existing.txt") == CONTENT
    ftp.quit()


def test_none_permission_allows_login_but_nothing_else(ferry):
    home = ferry.add_user("nobody", "nobodypw", "--perm", "none")
    populate(home)
    ftp = ftp_login(ferry, "nobody", "nobodypw")
    assert_refused(expect_error("550", ftp.nlst))
    assert_refused(expect_error("550", retrieve, ftp, "existing.txt"))
    assert_refused(upload_expecting_failure(ftp, "STOR x.txt", b"x\n"))
    ftp.quit()
    assert not (home / "x.txt").exists()


@pytest.fixture
def anon(ferry_factory, tmp_path):
    anon_dir = tmp_path / "pub"
    populate(anon_dir)
    server = ferry_factory("--anonymous", str(anon_dir), "--failed-login-delay-ms", "0")
    return server, anon_dir


@pytest.mark.parametrize("password", ["guest@example.com", "anything at all"])
def test_anonymous_login_can_read(anon, password):
    server, anon_dir = anon
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(server.host, server.port)
    ftp.login("anonymous", password)
    names = sorted(n.rsplit("/", 1)[-1] for n in ftp.nlst())
    assert names == ["dir", "emptydir", "existing.txt"]
    assert retrieve(ftp, "existing.txt") == CONTENT
    assert retrieve(ftp, "dir/nested.txt") == b"nested\n"
    ftp.quit()


def test_anonymous_is_read_only(anon, tmp_path):
    server, anon_dir = anon
    put_file(anon_dir.parent / "secret.txt", b"outside the anonymous root\n")
    before = snapshot(anon_dir)
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(server.host, server.port)
    ftp.login("anonymous", "guest@example.com")
    assert_refused(upload_expecting_failure(ftp, "STOR new.txt", b"new\n"))
    assert_refused(upload_expecting_failure(ftp, "STOR existing.txt", b"overwrite\n"))
    assert_refused(upload_expecting_failure(ftp, "APPE existing.txt", b"append\n"))
    assert_refused(expect_error("550", ftp.delete, "existing.txt"))
    assert_refused(expect_error("550", ftp.mkd, "newdir"))
    assert_refused(expect_error("550", ftp.rmd, "emptydir"))
    assert_rename_refused(ftp, "existing.txt", "renamed.txt")
    assert_refused(expect_error("550", ftp.sendcmd, "SITE CHMOD 777 existing.txt"))
    assert_refused(expect_error("550", ftp.sendcmd, "MFMT 20200102030405 existing.txt"))
    # Confined to the anonymous root.
    expect_error("550", retrieve, ftp, "../secret.txt")
    ftp.quit()
    assert snapshot(anon_dir) == before


def test_anonymous_disabled_by_default(ferry):
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(ferry.host, ferry.port)
    expect_error("530", ftp.login, "anonymous", "guest@example.com")
    ftp.close()
