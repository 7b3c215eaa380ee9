"""Replay policy, replay caches and sender serial counters (tokencsp.replay).

Real files in tmp_path throughout; the multi-process tests start real Python
processes that share one SQLite file / counter file.
"""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokencsp.errors import (
    ConfigError,
    MessageFromFuture,
    MessageTooOld,
    ReplayCacheError,
    ReplayedMessage,
    ReplayError,
    SerialNotIncreasing,
)
from tokencsp.replay import (
    MemoryReplayCache,
    ReplayCache,
    ReplayPolicy,
    SerialCounter,
    SQLiteReplayCache,
    default_replay_db_path,
    parse_duration,
)

NOW = 1_700_000_000.0
POLICY = ReplayPolicy(max_age=100, max_skew=10)
ALICE, BOB = b"alice-key-id", b"bob-key-id"
U64_MAX = 2**64 - 1

# -- policy -------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = ReplayPolicy()
    assert (policy.max_age, policy.max_skew, policy.strict_serial) == (86400, 300, None)
    assert policy.retention() == 86400 + 300


def test_time_window_boundaries_are_inclusive() -> None:
    POLICY.check_time(NOW, NOW)
    POLICY.check_time(NOW - 100, NOW)  # exactly max_age old: accepted
    POLICY.check_time(NOW + 10, NOW)  # exactly max_skew ahead: accepted
    with pytest.raises(MessageTooOld):
        POLICY.check_time(NOW - 100.001, NOW)
    with pytest.raises(MessageFromFuture):
        POLICY.check_time(NOW + 10.001, NOW)


@pytest.mark.parametrize(("timestamp", "error"), [
    (math.nan, MessageTooOld), (-math.inf, MessageTooOld), (math.inf, MessageFromFuture),
])
def test_non_finite_timestamps_are_refused(timestamp: float, error: type[Exception]) -> None:
    with pytest.raises(error):
        POLICY.check_time(timestamp, NOW)


def test_non_finite_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        POLICY.check_time(NOW, math.nan)


@pytest.mark.parametrize("kwargs", [{"max_age": -1}, {"max_skew": -0.5}, {"max_age": math.nan},
                                    {"max_skew": math.inf}])
def test_policy_rejects_bad_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ReplayPolicy(**kwargs)  # type: ignore[arg-type]


def test_strictness() -> None:
    assert ReplayPolicy().is_strict(ALICE) and not ReplayPolicy().is_strict(None)
    assert not ReplayPolicy(strict_serial=False).is_strict(ALICE)
    assert ReplayPolicy(strict_serial=True).is_strict(None)


@pytest.mark.parametrize(("text", "seconds"), [
    ("300", 300), ("0", 0), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800),
    ("1h30m", 5400), ("1d2h3m4s", 93784), (" 2H ", 7200), ("1.5h", 5400), ("0.25s", 0.25),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "h", "-5m", "5x", "1h1h", "30m1h", "1 h", "1.h", ".5s",
                                  "inf", "nan", "1e3", "5m-", "１０s"])  # noqa: RUF001 -- fullwidth digits on purpose
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration") as info:
        parse_duration(text)
    assert isinstance(info.value, ValueError)


# -- both caches ----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReplayCache]:
    # retention=0: ids are kept only for the windows the tests use, so pruning shows at test scale
    c: ReplayCache = (MemoryReplayCache(retention=0) if request.param == "memory"
                      else SQLiteReplayCache(tmp_path / "r.db", retention=0))
    yield c
    c.close()


def test_same_id_twice_is_a_replay(cache: ReplayCache) -> None:
    cache.accept(b"id-1", NOW, NOW, POLICY)
    with pytest.raises(ReplayedMessage):
        cache.accept(b"id-1", NOW, NOW + 1, POLICY)
    cache.accept(b"id-2", NOW, NOW, POLICY)


def test_time_is_checked_before_the_id(cache: ReplayCache) -> None:
    cache.accept(b"id", NOW, NOW, POLICY)
    with pytest.raises(MessageTooOld):
        cache.accept(b"id", NOW, NOW + 101, POLICY)
    with pytest.raises(MessageFromFuture):
        cache.accept(b"id", NOW + 50, NOW, POLICY)


