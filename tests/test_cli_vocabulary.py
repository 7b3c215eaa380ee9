"""One meaning per option name (README "Option names"): the new spellings, the old ones with one
deprecation line, ``--key`` in ``key`` commands, ``key delete`` confirmation and new key names."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from helpers import assert_one_line_error, tokencsp

WARNING = "tokencsp: warning: "


@pytest.fixture(scope="module")
def parties(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("vocabulary")
    tokencsp("key", "generate", "--key", "voc-alice")  # --key in a key command
    tokencsp("key", "generate", "voc-bob", "--token", "tokencsp-test-b")
    tokencsp("key", "export", "--key", "voc-alice", "-o", str(home / "alice.pub"))
    tokencsp("key", "export", "voc-bob", "--token", "tokencsp-test-b", "-o", str(home / "bob.pub"))
    (home / "a.txt").write_bytes(b"vocabulary")
    yield home
    tokencsp("key", "delete", "--yes", "voc-alice", check=False)
    tokencsp("key", "delete", "--yes", "voc-bob", "--token", "tokencsp-test-b", check=False)


def exchange(home, out, listen_trust: list[str], send_target: list[str]) -> tuple[str, str]:
    """One listen --once and one send with the given spellings: (listener stderr, sender stderr)."""
    listener = subprocess.Popen(
        [sys.executable, "-m", "tokencsp", "listen", "--token", "tokencsp-test-b", "--key", "voc-bob", "--name", "bob",
         *listen_trust, "--port", "0", "--out-dir", str(out), "--once"], stderr=subprocess.PIPE)
    try:
        lines = []
        while True:
            line = listener.stderr.readline().decode()
            lines.append(line)
            if "listening on" in line or not line:
                break
        port = line.split("127.0.0.1:")[1].split()[0]
        target = [part.replace("PORT", port) for part in send_target]
        sent = tokencsp("send", "--key", "voc-alice", "--name", "alice", *target, str(home / "a.txt"))
        _, rest = listener.communicate(timeout=60)
        assert listener.returncode == 0, rest
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert (out / "alice" / "a.txt").read_bytes() == b"vocabulary"
    return "".join(lines) + rest.decode(), sent.stderr.decode()


def test_new_spellings_warn_nothing(parties, tmp_path):
    heard, said = exchange(parties, tmp_path / "new", ["--trust", str(parties / "alice.pub")],
                           ["--to", str(parties / "bob.pub"), "--connect", "127.0.0.1:PORT"])
    assert WARNING not in heard and WARNING not in said, (heard, said)


def test_old_spellings_work_with_one_warning_each(parties, tmp_path):
    heard, said = exchange(parties, tmp_path / "old", ["--peer", str(parties / "alice.pub")],
                           ["--peer", str(parties / "bob.pub"), "--to", "127.0.0.1:PORT"])
    assert heard.count(WARNING) == 1 and heard.startswith(
        f"{WARNING}--peer is deprecated and goes in the next release: use --trust\n"), heard
    assert said.count(WARNING) == 1 and said.startswith(
        f"{WARNING}send --peer PUBKEY --to HOST:PORT is deprecated and goes in the next release: "
        "use --to PUBKEY --connect HOST:PORT\n"), said


def test_send_and_listen_name_what_is_missing(parties, tmp_path):
    f = str(parties / "a.txt")
    assert_one_line_error(tokencsp("send", "--key", "k", "--connect", "h:1", f, check=False), 2, "send needs --to PUBKEY")
    assert_one_line_error(tokencsp("send", "--key", "k", "--to", f, f, check=False), 2, "send needs --connect HOST:PORT")
    assert_one_line_error(tokencsp("listen", "--key", "k", "--port", "0", "--out-dir", str(tmp_path), check=False), 2,
                          "listen needs --trust")
    result = tokencsp("send", "--key", "k", "--peer", f, "--to", "nocolon", f, check=False)
    assert result.returncode == 2 and "expected HOST:PORT" in result.stderr.decode()


def test_key_commands_take_the_name_or_key(parties):
    listing = tokencsp("key", "list").stdout.decode()
    assert "voc-alice\t" in listing
    both = tokencsp("key", "export", "voc-alice", "--key", "voc-bob", check=False)
    assert_one_line_error(both, 2, "two key names")
    assert_one_line_error(tokencsp("key", "export", check=False), 2, "no key named: give NAME or --key NAME")


@pytest.mark.parametrize("name,needle", [("", "cannot be empty"), ("a/b", "cannot contain '/'"),
                                         (" lead", "blanks at either end"), ("tab\tname", "control characters")])
def test_new_key_names_are_checked(softhsm_kit, name, needle):
    assert_one_line_error(tokencsp("key", "generate", name, check=False), 2, needle)
    assert_one_line_error(tokencsp("key", "generate", "--key", name, check=False), 2, needle)
    assert name not in [line.split("\t")[0] for line in tokencsp("key", "list").stdout.decode().splitlines()[2:]]


def test_the_library_checks_new_names_too(softhsm_kit):
    from tokencsp import Provider
    from tokencsp.errors import ConfigError

    with Provider.open() as provider, pytest.raises(ConfigError, match="cannot contain '/'"):
        provider.generate_key("x/y")


def test_key_delete_needs_yes_without_a_terminal(softhsm_kit):
    tokencsp("key", "generate", "voc-victim")
    refused = tokencsp("key", "delete", "voc-victim", check=False)
    assert_one_line_error(refused, 2, "deleting key 'voc-victim' cannot be undone: give --yes")
    assert b"voc-victim\t" in tokencsp("key", "list").stdout
    assert b"deleted voc-victim" in tokencsp("key", "delete", "--yes", "voc-victim").stderr
    assert b"voc-victim\t" not in tokencsp("key", "list").stdout


def _on_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """``tokencsp ARGS`` with stdin and stderr on a pseudo-terminal that types ``answer``."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tokencsp", *args], stdin=follower, stderr=follower,
                                stdout=subprocess.PIPE)
        os.close(follower)
        seen = b""
        while b"[y/N]" not in seen:
            chunk = os.read(leader, 1024)
            assert chunk, seen
            seen += chunk
        os.write(leader, answer)
        proc.stdout.read()
        proc.wait(timeout=60)
        try:
            while True:
                chunk = os.read(leader, 1024)
                if not chunk:
                    break
                seen += chunk
        except OSError:  # EIO once the child closed its side
            pass
        return proc.returncode, seen.decode()
    finally:
        os.close(leader)


def test_key_delete_asks_on_a_terminal(softhsm_kit):
    tokencsp("key", "generate", "voc-asked")
    try:
        code, seen = _on_a_terminal(["key", "delete", "voc-asked"], b"n\n")
        assert code == 1 and "delete key 'voc-asked' (RSA-2048, id " in seen and "nothing deleted" in seen, seen
        assert "from token 'tokencsp-test-a'" in seen
        assert b"voc-asked\t" in tokencsp("key", "list").stdout
        code, seen = _on_a_terminal(["key", "delete", "voc-asked"], b"y\n")
        assert code == 0 and "deleted voc-asked" in seen, seen
        assert b"voc-asked\t" not in tokencsp("key", "list").stdout
    finally:
        tokencsp("key", "delete", "--yes", "voc-asked", check=False)
