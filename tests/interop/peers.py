"""Other servers started on loopback for the client tests: vsftpd, pure-ftpd and ProFTPD (FTP, and FTPS with a
self-signed certificate made with openssl in the test's tmp directory), and OpenSSH's sshd with sftp-server (SFTP).

Each FTP server runs in one of three modes: plain FTP, explicit FTPS (`AUTH TLS`, TLS required for the login and
the data) or implicit FTPS (TLS from the first byte: vsftpd's `implicit_ssl`, ProFTPD's `UseImplicitSSL`;
pure-ftpd has it only as a build option that Debian's package lacks). The client trusts the certificate through
`--ca-file`, so its verification runs as it would against a real server.

vsftpd logs in a real system user (created here with useradd when missing, which needs root) whose FTP root is a
fresh directory under /tmp; sshd runs with its own host key and config as the current user, who logs in with a
fresh key listed in an authorized_keys file in the test's tmp directory.

pure-ftpd and ProFTPD conflict as Debian packages, so they are not installed: scripts/test fetches their packages
with `apt-get download` and unpacks them with `dpkg -x` under $FERRY_PEERS_ROOT (default
~/.cache/ferry-peers/root), as bench/run does. Both log in a virtual user (pure-ftpd's puredb made with pure-pw,
ProFTPD's AuthUserFile) that maps to the system user `nobody`, so no system user is created; they start as root
(to switch to that user and chroot), and their tests are skipped otherwise.
"""
import grp
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
# The virtual user of pure-ftpd and ProFTPD, and the system user its files belong to.
VIRTUAL_USER = "ferryvirt"
VIRTUAL_PASSWORD = "ferry-virt-pw"
PEERS_ROOT = Path(os.environ.get("FERRY_PEERS_ROOT") or Path.home() / ".cache/ferry-peers/root")
# The URL scheme of each FTP mode.
FTP_SCHEMES = {"plain": "ftp", "explicit": "ftps", "implicit": "ftps+implicit"}


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


def self_signed_certificate(directory):
    """A certificate for 127.0.0.1 (an end-entity certificate, as clients that verify expect, signed by its own
    key) and its key, as PEM files in `directory`; readable by root only, where the servers read them."""
    cert, key = directory / "tls-cert.pem", directory / "tls-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment", "-addext", "extendedKeyUsage=serverAuth",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


class FtpPeer:
    """What the FTP servers share: `mode` (plain, explicit or implicit), the certificate they present for FTPS,
    and the URLs and client flags that reach them."""

    mode = "plain"
    cert = None
    key = None
    # Why this server cannot run implicit FTPS, where it cannot.
    no_implicit = None

    def set_mode(self, tmp_path, mode):
        if mode not in FTP_SCHEMES:
            raise ValueError(f"unknown FTP mode {mode}")
        if mode == "implicit" and self.no_implicit:
            pytest.skip(self.no_implicit)
        self.mode = mode
        if mode != "plain":
            self.cert, self.key = self_signed_certificate(tmp_path)

    def flags(self):
        return [] if self.mode == "plain" else ["--ca-file", str(self.cert)]

    def url(self, path=""):
        return f"{FTP_SCHEMES[self.mode]}://{self.user}:{self.password}@127.0.0.1:{self.port}/{path}"


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