def test_id_is_checked_before_the_serial(cache: ReplayCache) -> None:
    cache.accept(b"id", NOW, NOW, POLICY, ALICE, 5)
    with pytest.raises(ReplayedMessage):
        cache.accept(b"id", NOW, NOW, POLICY, ALICE, 5)


def test_ids_expire_only_after_retention(cache: ReplayCache) -> None:
    cache.accept(b"old", NOW, NOW, POLICY)  # expires NOW + 110
    cache.accept(b"future", NOW + 10, NOW, POLICY)  # expires from its timestamp: NOW + 120
    assert cache.prune(NOW + 110) == 0
    with pytest.raises(ReplayedMessage):  # a copy still inside its window is still refused
        cache.accept(b"old", NOW + 100, NOW + 110, POLICY)
    assert cache.prune(NOW + 110.5) == 1
    cache.accept(b"old", NOW + 110, NOW + 110.5, POLICY)  # forgotten, so a new message may reuse it
    with pytest.raises(ReplayedMessage):
        cache.accept(b"future", NOW + 110, NOW + 115, POLICY)
    assert cache.prune(NOW + 121) == 1


def test_message_accepted_at_the_edge_of_its_window_is_remembered_past_it(cache: ReplayCache) -> None:
    cache.accept(b"edge", NOW - 100, NOW, POLICY)
    assert cache.prune(NOW + 1) == 0
    with pytest.raises(MessageTooOld):
        cache.accept(b"edge", NOW - 100, NOW + 1, POLICY)


def test_strict_serials_for_signed_messages(cache: ReplayCache) -> None:
    cache.accept(b"a1", NOW, NOW, POLICY, ALICE, 10)
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"a2", NOW, NOW, POLICY, ALICE, 10)
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"a3", NOW, NOW, POLICY, ALICE, 9)
    cache.accept(b"a4", NOW, NOW, POLICY, ALICE, 11)
    cache.accept(b"a5", NOW, NOW, POLICY, ALICE, 1000)


def test_senders_are_independent(cache: ReplayCache) -> None:
    cache.accept(b"a1", NOW, NOW, POLICY, ALICE, 1000)
    cache.accept(b"b1", NOW, NOW, POLICY, BOB, 1)
    cache.accept(b"b2", NOW, NOW, POLICY, BOB, 2)
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"a2", NOW, NOW, POLICY, ALICE, 999)


def test_unsigned_messages_are_not_serial_checked(cache: ReplayCache) -> None:
    cache.accept(b"u1", NOW, NOW, POLICY, None, 10)
    cache.accept(b"u2", NOW, NOW, POLICY, None, 10)
    cache.accept(b"u3", NOW, NOW, POLICY, None, 3)
    cache.accept(b"u4", NOW, NOW, POLICY)


def test_non_strict_policy_accepts_lower_serials_but_remembers_the_highest(cache: ReplayCache) -> None:
    lax = ReplayPolicy(max_age=100, max_skew=10, strict_serial=False)
    cache.accept(b"a1", NOW, NOW, lax, ALICE, 10)
    cache.accept(b"a2", NOW, NOW, lax, ALICE, 5)
    cache.accept(b"a3", NOW, NOW, lax, ALICE, 10)
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"a4", NOW, NOW, POLICY, ALICE, 10)
    cache.accept(b"a5", NOW, NOW, POLICY, ALICE, 11)


def test_forced_strict_refuses_messages_without_a_serial(cache: ReplayCache) -> None:
    strict = ReplayPolicy(max_age=100, max_skew=10, strict_serial=True)
    with pytest.raises(SerialNotIncreasing, match="no sender serial"):
        cache.accept(b"u1", NOW, NOW, strict)
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"s1", NOW, NOW, strict, ALICE, None)
    cache.accept(b"u1", NOW, NOW, POLICY)  # the refusals burnt nothing


def test_refused_messages_record_nothing(cache: ReplayCache) -> None:
    cache.accept(b"a1", NOW, NOW, POLICY, ALICE, 10)
    # serial refusal does not burn the id
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"x", NOW, NOW, POLICY, ALICE, 9)
    cache.accept(b"x", NOW, NOW, POLICY, ALICE, 11)
    # replay refusal does not advance the serial
    with pytest.raises(ReplayedMessage):
        cache.accept(b"x", NOW, NOW, POLICY, ALICE, 500)
    cache.accept(b"y", NOW, NOW, POLICY, ALICE, 12)
    # time refusal burns neither
    with pytest.raises(MessageTooOld):
        cache.accept(b"z", NOW - 500, NOW, POLICY, ALICE, 900)
    cache.accept(b"z", NOW, NOW, POLICY, ALICE, 13)


