"""Python ftplib against ferry: LIST, NLST, MLSD/MLST, SIZE, MDTM, MFMT and STAT (RFC 959, RFC 3659,
draft-somers-ftp-mfxx)."""
import calendar
import ftplib
import os
import re
import time

import pytest

from helpers_ftplib import (
    close_quietly,
    code,
    connect,
    home,
    parse_mlst_entry,
    retr_bytes,
    send,
    send_raw,
    transfer_raw,
)

LIST_LINE = re.compile(
    r"^(?P<type>[-dl])(?P<perm>[-rwxsStT]{9})\s+\d+\s+\S+\s+\S+\s+(?P<size>\d+)\s+"
    r"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+(?P<day>\d{1,2})\s+"
    r"(?P<time>\d{1,2}:\d{2}|\d{4}) (?P<name>.+)$"
)
TIME_VAL = re.compile(r"^\d{14}(\.\d+)?$")  # RFC 3659 2.3


@pytest.fixture
def ftp(ferry):
    client = connect(ferry)
    yield client
    close_quietly(client)


@pytest.fixture
def tree(ferry):
    """/data.bin (1234 bytes, mode 0644, fixed mtime), /sub (dir) with /sub/inner.txt, /my file.txt."""
    root = home(ferry)
    (root / "data.bin").write_bytes(os.urandom(1234))
    os.chmod(root / "data.bin", 0o644)
    os.utime(root / "data.bin", (1600000000, 1600000000))  # 2020-09-13 12:26:40 UTC
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner")
    (root / "my file.txt").write_bytes(b"spaced")
    return root


def _list_lines(ftp, *args):
    lines = []
    ftp.dir(*args, lines.append)
    return lines


def _parse_list(lines):
    entries = {}
    for line in lines:
        if line.startswith("total "):
            continue
        m = LIST_LINE.match(line)
        assert m, f"LIST line not in ls -l format: {line!r}"
        entries[m.group("name")] = m
    return entries


def test_list_uses_ls_long_format(tree, ftp):
    entries = _parse_list(_list_lines(ftp))
    assert {"data.bin", "sub", "my file.txt"} <= set(entries)
    data = entries["data.bin"]
    assert data.group("type") == "-"
    assert data.group("perm") == "rw-r--r--"
    assert data.group("size") == "1234"
    assert entries["sub"].group("type") == "d"
    assert entries["my file.txt"].group("size") == "6"


def test_list_shows_year_for_old_files_and_time_for_recent_ones(tree, ftp):
    old = calendar.timegm((2020, 1, 15, 12, 0, 0))
    os.utime(tree / "data.bin", (old, old))
    recent = time.time() - 86400
    os.utime(tree / "my file.txt", (recent, recent))
    entries = _parse_list(_list_lines(ftp))
    assert (entries["data.bin"].group("month"), entries["data.bin"].group("day")) == ("Jan", "15")
    assert entries["data.bin"].group("time") == "2020"
    assert re.fullmatch(r"\d{1,2}:\d{2}", entries["my file.txt"].group("time"))


def test_list_of_a_subdirectory(tree, ftp):
    entries = _parse_list(_list_lines(ftp, "sub"))
    assert set(entries) - {".", ".."} == {"inner.txt"}


def test_list_of_a_single_file_describes_that_file(tree, ftp):
    lines = [line for line in _list_lines(ftp, "data.bin") if not line.startswith("total ")]
    assert len(lines) == 1, lines
    m = LIST_LINE.match(lines[0])
    assert m and m.group("size") == "1234" and m.group("name").endswith("data.bin"), lines


def test_list_ignores_ls_style_flags(tree, ftp):
    # lftp and other clients send "LIST -a" / "LIST -la".
    assert {"data.bin", "sub"} <= set(_parse_list(_list_lines(ftp, "-a")))
    assert {"data.bin", "sub"} <= set(_parse_list(_list_lines(ftp, "-la")))