class Vsftpd(FtpPeer):
    """A vsftpd on 127.0.0.1 whose user's FTP root is `root`."""

    def __init__(self, tmp_path, mode="plain"):
        self.set_mode(tmp_path, mode)
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
            *self.tls_settings(),
            "",
        ]))
        conf.chmod(0o600)
        self.proc = subprocess.Popen([exe, str(conf)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, self.log)

    def tls_settings(self):
        if self.mode == "plain":
            return []
        return [
            "ssl_enable=YES",
            f"rsa_cert_file={self.cert}",
            f"rsa_private_key_file={self.key}",
            "allow_anon_ssl=NO",
            "force_local_logins_ssl=YES",
            "force_local_data_ssl=YES",
            # vsftpd 3.0.3's default cipher list is DES-CBC3-SHA alone, which rustls does not offer (TLS 1.3's
            # suites are not affected by it).
            "ssl_ciphers=HIGH",
            # vsftpd's default, spelt out: each data connection must resume the control connection's TLS
            # session ("522 SSL connection failed: session reuse required" otherwise), as in ProFTPD's fixtures.
            "require_ssl_reuse=YES",
            *(["implicit_ssl=YES"] if self.mode == "implicit" else []),
        ]

    def own(self, path):
        """Gives files made by the test under `root` to the FTP user, who must be able to change them."""
        user = pwd.getpwnam(self.user)
        for p in [Path(path), *Path(path).rglob("*")] if Path(path).is_dir() else [Path(path)]:
            os.chown(p, user.pw_uid, user.pw_gid)

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class UnpackedFtpd(FtpPeer):
    """What pure-ftpd and ProFTPD share: a binary from PEERS_ROOT, run as root for a virtual user whose files
    belong to `nobody`, in a fresh FTP root under /tmp."""

    binary = ""

    def __init__(self, tmp_path, mode="plain"):
        self.set_mode(tmp_path, mode)
        exe = PEERS_ROOT / self.binary
        if not exe.exists():
            pytest.skip(f"{exe} is missing: scripts/test unpacks it (apt-get download, dpkg -x)")
        if os.geteuid() != 0:
            pytest.skip(f"{exe.name} switches to a virtual user's uid and chroots, which needs root")
        self.exe = exe
        self.env = dict(os.environ, LD_LIBRARY_PATH=f"{PEERS_ROOT}/usr/lib/x86_64-linux-gnu")
        self.owner = pwd.getpwnam("nobody")
        self.group = grp.getgrgid(self.owner.pw_gid)
        self.root = Path(tempfile.mkdtemp(prefix=f"ferry-{exe.name}-"))
        os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        self.root.chmod(0o755)
        self.port = free_port()
        self.user = VIRTUAL_USER
        self.password = VIRTUAL_PASSWORD
        self.log = tmp_path / f"{exe.name}.log"
        self.proc = subprocess.Popen(self.command(tmp_path), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     env=self.env)
        wait_for_port(self.port, self.proc, self.log)

    def command(self, tmp_path):
        raise NotImplementedError

    def own(self, path):
        """Gives files made by the test under `root` to the virtual user's system user."""
        for p in [Path(path), *Path(path).rglob("*")] if Path(path).is_dir() else [Path(path)]:
            os.chown(p, self.owner.pw_uid, self.owner.pw_gid)

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class PureFtpd(UnpackedFtpd):
    """pure-ftpd with a puredb of one virtual user, chrooted to `root`."""

    binary = "usr/sbin/pure-ftpd"
    no_implicit = ("pure-ftpd speaks implicit FTPS only when built with --with-implicittls (and then nothing "
                   "else), which Debian's package is not")

    def command(self, tmp_path):
        passwd, pdb = tmp_path / "pureftpd.passwd", tmp_path / "pureftpd.pdb"
        subprocess.run(
            [str(PEERS_ROOT / "usr/bin/pure-pw"), "useradd", self.user, "-f", str(passwd), "-F", str(pdb), "-m",
             "-u", str(self.owner.pw_uid), "-g", str(self.owner.pw_gid), "-d", str(self.root)],
            input=f"{self.password}\n{self.password}\n", text=True, capture_output=True, check=True, env=self.env,
        )
        # --tls=3: TLS required for the login and for every data connection.
        tls = [] if self.mode == "plain" else ["--tls=3", f"--certfile={self.cert},{self.key}"]
        return [str(self.exe), f"--bind=127.0.0.1,{self.port}", f"--login=puredb:{pdb}", "--noanonymous",
                "--dontresolve", "--minuid=1", "--maxclientsperip=50", "--maxclientsnumber=50", *tls]


class Proftpd(UnpackedFtpd):
    """ProFTPD standalone with an AuthUserFile of one virtual user (SHA-512 crypt), chrooted to `root`."""

    binary = "usr/sbin/proftpd"

    def command(self, tmp_path):
        hashed = subprocess.run(["openssl", "passwd", "-6", self.password], capture_output=True, text=True,
                                check=True).stdout.strip()
        users = tmp_path / "proftpd.passwd"
        users.write_text(f"{self.user}:{hashed}:{self.owner.pw_uid}:{self.owner.pw_gid}::{self.root}:/bin/sh\n")
        users.chmod(0o600)
        conf = tmp_path / "proftpd.conf"
        conf.write_text("\n".join([
            'ServerName "ferry-test ProFTPD"',
            "ServerType standalone",
            "DefaultServer on",
            "DefaultAddress 127.0.0.1",
            "SocketBindTight on",
            f"Port {self.port}",
            "UseIPv6 off",
            f"User {self.owner.pw_name}",
            f"Group {self.group.gr_name}",
            "Umask 022",
            "UseReverseDNS off",
            "AuthPAM off",
            "AuthOrder mod_auth_file.c",
            f"AuthUserFile {users}",
            "RequireValidShell off",
            "DefaultRoot ~",
            "AllowOverwrite on",
            "AllowStoreRestart on",
            "WtmpLog off",
            "TransferLog none",
            f"SystemLog {tmp_path / 'proftpd.system.log'}",
            f"ScoreboardFile {tmp_path / 'proftpd.scoreboard'}",
            f"PidFile {tmp_path / 'proftpd.pid'}",
            "<IfModule mod_delay.c>",
            "  DelayEngine off",
            "</IfModule>",
            "<IfModule mod_ident.c>",
            "  IdentLookups off",
            "</IfModule>",
            *self.tls_settings(tmp_path),
            "",
        ]))
        return [str(self.exe), "--nodaemon", "--config", str(conf)]

    def tls_settings(self, tmp_path):
        """mod_tls (from proftpd-mod-crypto) loaded from the unpacked tree; TLS required for the login and the
        data, and data connections must resume the control connection's TLS session (ProFTPD's default)."""
        if self.mode == "plain":
            return []
        if not (PEERS_ROOT / "usr/lib/proftpd/mod_tls.so").exists():
            pytest.skip(f"{PEERS_ROOT}/usr/lib/proftpd/mod_tls.so is missing: scripts/test unpacks "
                        "proftpd-mod-crypto")
        return [
            f"ModulePath {PEERS_ROOT / 'usr/lib/proftpd'}",
            "LoadModule mod_tls.c",
            "TLSEngine on",
            f"TLSLog {tmp_path / 'proftpd.tls.log'}",
            "TLSProtocol TLSv1.2 TLSv1.3",
            f"TLSRSACertificateFile {self.cert}",
            f"TLSRSACertificateKeyFile {self.key}",
            "TLSRequired on",
            "TLSVerifyClient off",
            *(["TLSOptions UseImplicitSSL"] if self.mode == "implicit" else []),
        ]


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


FTP_PEERS = {"vsftpd": Vsftpd, "pure_ftpd": PureFtpd, "proftpd": Proftpd}


@pytest.fixture
def ftp_peer(tmp_path):
    """Starts an FTP server by name and mode: `ftp_peer("proftpd", "implicit")`; stopped after the test."""
    started = []

    def start(name, mode="plain"):
        server = FTP_PEERS[name](tmp_path, mode)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def vsftpd(tmp_path):
    server = Vsftpd(tmp_path)
    yield server
    server.close()


@pytest.fixture
def pure_ftpd(tmp_path):
    server = PureFtpd(tmp_path)
    yield server
    server.close()


@pytest.fixture
def proftpd(tmp_path):
    server = Proftpd(tmp_path)
    yield server
    server.close()


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path)
    yield server
    server.close()
