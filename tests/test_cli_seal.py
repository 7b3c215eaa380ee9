"""``tokencsp seal`` / ``open`` / ``inspect`` as a user runs them: refusals, exit codes, no partial files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import assert_one_line_error, start_together, tokencsp
from tokencsp import envelope


@pytest.fixture(scope="module")
def keys(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("keys")
    tokencsp("key", "generate", "seal-rx")
    tokencsp("key", "generate", "seal-other")
    tokencsp("key", "generate", "seal-signer", "--usage", "signature")
    tokencsp("key", "generate", "seal-stranger", "--usage", "signature")
    for name in ("seal-rx", "seal-signer", "seal-stranger"):
        tokencsp("key", "export", name, "-o", str(home / f"{name}.pub"))
    yield home
    for name in ("seal-rx", "seal-other", "seal-signer", "seal-stranger"):
        tokencsp("key", "delete", "--yes", name, check=False)


def seal(keys, tmp_path, data: bytes, *extra: str):
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.seal"
    tokencsp("seal", "--to", str(keys / "seal-rx.pub"), *extra, "-o", str(out), input=data)
    return out


def test_seal_open_file_and_stdout_then_replay_refused(keys, tmp_path):
    data = os.urandom(300_000)
    sealed = seal(keys, tmp_path, data)
    db = tmp_path / "replay.db"
    tokencsp("open", "--key", "seal-rx", "--replay-db", str(db), "-o", str(tmp_path / "out"), str(sealed))
    assert (tmp_path / "out").read_bytes() == data
    again = tokencsp("open", "--key", "seal-rx", "--replay-db", str(db), "-o", str(tmp_path / "out2"),
                     str(sealed), check=False)
    assert_one_line_error(again, 20, "replay", hint=f"replay cache SQLite {db} (--replay-db)")
    assert not (tmp_path / "out2").exists()
    other = seal(keys, tmp_path, data)
    assert tokencsp("open", "--key", "seal-rx", "--replay-db", str(db), input=other.read_bytes()).stdout == data


def test_signed_message_with_trust(keys, tmp_path):
    sealed = seal(keys, tmp_path, b"signed hello", "--sign-with", "seal-signer")
    info = json.loads(tokencsp("inspect", str(sealed), "--json").stdout)
    assert info["signed"] and info["serial"] > 0
    result = tokencsp("open", "--key", "seal-rx", "--trust", str(keys / "seal-signer.pub"), "--replay-db",
                      str(tmp_path / "db"), str(sealed))
    assert result.stdout == b"signed hello"
    assert b"from seal-signer (signature verified)" in result.stderr


def test_open_without_trust_reports_the_sender_as_unverified(keys, tmp_path):
    """Finding 9.12 / FORMAT.md O8: without --trust, say the sender is unverified, signed or not."""
    for extra, needle in (((), "the message is unsigned"), (("--sign-with", "seal-signer"), "claims key id")):
        sealed = seal(keys, tmp_path, b"hello", *extra)
        result = tokencsp("open", "--key", "seal-rx", "--replay-db", str(tmp_path / "db"), str(sealed))
        assert result.stdout == b"hello"
        err = result.stderr.decode()
        assert err.startswith("tokencsp: sender unverified: ") and err.count("\n") == 1, err
        assert needle in err and "seal-signer" not in err, err


@pytest.mark.parametrize("case", ["untrusted", "unsigned", "too-old", "wrong-key", "garbage", "tampered",
                                  "truncated", "serial-backwards", "from-future", "bad-signature"])
def test_each_refusal_has_its_reason_and_exit_code(keys, tmp_path, case):
    db = str(tmp_path / "db")
    out = tmp_path / "plain.out"
    opener = ["open", "--key", "seal-rx", "--replay-db", db, "-o", str(out)]
    if case == "untrusted":
        sealed = seal(keys, tmp_path, b"x", "--sign-with", "seal-stranger")
        result = tokencsp(*opener, "--trust", str(keys / "seal-signer.pub"), str(sealed), check=False)
        assert_one_line_error(result, 30, "not trusted")
    elif case == "unsigned":
        sealed = seal(keys, tmp_path, b"x")
        assert_one_line_error(tokencsp(*opener, "--trust", str(keys), str(sealed), check=False), 32, "unsigned")
    elif case == "too-old":
        sealed = seal(keys, tmp_path, b"x")
        assert_one_line_error(tokencsp(*opener, "--max-age", "0s", str(sealed), check=False), 21, "too old")
    elif case == "wrong-key":
        sealed = seal(keys, tmp_path, b"x")
        result = tokencsp("open", "--key", "seal-other", "--replay-db", db, "-o", str(out), str(sealed), check=False)
        assert_one_line_error(result, 12, "not addressed")
    elif case == "garbage":
        (tmp_path / "g").write_bytes(os.urandom(500))
        assert_one_line_error(tokencsp(*opener, str(tmp_path / "g"), check=False), 13, "not a tokencsp sealed message")
    elif case == "tampered":
        sealed = seal(keys, tmp_path, os.urandom(200_000))
        data = bytearray(sealed.read_bytes())
        data[-5000] ^= 1
        sealed.write_bytes(bytes(data))
        assert_one_line_error(tokencsp(*opener, str(sealed), check=False), 10, "could not be authenticated")
    elif case == "truncated":
        sealed = seal(keys, tmp_path, os.urandom(200_000))
        with sealed.open("rb") as f:
            pre = envelope.read_header(f)
        cut = len(pre.raw) + 2 * (pre.header.chunk_size + 16)  # exactly after the second chunk
        sealed.write_bytes(sealed.read_bytes()[:cut])
        assert_one_line_error(tokencsp(*opener, str(sealed), check=False), 11, "truncated")
    elif case == "from-future":
        import io
        import time

        from tokencsp.pubkeys import load_public_key

        recipient = load_public_key((keys / "seal-rx.pub").read_bytes())
        sealed = tmp_path / "future.seal"
        sink = io.BytesIO()
        envelope.seal(io.BytesIO(b"x"), sink, recipient, now=time.time() + 3600)
        sealed.write_bytes(sink.getvalue())
        assert_one_line_error(tokencsp(*opener, str(sealed), check=False), 22, "future")
    elif case == "bad-signature":
        sealed = seal(keys, tmp_path, b"x", "--sign-with", "seal-signer")
        with sealed.open("rb") as f:
            pre = envelope.read_header(f)
        data = bytearray(sealed.read_bytes())
        data[len(pre.raw) - 10] ^= 1  # inside the signature
        sealed.write_bytes(bytes(data))
        assert_one_line_error(tokencsp(*opener, "--trust", str(keys / "seal-signer.pub"), str(sealed), check=False), 31,
                "does not verify")
    elif case == "serial-backwards":
        first = seal(keys, tmp_path, b"1", "--sign-with", "seal-signer")
        second = seal(keys, tmp_path, b"2", "--sign-with", "seal-signer")
        trust = ["--trust", str(keys / "seal-signer.pub")]
        tokencsp("open", "--key", "seal-rx", "--replay-db", db, *trust, str(second))
        assert_one_line_error(tokencsp(*opener, *trust, str(first), check=False), 23, "serial")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokencsp-")]


@pytest.mark.parametrize("round_", range(3))
def test_four_processes_race_to_open_one_message(keys, tmp_path, round_):
    sealed = seal(keys, tmp_path, b"only once")
    db = str(tmp_path / "shared.db")
    # Released together from a barrier (started one after another they hardly overlapped), and in
    # several rounds: a missing cross-process open lock showed in some rounds only.
    procs = start_together(["open", "--key", "seal-rx", "--replay-db", db, str(sealed)], 4,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = [(proc.wait(timeout=120), proc.stdout.read(), proc.stderr.read()) for proc in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 20, 20, 20], results
    assert [out for code, out, _ in results if code == 0] == [b"only once"]
    assert all(out == b"" for code, out, _ in results if code != 0)


def test_open_256_mib_in_bounded_memory(keys, tmp_path):
    """Peak RSS of a whole `tokencsp open` of 256 MiB stays under the documented 100 MiB."""
    plain = tmp_path / "big"
    with open(plain, "wb") as handle:
        for _ in range(256):
            handle.write(os.urandom(1 << 20))
    sealed = tmp_path / "big.seal"
    tokencsp("seal", "--to", str(keys / "seal-rx.pub"), "-o", str(sealed), str(plain))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so it would report
    # the (large) pytest parent's resident size instead of this process's peak.
    probe = ("import re, sys, runpy; sys.argv = ['tokencsp'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('tokencsp', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
             "print(hwm, file=sys.stderr)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "open", "--key", "seal-rx", "--replay-db",
                             str(tmp_path / "db"), "-o", str(tmp_path / "big.out"), str(sealed)],
                            capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stderr.decode().strip().splitlines()[-1])
    print(f"peak RSS of tokencsp open, 256 MiB: {peak_kib // 1024} MiB")
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib} KiB"
    assert os.path.getsize(tmp_path / "big.out") == 256 << 20
    with open(plain, "rb") as a, open(tmp_path / "big.out", "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            assert x == y
            if not x:
                break


def test_progress_on_a_terminal_only(keys, tmp_path):
    import pty

    big = tmp_path / "big"
    big.write_bytes(os.urandom(20 << 20))
    command = [sys.executable, "-m", "tokencsp", "seal", "--to", str(keys / "seal-rx.pub"), "-o",
               str(tmp_path / "out"), str(big)]
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(command, stderr=secondary, stdout=subprocess.DEVNULL)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO once the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(primary)
    assert b"sealing: 20 MiB (100%)" in shown, shown
    quiet = subprocess.run([*command[:-1], "--quiet", str(big)], capture_output=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == b""
    piped = subprocess.run(command, capture_output=True, timeout=120)  # stderr not a terminal
    assert piped.returncode == 0 and piped.stderr == b""


def test_open_to_a_file_does_not_let_a_damaged_copy_spend_the_message(keys, tmp_path):
    """With -o the message is recorded only after it authenticated completely (FORMAT.md O6a);
    to stdout it is recorded after chunk 0 (O6), so there the damaged copy does spend it."""
    data = os.urandom(3 * 65536 + 10)
    sealed = seal(keys, tmp_path, data).read_bytes()
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    db = str(tmp_path / "replay.db")
    bad = tokencsp("open", "--key", "seal-rx", "--replay-db", db, "-o", str(tmp_path / "bad"), input=damaged,
                   check=False)
    assert bad.returncode != 0 and not (tmp_path / "bad").exists()
    tokencsp("open", "--key", "seal-rx", "--replay-db", db, "-o", str(tmp_path / "good"), input=sealed)
    assert (tmp_path / "good").read_bytes() == data
    streamed = seal(keys, tmp_path, data).read_bytes()
    bad = tokencsp("open", "--key", "seal-rx", "--replay-db", db, input=streamed[:-1] + bytes([streamed[-1] ^ 1]),
                   check=False)
    assert bad.returncode != 0
    assert_one_line_error(tokencsp("open", "--key", "seal-rx", "--replay-db", db, input=streamed, check=False), 20, "replay",
                          hint="replay cache SQLite")


def test_pkcs1_key_transport_needs_allow_pkcs1(keys, tmp_path):
    """Finding 9.1: PKCS#1 v1.5 key transport is refused (one line, exit 16, nothing written, nothing
    recorded) unless the receiver opts in with --allow-pkcs1."""
    sealed = seal(keys, tmp_path, b"legacy", "--pkcs1")
    db = str(tmp_path / "db")
    out = tmp_path / "out"
    result = tokencsp("open", "--key", "seal-rx", "--replay-db", db, "-o", str(out), str(sealed), check=False)
    assert_one_line_error(result, 16, "PKCS#1 v1.5")
    assert "--allow-pkcs1" in result.stderr.decode() and not out.exists()
    assert tokencsp("open", "--key", "seal-rx", "--replay-db", db, str(sealed), check=False).stdout == b""
    result = tokencsp("open", "--key", "seal-rx", "--allow-pkcs1", "--replay-db", db, str(sealed))
    assert result.stdout == b"legacy"  # the refusals above recorded nothing


def test_a_signature_key_for_open_is_refused_with_a_key_list_hint(keys, tmp_path):
    sealed = seal(keys, tmp_path, b"x")
    result = tokencsp("open", "--key", "seal-signer", "--replay-db", str(tmp_path / "db"), str(sealed), check=False)
    assert_one_line_error(result, 3, "not an exchange key", hint="'tokencsp key list' shows each key's USAGE")