def test_list_of_a_missing_directory_fails(ftp):
    with pytest.raises((ftplib.error_perm, ftplib.error_temp)) as excinfo:
        _list_lines(ftp, "no-such-dir")
    assert str(excinfo.value)[:3] in ("450", "550")


def test_list_and_nlst_lines_end_with_crlf(tree, ftp):
    # RFC 959: listings are sent as ASCII text with CRLF line ends.
    ftp.voidcmd("TYPE A")
    for command in ("LIST", "NLST"):
        raw = transfer_raw(ftp, command)
        assert raw.endswith(b"\r\n"), raw
        assert raw.count(b"\n") == raw.count(b"\r\n"), raw


def test_nlst_returns_names_only(tree, ftp):
    names = ftp.nlst()
    assert {"data.bin", "sub", "my file.txt"} <= set(names)
    assert not any(n in (".", "..") for n in names)


def test_nlst_of_a_subdirectory(tree, ftp):
    names = [n.rsplit("/", 1)[-1] for n in ftp.nlst("sub")]
    assert names == ["inner.txt"]


def test_nlst_of_a_file_gives_its_path_as_named(tree, ftp):
    assert ftp.nlst("sub/inner.txt") == ["sub/inner.txt"]
    assert ftp.nlst("data.bin") == ["data.bin"]


def test_names_with_line_breaks_are_left_out_of_listings_and_cannot_be_made(tree, ftp):
    # Made by other means (SFTP refuses them too): its second line would pose as an entry of its own.
    (tree / "evil\n226 forged.exe").write_bytes(b"x")
    (tree / "evil2\r226 forged").write_bytes(b"x")
    names = ftp.nlst()
    assert "data.bin" in names
    assert not any("forged" in n or n.startswith("evil") for n in names), names
    assert not any("forged" in line for line in _list_lines(ftp)), _list_lines(ftp)
    assert not any("forged" in name for name, _ in ftp.mlsd()), list(ftp.mlsd())
    status = send(ftp, "STAT .")
    assert "data.bin" in status and "forged" not in status and "evil" not in status, status
    # A bare CR inside a command's argument cannot make one either.
    reply = send_raw(ftp, b"MKD fake\r226 injected\r\n")
    assert code(reply) in (501, 550, 553), reply
    assert not any("injected" in p.name for p in tree.iterdir())


def test_mlsd_reports_type_size_modify_perm_unique(tree, ftp):
    entries = dict(ftp.mlsd())
    data = entries["data.bin"]
    assert data["type"] == "file"
    assert data["size"] == "1234"
    assert TIME_VAL.match(data["modify"]), data
    assert data["modify"][:14] == "20200913122640"  # UTC (RFC 3659 2.3)
    assert "r" in data["perm"] and "w" in data["perm"], data
    assert data.get("unique"), data
    sub = entries["sub"]
    assert sub["type"] == "dir"
    assert "e" in sub["perm"] and "l" in sub["perm"], sub
    assert entries["my file.txt"]["size"] == "6"
    uniques = [f["unique"] for name, f in entries.items() if f["type"] in ("file", "dir")]
    assert len(uniques) == len(set(uniques)), entries


def test_mlsd_includes_cdir_and_pdir_entries(tree, ftp):
    entries = list(ftp.mlsd("sub"))
    types = [facts["type"] for _, facts in entries]
    assert types.count("cdir") == 1, entries
    assert types.count("pdir") <= 1, entries
    names = {name for name, facts in entries if facts["type"] in ("file", "dir")}
    assert names == {"inner.txt"}
    assert not any(name in (".", "..") for name, facts in entries if facts["type"] in ("file", "dir"))


def test_mlsd_unique_fact_is_shared_by_hard_links(tree, ftp):
    os.link(tree / "data.bin", tree / "hardlink.bin")
    entries = dict(ftp.mlsd())
    assert entries["data.bin"]["unique"] == entries["hardlink.bin"]["unique"]
    assert entries["data.bin"]["unique"] != entries["my file.txt"]["unique"]


