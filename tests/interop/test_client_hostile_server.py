"""The client against a server that lies: names in listings that climb out of the target directory, and files that
send more than their listed size.

No real server can be made to list `../evil.txt` or to send more bytes than it announced, so the server here is a
stand-in written for these tests: a small FTP server on 127.0.0.1 that speaks just the commands the client uses
(USER, PASS, TYPE, FEAT, PASV/EPSV, MLST, MLSD, REST, RETR, NOOP, QUIT) and serves whatever tree a test gives it.
"""
import socket
import threading

import pytest

from helpers_ferry_client import fc

MODIFY = "20240101000000"
CHUNK = 64 * 1024


class File:
    """A file that sends `data`, then `flood` more bytes; MLST and MLSD list it with `listed` bytes (default: the
    length of `data`)."""

    def __init__(self, data=b"", listed=None, flood=0):
        self.data = data
        self.listed = len(data) if listed is None else listed
        self.flood = flood

    def facts(self):
        return f"type=file;size={self.listed};modify={MODIFY};"

    def chunks(self, offset):
        yield self.data[offset:]
        for _ in range(self.flood // CHUNK):
            yield b"x" * CHUNK


class Dir:
    """A directory whose MLSD lists `names` as they are, however hostile."""

    def __init__(self, *names):
        self.names = names

    def facts(self):
        return f"type=dir;modify={MODIFY};"


def join(directory, name):
    return f"{directory}/{name}" if directory else name


class HostileFtp:
    """Serves `tree` (path as the client sends it -> File or Dir) to any user and password."""

    def __init__(self, tree):
        self.tree = tree
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path):
        return f"ftp://user:pw@127.0.0.1:{self.port}/{path}"

    def close(self):
        self.listener.close()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        def reply(text):
            conn.sendall(text.encode("utf-8", "surrogateescape") + b"\r\n")

        passive, offset = None, 0
        with conn, conn.makefile("rb") as lines:
            reply("220 hostile server")
            for raw in lines:
                verb, _, arg = raw.decode("utf-8", "surrogateescape").rstrip("\r\n").partition(" ")
                verb = verb.upper()
                node = self.tree.get(arg.rstrip("/"))
                if verb == "USER":
                    reply("331 password please")
                elif verb == "PASS":
                    reply("230 logged in")
                elif verb in ("TYPE", "OPTS", "NOOP"):
                    reply("200 ok")
                elif verb == "FEAT":
                    reply("211-Features:\r\n MLST type*;size*;modify*;\r\n211 End")
                elif verb in ("PASV", "EPSV"):
                    passive = socket.create_server(("127.0.0.1", 0))
                    port = passive.getsockname()[1]
                    if verb == "PASV":
                        reply(f"227 Entering Passive Mode (127,0,0,1,{port >> 8},{port & 255})")
                    else:
                        reply(f"229 Entering Extended Passive Mode (|||{port}|)")
                elif verb == "MLST" and node is not None:
                    reply(f"250-Listing {arg}\r\n {node.facts()} {arg}\r\n250 End")
                elif verb == "REST":
                    offset = int(arg)
                    reply("350 restarting")
                elif verb == "MLSD" and isinstance(node, Dir):
                    listing = "".join(
                        f"{self.tree.get(join(arg, n), File()).facts()} {n}\r\n" for n in node.names
                    )
                    self._send(reply, passive, [listing.encode("utf-8", "surrogateescape")])
                    passive = None
                elif verb == "RETR" and isinstance(node, File):
                    self._send(reply, passive, node.chunks(offset))
                    passive, offset = None, 0
                elif verb == "QUIT":
                    reply("221 bye")
                    return
                else:
                    reply("550 no such file or not allowed")

    @staticmethod
    def _send(reply, passive, chunks):
        if passive is None:
            reply("425 use PASV first")
            return
        reply("150 opening data connection")
        try:
            passive.settimeout(10)
            data, _ = passive.accept()
            with data:
                for chunk in chunks:
                    data.sendall(chunk)
        except OSError:
            # The client closed the data connection early.
            reply("426 transfer aborted")
            return
        finally:
            passive.close()
        reply("226 transfer complete")


@pytest.fixture
def hostile():
    servers = []

    def start(tree):
        server = HostileFtp(tree)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def files_below(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_glob_download_takes_only_plain_names_from_the_listing(hostile, tmp_path):
    """`ferry get 'URL/dir/*.txt' out/` with a listing of `../evil.txt` (which `*` used to match across `/`) and an
    absolute name downloads only the plain names, into `out/`. A backslash is no separator here: `..\\back.txt` is
    a plain name and lands inside `out/` under that name."""
    absolute = str(tmp_path / "abs.txt")
    server = hostile({
        "dir": Dir("../evil.txt", absolute, "..\\back.txt", "good.txt"),
        "dir/good.txt": File(b"good\n"),
        "dir/../evil.txt": File(b"evil\n"),
        join("dir", absolute): File(b"abs\n"),
        "dir/..\\back.txt": File(b"back\n"),
    })
    work = tmp_path / "a" / "b"
    out = work / "out"
    out.mkdir(parents=True)
    fc(tmp_path, "get", "--retries", "0", server.url("dir/*.txt"), out, cwd=work)
    assert (out / "good.txt").read_bytes() == b"good\n"
    assert files_below(out) == ["..\\back.txt", "good.txt"]
    assert files_below(tmp_path / "a") == ["b", "b/out", "b/out/..\\back.txt", "b/out/good.txt"]
    assert not (tmp_path / "abs.txt").exists()


@pytest.mark.parametrize("command", ["get-r", "mirror"])
def test_recursive_downloads_leave_out_names_that_are_not_plain(hostile, tmp_path, command):
    server = hostile({
        "tree": Dir("a/b.txt", "ok.txt", "sub"),
        "tree/a/b.txt": File(b"slash\n"),
        "tree/ok.txt": File(b"ok\n"),
        "tree/sub": Dir("../up.txt", "inner.txt"),
        "tree/sub/../up.txt": File(b"up\n"),
        "tree/sub/inner.txt": File(b"inner\n"),
    })
    out = tmp_path / "out"
    if command == "get-r":
        fc(tmp_path, "get", "-r", "--retries", "0", server.url("tree"), f"{out}/")
        root = out / "tree"
    else:
        fc(tmp_path, "mirror", "--retries", "0", server.url("tree"), out)
        root = out
    assert files_below(root) == ["ok.txt", "sub", "sub/inner.txt"]
    assert (root / "sub" / "inner.txt").read_bytes() == b"inner\n"


def test_a_server_that_sends_more_than_it_listed_is_cut_off(hostile, tmp_path):
    """A file listed with 5 bytes that sends 32 MiB: the client stops one byte after the listed size and fails the
    file's verification (exit 4), keeping a 6-byte `.part` (and the note of the source version it was started
    from)."""
    server = hostile({"big.bin": File(b"12345", flood=32 << 20)})
    out = tmp_path / "out"
    out.mkdir()
    p = fc(tmp_path, "get", "--retries", "0", server.url("big.bin"), f"{out}/", check=False)
    assert p.returncode == 4, p.stderr
    assert "more than the 5 bytes it listed" in p.stderr
    assert files_below(out) == ["big.bin.part", "big.bin.part.source"]
    assert (out / "big.bin.part").stat().st_size == 6
