"""``tokencsp open --replay-db postgresql://…``, ``seal --serial-db``, ``tokencsp replay`` against a real server.

Processes race behind a real barrier (each blocked reading its stdin before the
message is handed to all of them), a receiver is SIGKILLed while its accept
transaction is open, and the server is crashed and restarted between opens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_one_line_error, tokencsp

pytestmark = pytest.mark.host_side(reason="the replay cache on PostgreSQL; the token only holds the key")

pytest_plugins = ("pg_server",)  # the pg_server and pg_dsn fixtures (tests/pg_server.py)

KEY_PREFIX = "pgcli"


@pytest.fixture(scope="module")
def keys(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("keys")
    tokencsp("key", "generate", f"{KEY_PREFIX}-rx")
    tokencsp("key", "generate", f"{KEY_PREFIX}-signer", "--usage", "signature")
    for name in ("rx", "signer"):
        tokencsp("key", "export", f"{KEY_PREFIX}-{name}", "-o", str(home / f"{name}.pub"))
    yield home
    for name in ("rx", "signer"):
        tokencsp("key", "delete", "--yes", f"{KEY_PREFIX}-{name}", check=False)


def seal(keys, tmp_path: Path, data: bytes, *extra: str) -> Path:
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.seal"
    tokencsp("seal", "--to", str(keys / "rx.pub"), *extra, "-o", str(out), input=data)
    return out


def opener(dsn: str, *extra: str) -> list[str]:
    return ["open", "--key", f"{KEY_PREFIX}-rx", "--replay-db", dsn, *extra]


def query(server, dsn: str, sql: str):
    schema = dsn.rsplit("search_path%3D", 1)[1]
    with server.admin() as db:
        db.execute(f"SET search_path = {schema}")
        return db.execute(sql).fetchall()


def test_open_through_postgres_refuses_the_replay_also_after_a_server_crash(keys, tmp_path, pg_server, pg_dsn):
    data = os.urandom(100_000)
    sealed = seal(keys, tmp_path, data)
    out = tmp_path / "out"
    tokencsp(*opener(pg_dsn, "-o", str(out)), str(sealed))
    assert out.read_bytes() == data
    pg_server.restart("immediate")
    again = tokencsp(*opener(pg_dsn, "-o", str(tmp_path / "again")), str(sealed), check=False)
    assert_one_line_error(again, 20, "replay", hint=f"replay cache PostgreSQL {pg_dsn} (--replay-db)")
    assert not (tmp_path / "again").exists()
    # TOKENCSP_REPLAY_DB selects the same cache without --replay-db.
    env = {"TOKENCSP_REPLAY_DB": pg_dsn}
    assert_one_line_error(tokencsp("open", "--key", f"{KEY_PREFIX}-rx", str(sealed), check=False, env=env), 20, "replay",
                          hint="(TOKENCSP_REPLAY_DB)")
    other = seal(keys, tmp_path, b"fresh")
    assert tokencsp("open", "--key", f"{KEY_PREFIX}-rx", str(other), env=env).stdout == b"fresh"
    assert query(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(2,)]


def _blocked_reading_stdin(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except (FileNotFoundError, PermissionError):
        return False
    return len(fields) > 1 and fields[0] == "0" and int(fields[1], 16) == 0  # read(0, …)


def test_six_racing_open_processes_accept_one_message_exactly_once(keys, tmp_path, pg_server, pg_dsn):
    data = os.urandom(50_000)
    message = seal(keys, tmp_path, data).read_bytes()
    command = [sys.executable, "-m", "tokencsp", *opener(pg_dsn)]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(6)]
    try:
        # The barrier: every process has opened the token and the cache and sits in read(0).
        deadline = time.monotonic() + 240
        while not all(_blocked_reading_stdin(p.pid) for p in procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "the receivers never reached their read of stdin"
            time.sleep(0.02)
        for p in procs:
            p.stdin.write(message)
        for p in procs:
            p.stdin.close()
        results = [(p.wait(120), p.stdout.read(), p.stderr.read().decode()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 20, 20, 20, 20, 20], results
    assert [out for code, out, _ in results if code == 0] == [data]
    assert all(out == b"" and "replay" in err for code, out, err in results if code == 20)
    assert query(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(1,)]


def test_server_down_is_one_line_exit_1_and_nothing_written(keys, tmp_path, pg_server, pg_dsn):
    sealed = seal(keys, tmp_path, b"while the database is down")
    tokencsp("replay", "init", pg_dsn)
    pg_server.stop("fast")
    try:
        out = tmp_path / "out"
        result = tokencsp(*opener(pg_dsn, "-o", str(out)), str(sealed), check=False)
        err = assert_one_line_error(result, 1, "replay cache postgresql://tokencsp@")
        assert pg_server.password not in err
        assert result.stdout == b"" and not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokencsp-")]
    finally:
        pg_server.start()
    assert tokencsp(*opener(pg_dsn), str(sealed)).stdout == b"while the database is down"  # nothing burnt


def test_sigkill_inside_the_accept_transaction_leaves_no_acceptance(keys, tmp_path, pg_server, pg_dsn):
    trust = ["--trust", str(keys / "signer.pub")]
    first = seal(keys, tmp_path, b"first", "--sign-with", f"{KEY_PREFIX}-signer", "--serial-db", pg_dsn)
    second = seal(keys, tmp_path, b"second" * 1000, "--sign-with", f"{KEY_PREFIX}-signer", "--serial-db", pg_dsn)
    tokencsp(*opener(pg_dsn, *trust), str(first))
    (serial_before,), = query(pg_server, pg_dsn, "SELECT last_serial FROM tokencsp_senders")
    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    out = tmp_path / "out"
    with pg_server.admin() as holder:
        holder.execute("BEGIN")
        holder.execute(f"SELECT * FROM {schema}.tokencsp_senders FOR UPDATE")  # the receiver's upsert will queue here
        proc = subprocess.Popen([sys.executable, "-m", "tokencsp", *opener(pg_dsn, *trust, "-o", str(out)),
                                 str(second)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with pg_server.admin() as watcher:
                deadline = time.monotonic() + 240
                while True:
                    waiting = watcher.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'tokencsp' "
                                              "AND wait_event_type = 'Lock'").fetchall()
                    if waiting:
                        break
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "the receiver never reached its serial update"
                    time.sleep(0.02)
                # Its id is inserted (uncommitted) and it waits for the sender row: kill it there.
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(30) == -signal.SIGKILL
                holder.execute("ROLLBACK")
                deadline = time.monotonic() + 60
                while watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                      (waiting[0][0],)).fetchone()[0]:
                    assert time.monotonic() < deadline, "the killed receiver's backend stayed"
                    time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert query(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(1,)]  # only "first"
    assert query(pg_server, pg_dsn, "SELECT last_serial FROM tokencsp_senders") == [(serial_before,)]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tokencsp-")]
    assert tokencsp(*opener(pg_dsn, *trust), str(second)).stdout == b"second" * 1000  # not burnt


def test_senders_sharing_a_key_draw_distinct_increasing_serials(keys, tmp_path, pg_server, pg_dsn):
    command = [sys.executable, "-m", "tokencsp", "seal", "--to", str(keys / "rx.pub"), "--sign-with",
               f"{KEY_PREFIX}-signer", "--serial-db", pg_dsn]
    procs = [subprocess.Popen([*command, "-o", str(tmp_path / f"s{i}.seal")], stdin=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(4)]
    for p in procs:
        p.communicate(b"x", timeout=240)
        assert p.returncode == 0, p.stderr
    serials = [json.loads(tokencsp("inspect", "--json", str(tmp_path / f"s{i}.seal")).stdout)["serial"]
               for i in range(4)]
    assert len(set(serials)) == 4
    (last,), = query(pg_server, pg_dsn, "SELECT last_serial FROM tokencsp_serial_counters")
    assert last == max(serials)
    # A strict receiver takes them in serial order, and refuses going back.
    by_serial = sorted(range(4), key=lambda i: serials[i])
    trust = ["--trust", str(keys / "signer.pub")]
    for i in by_serial[1:]:
        tokencsp(*opener(pg_dsn, *trust), str(tmp_path / f"s{i}.seal"))
    assert_one_line_error(tokencsp(*opener(pg_dsn, *trust), str(tmp_path / f"s{by_serial[0]}.seal"), check=False),
                   23, "serial")


def test_replay_init_status_prune(pg_server, pg_dsn, tmp_path):
    result = tokencsp("replay", "init", "--retention", "2d", pg_dsn)
    assert b"schema version 2" in result.stdout and b"2d" in result.stdout
    facts = json.loads(tokencsp("replay", "status", "--json", pg_dsn).stdout)
    assert facts["retention"] == 2 * 86400 and facts["ids"] == 0 and facts["synchronous_commit"] == "on"
    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    with pg_server.admin() as db:
        db.execute(f"INSERT INTO {schema}.tokencsp_seen SELECT int4send(i), extract(epoch FROM now()) - 3 * 86400, "
                   "'\\x00' FROM generate_series(1, 1234) i")
    text = tokencsp("replay", "status", pg_dsn).stdout.decode()
    assert "ids stored: 1234 (1234 prunable now)" in text and "retention: 2d" in text
    assert tokencsp("replay", "prune", "--batch", "500", pg_dsn).stdout == b"pruned 1234 expired ids\n"
    assert tokencsp("replay", "prune", env={"TOKENCSP_REPLAY_DB": pg_dsn}).stdout == b"pruned 0 expired ids\n"
    assert tokencsp("replay", "prune", str(tmp_path / "local.sqlite3")).stdout == b"pruned 0 expired ids\n"
    assert_one_line_error(tokencsp("replay", "status", str(tmp_path / "local.sqlite3"), check=False), 1,
                   "needs a PostgreSQL connection string")


def test_a_password_on_the_command_line_is_refused(keys, tmp_path):
    secret = "postgresql://tokencsp:hunter2@localhost/tokencsp"
    for args in (opener(secret, "x.seal"), ["replay", "status", secret],
                 ["seal", "--to", str(keys / "rx.pub"), "--serial-db", "host=h password=hunter2"]):
        result = tokencsp(*args, check=False, input=b"")
        err = result.stderr.decode()
        assert result.returncode == 2 and "~/.pgpass" in err and "hunter2" not in err.split("error:", 1)[1], err