def test_mlsd_perm_fact_reflects_a_read_only_account(ferry):
    bob_home = ferry.add_user("bob", "pw", "--perm", "read")
    bob_home.mkdir(parents=True, exist_ok=True)
    (bob_home / "ro.txt").write_bytes(b"read only")
    (bob_home / "rodir").mkdir()
    client = connect(ferry, user="bob", password="pw")
    entries = dict(client.mlsd())
    perm = entries["ro.txt"]["perm"]
    assert "r" in perm
    assert not set("adfw") & set(perm), f"read-only account must not be offered a/d/f/w: {perm}"
    dir_perm = entries["rodir"]["perm"]
    assert "e" in dir_perm and "l" in dir_perm
    assert not set("cdfmp") & set(dir_perm), dir_perm
    close_quietly(client)


def test_mlsd_with_facts_selected_through_ftplib(tree, ftp):
    entries = dict(ftp.mlsd(facts=["type", "size"]))
    assert entries["data.bin"] == {"type": "file", "size": "1234"}


def test_mlsd_on_a_file_is_an_error(tree, ftp):
    with pytest.raises(ftplib.error_perm) as excinfo:
        list(ftp.mlsd("data.bin"))
    assert str(excinfo.value)[:3] in ("501", "550")


def test_mlst_describes_one_file_on_the_control_connection(tree, ftp):
    reply = send(ftp, "MLST data.bin")
    lines = reply.splitlines()
    assert lines[0].startswith("250-"), reply
    assert lines[-1].startswith("250 "), reply
    assert len(lines) == 3, reply
    assert lines[1].startswith(" "), f"RFC 3659 7.2: the entry line starts with one space: {reply}"
    name, facts = parse_mlst_entry(lines[1][1:])
    assert name.endswith("data.bin")
    assert facts["type"] == "file"
    assert facts["size"] == "1234"
    assert facts["modify"][:14] == "20200913122640"


def test_mlst_without_argument_describes_the_current_directory(tree, ftp):
    ftp.cwd("sub")
    lines = send(ftp, "MLST").splitlines()
    assert lines[0].startswith("250-")
    _, facts = parse_mlst_entry(lines[1][1:])
    assert facts["type"] in ("cdir", "dir")


def test_mlst_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "MLST missing.txt")) == 550


def test_size_replies_213_with_the_byte_count(tree, ftp):
    ftp.voidcmd("TYPE I")
    assert send(ftp, "SIZE data.bin") == "213 1234"
    assert ftp.size("my file.txt") == 6


def test_size_of_a_missing_file_or_a_directory_gets_550(tree, ftp):
    ftp.voidcmd("TYPE I")
    assert code(send(ftp, "SIZE missing.bin")) == 550
    assert code(send(ftp, "SIZE sub")) == 550


def test_mdtm_replies_213_with_utc_time(tree, ftp):
    reply = send(ftp, "MDTM data.bin")
    assert code(reply) == 213, reply
    value = reply[4:].strip()
    assert TIME_VAL.match(value), reply
    assert value[:14] == "20200913122640"


def test_mdtm_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "MDTM missing.bin")) == 550


def test_mfmt_sets_the_modification_time(tree, ftp):
    reply = send(ftp, "MFMT 20210102030405 data.bin")
    assert code(reply) == 213, reply
    assert "20210102030405" in reply, reply
    assert send(ftp, "MDTM data.bin")[4:18] == "20210102030405"
    expected = calendar.timegm((2021, 1, 2, 3, 4, 5))
    assert int(os.stat(tree / "data.bin").st_mtime) == expected


def test_mfmt_replies_with_the_time_stored(tree, ftp):
    # Past what the file system holds (ext4: year 2446): the reply gives the time it kept, as MDTM then does.
    reply = send(ftp, "MFMT 99991231235959 data.bin")
    assert code(reply) == 213, reply
    stored = re.search(r"Modify=(\d{14})", reply).group(1)
    assert send(ftp, "MDTM data.bin")[4:18] == stored


