"""Control-connection helpers for the policy tests: ftplib sessions and a raw line-level FTP connection."""
import ftplib
import io
import re
import socket
import ssl
import time

TIMEOUT = 10


def ftp_login(server, user="alice", password="secret", source_address=None, port=None):
    """Returns a logged-in ftplib.FTP (passive mode, binary) to `server`'s plain FTP listener."""
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect(server.host, port or server.port, source_address=source_address)
    ftp.login(user, password)
    return ftp


def ftps_login(server, user="alice", password="secret", protect_data=True):
    """Returns an explicit-FTPS (AUTH TLS) session; the server's certificate is self-signed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ftp = ftplib.FTP_TLS(context=ctx, timeout=TIMEOUT)
    ftp.connect(server.host, server.port)
    ftp.login(user, password)
    if protect_data:
        ftp.prot_p()
    return ftp


def code_of(exc_or_reply) -> str:
    return str(exc_or_reply)[:3]


def expect_error(code_prefixes, fn, *args, **kwargs):
    """Calls fn and asserts it raises an ftplib error whose reply code starts with one of `code_prefixes`.

    Returns the full reply text.
    """
    if isinstance(code_prefixes, str):
        code_prefixes = (code_prefixes,)
    try:
        result = fn(*args, **kwargs)
    except ftplib.all_errors as e:
        reply = str(e)
        assert reply.startswith(tuple(code_prefixes)), f"expected {code_prefixes}, got {reply!r}"
        return reply
    raise AssertionError(f"expected a {code_prefixes} reply, but the command succeeded: {result!r}")


def store(ftp, path, data: bytes):
    return ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def retrieve(ftp, path) -> bytes:
    buf = io.BytesIO()
    ftp.retrbinary(f"RETR {path}", buf.write)
    return buf.getvalue()


def upload_expecting_failure(ftp, cmd, data: bytes, chunk=65536):
    """Sends `data` with `cmd` (e.g. "STOR f") when the server is expected to refuse or cut it off.

    Returns the final reply text, whether it came before the data connection opened (e.g. 550/552 to STOR)
    or after the server aborted the transfer. A transfer that completes successfully returns its 2xx reply.
    """
    try:
        conn = ftp.transfercmd(cmd)
    except ftplib.all_errors as e:
        return str(e)
    try:
        with conn:
            view = memoryview(data)
            for off in range(0, len(view), chunk):
                conn.sendall(view[off : off + chunk])
    except OSError:
        pass  # the server closed the data connection early (quota exceeded); its reply says why
    try:
        return ftp.voidresp()
    except ftplib.all_errors as e:
        return str(e)


class RawFtp:
    """A raw control connection: exact bytes on the wire, multi-line replies, EOF detection."""

    def __init__(self, host, port, source_address=None, timeout=TIMEOUT, read_greeting=True):
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=source_address)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply() if read_greeting else None

    def send(self, line):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.sock.sendall(line + b"\r\n")

    def reply(self):
        """Reads one complete reply and returns it as text ("" on EOF)."""
        first = self.file.readline()
        if not first:
            return ""
        text = first.decode("utf-8", "replace")
        if re.match(r"^\d{3}-", text):
            code = text[:3]
            while True:
                line = self.file.readline()
                if not line:
                    break
                line_text = line.decode("utf-8", "replace")
                text += line_text
                if line_text.startswith(code + " "):
                    break
        return text

    def cmd(self, line):
        self.send(line)
        return self.reply()

    def login(self, user="alice", password="secret"):
        r = self.cmd(f"USER {user}")
        if r.startswith("331"):
            r = self.cmd(f"PASS {password}")
        return r

    def closed_within(self, timeout):
        """True if the server closes the connection within `timeout` seconds; any pending replies are
        collected in self.pending."""
        self.pending = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                line = self.file.readline()
            except (socket.timeout, TimeoutError):
                return False
            except OSError:
                return True  # reset
            if not line:
                return True
            self.pending.append(line.decode("utf-8", "replace"))
        return False

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def login_reply(server, user, password):
    """The reply to a login on a new raw connection (closed after)."""
    c = RawFtp(server.host, server.port)
    try:
        return c.login(user, password)
    finally:
        c.close()


def parse_pasv(reply):
    m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply)
    assert m, f"bad PASV reply {reply!r}"
    nums = [int(x) for x in m.groups()]
    return ".".join(map(str, nums[:4])), nums[4] * 256 + nums[5]


def parse_epsv(reply):
    m = re.search(r"\(\|\|\|(\d+)\|\)", reply)
    assert m, f"bad EPSV reply {reply!r}"
    return int(m.group(1))
