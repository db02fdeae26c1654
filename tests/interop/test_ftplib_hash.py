"""Python ftplib against ferry: HASH with OPTS HASH and RANG (draft-bryan-ftpext-hash-02, draft-bryan-ftp-range-09)
and the legacy XSHA256/XSHA1/XMD5/XCRC commands."""
import hashlib
import os
import re
import zlib

import pytest

from helpers_ftplib import (
    close_quietly,
    code,
    connect,
    feat_lines,
    feature,
    home,
    last_line,
    send,
    stor_bytes,
    transfer_raw,
)

HASH_REPLY = re.compile(r"^213 (?P<algo>[A-Za-z0-9_/.,-]+) (?P<start>\d+)-(?P<end>\d+) (?P<hex>[0-9A-Fa-f]+) (?P<path>.+)$")
ALGORITHMS = {
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
    "SHA-512": lambda b: hashlib.sha512(b).hexdigest(),
    "SHA-1": lambda b: hashlib.sha1(b).hexdigest(),
    "MD5": lambda b: hashlib.md5(b).hexdigest(),
    "CRC32": lambda b: f"{zlib.crc32(b):08x}",
}


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


@pytest.fixture
def data(ferry):
    payload = os.urandom(300_001)
    (home(ferry) / "hashme.bin").write_bytes(payload)
    return payload


def _hash(ftp, path):
    reply = send(ftp, f"HASH {path}")
    assert code(reply) == 213, reply
    m = HASH_REPLY.match(last_line(reply))
    assert m, f"HASH reply not '213 ALGO START-END HEX PATH': {reply}"
    return m


def _same_digest(algo, got_hex, payload):
    expected = ALGORITHMS[algo](payload)
    if algo == "CRC32":
        return int(got_hex, 16) == int(expected, 16)
    return got_hex.lower() == expected


def test_feat_lists_hash_algorithms_with_sha256_selected(ftp):
    line = feature(feat_lines(ftp), "HASH")
    assert line, "FEAT lacks HASH"
    algos = [a for a in line.split(" ", 1)[1].split(";") if a]
    names = {a.rstrip("*").upper() for a in algos}
    assert set(ALGORITHMS) <= names, line
    selected = [a.rstrip("*").upper() for a in algos if a.endswith("*")]
    assert selected == ["SHA-256"], f"exactly one algorithm, the default, is marked with '*': {line}"


def test_hash_returns_sha256_of_the_whole_file(data, ftp):
    m = _hash(ftp, "hashme.bin")
    assert m.group("algo").upper() == "SHA-256"
    assert (int(m.group("start")), int(m.group("end"))) == (0, len(data) - 1)
    assert m.group("hex").lower() == hashlib.sha256(data).hexdigest()
    assert m.group("path").endswith("hashme.bin")


def test_hash_matches_a_file_uploaded_over_ftp(ferry, ftp):
    payload = os.urandom(1_000_000)
    stor_bytes(ftp, "uploaded.bin", payload)
    assert _hash(ftp, "uploaded.bin").group("hex").lower() == hashlib.sha256(payload).hexdigest()


def test_opts_hash_without_argument_reports_the_current_algorithm(ftp):
    reply = send(ftp, "OPTS HASH")
    assert code(reply) == 200, reply
    assert reply[4:].strip().upper() == "SHA-256", reply


@pytest.mark.parametrize("algo", ["SHA-512", "SHA-1", "MD5", "CRC32", "SHA-256"])
def test_opts_hash_switches_the_algorithm(data, ftp, algo):
    reply = send(ftp, f"OPTS HASH {algo}")
    assert code(reply) == 200, reply
    assert reply[4:].strip().upper() == algo, reply
    m = _hash(ftp, "hashme.bin")
    assert m.group("algo").upper() == algo
    assert _same_digest(algo, m.group("hex"), data), m.group(0)
    line = feature(feat_lines(ftp), "HASH")
    assert f"{algo}*" in line.upper(), f"FEAT must mark the selected algorithm: {line}"


