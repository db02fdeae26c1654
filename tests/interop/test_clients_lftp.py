"""lftp against ferry: recursive mirror both ways, segmented pget, active mode, and a TLS-protected session."""
import re
import shutil

import pytest

from helpers_clients import require, run_client
from helpers_files import (
    assert_same_tree,
    make_tree,
    random_bytes,
    sha256_bytes,
    sha256_file,
    tree_snapshot,
    write_random,
)


@pytest.fixture(autouse=True)
def _lftp():
    require("lftp")


def lftp(server, tmp_path, commands, settings=("set ftp:ssl-allow no",), debug=False, user="alice",
         password="secret", port=None, timeout=90):
    """Runs one lftp session; `set cmd:fail-exit yes` makes any failing command fail the run."""
    script = "; ".join(
        [
            "set cmd:fail-exit yes",
            "set net:max-retries 1",
            "set net:reconnect-interval-base 1",
            "set net:timeout 15",
            *settings,
            f"open -u {user},{password} -p {port or server.port} {server.host}",
            *commands,
        ]
    )
    cmd = ["lftp", "-d", "-c", script] if debug else ["lftp", "-c", script]
    return run_client(cmd, tmp_path, timeout=timeout, cwd=tmp_path)


def test_lftp_mirror_reverse_uploads_nested_tree_and_mirror_downloads_it_back(ferry, tmp_path):
    local = tmp_path / "localtree"
    make_tree(local)
    lftp(ferry, tmp_path, ["mirror -R localtree remotetree"])
    # The server's copy is identical, including empty directories.
    assert_same_tree(local, ferry.home("alice") / "remotetree")
    lftp(ferry, tmp_path, ["mirror remotetree fromserver"])
    assert_same_tree(local, tmp_path / "fromserver")


def test_lftp_mirror_reverse_with_delete_removes_remote_extras(ferry, tmp_path):
    local = tmp_path / "tree"
    make_tree(local)
    lftp(ferry, tmp_path, ["mirror -R tree remote"])
    (local / "top.bin").unlink()
    shutil.rmtree(local / "a/b/c")
    write_random(local / "a/new.bin", 4321, seed=99)
    lftp(ferry, tmp_path, ["mirror -R --delete tree remote"])
    assert_same_tree(local, ferry.home("alice") / "remote")


def test_lftp_parallel_mirror(ferry, tmp_path):
    local = tmp_path / "ptree"
    make_tree(local)
    for i in range(12):
        write_random(local / "many" / f"f{i:02}.bin", 10_000 + i * 997, seed=200 + i)
    lftp(ferry, tmp_path, ["mirror -R --parallel=4 ptree premote", "mirror --parallel=4 premote pback"])
    assert_same_tree(local, ferry.home("alice") / "premote")
    assert_same_tree(local, tmp_path / "pback")


def test_lftp_pget_four_segments_of_20mb_file(ferry, tmp_path):
    data = random_bytes(20 * 1024 * 1024, seed=21)
    (ferry.home("alice")).mkdir(parents=True, exist_ok=True)
    (ferry.home("alice") / "big20.bin").write_bytes(data)
    out_dir = tmp_path / "pget"
    out_dir.mkdir()
    # A per-connection rate limit keeps the first segment from racing through the whole file on loopback,
    # so the other segments really are fetched by their own connections.
    p = lftp(
        ferry,
        tmp_path,
        [f"pget -n 4 -O {out_dir} big20.bin"],
        settings=("set ftp:ssl-allow no", "set net:limit-rate 8M"),
        debug=True,
    )
    assert sha256_file(out_dir / "big20.bin") == sha256_bytes(data)
    offsets = {int(m) for m in re.findall(r"---> REST (\d+)", p.stderr)} - {0}
    assert offsets, "pget did not fetch any segment with REST:\n" + p.stderr[-4000:]
    assert all(0 < o < len(data) for o in offsets), offsets


def test_lftp_active_mode_put_and_get(ferry, tmp_path):
    digest = write_random(tmp_path / "act.bin", 345_678, seed=22)
    p = lftp(
        ferry,
        tmp_path,
        ["put act.bin -o active.bin", "get active.bin -o act-back.bin", "cls -1"],
        settings=("set ftp:ssl-allow no", "set ftp:passive-mode off"),
        debug=True,
    )
    assert re.search(r"---> (PORT|EPRT) ", p.stderr), p.stderr[-3000:]
    assert sha256_file(ferry.home("alice") / "active.bin") == digest
    assert sha256_file(tmp_path / "act-back.bin") == digest
    assert "active.bin" in p.stdout.split()


def test_lftp_tls_session_put_get_ls(ferry, tmp_path):
    digest = write_random(tmp_path / "t.bin", 456_789, seed=23)
    p = lftp(
        ferry,
        tmp_path,
        ["mkdir tlsdir", "put t.bin -o tlsdir/tls.bin", "get tlsdir/tls.bin -o t-back.bin", "cls -1 tlsdir/",
         "ls tlsdir"],
        settings=(
            "set ftp:ssl-force true",
            "set ftp:ssl-protect-data true",
            "set ftp:ssl-protect-list true",
            "set ssl:verify-certificate no",
        ),
        debug=True,
    )
    # The session really was encrypted: AUTH TLS on control, PROT P for data.
    assert "---> AUTH TLS" in p.stderr, p.stderr[-3000:]
    assert "---> PROT P" in p.stderr, p.stderr[-3000:]
    assert sha256_file(ferry.home("alice") / "tlsdir/tls.bin") == digest
    assert sha256_file(tmp_path / "t-back.bin") == digest
    out = p.stdout.splitlines()
    assert "tlsdir/tls.bin" in out or "tls.bin" in out, p.stdout
    assert any(line.startswith("-") and line.endswith(" tls.bin") and " 456789 " in line for line in out), p.stdout


def test_lftp_tls_mirror_both_ways(ferry, tmp_path):
    local = tmp_path / "tlstree"
    make_tree(local)
    lftp(
        ferry,
        tmp_path,
        ["mirror -R tlstree tlsremote", "mirror tlsremote tlsback"],
        settings=("set ftp:ssl-force true", "set ftp:ssl-protect-data true", "set ssl:verify-certificate no"),
    )
    assert_same_tree(local, ferry.home("alice") / "tlsremote")
    assert_same_tree(local, tmp_path / "tlsback")


def test_lftp_rename_and_remove(ferry, tmp_path):
    home = ferry.home("alice")
    digest = write_random(home / "mv/src.bin", 10_001, seed=24)
    write_random(home / "gone/x/y.bin", 10, seed=25)
    lftp(ferry, tmp_path, ["mv mv/src.bin mv/dst.bin", "rm -r gone", "mkdir -p made/deeper"])
    assert not (home / "mv/src.bin").exists()
    assert sha256_file(home / "mv/dst.bin") == digest
    assert not (home / "gone").exists()
    assert (home / "made/deeper").is_dir()
    files, dirs = tree_snapshot(home)
    assert "mv/dst.bin" in files
