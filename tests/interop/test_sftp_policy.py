"""The same permission, quota and confinement scenarios over FTP and SFTP (and legacy SCP where it applies): the
policy lives in ferry-core, so both front-ends must behave alike. Protocol-specific details (FTP reply codes, SFTP
status codes) are checked where each protocol defines them."""
import errno
import ftplib
import io
import os
import re
import signal
import socket
import time

import paramiko
import pytest

from helpers_clients import client_env
from helpers_files import home_usage, put_file, random_bytes, run, tree_snapshot, wait_until
from helpers_ftp import ftp_login, upload_expecting_failure
from helpers_sftp import add_key_user, askpass_env, scp

SECRET = b"TOP SECRET outside the home\n"
QUOTA = 1_000_000


class Refused(Exception):
    """The server refused an operation; `permission` tells whether it said "permission denied"."""

    def __init__(self, message, permission):
        super().__init__(message)
        self.permission = permission


class FtpClient:
    name = "ftp"

    def __init__(self, server, user, password):
        self.ftp = ftp_login(server, user, password)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except ftplib.all_errors as e:
            reply = str(e)
            # 550 is FTP's "not allowed / not available"; 552 is the quota; 553 a name not allowed.
            raise Refused(reply, permission=reply.startswith(("550", "553"))) from e

    def _upload(self, command, data):
        # A refused upload may close the data connection early; the final reply says why.
        reply = upload_expecting_failure(self.ftp, command, data)
        if not reply.startswith("2"):
            raise Refused(reply, permission=reply.startswith(("550", "553")))

    def put(self, path, data):
        self._upload(f"STOR {path}", data)

    def append(self, path, data):
        self._upload(f"APPE {path}", data)

    def get(self, path):
        buf = io.BytesIO()
        self._call(self.ftp.retrbinary, f"RETR {path}", buf.write)
        return buf.getvalue()

    def listdir(self, path):
        return sorted(n.rsplit("/", 1)[-1] for n in self._call(self.ftp.nlst, path))

    def delete(self, path):
        self._call(self.ftp.delete, path)

    def mkdir(self, path):
        self._call(self.ftp.mkd, path)

    def rmdir(self, path):
        self._call(self.ftp.rmd, path)

    def rename(self, a, b):
        self._call(self.ftp.rename, a, b)

    def chmod(self, path, mode):
        self._call(self.ftp.sendcmd, f"SITE CHMOD {mode:o} {path}")

    def close(self):
        try:
            self.ftp.quit()
        except ftplib.all_errors:
            self.ftp.close()


class SftpClient:
    name = "sftp"

    def __init__(self, server, user, password):
        host, port = server.addresses["sftp"]
        self.transport = paramiko.Transport((host, port))
        self.transport.connect(username=user, password=password)
        self.sftp = paramiko.SFTPClient.from_transport(self.transport)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except IOError as e:
            raise Refused(str(e), permission=isinstance(e, PermissionError) or e.errno == errno.EACCES) from e

    # Not pipelined: paramiko only looks at the status of each write when it waits for it.
    def put(self, path, data):
        def write():
            with self.sftp.open(path, "wb") as f:
                f.write(data)
        self._call(write)

    def append(self, path, data):
        def write():
            with self.sftp.open(path, "ab") as f:
                f.write(data)
        self._call(write)

    def get(self, path):
        def read():
            with self.sftp.open(path, "rb") as f:
                return f.read()
        return self._call(read)

    def listdir(self, path):
        return sorted(self._call(self.sftp.listdir, path))

    def delete(self, path):
        self._call(self.sftp.remove, path)

    def mkdir(self, path):
        self._call(self.sftp.mkdir, path)

    def rmdir(self, path):
        self._call(self.sftp.rmdir, path)

    def rename(self, a, b):
        self._call(self.sftp.posix_rename, a, b)

    def chmod(self, path, mode):
        self._call(self.sftp.chmod, path, mode)

    def close(self):
        self.sftp.close()
        self.transport.close()