def test_opts_hash_is_per_session(data, ferry, ftp):
    assert code(send(ftp, "OPTS HASH MD5")) == 200
    other = connect(ferry)
    assert _hash(other, "hashme.bin").group("algo").upper() == "SHA-256"
    close_quietly(other)
    assert _hash(ftp, "hashme.bin").group("algo").upper() == "MD5"


def test_opts_hash_with_an_unknown_algorithm_is_rejected_and_keeps_the_selection(ftp):
    reply = send(ftp, "OPTS HASH CRC-37")
    assert code(reply) in (501, 504), reply
    assert send(ftp, "OPTS HASH")[4:].strip().upper() == "SHA-256"


def test_hash_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "HASH no-such-file")) == 550


def test_hash_of_a_directory_is_refused(ferry, ftp):
    (home(ferry) / "adir").mkdir()
    reply = send(ftp, "HASH adir")
    assert code(reply) in (550, 553), reply  # the draft says 553


def test_hash_without_argument_gets_501(ftp):
    assert code(send(ftp, "HASH")) == 501


def test_rang_then_hash_covers_the_range(data, ftp):
    reply = send(ftp, "RANG 100 100099")
    assert code(reply) == 350, reply
    m = _hash(ftp, "hashme.bin")
    assert (int(m.group("start")), int(m.group("end"))) == (100, 100099)
    assert m.group("hex").lower() == hashlib.sha256(data[100:100100]).hexdigest()


def test_rang_1_0_resets_to_the_whole_file(data, ftp):
    assert code(send(ftp, "RANG 5 10")) == 350
    assert code(send(ftp, "RANG 1 0")) == 350
    m = _hash(ftp, "hashme.bin")
    assert (int(m.group("start")), int(m.group("end"))) == (0, len(data) - 1)
    assert m.group("hex").lower() == hashlib.sha256(data).hexdigest()


def test_rang_to_the_largest_offset_covers_the_rest_of_the_file(data, ftp):
    """`RANG 0 18446744073709551615` counts 2^64 bytes, one more than a u64 holds: it means the whole file."""
    assert code(send(ftp, "RANG 0 18446744073709551615")) == 350
    m = _hash(ftp, "hashme.bin")
    assert (int(m.group("start")), int(m.group("end"))) == (0, len(data) - 1)
    assert m.group("hex").lower() == hashlib.sha256(data).hexdigest()
    ftp.voidcmd("TYPE I")
    assert code(send(ftp, "RANG 0 18446744073709551615")) == 350
    assert transfer_raw(ftp, "RETR hashme.bin") == data


def test_rang_with_start_after_end_gets_501(ftp):
    assert code(send(ftp, "RANG 10 5")) == 501


def test_rang_with_other_hash_algorithms(data, ftp):
    assert code(send(ftp, "OPTS HASH MD5")) == 200
    assert code(send(ftp, "RANG 0 0")) == 350
    m = _hash(ftp, "hashme.bin")
    assert (m.group("start"), m.group("end")) == ("0", "0")
    assert m.group("hex").lower() == hashlib.md5(data[:1]).hexdigest()


def test_rang_then_retr_returns_the_inclusive_range_when_rang_stream_is_advertised(data, ftp):
    if "RANG STREAM" not in {f.upper() for f in feat_lines(ftp)}:
        pytest.skip("server does not advertise RANG STREAM for transfers")
    ftp.voidcmd("TYPE I")
    assert code(send(ftp, "RANG 1000 1999")) == 350
    assert transfer_raw(ftp, "RETR hashme.bin") == data[1000:2000]


@pytest.mark.parametrize(
    "command, algo",
    [("XSHA256", "SHA-256"), ("XSHA1", "SHA-1"), ("XMD5", "MD5"), ("XCRC", "CRC32")],
)
def test_legacy_hash_commands_reply_250_with_the_digest(data, ftp, command, algo):
    reply = send(ftp, f"{command} hashme.bin")
    assert code(reply) == 250, reply
    tokens = re.findall(r"\b[0-9A-Fa-f]+\b", reply[4:])
    assert tokens, reply
    assert any(_same_digest(algo, t, data) for t in tokens), reply


def test_legacy_hash_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "XSHA256 nope.bin")) == 550