def test_full_unsigned_64_bit_serial_range(cache: ReplayCache) -> None:
    cache.accept(b"a1", NOW, NOW, POLICY, ALICE, 0)
    cache.accept(b"a2", NOW, NOW, POLICY, ALICE, 2**63 - 1)
    cache.accept(b"a3", NOW, NOW, POLICY, ALICE, 2**63)  # crosses SQLite's signed boundary
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"a4", NOW, NOW, POLICY, ALICE, 2**63 - 1)
    cache.accept(b"a5", NOW, NOW, POLICY, ALICE, U64_MAX - 1)
    cache.accept(b"a6", NOW, NOW, POLICY, ALICE, U64_MAX)
    for serial in (U64_MAX, U64_MAX - 1, 0):
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"a7", NOW, NOW, POLICY, ALICE, serial)
    cache.accept(b"b1", NOW, NOW, POLICY, BOB, U64_MAX)


@pytest.mark.parametrize("serial", [-1, 2**64, 1.5, "7"])
def test_serial_out_of_range_is_a_programming_error(cache: ReplayCache, serial: object) -> None:
    with pytest.raises(ValueError):
        cache.accept(b"id", NOW, NOW, POLICY, ALICE, serial)  # type: ignore[arg-type]


@pytest.mark.parametrize("message_id", [b"", "text-id", None])
def test_bad_message_key_is_a_programming_error(cache: ReplayCache, message_id: object) -> None:
    with pytest.raises(ValueError):
        cache.accept(message_id, NOW, NOW, POLICY)  # type: ignore[arg-type]


def test_refusals_are_replay_errors(cache: ReplayCache) -> None:
    cache.accept(b"id", NOW, NOW, POLICY)
    with pytest.raises(ReplayError) as info:
        cache.accept(b"id", NOW, NOW, POLICY)
    assert info.value.reason == "replayed"


def test_threads_racing_on_one_cache(cache: ReplayCache) -> None:
    barrier = threading.Barrier(8)
    results: list[str] = []

    def race() -> None:
        barrier.wait()
        try:
            cache.accept(b"contested", NOW, NOW, POLICY)
            results.append("ok")
        except ReplayedMessage:
            results.append("replayed")

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["replayed"] * 7


def test_non_strict_acceptance_keeps_the_highest_serial_not_the_latest(cache: ReplayCache) -> None:
    """After serials 10 then 5 (non-strict), a strict run compares against 10: 7 is refused."""
    lax = ReplayPolicy(max_age=100, max_skew=10, strict_serial=False)
    cache.accept(b"a1", NOW, NOW, lax, ALICE, 10)
    cache.accept(b"a2", NOW, NOW, lax, ALICE, 5)
    with pytest.raises(SerialNotIncreasing):
        cache.accept(b"a3", NOW, NOW, POLICY, ALICE, 7)
    cache.accept(b"a4", NOW, NOW, POLICY, ALICE, 11)


# -- pruning never forgets an id that a later run would accept (finding 9.3) ------------------


CRON = ReplayPolicy(max_age=60, max_skew=0)  # e.g. a cron job with --max-age 1m
DEFAULT = ReplayPolicy()  # an interactive run with the default 24 h


def test_a_short_window_run_cannot_prune_what_a_default_run_still_accepts(cache: ReplayCache) -> None:
    """The id comes from a strict cron run; a later default run must still refuse the replay."""
    cache.accept(b"m", NOW, NOW, CRON)
    later = NOW + 3600  # long after the cron window, well inside the default one
    cache.prune(later)
    with pytest.raises((ReplayedMessage, MessageTooOld)):
        cache.accept(b"m", NOW, later, DEFAULT)


def test_pruning_keeps_ids_for_the_longest_window_ever_used(cache: ReplayCache) -> None:
    cache.accept(b"d", NOW, NOW, DEFAULT)  # a default run has used this cache
    later = NOW + 3600
    cache.accept(b"c", later, later, CRON)  # a cron run accepts and prunes
    assert cache.prune(later) == 0
    with pytest.raises(ReplayedMessage):  # still remembered, refused as the replay it is
        cache.accept(b"d", NOW, later, DEFAULT)
    # Once the longest window is over, the id goes and its timestamp is beyond the horizon.
    gone = NOW + DEFAULT.retention() + 1
    assert cache.prune(gone) == 1
    with pytest.raises(MessageTooOld, match="older than the replay cache remembers"):
        cache.accept(b"d", NOW, gone, ReplayPolicy(max_age=10 * 86400))