PROTOCOLS = [pytest.param(FtpClient, id="ftp"), pytest.param(SftpClient, id="sftp")]


@pytest.fixture(params=PROTOCOLS)
def connect(request, ferry):
    clients = []

    def make(user, password):
        c = request.param(ferry, user, password)
        clients.append(c)
        return c

    yield make
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - the server may already have closed it
            pass


def populate(home):
    put_file(home / "existing.txt", b"existing content\n")
    put_file(home / "dir/nested.txt", b"nested\n")
    (home / "emptydir").mkdir(exist_ok=True)


# ---- permissions ----

def test_read_only_user_can_read_but_change_nothing(ferry, connect):
    home = ferry.add_user("reader", "pw", "--perm", "read")
    populate(home)
    before = tree_snapshot(home)
    c = connect("reader", "pw")
    assert c.listdir("/") == ["dir", "emptydir", "existing.txt"]
    assert c.get("existing.txt") == b"existing content\n"
    for op, args in [("put", ("new.txt", b"x")), ("put", ("existing.txt", b"x")), ("append", ("existing.txt", b"x")),
                     ("delete", ("existing.txt",)), ("mkdir", ("d2",)), ("rmdir", ("emptydir",)),
                     ("rename", ("existing.txt", "moved.txt")), ("chmod", ("existing.txt", 0o600))]:
        with pytest.raises(Refused) as refused:
            getattr(c, op)(*args)
        assert refused.value.permission, f"{op}: {refused.value}"
    assert tree_snapshot(home) == before


def test_read_only_sftp_write_is_permission_denied(ferry, tmp_path):
    """SSH_FX_PERMISSION_DENIED, which paramiko turns into PermissionError."""
    home = ferry.add_user("reader", "pw", "--perm", "read")
    populate(home)
    c = SftpClient(ferry, "reader", "pw")
    try:
        with pytest.raises(PermissionError):
            c.sftp.open("new.txt", "wb")
        with pytest.raises(PermissionError):
            c.sftp.remove("existing.txt")
    finally:
        c.close()


def test_upload_without_overwrite_may_create_and_resume_but_not_replace(ferry, connect):
    home = ferry.add_user("up", "pw", "--perm", "list,download,upload")
    put_file(home / "existing.txt", b"keep me\n")
    c = connect("up", "pw")
    c.put("new.txt", b"fresh")
    assert (home / "new.txt").read_bytes() == b"fresh"
    with pytest.raises(Refused):
        c.put("existing.txt", b"replaced")
    c.append("existing.txt", b"more\n")
    assert (home / "existing.txt").read_bytes() == b"keep me\nmore\n"


def test_sftp_write_before_the_end_needs_overwrite(ferry):
    home = ferry.add_user("up", "pw", "--perm", "list,download,upload")
    put_file(home / "f", b"0123456789")
    c = SftpClient(ferry, "up", "pw")
    try:
        with c.sftp.open("f", "r+") as f:
            f.seek(10)
            f.write(b"tail")  # past the old end: a resume, allowed
        with pytest.raises(PermissionError):
            with c.sftp.open("f", "r+") as f:
                f.seek(2)
                f.write(b"XX")
                f.flush()
    finally:
        c.close()
    assert (home / "f").read_bytes() == b"0123456789tail"


def test_directory_permissions_apply_below_the_directory(ferry, connect):
    home = ferry.add_user("drop", "pw", "--perm", "read", "--dir-perm", "/inbox=list,upload,mkdir")
    (home / "inbox").mkdir(parents=True)
    c = connect("drop", "pw")
    c.put("inbox/a.bin", b"a")
    c.mkdir("inbox/sub")
    c.put("inbox/sub/b.bin", b"b")
    with pytest.raises(Refused):
        c.put("outside.bin", b"x")
    with pytest.raises(Refused):
        c.delete("inbox/a.bin")
    assert (home / "inbox/sub/b.bin").read_bytes() == b"b"
    assert not (home / "outside.bin").exists()


