"""Other servers started on loopback for the client tests: vsftpd (FTP) and OpenSSH's sshd with sftp-server (SFTP).

vsftpd logs in a real system user (created here with useradd when missing, which needs root) whose FTP root is a
fresh directory under /tmp; sshd runs with its own host key and config as the current user, who logs in with a
fresh key listed in an authorized_keys file in the test's tmp directory.
"""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

VSFTPD_USER = "ferryftp"
VSFTPD_PASSWORD = "ferry-test-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, log, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{Path(log).read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}:\n{Path(log).read_text(errors='replace')}")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def ensure_ftp_user():
    """The system user vsftpd logs in, with a known password."""
    try:
        pwd.getpwnam(VSFTPD_USER)
    except KeyError:
        if os.geteuid() != 0:
            pytest.skip(f"vsftpd needs a system user {VSFTPD_USER}; creating one needs root")
        # Two test workers may race to create it; either way it must exist afterwards.
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", VSFTPD_USER], capture_output=True)
        pwd.getpwnam(VSFTPD_USER)
    if os.geteuid() == 0:
        # chpasswd fails while another worker holds the lock on /etc/shadow: try again.
        for _ in range(50):
            p = subprocess.run(["chpasswd"], input=f"{VSFTPD_USER}:{VSFTPD_PASSWORD}\n", text=True,
                               capture_output=True)
            if p.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"chpasswd failed: {p.stderr}")


class Vsftpd:
    """A vsftpd on 127.0.0.1 whose user's FTP root is `root`."""

    def __init__(self, tmp_path):
        exe = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
        if not os.path.exists(exe):
            pytest.skip("vsftpd is not installed")
        ensure_ftp_user()
        user = pwd.getpwnam(VSFTPD_USER)
        # pytest's tmp directories are private to root; the FTP user needs a directory of its own.
        self.root = Path(tempfile.mkdtemp(prefix="ferry-vsftpd-"))
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o755)
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = VSFTPD_USER
        self.password = VSFTPD_PASSWORD
        conf = tmp_path / "vsftpd.conf"
        self.log = tmp_path / "vsftpd.log"
        conf.write_text("\n".join([
            "listen=YES",
            "listen_ipv6=NO",
            "listen_address=127.0.0.1",
            f"listen_port={self.port}",
            "background=NO",
            "anonymous_enable=NO",
            "local_enable=YES",
            "write_enable=YES",
            "local_umask=022",
            f"local_root={self.root}",
            "chroot_local_user=NO",
            "pam_service_name=vsftpd",
            "userlist_enable=NO",
            "pasv_enable=YES",
            "pasv_address=127.0.0.1",
            "seccomp_sandbox=NO",
            "isolate=NO",
            "isolate_network=NO",
            "secure_chroot_dir=/var/run/vsftpd/empty",
            "mdtm_write=YES",
            "use_localtime=NO",
            "xferlog_enable=NO",
            f"vsftpd_log_file={self.log}",
            "",
        ]))
        conf.chmod(0o600)
        self.proc = subprocess.Popen([exe, str(conf)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, self.log)

    def flags(self):
        return []

    def own(self, path):
        """Gives files made by the test under `root` to the FTP user, who must be able to change them."""
        user = pwd.getpwnam(self.user)
        for p in [Path(path), *Path(path).rglob("*")] if Path(path).is_dir() else [Path(path)]:
            os.chown(p, user.pw_uid, user.pw_gid)

    def url(self, path=""):
        return f"ftp://{self.user}:{self.password}@127.0.0.1:{self.port}/{path}"

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class Sshd:
    """OpenSSH's sshd on 127.0.0.1 with sftp-server, for the current user and a fresh key."""

    def __init__(self, tmp_path):
        exe = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(exe):
            pytest.skip("openssh-server is not installed")
        sftp_server = next((p for p in ["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                        "/usr/lib/ssh/sftp-server"] if os.path.exists(p)), None)
        if sftp_server is None:
            pytest.skip("OpenSSH's sftp-server is not installed")
        d = tmp_path / "sshd"
        d.mkdir()
        host_key = d / "host_ed25519"
        self.key = d / "client_ed25519"
        for path in (host_key, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        authorized = d / "authorized_keys"
        authorized.write_text(Path(f"{self.key}.pub").read_text())
        authorized.chmod(0o600)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.root = tmp_path / "sftp-root"
        self.root.mkdir()
        config = d / "sshd_config"
        self.log = d / "sshd.log"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            f"Subsystem sftp {sftp_server}",
            "LogLevel ERROR",
            "",
        ]))
        self.proc = subprocess.Popen([exe, "-D", "-e", "-f", str(config)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, self.log)

    def url(self, path=""):
        """An absolute path below this server's root directory."""
        return f"sftp://{self.user}@127.0.0.1:{self.port}{self.root}/{path}"

    def flags(self):
        return ["-i", str(self.key), "--accept-new-host-key"]

    def own(self, path):
        """Files made by the test belong to the server's user already."""

    def close(self):
        stop(self.proc)


@pytest.fixture
def vsftpd(tmp_path):
    server = Vsftpd(tmp_path)
    yield server
    server.close()


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path)
    yield server
    server.close()
