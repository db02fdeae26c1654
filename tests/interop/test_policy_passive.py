"""Passive-mode settings: --passive-ports keeps data ports in range, --passive-host sets the PASV address."""
import io
import random
import socket

from helpers_files import put_file
from helpers_ftp import RawFtp, ftp_login, parse_epsv, parse_pasv


def free_port_range(size=20):
    """A range of currently free TCP ports on 127.0.0.1 (random, so parallel tests do not collide)."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(30000, 60000 - size)
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base, base + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_passive_ports_stay_in_the_configured_range(ferry_factory):
    low, high = free_port_range()
    server = ferry_factory("--passive-ports", f"{low}-{high}", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    put_file(server.home("alice") / "f.bin", b"data" * 1000)
    ftp = ftp_login(server)
    for _ in range(5):
        host, port = parse_pasv(ftp.sendcmd("PASV"))
        assert low <= port <= high, (port, low, high)
        port = parse_epsv(ftp.sendcmd("EPSV"))
        assert low <= port <= high, (port, low, high)
    # And transfers work through them.
    for _ in range(3):
        buf = io.BytesIO()
        ftp.retrbinary("RETR f.bin", buf.write)
        assert buf.getvalue() == b"data" * 1000
    ftp.quit()


def test_passive_host_is_advertised_in_pasv(ferry_factory):
    server = ferry_factory("--passive-host", "10.1.2.3", "--failed-login-delay-ms", "0")
    server.add_user("alice", "secret")
    c = RawFtp(server.host, server.port)
    assert c.login().startswith("230")
    host, _ = parse_pasv(c.cmd("PASV"))
    assert host == "10.1.2.3"
    c.close()
