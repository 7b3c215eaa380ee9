"""``tokencsp open --out-dir DIR FILE...``: many messages in one process, each on its own."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import assert_one_line_error, tokencsp


@pytest.fixture(scope="module")
def keys(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("batch-keys")
    for name in ("batch-rx", "batch-other"):
        tokencsp("key", "generate", name)
        tokencsp("key", "export", name, "-o", str(home / f"{name}.pub"))
    yield home
    for name in ("batch-rx", "batch-other"):
        tokencsp("key", "delete", "--yes", name, check=False)


def seal_to(keys, path, data: bytes, key: str = "batch-rx"):
    tokencsp("seal", "--to", str(keys / f"{key}.pub"), "-o", str(path), input=data)
    return path


def batch(db, out, *files, check=False):
    return tokencsp("open", "--key", "batch-rx", "--replay-db", str(db), "--out-dir", str(out),
                    *map(str, files), check=check)


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith(".tokencsp-"))


def test_many_messages_each_on_its_own_line_first_failure_sets_the_status(keys, tmp_path):
    src, out, db = tmp_path / "in", tmp_path / "out", tmp_path / "replay.db"
    src.mkdir()
    out.mkdir()
    plain = {f"m{i:02d}": os.urandom(1024 + i) for i in range(14)}
    files = [seal_to(keys, src / f"{name}.tcsp", data) for name, data in plain.items()]
    # m03: tampered in its payload; m05: a copy of m04 under another name (a replay within the batch);
    # m07: sealed to another key; m09 was opened before (a replay from the cache); m11's output exists.
    data = bytearray(files[3].read_bytes())
    data[-10] ^= 1
    files[3].write_bytes(bytes(data))
    shutil.copy(files[4], files[5])
    seal_to(keys, files[7], plain["m07"], key="batch-other")
    tokencsp("open", "--key", "batch-rx", "--replay-db", str(db), "-o", str(tmp_path / "m09.before"), str(files[9]))
    (out / "m11").write_bytes(b"keep me")

    result = batch(db, out, *files)
    err = result.stderr.decode()
    assert result.returncode == 10, err  # m03's status, the first failure
    assert result.stdout == b"" and "Traceback" not in err
    lines = err.splitlines()
    errors = {line.split(":")[2].strip(): line for line in lines if line.startswith("tokencsp: error: ")}
    assert set(errors) == {str(files[i]) for i in (3, 5, 7, 9, 11)}, err
    assert "could not be authenticated" in errors[str(files[3])] and "(exit 10)" in errors[str(files[3])]
    assert "replay" in errors[str(files[5])] and "(exit 20)" in errors[str(files[5])]
    assert "not addressed" in errors[str(files[7])] and "(exit 12)" in errors[str(files[7])]
    assert "(exit 20)" in errors[str(files[9])]
    assert "exists" in errors[str(files[11])] and "(exit 1)" in errors[str(files[11])]
    assert lines[-1] == f"tokencsp: opened 9 of 14 messages into {out}"
    # Each failure is reported in input order, between the successes around it.
    order = [next(i for i, f in enumerate(files) if f"{f} " in line or f"{f}:" in line) for line in lines[:-1]]
    assert order == list(range(14)), err
    for i, (name, data) in enumerate(plain.items()):
        if i in (3, 5, 7, 9):
            assert not (out / name).exists(), name
        elif i == 11:
            assert (out / name).read_bytes() == b"keep me"
        else:
            assert (out / name).read_bytes() == data, name
            assert (out / name).stat().st_mode & 0o777 == 0o600
    assert leftovers(out) == []


def test_each_accepted_message_is_recorded_and_a_refused_one_is_not(keys, tmp_path):
    """Durable per message: what the batch opened is a replay afterwards; a broken copy spends nothing."""
    src, out, db = tmp_path / "in", tmp_path / "out", tmp_path / "replay.db"
    src.mkdir()
    out.mkdir()
    good = seal_to(keys, src / "good.tcsp", b"good")
    payload = os.urandom(200_000)
    genuine = seal_to(keys, src / "genuine.tcsp", payload)
    broken = src / "broken.tcsp"
    broken.write_bytes(genuine.read_bytes()[:-3])  # its last chunk cut short
    result = batch(db, out, good, broken)
    assert result.returncode == 10, result.stderr
    assert not (out / "broken").exists() and leftovers(out) == []
    again = tokencsp("open", "--key", "batch-rx", "--replay-db", str(db), "-o", str(tmp_path / "again"), str(good),
                     check=False)
    assert_one_line_error(again, 20, "replay", hint="replay cache")
    tokencsp("open", "--key", "batch-rx", "--replay-db", str(db), "-o", str(tmp_path / "genuine"), str(genuine))
    assert (tmp_path / "genuine").read_bytes() == payload  # the broken copy did not spend it


def test_output_names_and_collisions(keys, tmp_path):
    out, db = tmp_path / "out", tmp_path / "db"
    out.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = seal_to(keys, tmp_path / "a" / "report.tcsp", b"a")
    two = seal_to(keys, tmp_path / "b" / "report.tcsp", b"b")
    three = seal_to(keys, tmp_path / "a" / "notes.txt.tcsp.tcsp", b"c")
    four = seal_to(keys, tmp_path / "a" / "plain-name", b"d")
    result = batch(db, out, one, two)
    assert_one_line_error(result, 2, f"{one} and {two} would both be written to {out / 'report'}")
    assert os.listdir(out) == []
    ok = batch(db, out, one, three, four, check=True)
    assert (out / "report").read_bytes() == b"a"
    assert (out / "notes.txt.tcsp").read_bytes() == b"c"  # only the final .tcsp goes
    assert (out / "plain-name").read_bytes() == b"d"
    assert ok.returncode == 0 and ok.stderr.decode().endswith(f"opened 3 of 3 messages into {out}\n")


def test_usage(keys, tmp_path):
    one = seal_to(keys, tmp_path / "x.tcsp", b"x")
    two = seal_to(keys, tmp_path / "y.tcsp", b"y")
    db = str(tmp_path / "db")
    assert_one_line_error(tokencsp("open", "--key", "batch-rx", "--replay-db", db, str(one), str(two), check=False),
                          2, "need --out-dir")
    assert_one_line_error(tokencsp("open", "--key", "batch-rx", "--replay-db", db, "--out-dir", str(tmp_path),
                                   "-o", str(tmp_path / "o"), str(one), check=False), 2, "exclude each other")
    assert_one_line_error(tokencsp("open", "--key", "batch-rx", "--replay-db", db, "--out-dir", str(tmp_path / "no"),
                                   str(one), check=False), 1, "not a directory")
    assert_one_line_error(tokencsp("open", "--key", "batch-rx", "--replay-db", db, "--out-dir", str(tmp_path),
                                   "-", check=False), 2, "standard input")