def test_mfmt_on_a_file_with_spaces_in_its_name(tree, ftp):
    reply = send(ftp, "MFMT 20190506070809 my file.txt")
    assert code(reply) == 213, reply
    assert int(os.stat(tree / "my file.txt").st_mtime) == calendar.timegm((2019, 5, 6, 7, 8, 9))


def test_mfmt_with_an_invalid_time_is_rejected(tree, ftp):
    assert code(send(ftp, "MFMT 2021-01-02 data.bin")) in (501, 550)
    assert code(send(ftp, "MFMT 20211340250000 data.bin")) in (501, 550)
    assert int(os.stat(tree / "data.bin").st_mtime) == 1600000000


def test_mfmt_of_a_missing_file_gets_550(ftp):
    assert code(send(ftp, "MFMT 20210102030405 missing.bin")) == 550


def test_stat_without_argument_reports_server_status(ftp):
    reply = send(ftp, "STAT")
    lines = reply.splitlines()
    assert lines[0].startswith("211"), reply
    assert lines[-1].startswith("211 "), reply


def test_stat_of_a_directory_lists_it_on_the_control_connection(tree, ftp):
    reply = send(ftp, "STAT sub")
    assert code(reply) in (211, 212, 213), reply
    assert "inner.txt" in reply


def test_stat_of_a_file_describes_it(tree, ftp):
    reply = send(ftp, "STAT data.bin")
    assert code(reply) in (211, 212, 213), reply
    assert "data.bin" in reply and "1234" in reply


def test_unicode_names_are_listed_as_utf8(ferry, ftp):
    name = "ünïcødé 世界.txt"
    (home(ferry) / name).write_bytes(b"u")
    assert name in ftp.nlst()
    assert name in dict(ftp.mlsd())
    assert name in _parse_list(_list_lines(ftp))


def test_names_on_disk_that_are_not_utf8_are_listed_escaped_and_work_by_that_name(ferry, ftp):
    # "café.txt" in Latin-1, as another server or a Windows client leaves it: each byte that is not UTF-8 is shown
    # as U+EF00 + byte, which ftplib reads (and sends back) as UTF-8 like any other name.
    root = os.fsencode(home(ferry))
    with open(os.path.join(root, b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    escaped = "caf\uefe9.txt"
    assert escaped in ftp.nlst()
    assert dict(ftp.mlsd())[escaped]["size"] == "12"
    assert escaped in _parse_list(_list_lines(ftp))
    assert retr_bytes(ftp, escaped) == b"latin-1 name"
    ftp.rename(escaped, "\uefe9t\uefe9.txt")
    assert os.listdir(root) == [b"\xe9t\xe9.txt"]
    assert code(ftp.delete("\uefe9t\uefe9.txt")) == 250
    assert os.listdir(root) == []
    # Escapes that spell UTF-8 (C3 A9 is "é") would be a second name for "café.txt": refused.
    (home(ferry) / "caf\u00e9.txt").write_bytes(b"utf-8 name")
    alias = "caf\uefc3\uefa9.txt"
    for refused in (lambda: retr_bytes(ftp, alias), lambda: ftp.delete(alias), lambda: ftp.size(alias),
                    lambda: ftp.rename("caf\u00e9.txt", alias)):
        with pytest.raises(ftplib.error_perm, match="^553"):
            refused()
    assert (home(ferry) / "caf\u00e9.txt").read_bytes() == b"utf-8 name"


def test_directory_with_20000_entries_lists_completely(ferry, ftp):
    many = home(ferry) / "many"
    many.mkdir()
    expected = {f"file-{i:05d}.txt" for i in range(20000)}
    for name in expected:
        (many / name).touch()
    mlsd = {name for name, facts in ftp.mlsd("many") if facts.get("type") == "file"}
    assert mlsd == expected
    nlst = {n.rsplit("/", 1)[-1] for n in ftp.nlst("many")}
    assert nlst == expected
    listed = _parse_list(_list_lines(ftp, "many"))
    assert set(listed) - {".", ".."} == expected
