"""Shared helpers for the ftplib interop tests: connecting, raw commands and replies, byte-exact transfers.

Replies are checked by their three-digit code (RFC 959 section 4.2); `send` returns the whole reply text whatever
the code, so a test can assert on error replies without catching ftplib's exceptions.
"""
import ftplib
import hashlib
import io
import ssl
import time
from pathlib import Path

TIMEOUT = 20
USER = "alice"
PASSWORD = "secret"


def home(ferry, name=USER) -> Path:
    """The account's home directory on disk (created if the server has not created it yet)."""
    path = ferry.home(name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def connect(ferry, user=USER, password=PASSWORD, login=True, address=None, cls=ftplib.FTP, **kwargs):
    """A connected (and by default logged-in) ftplib client for the server's plain FTP listener."""
    host, port = address or ferry.addresses["ftp"]
    ftp = cls(timeout=TIMEOUT, **kwargs)
    ftp.connect(host, port)
    if login:
        ftp.login(user, password)
    return ftp


def close_quietly(ftp):
    try:
        ftp.quit()
    except Exception:
        ftp.close()


def send(ftp, line):
    """Sends one command and returns the complete reply text (multi-line replies joined by newlines)."""
    ftp.putcmd(line)
    return ftp.getmultiline()


def send_raw(ftp, data: bytes):
    """Sends raw bytes (for example invalid UTF-8) on the control connection and returns the next reply."""
    ftp.sock.sendall(data)
    return ftp.getmultiline()


def code(reply) -> int:
    return int(reply[:3])


def last_line(reply):
    return reply.splitlines()[-1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_all(conn) -> bytes:
    chunks = []
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def retr_bytes(ftp, path, rest=None) -> bytes:
    """RETR in binary mode (TYPE I), returning the bytes received."""
    buf = bytearray()
    reply = ftp.retrbinary(f"RETR {path}", buf.extend, blocksize=1 << 16, rest=rest)
    assert code(reply) in (226, 250), reply
    return bytes(buf)


def stor_bytes(ftp, path, data: bytes, command="STOR", rest=None):
    """STOR (or APPE/STOU) in binary mode; returns the final reply."""
    reply = ftp.storbinary(f"{command} {path}".rstrip(), io.BytesIO(data), blocksize=1 << 16, rest=rest)
    assert code(reply) in (226, 250), reply
    return reply


def transfer_raw(ftp, command, upload: bytes = None) -> bytes:
    """Runs a data transfer with whatever TYPE is current (no implicit TYPE I); returns the bytes downloaded."""
    with ftp.transfercmd(command) as conn:
        if upload is None:
            data = read_all(conn)
        else:
            conn.sendall(upload)
            data = b""
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    reply = ftp.voidresp()
    assert code(reply) in (226, 250), reply
    return data


def feat_lines(ftp):
    """The feature lines of a FEAT reply, checked against RFC 2389's format (each one begins with one space)."""
    reply = send(ftp, "FEAT")
    lines = reply.splitlines()
    assert lines[0].startswith("211-"), reply
    assert lines[-1].startswith("211 "), reply
    features = []
    for line in lines[1:-1]:
        assert line.startswith(" "), f"feature line without the leading space (RFC 2389): {line!r}"
        features.append(line[1:])
    return features


def feature(features, name):
    """The first feature line whose first word is `name` (case-insensitive), or None."""
    for line in features:
        if line.split(" ", 1)[0].upper() == name.upper():
            return line
    return None


def parse_mlst_entry(line):
    """Splits an MLSx entry ('fact=value;fact=value; pathname') into (pathname, {fact: value}) per RFC 3659 7.2."""
    facts_text, sep, name = line.partition(" ")
    assert sep, f"MLSx entry without the space before the pathname: {line!r}"
    facts = {}
    for fact in facts_text.split(";"):
        if fact:
            key, eq, value = fact.partition("=")
            assert eq, f"malformed fact {fact!r} in {line!r}"
            facts[key.lower()] = value
    return name, facts


def tls_client_context():
    """A client context that accepts ferry's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImplicitFTP_TLS(ftplib.FTP_TLS):
    """Implicit FTPS: the control connection is TLS from its first byte (no AUTH TLS)."""

    def __init__(self, *args, **kwargs):
        self._sock = None
        super().__init__(*args, **kwargs)

    @property
    def sock(self):
        return self._sock

    @sock.setter
    def sock(self, value):
        if value is not None and not isinstance(value, ssl.SSLSocket):
            value = self.context.wrap_socket(value, server_hostname=self.host)
        self._sock = value


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """Like FileZilla: each protected data connection resumes the control connection's TLS session.

    `data_sessions_reused` records `session_reused` for every data connection opened.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_sessions_reused = []

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
            self.data_sessions_reused.append(conn.session_reused)
        return conn, size


def wait_until(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def read_reply_raw(sock, timeout=TIMEOUT) -> bytes:
    """Reads one (possibly multi-line) reply from a plain socket; returns b'' on EOF."""
    sock.settimeout(timeout)
    buf = b""
    first_code = None
    while True:
        while b"\r\n" not in buf and b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return buf
            buf += chunk
        lines = buf.replace(b"\r\n", b"\n").split(b"\n")
        for i, line in enumerate(lines[:-1]):
            if first_code is None:
                first_code = line[:3]
                if line[3:4] != b"-":
                    return b"\n".join(lines[: i + 1])
            elif line[:3] == first_code and line[3:4] == b" ":
                return b"\n".join(lines[: i + 1])
        chunk = sock.recv(4096)
        if not chunk:
            return buf
        buf += chunk
