"""File-tree and subprocess helpers shared by the client and policy interop tests."""
import hashlib
import os
import random
import subprocess
import time
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (with a few CR/LF/NUL bytes, so ASCII-mode mangling would show)."""
    return random.Random(seed).randbytes(size)


def write_random(path, size: int, seed: int = 0) -> str:
    """Writes `size` pseudo-random bytes to `path` (creating parents) and returns their sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = random_bytes(size, seed)
    path.write_bytes(data)
    return sha256_bytes(data)


def put_file(path, data: bytes) -> str:
    """Writes `data` to `path` (creating parent directories) and returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha256_bytes(data)


def make_tree(root) -> None:
    """Builds a nested tree: several levels, empty directories, binary and text files, awkward names."""
    root = Path(root)
    files = {
        "top.bin": 70_000,
        "empty.txt": 0,
        "crlf.txt": None,  # text with CR/LF and a NUL: must round-trip byte for byte
        "a/one.bin": 1,
        "a/b/two.bin": 131_072,
        "a/b/c/three.bin": 300_001,
        "a/b/c/d/four.bin": 4_096,
        "x y/space name.bin": 12_345,
        "ünï/cødé.bin": 777,
    }
    for i, (rel, size) in enumerate(sorted(files.items())):
        p = root / rel
        if size is None:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"line one\r\nline two\nline three\r\n\x00tail\n")
        else:
            write_random(p, size, seed=i + 1)
    for rel in ("emptydir", "a/b/emptysub", "a/b/c/d/e/f/deep_empty"):
        (root / rel).mkdir(parents=True, exist_ok=True)


def tree_snapshot(root):
    """Returns ({relative file path: sha256}, {relative dir paths}) for everything under `root`."""
    root = Path(root)
    files, dirs = {}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for d in dirnames:
            dirs.add((rel_dir / d).as_posix())
        for f in filenames:
            files[(rel_dir / f).as_posix()] = sha256_file(Path(dirpath) / f)
    return files, dirs


def assert_same_tree(expected_root, actual_root, check_empty_dirs=True):
    exp_files, exp_dirs = tree_snapshot(expected_root)
    act_files, act_dirs = tree_snapshot(actual_root)
    if act_files != exp_files:
        missing = sorted(set(exp_files) - set(act_files))
        extra = sorted(set(act_files) - set(exp_files))
        changed = sorted(k for k in set(exp_files) & set(act_files) if exp_files[k] != act_files[k])
        sizes = {k: (Path(expected_root, k).stat().st_size, Path(actual_root, k).stat().st_size) for k in changed}
        raise AssertionError(
            f"file trees differ ({expected_root} vs {actual_root}): missing={missing} extra={extra} "
            f"changed (expected size, actual size)={sizes}"
        )
    if check_empty_dirs:
        assert act_dirs == exp_dirs, f"directory trees differ: {sorted(exp_dirs ^ act_dirs)}"


def run(cmd, timeout=60, input=None, env=None, cwd=None, check=True):
    """Runs a client command; on failure the assertion message includes its full output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )
    if check:
        assert p.returncode == 0, (
            f"command failed with exit code {p.returncode}: {cmd!r}\n"
            f"--- stdout ---\n{p.stdout}\n--- stderr ---\n{p.stderr}"
        )
    return p


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Polls `predicate` until it returns a truthy value; returns that value or fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def home_usage(home) -> int:
    """Total bytes of regular files under a home directory (what a byte quota limits)."""
    total = 0
    for dirpath, _, filenames in os.walk(home):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total
