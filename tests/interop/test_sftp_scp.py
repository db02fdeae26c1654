"""OpenSSH's scp against ferry: the default mode (which speaks SFTP) and the legacy SCP protocol (`scp -O`), both
directions, single files, several files, -r trees and -p times and modes."""
import os

import pytest

from helpers_files import assert_same_tree, make_tree, random_bytes, sha256_bytes, sha256_file, write_random
from helpers_sftp import add_key_user, scp

MODES = [pytest.param(False, id="sftp"), pytest.param(True, id="legacy")]
OLD = 1_234_567_890


@pytest.fixture
def bob(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    home.mkdir(parents=True, exist_ok=True)
    return home, key


@pytest.mark.parametrize("legacy", MODES)
def test_upload_and_download_one_file(ferry, tmp_path, bob, legacy):
    home, key = bob
    digest = write_random(tmp_path / "f.bin", 2_000_003, seed=1)
    scp(ferry, tmp_path, key, "f.bin", "bob@HOST:uploaded.bin", legacy=legacy)
    assert sha256_file(home / "uploaded.bin") == digest
    scp(ferry, tmp_path, key, "bob@HOST:uploaded.bin", "back.bin", legacy=legacy)
    assert sha256_file(tmp_path / "back.bin") == digest


@pytest.mark.parametrize("legacy", MODES)
def test_several_files_into_a_directory(ferry, tmp_path, bob, legacy):
    home, key = bob
    (home / "in").mkdir()
    digests = {name: write_random(tmp_path / name, 10_000 * (i + 1), seed=i) for i, name in enumerate("abc")}
    scp(ferry, tmp_path, key, "a", "b", "c", "bob@HOST:in/", legacy=legacy)
    for name, digest in digests.items():
        assert sha256_file(home / "in" / name) == digest


@pytest.mark.parametrize("legacy", MODES)
def test_recursive_upload_and_download_keep_the_tree(ferry, tmp_path, bob, legacy):
    home, key = bob
    make_tree(tmp_path / "tree")
    scp(ferry, tmp_path, key, "-r", "tree", "bob@HOST:copy", legacy=legacy)
    assert_same_tree(tmp_path / "tree", home / "copy")
    scp(ferry, tmp_path, key, "-r", "bob@HOST:copy", "back", legacy=legacy)
    assert_same_tree(tmp_path / "tree", tmp_path / "back")


@pytest.mark.parametrize("legacy", MODES)
def test_preserve_keeps_times_and_modes_both_ways(ferry, tmp_path, bob, legacy):
    home, key = bob
    src = tmp_path / "p"
    write_random(src / "x.sh", 5000, seed=2)
    write_random(src / "sub/y.bin", 7000, seed=3)
    os.chmod(src / "x.sh", 0o750)
    os.chmod(src / "sub/y.bin", 0o600)
    for f in ("x.sh", "sub/y.bin"):
        os.utime(src / f, (OLD, OLD))
    scp(ferry, tmp_path, key, "-r", "-p", "p", "bob@HOST:p", legacy=legacy)
    assert int((home / "p/x.sh").stat().st_mtime) == OLD
    assert (home / "p/x.sh").stat().st_mode & 0o777 == 0o750
    assert (home / "p/sub/y.bin").stat().st_mode & 0o777 == 0o600
    os.utime(home / "p/sub/y.bin", (OLD + 7, OLD + 7))
    scp(ferry, tmp_path, key, "-r", "-p", "bob@HOST:p", "back", legacy=legacy)
    assert int((tmp_path / "back/sub/y.bin").stat().st_mtime) == OLD + 7
    assert (tmp_path / "back/x.sh").stat().st_mode & 0o777 == 0o750


def test_preserve_without_chmod_keeps_times(ferry, tmp_path):
    """An account without the chmod permission: scp -O -p keeps the times and leaves the modes to the server, without
    an error (before, the refused chmod skipped the time too and failed every file)."""
    home, key = add_key_user(ferry, tmp_path, "carol", "--perm", "download,upload,overwrite,mkdir,set-time")
    home.mkdir(parents=True, exist_ok=True)
    write_random(tmp_path / "t.bin", 3000, seed=4)
    os.utime(tmp_path / "t.bin", (OLD, OLD))
    scp(ferry, tmp_path, key, "-p", "t.bin", "carol@HOST:t.bin", legacy=True)
    assert int((home / "t.bin").stat().st_mtime) == OLD


@pytest.mark.parametrize("legacy", MODES)
def test_missing_source_fails_cleanly(ferry, tmp_path, bob, legacy):
    _, key = bob
    p = scp(ferry, tmp_path, key, "bob@HOST:nothere.bin", "x", legacy=legacy, check=False)
    assert p.returncode != 0
    assert "no such file" in p.stderr.lower(), p.stderr
    assert not (tmp_path / "x").exists()


def test_legacy_directory_without_r_is_refused(ferry, tmp_path, bob):
    home, key = bob
    (home / "d").mkdir()
    p = scp(ferry, tmp_path, key, "bob@HOST:d", "x", legacy=True, check=False)
    assert p.returncode != 0
    assert "not a regular file" in p.stderr, p.stderr


def test_legacy_recursive_download_skips_a_link_back_to_a_directory_above(ferry, tmp_path, bob):
    """`loop -> .` inside the tree: the download sends the tree once, warns about the link, and ends (it used to
    descend 64 levels, holding every level's names)."""
    home, key = bob
    (home / "t" / "sub").mkdir(parents=True)
    (home / "t" / "sub" / "f.txt").write_bytes(b"f\n")
    os.symlink(".", home / "t" / "sub" / "loop")
    p = scp(ferry, tmp_path, key, "-r", "bob@HOST:t", "back", legacy=True, check=False)
    assert p.returncode != 0, "a skipped entry makes the exit status non-zero"
    assert "a link to a directory above it" in p.stderr, p.stderr
    assert (tmp_path / "back" / "sub" / "f.txt").read_bytes() == b"f\n"
    assert not (tmp_path / "back" / "sub" / "loop").exists()


def test_legacy_upload_into_a_missing_directory_fails(ferry, tmp_path, bob):
    home, key = bob
    (tmp_path / "f").write_bytes(b"data")
    p = scp(ferry, tmp_path, key, "f", "bob@HOST:no/such/dir/f", legacy=True, check=False)
    assert p.returncode != 0
    assert "No such file or directory" in p.stderr, p.stderr
    assert not (home / "no").exists()


def test_legacy_overwrite_replaces_contents(ferry, tmp_path, bob):
    home, key = bob
    (home / "f").write_bytes(random_bytes(500_000, seed=9))
    data = random_bytes(1000, seed=10)
    (tmp_path / "f").write_bytes(data)
    scp(ferry, tmp_path, key, "f", "bob@HOST:f", legacy=True)
    assert sha256_file(home / "f") == sha256_bytes(data)


def test_legacy_paths_with_spaces_and_tilde(ferry, tmp_path, bob):
    """With -O the remote path goes through the (emulated) remote shell: quoting and ~ work as with sshd."""
    home, key = bob
    (home / "a dir").mkdir()
    data = random_bytes(3000, seed=11)
    (tmp_path / "f").write_bytes(data)
    scp(ferry, tmp_path, key, "f", "bob@HOST:'~/a dir/g h'", legacy=True)
    assert (home / "a dir/g h").read_bytes() == data
    scp(ferry, tmp_path, key, "bob@HOST:a\\ dir/g\\ h", "back", legacy=True)
    assert (tmp_path / "back").read_bytes() == data


def test_legacy_download_expands_wildcards_in_the_last_component(ferry, tmp_path, bob):
    home, key = bob
    for name in ("a.log", "b.log", "c.txt", ".hidden.log"):
        (home / "logs").mkdir(exist_ok=True)
        (home / "logs" / name).write_bytes(name.encode())
    (tmp_path / "got").mkdir()
    scp(ferry, tmp_path, key, "bob@HOST:logs/*.log", "got/", legacy=True)
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["a.log", "b.log"]
    assert (tmp_path / "got/b.log").read_bytes() == b"b.log"
    p = scp(ferry, tmp_path, key, "bob@HOST:logs/*.none", "got/", legacy=True, check=False)
    assert p.returncode != 0 and "No such file or directory" in p.stderr, p.stderr
    # Escaped for the remote side, the same characters are a plain name.
    (home / "logs" / "*.log").write_bytes(b"star")
    scp(ferry, tmp_path, key, "bob@HOST:logs/\\*.log", "star", legacy=True)
    assert (tmp_path / "star").read_bytes() == b"star"


def test_creation_modes_need_no_chmod_permission(ferry, tmp_path):
    """A private file uploaded by an account without the chmod permission stays private: the mode given at creation
    (scp's C line, SFTP's MKDIR attributes) is applied like open(2)'s, less group and other write. Before, it went
    through chmod, was refused, and the file got the server's default 0644."""
    from helpers_sftp import sftp_client

    home, key = add_key_user(ferry, tmp_path, "dave", "--perm", "download,upload,overwrite,mkdir")
    home.mkdir(parents=True, exist_ok=True)
    write_random(tmp_path / "private.bin", 3000, seed=5)
    os.chmod(tmp_path / "private.bin", 0o600)
    scp(ferry, tmp_path, key, "private.bin", "dave@HOST:private.bin", legacy=True)
    assert (home / "private.bin").stat().st_mode & 0o777 == 0o600
    with sftp_client(ferry, "dave", "unused-password") as sftp:
        sftp.mkdir("mine", mode=0o700)
        sftp.mkdir("shared", mode=0o777)
        # chmod itself stays refused.
        with pytest.raises(IOError):
            sftp.chmod("private.bin", 0o644)
    assert (home / "mine").stat().st_mode & 0o777 == 0o700
    assert (home / "shared").stat().st_mode & 0o777 == 0o755


def test_legacy_recursive_upload_creates_directories_with_their_mode(ferry, tmp_path, bob):
    """Without -p, a directory the upload creates gets the mode of its D line (less group and other write), as
    OpenSSH's sink creates it: a private tree stays private. Before, directories got the server's default 0755."""
    home, key = bob
    write_random(tmp_path / "priv" / "inner" / "secret.bin", 1000, seed=7)
    os.chmod(tmp_path / "priv" / "inner" / "secret.bin", 0o600)
    for d in ("priv/inner", "priv"):
        os.chmod(tmp_path / d, 0o700)
    scp(ferry, tmp_path, key, "-r", "priv", "bob@HOST:", legacy=True)
    assert (home / "priv").stat().st_mode & 0o777 == 0o700
    assert (home / "priv" / "inner").stat().st_mode & 0o777 == 0o700
    assert (home / "priv" / "inner" / "secret.bin").stat().st_mode & 0o777 == 0o600


def test_legacy_upload_goes_on_after_the_client_reports_a_read_error(ferry, tmp_path):
    """A client that cannot read all of its file (it shrank during the copy) sends padding, then an error instead of
    its OK: the server acknowledges the file as OpenSSH's sink does, and the next file goes through. Before, the
    server sent nothing and the client waited until the idle timeout."""
    import paramiko

    ferry.add_user("erin", "secret")
    home = ferry.home("erin")
    home.mkdir(parents=True, exist_ok=True)
    host, port = ferry.addresses["sftp"]
    transport = paramiko.Transport((host, port))
    try:
        transport.connect(username="erin", password="secret")
        chan = transport.open_session()
        chan.settimeout(10)
        chan.exec_command("scp -t .")
        assert chan.recv(1) == b"\0"
        chan.sendall(b"C0644 10 shrunk.bin\n")
        assert chan.recv(1) == b"\0"
        chan.sendall(b"abcd" + b"\0" * 6 + b"\x01scp: shrunk.bin: file has shrunk\n")
        assert chan.recv(1) == b"\0"
        chan.sendall(b"C0644 5 next.txt\n")
        assert chan.recv(1) == b"\0"
        chan.sendall(b"hello\0")
        assert chan.recv(1) == b"\0"
        chan.shutdown_write()
        # An error was reported during the copy: exit status 1, as OpenSSH's `scp -t` gives.
        assert chan.recv_exit_status() == 1
    finally:
        transport.close()
    assert (home / "next.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("legacy", MODES)
def test_a_target_with_a_trailing_slash_must_be_a_directory(ferry, tmp_path, bob, legacy):
    """`scp f host:nodir/` with no `nodir` fails, as against OpenSSH, instead of creating a file `nodir`."""
    home, key = bob
    write_random(tmp_path / "f1", 100, seed=9)
    result = scp(ferry, tmp_path, key, "f1", "bob@HOST:nodir/", legacy=legacy, check=False)
    assert result.returncode != 0
    assert not (home / "nodir").exists()
    (home / "dir").mkdir()
    scp(ferry, tmp_path, key, "f1", "bob@HOST:dir/", legacy=legacy)
    assert (home / "dir" / "f1").stat().st_size == 100


def test_legacy_recursive_download_of_the_home_names_it_after_the_account(ferry, tmp_path, bob):
    """`scp -O -r host:~ x` copies the home as a directory named after the account (OpenSSH names it after the
    home's last component); it used to be sent as `.`, which scp refuses."""
    home, key = bob
    write_random(home / "sub" / "f.bin", 500, seed=11)
    scp(ferry, tmp_path, key, "-r", "bob@HOST:~", "copy", legacy=True)
    assert (tmp_path / "copy" / "sub" / "f.bin").stat().st_size == 500


def test_legacy_names_with_brackets_that_match_nothing_are_taken_as_written(ferry, tmp_path, bob):
    """As sh does, a `[...]` word that matches no name is the word itself: `scp -O 'host:file[1].txt' .` downloads
    `file[1].txt`, and a target `photos[2024].txt` is written as named. Both failed before."""
    home, key = bob
    (home / "file[1].txt").write_bytes(b"bracketed")
    scp(ferry, tmp_path, key, "bob@HOST:file[1].txt", "got.txt", legacy=True)
    assert (tmp_path / "got.txt").read_bytes() == b"bracketed"
    write_random(tmp_path / "f1", 100, seed=12)
    scp(ferry, tmp_path, key, "f1", "bob@HOST:photos[2024].txt", legacy=True)
    assert (home / "photos[2024].txt").stat().st_size == 100


def test_legacy_names_that_are_not_utf8_keep_their_bytes(ferry, tmp_path, bob):
    """A Latin-1 name goes both ways in its own bytes, as with sshd: in the command line, in the headers the client
    sends and in those ferry sends."""
    home, key = bob
    name = os.fsdecode(b"caf\xe9")
    data = random_bytes(3000, seed=12)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / name).write_bytes(data)
    scp(ferry, tmp_path, key, "-r", "up", "bob@HOST:", legacy=True)
    assert os.listdir(os.fsencode(home / "up")) == [b"caf\xe9"]
    assert (home / "up" / name).read_bytes() == data
    scp(ferry, tmp_path, key, f"bob@HOST:up/{name}", "one", legacy=True)
    assert (tmp_path / "one").read_bytes() == data
    scp(ferry, tmp_path, key, "-r", "bob@HOST:up", "down", legacy=True)
    assert os.listdir(os.fsencode(tmp_path / "down")) == [b"caf\xe9"]
    assert (tmp_path / "down" / name).read_bytes() == data
