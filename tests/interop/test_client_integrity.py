"""What is already at the destination is continued only when it was written from the source as it is now,
mirrors never lose what they cannot replace, refusals are reported as they are, and two sources never share a
destination: against vsftpd (no checksums, LIST only, hides dot files from a bare LIST) and ferry's own server.

Times are set explicitly (os.utime) where a rule depends on them, so that no test depends on how fast it runs."""
import os
import time

import pytest

from helpers_ferry_client import TRUST, fc, json_lines, spawn, url, wait_for_size
from helpers_files import sha256_file, write_random
from peers import vsftpd  # noqa: F401  (fixture)

NEW = b"version-B: the local file as it is now, much longer than the old one on the server, so that appending " \
      b"to the old one would give a file of the right size made of the wrong bytes. That must never happen.\n"
OLD = b"old version!!\n"


def age(path, seconds):
    """Gives `path` a modification time `seconds` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_changed_local_file_of_the_same_size_replaces_the_remote_one(vsftpd, tmp_path):
    local = tmp_path / "v.txt"
    local.write_bytes(b"version-A\n")
    age(local, 100)
    fc(tmp_path, "put", local, vsftpd.url("v.txt"))
    assert (vsftpd.root / "v.txt").read_bytes() == b"version-A\n"
    # Changed since (a later time); the remote copy has version A's time.
    local.write_bytes(b"version-B\n")
    age(local, 50)
    p = fc(tmp_path, "put", "--json", local, vsftpd.url("v.txt"))
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == 0 and r["bytes"] == 10, r
    assert (vsftpd.root / "v.txt").read_bytes() == b"version-B\n"
    # Unchanged since: complete, nothing sent.
    p = fc(tmp_path, "put", "--json", local, vsftpd.url("v.txt"))
    [r] = json_lines(p.stdout)
    assert r["bytes"] == 0, r


def test_a_longer_local_file_is_not_appended_to_an_older_remote_one(vsftpd, tmp_path):
    remote = vsftpd.root / "doc.txt"
    remote.write_bytes(OLD)
    vsftpd.own(remote)
    age(remote, 100)
    local = tmp_path / "doc.txt"
    local.write_bytes(NEW)
    age(local, 50)
    p = fc(tmp_path, "put", "--json", local, vsftpd.url("doc.txt"))
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == 0, r
    assert remote.read_bytes() == NEW


def test_a_part_left_by_another_version_is_not_resumed(vsftpd, tmp_path):
    (vsftpd.root / "doc2.txt").write_bytes(NEW)
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl/doc2.txt.part").write_bytes(OLD)
    p = fc(tmp_path, "get", "--json", vsftpd.url("doc2.txt"), tmp_path / "dl/")
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] == 0, r
    assert (tmp_path / "dl/doc2.txt").read_bytes() == NEW
    assert not (tmp_path / "dl/doc2.txt.part").exists()
    assert not (tmp_path / "dl/doc2.txt.part.source").exists()


def test_a_final_file_of_the_same_size_is_complete_only_with_the_source_time(vsftpd, tmp_path):
    (vsftpd.root / "v.txt").write_bytes(b"version-B\n")
    age(vsftpd.root / "v.txt", 50)
    (tmp_path / "v.txt").write_bytes(b"version-A\n")
    age(tmp_path / "v.txt", 100)
    p = fc(tmp_path, "get", "--json", vsftpd.url("v.txt"), "v.txt")
    [r] = json_lines(p.stdout)
    assert not r["skipped"], r
    assert (tmp_path / "v.txt").read_bytes() == b"version-B\n"
    p = fc(tmp_path, "get", "--json", vsftpd.url("v.txt"), "v.txt")
    [r] = json_lines(p.stdout)
    assert r["skipped"], r


@pytest.mark.parametrize("scheme", ["ftp", "sftp"])
def test_without_verification_an_older_remote_file_is_replaced_not_continued(ferry, tmp_path, scheme):
    """ferry's SFTP server hashes whole files only; with --no-verify nothing after the transfer would notice."""
    remote = ferry.home("alice") / "doc.txt"
    remote.write_bytes(OLD)
    age(remote, 100)
    local = tmp_path / "doc.txt"
    local.write_bytes(NEW)
    age(local, 50)
    fc(tmp_path, "put", "--no-verify", *TRUST, local, url(ferry, scheme, "doc.txt"))
    assert remote.read_bytes() == NEW


