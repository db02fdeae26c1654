"""`ferry mirror` and symbolic links in local trees: links are never followed, so `--delete` cannot delete through a
link into the directory it points to, and a link in the source is skipped with a notice."""
import os

from helpers_ferry_client import fc


def test_mirror_delete_removes_a_linked_directory_as_a_link_not_what_it_points_to(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for d in (src, dst, outside):
        d.mkdir()
    (src / "keep.txt").write_bytes(b"keep\n")
    (outside / "precious.txt").write_bytes(b"precious\n")
    os.symlink(outside, dst / "linked")
    fc(tmp_path, "mirror", "--delete", src, dst)
    assert (outside / "precious.txt").read_bytes() == b"precious\n"
    assert not os.path.lexists(dst / "linked")
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]


def test_mirror_replaces_a_linked_directory_instead_of_writing_through_it(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for d in (src / "sub", dst, outside):
        d.mkdir(parents=True)
    (src / "sub" / "new.txt").write_bytes(b"new\n")
    os.symlink(outside, dst / "sub")
    fc(tmp_path, "mirror", src, dst)
    assert list(outside.iterdir()) == []
    assert not (dst / "sub").is_symlink()
    assert (dst / "sub" / "new.txt").read_bytes() == b"new\n"


def test_mirror_skips_links_in_the_source_with_a_notice(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for d in (src, outside):
        d.mkdir()
    (src / "real.txt").write_bytes(b"real\n")
    (outside / "secret.txt").write_bytes(b"secret\n")
    os.symlink(outside, src / "linked-dir")
    os.symlink(outside / "secret.txt", src / "linked-file")
    p = fc(tmp_path, "mirror", src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["real.txt"]
    assert "linked-dir: skipped (a symbolic link)" in p.stderr
    assert "linked-file: skipped (a symbolic link)" in p.stderr