def test_links_are_refused_with_directory_permissions(ferry):
    """A link would reach files through a directory whose permissions differ from the files' own."""
    home = ferry.add_user("drop", "pw", "--perm", "read", "--dir-perm", "/inbox=all")
    populate(home)
    (home / "inbox").mkdir()
    c = SftpClient(ferry, "drop", "pw")
    try:
        with pytest.raises(PermissionError):
            c.sftp.symlink("/existing.txt", "inbox/link")
        with pytest.raises(IOError):
            c.sftp._request(paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", "existing.txt", "inbox/hard")
    finally:
        c.close()
    assert not os.path.lexists(home / "inbox/link") and not os.path.lexists(home / "inbox/hard")


# ---- quotas ----

def test_upload_larger_than_the_quota_is_cut_off(ferry, connect):
    home = ferry.add_user("q", "pw", "--quota-bytes", str(QUOTA))
    c = connect("q", "pw")
    with pytest.raises(Refused) as refused:
        c.put("big.bin", random_bytes(3_000_000, seed=1))
    assert "quota" in str(refused.value).lower() or str(refused.value).startswith("552"), refused.value
    assert home_usage(home) <= QUOTA
    # The session still works, and deleting frees the space again.
    if (home / "big.bin").exists():
        c.delete("big.bin")
    c.put("fits.bin", random_bytes(QUOTA, seed=2))
    assert home_usage(home) == QUOTA


def test_append_counts_against_the_quota(ferry, connect):
    home = ferry.add_user("q", "pw", "--quota-bytes", str(QUOTA))
    c = connect("q", "pw")
    c.put("a.bin", random_bytes(600_000, seed=3))
    with pytest.raises(Refused):
        c.append("a.bin", random_bytes(600_000, seed=4))
    assert home_usage(home) <= QUOTA


def test_file_count_quota(ferry, connect):
    home = ferry.add_user("qf", "pw", "--quota-files", "2")
    c = connect("qf", "pw")
    c.put("1", b"1")
    c.put("2", b"2")
    with pytest.raises(Refused):
        c.put("3", b"3")
    c.put("2", b"replacing does not count twice")
    assert sorted(p.name for p in home.iterdir()) == ["1", "2"]


def test_legacy_scp_upload_is_cut_off_at_the_quota(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob", "--quota-bytes", str(QUOTA))
    (tmp_path / "small.bin").write_bytes(random_bytes(1000, seed=6))
    (tmp_path / "big.bin").write_bytes(random_bytes(2_500_000, seed=5))
    (tmp_path / "empty.bin").write_bytes(b"")
    p = scp(ferry, tmp_path, key, "small.bin", "big.bin", "empty.bin", "bob@HOST:", legacy=True, check=False)
    assert p.returncode != 0
    assert "quota" in p.stderr.lower(), p.stderr
    assert home_usage(home) <= QUOTA
    assert (home / "small.bin").read_bytes() == (tmp_path / "small.bin").read_bytes()
    # The protocol stayed in step after the refused file: the (empty) file after it arrived.
    assert (home / "empty.bin").exists()


def test_legacy_scp_respects_read_only(ferry, tmp_path):
    home, key = add_key_user(ferry, tmp_path, "bob", "--perm", "read")
    populate(home)
    (tmp_path / "x").write_bytes(b"x")
    p = scp(ferry, tmp_path, key, "x", "bob@HOST:x", legacy=True, check=False)
    assert p.returncode != 0 and "Permission denied" in p.stderr, p.stderr
    assert not (home / "x").exists()
    scp(ferry, tmp_path, key, "bob@HOST:existing.txt", "got.txt", legacy=True)
    assert (tmp_path / "got.txt").read_bytes() == b"existing content\n"


# ---- confinement ----

@pytest.fixture
def outside(ferry, tmp_path):
    """Files outside alice's home, and links in it that point at them."""
    home = ferry.home("alice")
    home.mkdir(parents=True, exist_ok=True)
    ferry.add_user("other", "pw")
    paths = [
        ferry.home("other") / "other-secret.txt",
        home.parent / "sibling-secret.txt",
        tmp_path / "far" / "far-secret.txt",
    ]
    for p in paths:
        put_file(p, SECRET)
    os.symlink(paths[2], home / "abs-link")
    os.symlink("../sibling-secret.txt", home / "rel-link")
    os.symlink(paths[0].parent, home / "dir-link")
    return paths


def assert_untouched(paths):
    for p in paths:
        assert p.read_bytes() == SECRET, f"{p} changed"


@pytest.mark.parametrize("path", [
    "../sibling-secret.txt", "../../files/sibling-secret.txt", "/../other/other-secret.txt", "abs-link",
    "rel-link", "dir-link/other-secret.txt",
])
def test_nothing_outside_the_home_can_be_read_or_written(ferry, connect, outside, path):
    c = connect("alice", "secret")
    with pytest.raises(Refused):
        c.get(path)
    try:
        c.put(path, b"pwned")
    except Refused:
        pass
    else:
        # `..` stops at the home's root, so the upload landed inside the home.
        assert (ferry.home("alice") / path.lstrip("/").replace("../", "")).read_bytes() == b"pwned", path
    assert_untouched(outside)


def test_dotdot_listing_stays_at_the_home(ferry, connect, outside):
    c = connect("alice", "secret")
    put_file(ferry.home("alice") / "mine.txt", b"mine")
    for path in ("..", "../..", "/.."):
        names = c.listdir(path)
        assert "mine.txt" in names and "sibling-secret.txt" not in names, (path, names)


def test_sftp_symlinks_cannot_point_outside(ferry, outside):
    home = ferry.home("alice")
    c = SftpClient(ferry, "alice", "secret")
    try:
        for target in ("../sibling-secret.txt", "../../../../etc/passwd", "a/../../x"):
            with pytest.raises(PermissionError):
                c.sftp.symlink(target, "escape")
        # An absolute target means the home's root, never the server's.
        c.sftp.symlink("/etc/passwd", "chrooted")
        assert os.readlink(home / "chrooted") == "etc/passwd"
        with pytest.raises(FileNotFoundError):
            c.sftp.open("chrooted").read()
        # Renames and hard links cannot leave the home either.
        put_file(home / "mine.txt", b"mine")
        c.sftp.posix_rename("mine.txt", "../../escaped.txt")
        assert (home / "escaped.txt").read_bytes() == b"mine"
        with pytest.raises(IOError):
            c.sftp._request(paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", "abs-link", "hard")
    finally:
        c.close()
    assert not os.path.lexists(home / "escape")
    assert_untouched(outside)


def test_sftp_readlink_hides_targets_outside_the_home(ferry, outside):
    """READLINK of a link that leads outside the home would show the server's paths: refused; inside, answered."""
    home = ferry.home("alice")
    put_file(home / "mine.txt", b"mine")
    os.symlink("mine.txt", home / "inside-link")
    c = SftpClient(ferry, "alice", "secret")
    try:
        for link in ("abs-link", "rel-link", "dir-link"):
            with pytest.raises(PermissionError):
                c.sftp.readlink(link)
        assert c.sftp.readlink("inside-link") == "mine.txt"
        # The links themselves are still listed.
        assert {"abs-link", "rel-link", "dir-link", "inside-link"} <= set(c.sftp.listdir("."))
    finally:
        c.close()


def test_scp_and_checksums_cannot_reach_outside(ferry, tmp_path, outside):
    from helpers_sftp import ssh_exec

    home, key = add_key_user(ferry, tmp_path, "bob")
    os.symlink(outside[2], home / "abs-link")
    for path in ("../alice/../other/other-secret.txt", "abs-link", "/../../sibling-secret.txt"):
        p = scp(ferry, tmp_path, key, f"bob@HOST:{path}", "stolen", legacy=True, check=False)
        assert p.returncode != 0, path
        assert not (tmp_path / "stolen").exists()
        p = ssh_exec(ferry, tmp_path, "bob", key, f"sha256sum {path}")
        assert p.returncode != 0 and p.stdout == "", path
    assert_untouched(outside)


# ---- limits ----

def test_failed_logins_are_counted_and_close_the_connection(ferry_factory, tmp_path):
    server = ferry_factory("--failed-login-delay-ms", "0", "--max-login-failures", "2")
    server.add_user("alice", "secret")
    host, port = server.addresses["sftp"]
    # OpenSSH would try the (wrong) password three times; the server closes the connection after the second.
    cmd = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=3", "-p", str(port), f"alice@{host}", "pwd"]
    p = run(cmd, env=client_env(tmp_path, askpass_env(tmp_path, "wrong")), check=False, input="")
    assert p.returncode == 255
    assert "Connection closed" in p.stderr, p.stderr
    # The server logs both failures before it closes, but its output reaches the test through a reader thread:
    # wait for the second line rather than count after the first.
    failures = lambda: re.findall(r"login failed .*user=\"alice\"", server.log())
    wait_until(lambda: len(failures()) >= 2, message=f"two failed logins in the log:\n{server.log()}")
    assert len(failures()) == 2, server.log()


@pytest.mark.parametrize("send_version", [False, True])
def test_login_timeout_closes_silent_connections(ferry_factory, send_version):
    server = ferry_factory("--login-timeout", "1")
    host, port = server.addresses["sftp"]
    with socket.create_connection((host, port), timeout=10) as s:
        assert s.recv(256).startswith(b"SSH-2.0-ferry")
        if send_version:
            s.sendall(b"SSH-2.0-test\r\n")
        started = time.monotonic()
        while s.recv(4096):
            pass  # key exchange offer, then EOF once the timeout fires
        assert time.monotonic() - started < 8


def test_shutdown_closes_idle_ssh_connections_at_once(ferry_factory):
    server = ferry_factory("--shutdown-grace", "20")
    server.add_user("alice", "secret")
    host, port = server.addresses["sftp"]
    t = paramiko.Transport((host, port))
    try:
        t.connect(username="alice", password="secret")
        started = time.monotonic()
        server.stop(signal.SIGTERM)
        # The server waits for live connections up to the grace period; it exits well before, so it closed this
        # one, on which nothing was running.
        assert server.proc.returncode is not None
        assert time.monotonic() - started < 10
    finally:
        t.close()


def test_connection_caps_count_ssh_connections(ferry_factory):
    server = ferry_factory("--max-connections-per-ip", "1")
    server.add_user("alice", "secret")
    host, port = server.addresses["sftp"]
    t = paramiko.Transport((host, port))
    try:
        t.connect(username="alice", password="secret")
        # A second connection from the same address is closed before the SSH version exchange.
        with socket.create_connection((host, port), timeout=10) as s:
            assert s.recv(256) == b""
        # FTP shares the cap.
        with socket.create_connection(server.addresses["ftp"], timeout=10) as s:
            assert not s.recv(256).startswith(b"220")
    finally:
        t.close()
    # Once the first connection is gone, a new one is served.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.create_connection((host, port), timeout=10) as s:
            if s.recv(256).startswith(b"SSH-2.0-"):
                break
        time.sleep(0.1)
    else:
        pytest.fail("the SSH slot was not released")


def hardlink(client, source, link):
    client.sftp._request(paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", source, link)


def usage(server, name):
    """(bytes, files) that `ferry user list` reports for `name` (the usage the server stored)."""
    for line in server.user("list").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == name:
            return int(fields[4]), int(fields[5])
    raise AssertionError(f"{name} not listed")


@pytest.mark.parametrize("quota", [("--quota-bytes", str(QUOTA)), ("--quota-files", "100")], ids=["bytes", "files"])
def test_hard_links_are_refused_to_accounts_with_a_quota(ferry, quota):
    """The review's bypass: an empty file linked, grown through one name, the link removed: usage 0, data kept."""
    home = ferry.add_user("q", "pw", *quota)
    c = SftpClient(ferry, "q", "pw")
    try:
        c.put("a.bin", b"")
        with pytest.raises(PermissionError):
            hardlink(c, "a.bin", "link.bin")
    finally:
        c.close()
    assert not os.path.lexists(home / "link.bin")


def test_without_a_quota_a_linked_file_counts_each_name_and_its_bytes_once(ferry):
    home = ferry.add_user("u", "pw")
    c = SftpClient(ferry, "u", "pw")
    try:
        c.put("a.bin", random_bytes(1000, seed=7))
        hardlink(c, "a.bin", "link.bin")
        assert (home / "link.bin").stat().st_ino == (home / "a.bin").stat().st_ino
        assert usage(ferry, "u") == (1000, 2)
        c.append("a.bin", random_bytes(1000, seed=8))
        c.delete("link.bin")
    finally:
        c.close()
    assert usage(ferry, "u") == (2000, 1)
    os.link(home / "a.bin", home / "admin-link.bin")
    ferry.user("rescan", "u")
    assert usage(ferry, "u") == (2000, 2)


def test_sftp_setstat_growing_a_file_needs_upload(ferry):
    home = ferry.add_user("o", "pw", "--perm", "list,download,overwrite")
    put_file(home / "f", b"abc")
    c = SftpClient(ferry, "o", "pw")
    try:
        with pytest.raises(PermissionError):
            c.sftp.truncate("f", 50_000_000)
        c.sftp.truncate("f", 1)
    finally:
        c.close()
    assert (home / "f").read_bytes() == b"a"


def test_a_trailing_slash_names_a_directory_not_a_file(ferry):
    """As POSIX and OpenSSH's sftp-server have it: `file/` is not the file and `new/` cannot be created as one.
    Before, the slash was dropped: OPEN "nodir/" created a file `nodir`, REMOVE "file/" deleted `file`."""
    home = ferry.home("alice")
    home.mkdir(parents=True, exist_ok=True)
    put_file(home / "file", b"keep")
    (home / "dir").mkdir()
    c = SftpClient(ferry, "alice", "secret")
    try:
        with pytest.raises(IOError):
            c.sftp.open("nodir/", "w").close()
        for call in (lambda: c.sftp.remove("file/"), lambda: c.sftp.rename("file", "newname/"),
                     lambda: c.sftp.stat("file/"), lambda: c.sftp.posix_rename("file", "other/")):
            with pytest.raises(IOError):
                call()
        assert c.sftp.stat("dir/").st_size is not None
        c.sftp.rename("dir/", "dir2/")
    finally:
        c.close()
    assert sorted(os.listdir(home)) == ["dir2", "file"]
    assert (home / "file").read_bytes() == b"keep"


def test_a_key_refused_by_the_address_rules_counts_as_a_failed_login(ferry, tmp_path):
    """docs/ssh.md: a key that is offered and then refused by the account's address rules counts against the failure
    limits, as a wrong password does. Before, it was turned down when offered: no delay, no count, no log line."""
    _, key = add_key_user(ferry, tmp_path, "ipr", "--allow-ip", "10.0.0.0/8")
    host, port = ferry.addresses["sftp"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(host, port, username="ipr", key_filename=str(key), look_for_keys=False, allow_agent=False,
                       timeout=10)
    client.close()
    ferry.wait_for_log(r"login failed.*ipr|ipr.*login failed")