def test_mirror_with_delete_keeps_the_dot_files_the_source_has(vsftpd, tmp_path):
    """vsftpd leaves dot files out of a bare LIST: the client asks for LIST -a."""
    (vsftpd.root / "d").mkdir()
    for rel, text in [(".env", "A=1\n"), ("a.txt", "a\n"), ("d/.hidden", "h\n")]:
        (vsftpd.root / rel).write_text(text)
    vsftpd.own(vsftpd.root)
    dst = tmp_path / "back"
    (dst / "d").mkdir(parents=True)
    (dst / ".env").write_text("A=1\n")
    (dst / "d/.hidden").write_text("h\n")
    (dst / "extra.txt").write_text("not at the source\n")
    fc(tmp_path, "mirror", "--delete", vsftpd.url(""), dst)
    assert (dst / ".env").read_text() == "A=1\n"
    assert (dst / "d/.hidden").read_text() == "h\n"
    assert (dst / "a.txt").read_text() == "a\n"
    assert not (dst / "extra.txt").exists()
    p = fc(tmp_path, "ls", vsftpd.url(""))
    assert ".env" in p.stdout.split(), p.stdout


def test_mirror_with_delete_resumes_the_part_it_left(ferry, tmp_path):
    size = 8_000_000
    digest = write_random(ferry.home("alice") / "tree/big.bin", size, seed=3)
    dst = tmp_path / "copy"
    proc = spawn(tmp_path, "mirror", "--delete", "--limit-rate", "2m", url(ferry, "ftp", "tree"), dst)
    wait_for_size(dst / "big.bin.part", size // 8, proc=proc)
    proc.kill()
    proc.wait(10)
    assert (dst / "big.bin.part.source").exists()
    p = fc(tmp_path, "mirror", "--delete", "--json", url(ferry, "ftp", "tree"), dst)
    [r] = json_lines(p.stdout)
    assert r["resumed_from"] >= size // 8, r
    assert sha256_file(dst / "big.bin") == digest
    assert sorted(os.listdir(dst)) == ["big.bin"]


def test_mirror_does_not_delete_a_remote_file_it_cannot_replace(vsftpd, tmp_path):
    """A remote file the FTP user may not write (but, in a writable directory, could delete) stays as it was when
    its copy is refused."""
    (vsftpd.root / "m").mkdir()
    vsftpd.own(vsftpd.root / "m")
    kept = vsftpd.root / "m/f.txt"
    kept.write_bytes(OLD)
    kept.chmod(0o444)  # owned by root: vsftpd's user cannot open it for writing
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(NEW)
    p = fc(tmp_path, "mirror", src, vsftpd.url("m"), check=False)
    assert p.returncode == 1, p.stderr
    assert kept.read_bytes() == OLD


def test_two_sources_with_one_local_name_are_refused(ferry, tmp_path):
    home = ferry.home("alice")
    for d in ("a", "b"):
        (home / d).mkdir()
        (home / d / "x.txt").write_text(d)
    p = fc(tmp_path, "get", url(ferry, "ftp", "a/x.txt"), url(ferry, "ftp", "b/x.txt"), tmp_path / "dl/", check=False)
    assert p.returncode == 2, p.stderr
    assert "a/x.txt" in p.stderr and "b/x.txt" in p.stderr, p.stderr
    assert not (tmp_path / "dl").exists()
    src = tmp_path / "up"
    for d in ("a", "b"):
        (src / d).mkdir(parents=True)
        (src / d / "y.txt").write_text(d)
    p = fc(tmp_path, "put", src / "a/y.txt", src / "b/y.txt", url(ferry, "ftp", ""), check=False)
    assert p.returncode == 2, p.stderr
    assert not (home / "y.txt").exists()


def test_a_password_with_a_slash_is_not_shown(tmp_path):
    p = fc(tmp_path, "ls", "ftp://bob:se/cret@127.0.0.1/", check=False)
    assert p.returncode == 2, p.stderr
    assert "cret" not in p.stderr and "bob:***@" in p.stderr, p.stderr


def test_a_refused_write_between_two_servers_is_reported_at_once(ferry, vsftpd, tmp_path):
    """Copying from ferry to vsftpd, which refuses the write (553): the reading side stops at once instead of
    filling the pipe between them and waiting to be timed out as stalled."""
    write_random(ferry.home("alice") / "tree/big.bin", 6_000_000, seed=4)
    (vsftpd.root / "m").mkdir(mode=0o755)  # owned by root: vsftpd's user cannot create files in it
    p = fc(tmp_path, "mirror", "--timeout", "10", "--retries", "0", url(ferry, "ftp", "tree"), vsftpd.url("m"),
           check=False)
    assert p.returncode == 1, p.stderr
    assert "553" in p.stderr or "Could not create file" in p.stderr, p.stderr
    assert "stalled" not in p.stderr and "timed out" not in p.stderr, p.stderr
    assert not (vsftpd.root / "m/big.bin").exists()