def test_the_horizon_refuses_nothing_a_run_within_the_longest_window_accepts(cache: ReplayCache) -> None:
    cache.accept(b"d", NOW, NOW, DEFAULT)
    cache.accept(b"c", NOW, NOW, CRON)
    later = NOW + 2 * DEFAULT.retention()
    cache.prune(later)
    oldest_fresh = later - DEFAULT.max_age  # exactly max_age old at `later`
    cache.accept(b"fresh", oldest_fresh, later, DEFAULT)
    cache.accept(b"fresh-cron", later - 60, later, CRON)


def test_a_refusal_by_the_horizon_records_nothing(cache: ReplayCache) -> None:
    cache.accept(b"a1", NOW, NOW, POLICY, ALICE, 10)
    later = NOW + 1000
    cache.prune(later)
    wide = ReplayPolicy(max_age=5000, max_skew=10)
    with pytest.raises(MessageTooOld):
        cache.accept(b"old", NOW, later, wide, ALICE, 20)
    cache.accept(b"new", later, later, POLICY, ALICE, 11)  # the refused serial 20 was not recorded


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_new_cache_keeps_ids_for_the_default_window_whoever_uses_it_first(tmp_path: Path, kind: str) -> None:
    cache = MemoryReplayCache() if kind == "memory" else SQLiteReplayCache(tmp_path / "r.db")
    with cache:
        cache.accept(b"c", NOW, NOW, CRON)
        later = NOW + 3600
        assert cache.prune(later) == 0
        with pytest.raises(ReplayedMessage):
            cache.accept(b"c", NOW, later, DEFAULT)
        cache.accept(b"hour-old", later - 3600, later, DEFAULT)  # no false refusal by the horizon


@pytest.mark.parametrize("retention", [-1, math.nan, math.inf, "1h"])
def test_retention_must_be_a_finite_number(tmp_path: Path, retention: object) -> None:
    with pytest.raises(ValueError):
        MemoryReplayCache(retention=retention)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SQLiteReplayCache(tmp_path / "r.db", retention=retention)  # type: ignore[arg-type]


def test_the_horizon_is_shared_by_every_cache_object_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with SQLiteReplayCache(path, retention=0) as cron:
        cron.accept(b"m", NOW, NOW, CRON)
        cron.prune(NOW + 3600)
    with SQLiteReplayCache(path) as interactive, pytest.raises(MessageTooOld):
        interactive.accept(b"m", NOW, NOW + 3600, DEFAULT)


