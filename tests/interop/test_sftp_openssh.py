"""OpenSSH's sftp client in batch mode against ferry's SFTP server: key and password logins, transfers, resume,
directory operations, listings, chmod, links and df."""
import os
import subprocess

from helpers_files import random_bytes, sha256_bytes, sha256_file, write_random
from helpers_sftp import add_key_user, make_key, sftp_batch, sftp_batch_password


def test_key_login_put_get_mkdir_rename_rm_ls_chmod(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    digest = write_random(tmp_path / "up.bin", 3_000_000, seed=1)
    p = sftp_batch(ferry, tmp_path, "bob", key, [
        "put up.bin",
        "mkdir sub",
        "rename up.bin sub/moved.bin",
        "chmod 600 sub/moved.bin",
        "ls -l sub",
        "get sub/moved.bin down.bin",
        "put up.bin gone.bin",
        "rm gone.bin",
        "ls -l",
    ])
    assert sha256_file(home / "sub/moved.bin") == digest
    assert sha256_file(tmp_path / "down.bin") == digest
    assert oct((home / "sub/moved.bin").stat().st_mode & 0o777) == "0o600"
    assert not (home / "gone.bin").exists()
    # ls -l shows ferry's long names: mode, owner, size, name.
    line = next(l for l in p.stdout.splitlines() if l.endswith("moved.bin") and not l.startswith("sftp>"))
    assert line.startswith("-rw-------") and " bob " in line and " 3000000 " in line, line


def test_password_login_with_openssh(ferry, tmp_path):
    data = random_bytes(100_000, seed=2)
    (tmp_path / "f.bin").write_bytes(data)
    sftp_batch_password(ferry, tmp_path, "alice", "secret", ["put f.bin", "get f.bin back.bin"])
    assert (ferry.home("alice") / "f.bin").read_bytes() == data
    assert (tmp_path / "back.bin").read_bytes() == data


def test_wrong_password_and_unknown_key_are_refused(ferry, tmp_path):
    p = sftp_batch_password(ferry, tmp_path, "alice", "wrong", ["ls"], check=False)
    assert p.returncode != 0
    assert "Permission denied" in p.stderr, p.stderr
    stranger = make_key(tmp_path, "stranger")
    p = sftp_batch(ferry, tmp_path, "alice", stranger, ["ls"], check=False)
    assert p.returncode != 0
    assert "Permission denied" in p.stderr, p.stderr


def test_one_key_works_for_its_account_only(ferry, tmp_path):
    _, key = add_key_user(ferry, tmp_path, "bob")
    p = sftp_batch(ferry, tmp_path, "alice", key, ["ls"], check=False)
    assert p.returncode != 0


def test_reput_resumes_an_upload(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    data = random_bytes(2_500_000, seed=3)
    home.mkdir(parents=True, exist_ok=True)
    (home / "big.bin").write_bytes(data[:1_000_000])
    (tmp_path / "big.bin").write_bytes(data)
    sftp_batch(ferry, tmp_path, "bob", key, ["reput big.bin"])
    assert sha256_file(home / "big.bin") == sha256_bytes(data)


def test_reget_resumes_a_download(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    data = random_bytes(2_500_000, seed=4)
    home.mkdir(parents=True, exist_ok=True)
    (home / "big.bin").write_bytes(data)
    (tmp_path / "big.bin").write_bytes(data[:700_000])
    sftp_batch(ferry, tmp_path, "bob", key, ["reget big.bin"])
    assert sha256_file(tmp_path / "big.bin") == sha256_bytes(data)


def test_recursive_put_and_get_with_times(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    src = tmp_path / "tree"
    digests = {rel: write_random(src / rel, size, seed=i) for i, (rel, size) in
               enumerate({"a.bin": 1000, "d/b.bin": 70_000, "d/e/c.bin": 0}.items())}
    os.utime(src / "d/b.bin", (1_500_000_000, 1_500_000_000))
    sftp_batch(ferry, tmp_path, "bob", key, ["put -rp tree", "get -rp tree copy"])
    for rel, digest in digests.items():
        assert sha256_file(home / "tree" / rel) == digest
        assert sha256_file(tmp_path / "copy" / rel) == digest
    assert int((home / "tree/d/b.bin").stat().st_mtime) == 1_500_000_000
    assert int((tmp_path / "copy/d/b.bin").stat().st_mtime) == 1_500_000_000


def test_put_with_times_in_atomic_upload_mode_keeps_them_for_new_and_replaced_files(ferry_factory, tmp_path):
    # `put -p` sends FSETSTAT on the handle after the last write: the times must reach the file that takes the name.
    server = ferry_factory("--upload-mode", "atomic")
    home, key = add_key_user(server, tmp_path, "bob")
    home.mkdir(parents=True, exist_ok=True)
    data = random_bytes(2_000_000, seed=7)
    (tmp_path / "p.bin").write_bytes(data)
    os.utime(tmp_path / "p.bin", (1_115_269_505, 1_115_269_505))
    (home / "old.bin").write_bytes(b"the old file")
    os.utime(home / "old.bin", (1_262_304_000, 1_262_304_000))
    result = sftp_batch(server, tmp_path, "bob", key, ["put -p p.bin new.bin", "put -p p.bin old.bin"])
    assert "fsetstat" not in result.stderr
    for name in ("new.bin", "old.bin"):
        assert sha256_file(home / name) == sha256_bytes(data)
        assert int((home / name).stat().st_mtime) == 1_115_269_505


def test_rename_onto_an_existing_file_replaces_it(ferry, tmp_path):
    """OpenSSH's sftp uses posix-rename@openssh.com when the server offers it, which replaces the target."""
    home, key = add_key_user(ferry, tmp_path, "bob")
    home.mkdir(parents=True, exist_ok=True)
    (home / "a").write_bytes(b"new")
    (home / "b").write_bytes(b"old")
    sftp_batch(ferry, tmp_path, "bob", key, ["rename a b"])
    assert (home / "b").read_bytes() == b"new" and not (home / "a").exists()


def test_symlink_and_hardlink_inside_the_home(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    home.mkdir(parents=True, exist_ok=True)
    (home / "d").mkdir()
    (home / "d/target.txt").write_bytes(b"linked\n")
    sftp_batch(ferry, tmp_path, "bob", key, [
        "symlink /d/target.txt sym",
        "ln d/target.txt hard",
        "get sym via-sym.txt",
        "get hard via-hard.txt",
    ])
    assert os.readlink(home / "sym") == "d/target.txt"
    assert (home / "hard").stat().st_ino == (home / "d/target.txt").stat().st_ino
    assert (tmp_path / "via-sym.txt").read_bytes() == b"linked\n"
    assert (tmp_path / "via-hard.txt").read_bytes() == b"linked\n"


def test_df_reports_the_quota(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob", "--quota-bytes", str(10 * 1024 * 1024))
    home.mkdir(parents=True, exist_ok=True)
    (home / "f").write_bytes(random_bytes(2 * 1024 * 1024, seed=5))
    ferry.user("rescan", "bob", check=False)
    p = sftp_batch(ferry, tmp_path, "bob", key, ["df"])
    # "Size Used Avail (root) %Capacity" in KiB: a 10 MiB quota of which 2 MiB are used.
    fields = p.stdout.strip().splitlines()[-1].split()
    size, used, avail = (int(x) for x in fields[:3])
    assert size == 10 * 1024 and avail == 8 * 1024, p.stdout
    assert used == 2 * 1024, p.stdout


def test_listing_a_large_directory_needs_several_readdir_replies(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob")
    (home / "many").mkdir(parents=True)
    for i in range(250):
        (home / "many" / f"f{i:03}").write_bytes(b"x")
    p = sftp_batch(ferry, tmp_path, "bob", key, ["ls -1 many"])
    names = [l.strip().rsplit("/", 1)[-1] for l in p.stdout.splitlines() if not l.startswith("sftp>")]
    assert sorted(names) == [f"f{i:03}" for i in range(250)]


def test_missing_file_fails_the_batch(ferry, tmp_path):
    _, key = add_key_user(ferry, tmp_path, "bob")
    p = sftp_batch(ferry, tmp_path, "bob", key, ["get nothere.bin"], check=False)
    assert p.returncode != 0
    assert "not found" in p.stderr.lower() or "no such file" in p.stderr.lower(), p.stderr


def test_rsa_host_key_for_older_clients(ferry, tmp_path):
    """The RSA host key is generated in the background on first start and offered once it exists."""
    _, key = add_key_user(ferry, tmp_path, "bob")
    ferry.wait_for_log(r"generated an SSH host key", timeout=30)
    for algorithm in ("rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519"):
        p = sftp_batch(ferry, tmp_path, "bob", key, ["pwd"], check=False,
                       extra=("-o", f"HostKeyAlgorithms={algorithm}"))
        assert p.returncode == 0, (algorithm, p.stderr)


def test_host_keys_are_private_and_kept_across_restarts(ferry_factory, tmp_path):
    data_dir = tmp_path / "data"
    first = ferry_factory(data_dir=data_dir)
    first.wait_for_log(r"generated an SSH host key", timeout=30)
    first.stop()
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        assert (data_dir / "ssh" / name).stat().st_mode & 0o777 == 0o600
    second = ferry_factory(data_dir=data_dir)
    printed = [l.split()[4] for l in second.output if l.startswith("ferry: ssh host key")]
    assert len(printed) == 2, second.log()
    for name, fingerprint in zip(("ssh_host_ed25519_key", "ssh_host_rsa_key"), printed):
        p = subprocess.run(["ssh-keygen", "-l", "-f", str(data_dir / "ssh" / f"{name}.pub")], capture_output=True,
                           text=True, check=True)
        assert p.stdout.split()[1] == fingerprint
    assert "generated an SSH host key" not in second.log()
