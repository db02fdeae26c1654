"""The client's questions at a terminal, asked on a pseudo-terminal that is the client's controlling terminal:
the password prompt (no password in the URL, no FERRY_PASSWORD, no ~/.netrc) and the unknown SSH host key prompt.
Each run has a private HOME, so the user's ~/.ssh is never read or written."""
from helpers_ferry_client import client_home, fc, run_in_terminal, url
from helpers_files import sha256_file, write_random

PASSWORD_PROMPT = r"Password for alice@127\.0\.0\.1: "
HOST_KEY_PROMPT = r"\(yes/no\)\? "


def known_hosts(tmp_path):
    path = client_home(tmp_path) / ".ssh/known_hosts"
    return path.read_text() if path.exists() else ""


def test_ftp_password_is_asked_for_on_a_terminal(ferry, tmp_path):
    digest = write_random(ferry.home("alice") / "a.bin", 50_000, seed=1)
    code, screen = run_in_terminal(tmp_path, "get", url(ferry, "ftp", "a.bin", password=None), "a.bin",
                                   answers=[(PASSWORD_PROMPT, "secret", "secret")])
    assert code == 0, screen
    assert sha256_file(tmp_path / "a.bin") == digest
    # The terminal does not echo the password.
    assert "secret" not in screen, screen


def test_a_wrong_password_at_the_prompt_fails_with_exit_3(ferry, tmp_path):
    code, screen = run_in_terminal(tmp_path, "ls", url(ferry, "ftp", "", password=None),
                                   answers=[(PASSWORD_PROMPT, "wrong", "secret")])
    assert code == 3, screen
    assert "login" in screen and "wrong" not in screen, screen
    # The server's output is collected by a thread: wait for the line before counting.
    ferry.wait_for_log("login failed")
    assert ferry.log().count("login failed") == 1, ferry.log()


def test_sftp_password_is_asked_for_when_no_key_works(ferry, tmp_path):
    (ferry.home("alice") / "hi.txt").write_text("hello over sftp")
    code, screen = run_in_terminal(tmp_path, "cat", "--accept-new-host-key", url(ferry, "sftp", "hi.txt",
                                   password=None), answers=[(PASSWORD_PROMPT, "secret", "secret")])
    assert code == 0, screen
    assert "hello over sftp" in screen, screen


def test_no_prompt_without_a_terminal(ferry, tmp_path):
    p = fc(tmp_path, "ls", url(ferry, "ftp", "", password=None), check=False)
    assert p.returncode == 3, p.stderr
    assert "Password" not in p.stderr, p.stderr


def test_unknown_host_key_accepted_at_the_prompt_is_remembered(ferry, tmp_path):
    host, port = ferry.addresses["sftp"]
    (ferry.home("alice") / "hi.txt").write_text("trusted")
    code, screen = run_in_terminal(tmp_path, "cat", url(ferry, "sftp", "hi.txt"),
                                   answers=[(HOST_KEY_PROMPT, "yes")])
    assert code == 0, screen
    assert "is not known" in screen and "SHA256:" in screen, screen
    assert "trusted" in screen, screen
    assert f"[{host}]:{port} ssh-" in known_hosts(tmp_path)
    # Remembered: a script now connects without the flag, and a terminal is not asked again.
    assert fc(tmp_path, "cat", url(ferry, "sftp", "hi.txt")).stdout == "trusted"
    code, screen = run_in_terminal(tmp_path, "cat", url(ferry, "sftp", "hi.txt"))
    assert code == 0 and "yes/no" not in screen, screen


def test_unknown_host_key_refused_at_the_prompt(ferry, tmp_path):
    code, screen = run_in_terminal(tmp_path, "ls", "--retries", "3", url(ferry, "sftp", ""),
                                   answers=[(HOST_KEY_PROMPT, "no")])
    assert code == 3, screen
    assert "unknown host key" in screen, screen
    # Asked once: a refusal is not retried.
    assert screen.count("yes/no") == 1, screen
    assert known_hosts(tmp_path) == ""


def test_unknown_host_key_in_a_script_is_refused_unless_accepted(ferry, tmp_path):
    p = fc(tmp_path, "ls", url(ferry, "sftp", ""), check=False)
    assert p.returncode == 3 and "unknown host key" in p.stderr and "--accept-new-host-key" in p.stderr, p.stderr
    assert "yes/no" not in p.stderr and known_hosts(tmp_path) == ""
    fc(tmp_path, "ls", "--accept-new-host-key", url(ferry, "sftp", ""))
    assert known_hosts(tmp_path) != ""