def test_version_1_cache_is_upgraded_without_forgetting_a_replay(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE seen (message_id BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID")
    db.execute("CREATE TABLE senders (sender_id BLOB PRIMARY KEY, last_serial INTEGER NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO seen VALUES (?, ?)", (b"old-id", time.time() + 86400))
    db.execute("INSERT INTO senders VALUES (?, ?)", (ALICE, 50 - 2**63))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with SQLiteReplayCache(path) as cache:
        now = time.time()
        with pytest.raises(MessageTooOld):  # stamped before the upgrade: its v1 record cannot be matched
            cache.accept(b"old-id", now - 60, now, DEFAULT)
        with pytest.raises(SerialNotIncreasing):  # sender serials survive the upgrade
            cache.accept(b"new", now + 1, now + 1, DEFAULT, ALICE, 50)
        cache.accept(b"new", now + 1, now + 1, DEFAULT, ALICE, 51)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


# -- SQLite persistence ---------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from tokencsp.errors import ReplayedMessage, SerialNotIncreasing
    from tokencsp.replay import ReplayPolicy, SQLiteReplayCache
    path, message_id, serial = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    with SQLiteReplayCache(path) as cache:
        try:
            cache.accept(message_id, {now}, {now}, ReplayPolicy(max_age=100, max_skew=10), b"alice-key-id", serial)
            print("ok")
        except (ReplayedMessage, SerialNotIncreasing) as exc:
            print(exc.reason)
""").format(now=NOW)


def _child_accept(path: Path, message_id: bytes, serial: int) -> str:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), message_id.hex(), str(serial)],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_survives_reopening_in_a_new_object(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with SQLiteReplayCache(path) as cache:
        cache.accept(b"id", NOW, NOW, POLICY, ALICE, U64_MAX - 5)
    with SQLiteReplayCache(path) as cache:
        with pytest.raises(ReplayedMessage):
            cache.accept(b"id", NOW, NOW, POLICY)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"id2", NOW, NOW, POLICY, ALICE, U64_MAX - 5)
        cache.accept(b"id2", NOW, NOW, POLICY, ALICE, U64_MAX)


def test_survives_reopening_in_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with SQLiteReplayCache(path) as cache:
        cache.accept(b"parent", NOW, NOW, POLICY, ALICE, U64_MAX - 1)
    assert _child_accept(path, b"parent", U64_MAX) == "replayed"
    assert _child_accept(path, b"child", U64_MAX - 1) == "serial-backwards"
    assert _child_accept(path, b"child", U64_MAX) == "ok"
    with SQLiteReplayCache(path) as cache:
        with pytest.raises(ReplayedMessage):
            cache.accept(b"child", NOW, NOW, POLICY)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"other", NOW, NOW, POLICY, ALICE, U64_MAX)


def test_expired_ids_are_pruned_when_a_new_cache_object_accepts(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with SQLiteReplayCache(path, retention=0) as cache:
        cache.accept(b"old", NOW, NOW, POLICY)
        cache.accept(b"recent", NOW + 100, NOW + 100, POLICY)
    later = NOW + 111
    with SQLiteReplayCache(path, retention=0) as cache:
        cache.accept(b"new", later, later, POLICY)
        assert cache.prune(later) == 0  # "old" already went in the accept above
        with pytest.raises(ReplayedMessage):
            cache.accept(b"recent", later, later, POLICY)
        cache.accept(b"old", later, later, POLICY)


def test_sender_serials_do_not_expire(tmp_path: Path) -> None:
    with SQLiteReplayCache(tmp_path / "r.db", retention=0) as cache:
        cache.accept(b"a1", NOW, NOW, POLICY, ALICE, 50)
        far = NOW + 10 * 365 * 86400
        assert cache.prune(far) == 1
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"a2", far, far, POLICY, ALICE, 50)


def test_schema(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SQLiteReplayCache(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"seen", "senders", "state"}
    finally:
        db.close()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SQLiteReplayCache(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(ReplayCacheError, match="schema version 7"):
        SQLiteReplayCache(path)


def test_db_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with SQLiteReplayCache(tmp_path / "r.db") as cache:
            cache.accept(b"id", NOW, NOW, POLICY)
            for name in ("r.db", "r.db-wal"):
                assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        os.umask(old)


def _one_line_error(exc: ReplayCacheError, path: Path) -> None:
    assert str(path) in str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize("make", ["dir-is-a-file", "path-is-a-dir", "missing-dir"])
def test_unusable_path(tmp_path: Path, make: str) -> None:
    blocker = tmp_path / "blocker"
    if make == "dir-is-a-file":
        blocker.write_bytes(b"")
        path = blocker / "r.db"
    elif make == "path-is-a-dir":
        blocker.mkdir()
        path = blocker
    else:
        path = tmp_path / "nope" / "r.db"
    with pytest.raises(ReplayCacheError) as info:
        SQLiteReplayCache(path)
    _one_line_error(info.value, path)


_AS_NOBODY = textwrap.dedent("""
    import os, sys
    from tokencsp.errors import ReplayCacheError
    from tokencsp.replay import SQLiteReplayCache
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # everything needed is imported: from here on the kernel checks permissions
    try:
        SQLiteReplayCache(sys.argv[1])
    except ReplayCacheError as exc:
        print("refused:", exc)
    else:
        print("created")
""")


def test_unwritable_directory(tmp_path: Path) -> None:
    """A directory the process cannot write to gives one ReplayCacheError line.

    Root ignores permission bits, and CI runs as root: there the check runs in a
    child process that drops to uid/gid 65534 first.
    """
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ReplayCacheError):
            SQLiteReplayCache(ro / "r.db")
        return
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="tokencsp-ro-"))  # /tmp/pytest-of-root is closed to other users
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        os.chown(ro, 65534, 65534)
        ro.chmod(0o500)  # owned by the child's uid, without write permission
        out = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(ro / "r.db")], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("refused: replay cache ") and "Permission denied" in out.stdout
        assert out.stdout.count("\n") == 1
        assert not (ro / "r.db").exists()
    finally:
        (base / "ro").chmod(0o700)
        import shutil

        shutil.rmtree(base)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"this is not an SQLite database, just junk " * 200)
    with pytest.raises(ReplayCacheError, match="not a database") as info:
        SQLiteReplayCache(path)
    _one_line_error(info.value, path)


def test_locked_beyond_timeout_accepts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    cache = SQLiteReplayCache(path, timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(ReplayCacheError, match="locked") as info:
            cache.accept(b"id", NOW, NOW, POLICY, ALICE, 5)
        assert time.monotonic() - started >= 0.15  # it waited rather than failing at once
        _one_line_error(info.value, path)
        holder.execute("ROLLBACK")
        cache.accept(b"id", NOW, NOW, POLICY, ALICE, 5)  # nothing had been recorded
    finally:
        holder.close()
        cache.close()


def test_closed_cache(tmp_path: Path) -> None:
    cache = SQLiteReplayCache(tmp_path / "r.db")
    cache.close()
    cache.close()
    with pytest.raises(ReplayCacheError, match="closed"):
        cache.accept(b"id", NOW, NOW, POLICY)


def test_default_db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENCSP_REPLAY_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    path = default_replay_db_path()
    assert path == tmp_path / "home/.local/state/tokencsp/replay.sqlite3"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    assert default_replay_db_path() == path
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_replay_db_path() == tmp_path / "state/tokencsp/replay.sqlite3"
    monkeypatch.setenv("TOKENCSP_REPLAY_DB", str(tmp_path / "explicit/db.sqlite3"))
    assert default_replay_db_path() == tmp_path / "explicit/db.sqlite3"
    with SQLiteReplayCache() as cache:
        assert cache.path == tmp_path / "explicit/db.sqlite3"
        cache.accept(b"id", NOW, NOW, POLICY)
    assert (tmp_path / "explicit/db.sqlite3").exists()


# -- processes racing -----------------------------------------------------------------------

_RACER = textwrap.dedent("""
    import sys
    from tokencsp.errors import ReplayedMessage
    from tokencsp.replay import ReplayPolicy, SerialCounter, SQLiteReplayCache
    mode, path, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    policy = ReplayPolicy(max_age=100, max_skew=10)
    if mode == "same-id":
        cache = SQLiteReplayCache(path)
    print("ready", flush=True)
    for line in sys.stdin:           # each line releases one round, to all workers at once
        arg = line.strip()
        if mode == "same-id":
            try:
                cache.accept(bytes.fromhex(arg), {now}, {now}, policy)
                print("ok", flush=True)
            except ReplayedMessage:
                print("replayed", flush=True)
        elif mode == "fresh":        # a new file each round, created by all workers at once
            with SQLiteReplayCache(arg) as fresh:
                try:
                    fresh.accept(b"first", {now}, {now}, policy)
                    print("ok", flush=True)
                except ReplayedMessage:
                    print("replayed", flush=True)
        elif mode == "distinct":     # opens the file while the others do too
            with SQLiteReplayCache(path) as cache:
                for i in range(int(arg)):
                    cache.accept(b"w%d-%d" % (worker, i), {now}, {now}, policy, b"w%d" % worker, i)
            print("done", flush=True)
        else:
            counter = SerialCounter(path)
            print(" ".join(str(counter.next()) for _ in range(int(arg))), flush=True)
""").format(now=NOW)


class Racers:
    """Worker processes held at a barrier: each blocks on stdin until `release` writes to all."""

    def __init__(self, mode: str, path: Path, n: int = 4) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", _RACER, mode, str(path), str(w)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for w in range(n)]
        assert [self._line(p) for p in self.procs] == ["ready"] * n

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"worker died (exit status {proc.wait()})"
        return line.strip()

    def release(self, arg: str) -> list[str]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(arg + "\n")
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.flush()
        return [self._line(p) for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        assert [p.wait(timeout=60) for p in self.procs] == [0] * len(self.procs)


@pytest.fixture
def racers() -> Iterator[Callable[[str, Path], Racers]]:
    started: list[Racers] = []

    def start(mode: str, path: Path) -> Racers:
        started.append(Racers(mode, path))
        return started[-1]

    yield start
    for r in started:
        for p in r.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_processes_racing_for_one_id_exactly_one_wins(tmp_path: Path, racers: Callable[[str, Path], Racers]) -> None:
    path = tmp_path / "shared.db"
    workers = racers("same-id", path)
    for round_ in range(8):
        results = workers.release(f"race-{round_}".encode().hex())
        assert sorted(results) == ["ok", "replayed", "replayed", "replayed"], (round_, results)
    workers.close()
    with SQLiteReplayCache(path) as cache:
        for round_ in range(8):
            with pytest.raises(ReplayedMessage):
                cache.accept(f"race-{round_}".encode(), NOW, NOW, POLICY)


def test_processes_creating_one_file_at_once(tmp_path: Path, racers: Callable[[str, Path], Racers]) -> None:
    workers = racers("fresh", tmp_path)
    for round_ in range(25):  # the open-time race is narrow: give it many chances
        results = workers.release(str(tmp_path / f"new-{round_}.db"))
        assert sorted(results) == ["ok", "replayed", "replayed", "replayed"], (round_, results)
    workers.close()


def test_processes_accepting_distinct_ids_lose_none(tmp_path: Path, racers: Callable[[str, Path], Racers]) -> None:
    path = tmp_path / "fresh.db"  # does not exist yet: the workers create it concurrently
    workers = racers("distinct", path)
    assert workers.release("150") == ["done"] * 4
    workers.close()
    with SQLiteReplayCache(path) as cache:
        for w in range(4):
            for i in range(150):
                with pytest.raises(ReplayedMessage):
                    cache.accept(b"w%d-%d" % (w, i), NOW, NOW, POLICY)
            with pytest.raises(SerialNotIncreasing):
                cache.accept(b"w%d-next" % w, NOW, NOW, POLICY, b"w%d" % w, 149)
            cache.accept(b"w%d-next" % w, NOW, NOW, POLICY, b"w%d" % w, 150)


# -- SerialCounter --------------------------------------------------------------------------


def test_serial_counter_increases_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    values = [SerialCounter(path).next() for _ in range(5)]
    counter = SerialCounter(path)
    values += [counter.next() for _ in range(200)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_serial_counter_has_a_time_floor(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    before = time.time_ns() // 1000
    first = SerialCounter(path).next()
    assert first >= before  # a fresh file does not start at 1
    path.unlink()  # a lost counter file does not go backwards either
    assert SerialCounter(path).next() > first


def test_serial_counter_continues_from_a_value_ahead_of_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    path.write_text(f"{2**62}\n")
    counter = SerialCounter(path)
    assert [counter.next(), counter.next()] == [2**62 + 1, 2**62 + 2]


@pytest.mark.parametrize("content", ["", "12ab\n", "-5\n", b"\xff\xfe"])
def test_serial_counter_refuses_a_corrupt_file(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "serial"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ReplayCacheError, match="corrupt"):
        SerialCounter(path).next()


def test_serial_counter_exhausted(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    path.write_text(f"{U64_MAX}\n")
    with pytest.raises(ReplayCacheError, match="exhausted"):
        SerialCounter(path).next()
    assert path.read_text() == f"{U64_MAX}\n"


def test_serial_counter_unwritable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ReplayCacheError):
        SerialCounter(tmp_path / "file" / "serial").next()


def test_serial_counter_for_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    counter = SerialCounter.for_key(b"\x01\xab")
    assert counter.path == tmp_path / "state/tokencsp/serials/01ab"
    assert stat.S_IMODE(counter.path.parent.stat().st_mode) == 0o700
    assert counter.next() < SerialCounter.for_key(b"\x01\xab").next()
    assert SerialCounter().path == tmp_path / "state/tokencsp/serials/default"


def test_serial_counter_across_racing_processes(tmp_path: Path, racers: Callable[[str, Path], Racers]) -> None:
    path = tmp_path / "serial"
    workers = racers("serial", path)
    lines = workers.release("200")
    workers.close()
    per_worker = [[int(v) for v in line.split()] for line in lines]
    for values in per_worker:
        assert len(values) == 200 and all(a < b for a, b in itertools.pairwise(values))
    everything = [v for values in per_worker for v in values]
    assert len(set(everything)) == 800
    assert int(path.read_text()) == max(everything)
