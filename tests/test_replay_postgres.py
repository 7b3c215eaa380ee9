"""The PostgreSQL replay cache and serial counter against a real server that the tests start (tests/pg_server.py).

No mocks and no SQLite stand-in: every property is checked on PostgreSQL itself,
including races between connections, a crash-restart of the server and a commit
whose acknowledgement is lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tokencsp.errors import (
    ConfigError,
    MessageFromFuture,
    MessageTooOld,
    ReplayCacheError,
    ReplayedMessage,
    SerialNotIncreasing,
)
from tokencsp.replay import MemoryReplayCache, PostgresReplayCache, PostgresSerialCounter, ReplayPolicy, open_cache
from tokencsp.replay.factory import open_serial_counter, refuse_password_on_command_line
from tokencsp.replay.postgres import SCHEMA_VERSION, is_postgres_dsn, redact_dsn

pytest_plugins = ("pg_server",)  # the pg_server and pg_dsn fixtures (tests/pg_server.py)

POLICY = ReplayPolicy()


def rows(server, dsn: str, sql: str, *params):
    schema = dsn.rsplit("search_path%3D", 1)[1]
    with server.admin() as db:
        db.execute(f"SET search_path = {schema}")
        return db.execute(sql, params).fetchall()


@pytest.mark.parametrize(("args", "error"), [
    ((b"", 1.0), ValueError), (("text", 1.0), ValueError), ((b"k", "1"), TypeError), ((b"k", True), TypeError),
    ((b"k", 1.0, 1.0, POLICY, "alice"), TypeError), ((b"k", 1.0, 1.0, POLICY, b"alice", -1), ValueError),
    ((b"k", 1.0, 1.0, POLICY, b"alice", 2**64), ValueError),
], ids=["empty key", "str key", "str time", "bool time", "str sender", "negative serial", "serial > 64 bits"])
def test_bad_arguments_are_refused_as_by_every_backend(pg_server, pg_dsn, args, error):
    """The argument checks are ReplayCache.accept's alone: PostgreSQL overrides the recording hook only."""
    from tokencsp.replay.base import ReplayCache

    assert "accept" not in vars(PostgresReplayCache) and PostgresReplayCache.accept is ReplayCache.accept
    full = (*args, 1.0, POLICY)[:4] if len(args) < 4 else args
    for cache in (MemoryReplayCache(), PostgresReplayCache(pg_dsn)):
        with cache, pytest.raises(error):
            cache.accept(*full)
    assert rows(pg_server, pg_dsn, "SELECT message_key FROM tokencsp_seen WHERE message_key = %s", b"k") == []


def test_accepts_once_and_a_refusal_records_nothing(pg_server, pg_dsn):
    now = time.time()
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"m1", now, now, POLICY)
        with pytest.raises(ReplayedMessage):
            cache.accept(b"m1", now, now, POLICY)
        with pytest.raises(MessageTooOld):
            cache.accept(b"old", now - 2 * 86400, now, POLICY)
        with pytest.raises(MessageFromFuture):
            cache.accept(b"future", now + 3600, now, POLICY)
        cache.accept(b"s1", now, now, POLICY, sender_id=b"alice", serial=10)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"s2", now, now, POLICY, sender_id=b"alice", serial=10)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"s3", now, now, POLICY, sender_id=b"alice", serial=9)
        with pytest.raises(SerialNotIncreasing, match="no sender serial"):
            cache.accept(b"s4", now, now, POLICY, sender_id=b"alice", serial=None)
    keys = {bytes(k) for (k,) in rows(pg_server, pg_dsn, "SELECT message_key FROM tokencsp_seen")}
    assert keys == {b"m1", b"s1"}  # the refused ones burnt nothing
    assert rows(pg_server, pg_dsn, "SELECT last_serial FROM tokencsp_senders") == [(10,)]


def test_order_of_checks_is_time_then_id_then_serial(pg_dsn):
    now = time.time()
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"m", now - 100, now, POLICY, sender_id=b"s", serial=5)
        with pytest.raises(MessageTooOld):  # an old replay is reported as old, like the SQLite cache
            cache.accept(b"m", now - 100, now, ReplayPolicy(max_age=10))
        with pytest.raises(ReplayedMessage):  # replayed and serial not increasing: replayed
            cache.accept(b"m", now - 100, now, POLICY, sender_id=b"s", serial=5)


def test_non_strict_serials_keep_the_highest_not_the_latest(pg_dsn):
    now = time.time()
    lax = ReplayPolicy(strict_serial=False)
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"a", now, now, lax, sender_id=b"s", serial=100)
        cache.accept(b"b", now, now, lax, sender_id=b"s", serial=50)  # accepted: not strict
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"c", now, now, POLICY, sender_id=b"s", serial=70)  # 100 is still the last
        cache.accept(b"d", now, now, POLICY, sender_id=b"s", serial=2**64 - 1)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"e", now, now, POLICY, sender_id=b"s", serial=2**64 - 1)


def test_unsigned_messages_need_no_serial_unless_strict(pg_dsn):
    now = time.time()
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"u", now, now, POLICY)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"v", now, now, ReplayPolicy(strict_serial=True))
        cache.accept(b"v", now, now, POLICY)  # the refusal did not burn it


def test_the_database_clock_decides_not_the_callers(pg_server, pg_dsn):
    real = time.time()
    with PostgresReplayCache(pg_dsn) as fast, PostgresReplayCache(pg_dsn) as slow:
        # A receiver whose clock is 2 days ahead still accepts a fresh message...
        fast.accept(b"fresh", real, real + 2 * 86400, POLICY)
        # ...and one whose clock is 2 days behind still refuses a message that is old by the database's clock.
        with pytest.raises(MessageTooOld):
            slow.accept(b"stale", real - 2 * 86400, real - 2 * 86400, POLICY)
        # A fast clock cannot make the cache forget ids another receiver would still accept.
        assert fast.prune(real + 30 * 86400) == 0
        with pytest.raises(ReplayedMessage):
            slow.accept(b"fresh", real, real - 60, POLICY)
    assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(1,)]


def test_a_short_window_receiver_cannot_prune_what_a_long_window_one_accepts(pg_dsn):
    # issue 9 finding 3: a cron job with --max-age 1s and an interactive default run share a cache.
    short = ReplayPolicy(max_age=1, max_skew=0)
    with PostgresReplayCache(pg_dsn) as cache:
        sent = time.time()
        cache.accept(b"m", sent, sent, short)
        time.sleep(1.3)
        assert cache.prune() == 0  # kept for the default window, the cache's floor
        with pytest.raises(ReplayedMessage):
            cache.accept(b"m", sent, time.time(), POLICY)


def test_prune_forgets_only_ids_no_receiver_can_accept_any_more(pg_server, pg_dsn):
    policy = ReplayPolicy(max_age=2, max_skew=2)
    with PostgresReplayCache(pg_dsn, retention=4) as cache:
        start = time.time()
        cache.accept(b"old", start - 1.5, start, policy)
        cache.accept(b"young", start + 1.5, start, policy)  # from the future, within the skew
        time.sleep(max(0.0, start + 3 - time.time()))
        assert cache.prune() == 1  # "old" is past its timestamp + retention; "young" is not
        assert [bytes(k) for (k,) in rows(pg_server, pg_dsn, "SELECT message_key FROM tokencsp_seen")] == [b"young"]
        with pytest.raises(ReplayedMessage):
            cache.accept(b"young", start + 1.5, time.time(), policy)
        with pytest.raises(MessageTooOld):
            cache.accept(b"old", start - 1.5, time.time(), policy)


def test_a_longer_window_cannot_accept_what_a_prune_forgot(pg_server, pg_dsn):
    short = ReplayPolicy(max_age=1, max_skew=0)
    with PostgresReplayCache(pg_dsn, retention=1) as cache:
        sent = time.time() - 0.5
        cache.accept(b"m", sent, sent, short)
        time.sleep(0.8)
        assert cache.prune() == 1  # past sent + 1 s by the database's clock: the horizon moved past it
        (horizon,), = rows(pg_server, pg_dsn, "SELECT horizon FROM tokencsp_replay_settings")
        assert sent < horizon <= time.time()
        # A receiver with a day's window now sees the replay.  The id is gone,
        # but its timestamp is below the horizon.
        with pytest.raises(MessageTooOld, match="older than the replay cache remembers"):
            cache.accept(b"m", sent, time.time(), POLICY)
        # The refusal recorded nothing, not even the longer window; the next accepted message does.
        assert rows(pg_server, pg_dsn, "SELECT retention FROM tokencsp_replay_settings") == [(1.0,)]
        fresh = time.time()
        cache.accept(b"n", fresh, fresh, POLICY)
        assert rows(pg_server, pg_dsn, "SELECT retention FROM tokencsp_replay_settings") == [(POLICY.retention(),)]
        with pytest.raises(MessageTooOld, match="remembers"):
            cache.accept(b"m", sent, time.time(), POLICY)
        time.sleep(1.2)
        assert cache.prune() == 0  # "n" is now kept for a day
        with pytest.raises(ReplayedMessage):
            cache.accept(b"n", fresh, time.time(), POLICY)


def test_a_prune_that_commits_while_an_accept_waits_on_the_key_is_seen(pg_server, pg_dsn):
    """The accept reads the horizon again after its insert: an insert that waited for a prune's
    delete of the same key must not record a replay of it."""
    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    with PostgresReplayCache(pg_dsn, retention=1) as cache:
        sent = time.time() - 0.5
        cache.accept(b"k", sent, sent, ReplayPolicy(max_age=1, max_skew=0))
        time.sleep(0.8)
        outcome = []

        def replay_with_a_long_window():
            try:
                cache.accept(b"k", sent, time.time(), POLICY)
                outcome.append("accepted")
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

        with pg_server.admin() as pruner, pg_server.admin() as watcher:
            pruner.execute("BEGIN")  # the statements of PostgresReplayCache._prune_batch, held open
            pruner.execute(f"UPDATE {schema}.tokencsp_replay_settings SET horizon = greatest(horizon, "
                           "extract(epoch FROM clock_timestamp()) - retention)")
            assert pruner.execute(f"DELETE FROM {schema}.tokencsp_seen WHERE message_key = 'k'").rowcount == 1
            worker = threading.Thread(target=replay_with_a_long_window)
            worker.start()
            deadline = time.monotonic() + 30
            while not watcher.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'tokencsp' "
                                      "AND wait_event_type = 'Lock'").fetchall():
                assert time.monotonic() < deadline and worker.is_alive(), outcome
                time.sleep(0.02)
            pruner.execute("COMMIT")
            worker.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], MessageTooOld), outcome
    assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(0,)]


def test_a_version_1_database_is_migrated_forward_keeping_its_ids(pg_server, pg_dsn):
    from tokencsp.replay.postgres import MIGRATIONS

    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    now = time.time()
    with pg_server.admin() as db:  # what tokencsp's first release created
        db.execute(f"SET search_path = {schema}")
        db.execute("CREATE TABLE tokencsp_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                   "DEFAULT now())")
        for statement in MIGRATIONS[1]:
            db.execute(statement)
        db.execute("INSERT INTO tokencsp_replay_settings (retention, complete_since) VALUES (86700, %s)", (now - 5,))
        db.execute("INSERT INTO tokencsp_seen VALUES ('old-id', %s, '\\x00')", (now,))
        db.execute("INSERT INTO tokencsp_schema (version) VALUES (1)")
        for table in ("tokencsp_schema", "tokencsp_replay_settings", "tokencsp_seen", "tokencsp_senders",
                      "tokencsp_serial_counters"):
            db.execute(f"ALTER TABLE {table} OWNER TO tokencsp")
    with PostgresReplayCache(pg_dsn) as cache:
        with pytest.raises(ReplayedMessage):
            cache.accept(b"old-id", now, now, POLICY)
        with pytest.raises(MessageTooOld, match="remembers"):  # the old lower bound became the horizon
            cache.accept(b"older", now - 10, now, POLICY)
        assert cache.status()["schema_version"] == SCHEMA_VERSION == 2
    assert rows(pg_server, pg_dsn, "SELECT version FROM tokencsp_schema ORDER BY version") == [(1,), (2,)]


def test_batched_prune_of_a_large_backlog(pg_server, pg_dsn):
    with PostgresReplayCache(pg_dsn, retention=60) as cache:
        schema = pg_dsn.rsplit("search_path%3D", 1)[1]
        with pg_server.admin() as db:
            db.execute(f"SET search_path = {schema}")
            db.execute("INSERT INTO tokencsp_seen SELECT int4send(i), extract(epoch FROM now()) - 3600, '\\x00' "
                       "FROM generate_series(1, 25000) i")
            db.execute("INSERT INTO tokencsp_seen SELECT int4send(-i), extract(epoch FROM now()) - 30, '\\x00' "
                       "FROM generate_series(1, 100) i")
        assert cache.prune(batch=4000) == 25000
        assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(100,)]
        # An accept prunes at most one batch, in its own transaction, before its own insert.
        with pg_server.admin() as db:
            db.execute(f"SET search_path = {schema}")
            db.execute("INSERT INTO tokencsp_seen SELECT int4send(i), extract(epoch FROM now()) - 3600, '\\x00' "
                       "FROM generate_series(1, 2500) i")
        now = time.time()
        cache.accept(b"trigger", now, now, ReplayPolicy(max_age=30, max_skew=30))
        assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(2500 - 1000 + 101,)]
        plan = "\n".join(r[0] for r in rows(pg_server, pg_dsn, "EXPLAIN SELECT message_key FROM tokencsp_seen "
                                                               "WHERE msg_time < 1 ORDER BY msg_time LIMIT 1000"))
        assert "tokencsp_seen_msg_time" in plan


def test_schema_is_created_once_versioned_and_a_newer_one_refused(pg_server, pg_dsn):
    caches = []
    errors = []
    barrier = threading.Barrier(6)

    def first_use():
        barrier.wait()
        try:
            caches.append(PostgresReplayCache(pg_dsn))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for cache in caches:
        cache.close()
    assert not errors and len(caches) == 6
    assert rows(pg_server, pg_dsn, "SELECT version FROM tokencsp_schema ORDER BY version") == [(1,), (2,)]
    assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_replay_settings") == [(1,)]
    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    with pg_server.admin() as db:
        db.execute(f"INSERT INTO {schema}.tokencsp_schema (version) VALUES ({SCHEMA_VERSION + 1})")
    with pytest.raises(ReplayCacheError, match=f"schema version {SCHEMA_VERSION + 1}"):
        PostgresReplayCache(pg_dsn)


def test_eight_receivers_two_thousand_messages_each_with_duplicates(pg_dsn):
    rng = random.Random(12)
    distinct = [f"msg-{i}".encode() for i in range(6000)]
    # Every message goes to 1-4 receivers, some twice to the same one: 8 queues of 2,000.
    deliveries = [m for m in distinct for _ in range(1 + (int.from_bytes(m[-2:], "big") % 4))]
    rng.shuffle(deliveries)
    deliveries = (distinct + deliveries)[:16000]
    rng.shuffle(deliveries)
    queues = [deliveries[i::8] for i in range(8)]
    assert all(len(q) == 2000 for q in queues)
    expected_messages = set(deliveries)
    accepted: Counter[bytes] = Counter()
    replays = Counter()
    failures = []
    barrier = threading.Barrier(8)
    lock = threading.Lock()
    now = time.time()

    def receiver(queue):
        try:
            with PostgresReplayCache(pg_dsn) as cache:
                barrier.wait()
                for message in queue:
                    try:
                        cache.accept(message, now, now, POLICY)
                    except ReplayedMessage:
                        with lock:
                            replays[message] += 1
                    else:
                        with lock:
                            accepted[message] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)

    threads = [threading.Thread(target=receiver, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert set(accepted) == expected_messages and set(accepted.values()) == {1}  # once each, none lost
    delivered = Counter(deliveries)
    assert all(replays[m] == delivered[m] - 1 for m in delivered)  # every other delivery refused: no false refusal


def test_replay_refused_after_a_server_crash_and_restart(pg_server, pg_dsn):
    now = time.time()
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"durable", now, now, POLICY, sender_id=b"s", serial=7)
        pg_server.restart("immediate")  # no checkpoint: the WAL is all there is
        with pytest.raises(ReplayedMessage):
            cache.accept(b"durable", now, now, POLICY)  # same object: reconnects
    with PostgresReplayCache(pg_dsn) as cache:
        with pytest.raises(ReplayedMessage):
            cache.accept(b"durable", now, now, POLICY)
        with pytest.raises(SerialNotIncreasing):
            cache.accept(b"other", now, now, POLICY, sender_id=b"s", serial=7)


def test_server_down_is_a_clean_refusal_that_records_nothing(pg_server, pg_dsn):
    now = time.time()
    cache = PostgresReplayCache(pg_dsn, retry_seconds=1)
    pg_server.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(ReplayCacheError) as refused:
            cache.accept(b"while-down", now, now, POLICY)
        assert time.monotonic() - started < 10  # bounded retries
        assert "\n" not in str(refused.value) and "replay cache postgresql://tokencsp@" in str(refused.value)
        with pytest.raises(ReplayCacheError):
            PostgresReplayCache(pg_dsn, retry_seconds=0.5)
    finally:
        pg_server.start()
    cache.accept(b"while-down", now, time.time(), POLICY)  # nothing was burnt
    cache.close()


def test_server_restart_in_the_middle_of_a_run_loses_no_acceptance(pg_server, pg_dsn):
    now = time.time()
    acknowledged = []
    failures = []
    lock = threading.Lock()
    started = threading.Event()

    def receiver(n):
        try:
            with PostgresReplayCache(pg_dsn, retry_seconds=30) as cache:
                for i in range(150):
                    message = f"r{n}-{i}".encode()
                    cache.accept(message, now, now, POLICY)
                    with lock:
                        acknowledged.append(message)
                    if i == 20:
                        started.set()
        except Exception as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)

    threads = [threading.Thread(target=receiver, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    assert started.wait(60)
    pg_server.restart("immediate")
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(acknowledged) == 600
    stored = {bytes(k) for (k,) in rows(pg_server, pg_dsn, "SELECT message_key FROM tokencsp_seen")}
    assert stored == set(acknowledged)


def test_a_serializable_default_isolation_changes_nothing(pg_server, pg_dsn):
    """Receivers force READ COMMITTED: under a role default of SERIALIZABLE the schema check after the
    advisory lock saw a stale snapshot (racing first uses failed with 'relation already exists'), and
    the horizon read after the insert would not see a prune that committed meanwhile."""
    with pg_server.admin() as db:
        db.execute("ALTER ROLE tokencsp SET default_transaction_isolation = 'serializable'")
    try:
        now = time.time()
        failures = []
        barrier = threading.Barrier(4)

        def receiver(n):
            try:
                barrier.wait(60)
                with PostgresReplayCache(pg_dsn) as cache:
                    for i in range(25):
                        cache.accept(f"{n}-{i}".encode(), now, now, ReplayPolicy(strict_serial=False),
                                     sender_id=b"busy", serial=n * 1000 + i)
            except Exception as exc:  # noqa: BLE001 - asserted below
                failures.append(exc)

        threads = [threading.Thread(target=receiver, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        with pg_server.admin() as db:
            db.execute("ALTER ROLE tokencsp RESET default_transaction_isolation")
    assert not failures, failures
    assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen") == [(100,)]
    assert rows(pg_server, pg_dsn, "SELECT last_serial FROM tokencsp_senders") == [(3024,)]


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])  # serialization_failure, deadlock_detected
def test_serialization_failures_and_deadlocks_are_retried_a_bounded_number_of_times(pg_server, pg_dsn, sqlstate):
    """The server itself raises the error (a trigger fed by a sequence, which a rollback does not rewind)."""
    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    now = time.time()
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"warm-up", now, now, POLICY)  # schema made, first prune done
        with pg_server.admin() as db:
            db.execute(f"SET search_path = {schema}")
            db.execute("CREATE SEQUENCE faults")
            db.execute("CREATE TABLE fail_times (n bigint)")
            db.execute("INSERT INTO fail_times VALUES (3)")
            db.execute(f"""CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('{schema}.faults') <= (SELECT n FROM {schema}.fail_times) THEN
                        RAISE EXCEPTION 'injected conflict' USING ERRCODE = '{sqlstate}';
                    END IF;
                    RETURN NEW;
                END $$""")
            db.execute("CREATE TRIGGER conflict BEFORE INSERT ON tokencsp_seen FOR EACH ROW EXECUTE FUNCTION conflict()")
            db.execute("GRANT ALL ON fail_times, faults TO tokencsp")
        cache.accept(b"after-three-conflicts", now, now, POLICY, sender_id=b"s", serial=1)
        assert rows(pg_server, pg_dsn, "SELECT last_value FROM faults") == [(4,)]
        with pg_server.admin() as db:
            db.execute(f"UPDATE {schema}.fail_times SET n = 1000000")
        started = time.monotonic()
        with pytest.raises(ReplayCacheError, match="gave up after 20 attempts") as refused:
            cache.accept(b"never", now, now, POLICY, sender_id=b"s", serial=2)
        assert "injected conflict" in str(refused.value) and time.monotonic() - started < 10
    assert sorted(bytes(k) for (k,) in rows(pg_server, pg_dsn, "SELECT message_key FROM tokencsp_seen")) == [
        b"after-three-conflicts", b"warm-up"]
    assert rows(pg_server, pg_dsn, "SELECT last_serial FROM tokencsp_senders") == [(1,)]


def test_a_lost_commit_acknowledgement_is_neither_a_double_accept_nor_a_false_replay(pg_server, pg_dsn):
    """The commit reaches the WAL, then the connection dies before the client hears back: the retry
    must recognise its own acceptance (waiting for a synchronous standby that does not exist holds
    the commit there deterministically)."""
    now = time.time()
    cache = PostgresReplayCache(pg_dsn)
    cache.accept(b"first", now, now, POLICY)  # the first accept also prunes: get that transaction out of the way
    with pg_server.admin() as db:
        db.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        db.execute("SELECT pg_reload_conf()")
    outcome = []

    def accept():
        try:
            cache.accept(b"ambiguous", now, now, POLICY, sender_id=b"s", serial=3)
            outcome.append("accepted")
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    worker = threading.Thread(target=accept)
    try:
        worker.start()
        with pg_server.admin() as db:
            deadline = time.monotonic() + 30
            while True:
                waiting = db.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                                     "AND application_name = 'tokencsp'").fetchall()
                if waiting or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert waiting, "the accept never reached its commit"
            # Kill it while it waits (resetting the setting first would release the wait instead).
            db.execute("SELECT pg_terminate_backend(%s)", (waiting[0][0],))
            db.execute("ALTER SYSTEM RESET synchronous_standby_names")
            db.execute("SELECT pg_reload_conf()")
        worker.join(60)
    finally:
        with pg_server.admin() as db:
            db.execute("ALTER SYSTEM RESET synchronous_standby_names")
            db.execute("SELECT pg_reload_conf()")
    assert outcome == ["accepted"]
    assert rows(pg_server, pg_dsn, "SELECT count(*) FROM tokencsp_seen WHERE message_key = 'ambiguous'") == [(1,)]
    with pytest.raises(ReplayedMessage):
        cache.accept(b"ambiguous", now, now, POLICY)
    cache.close()


def test_serial_counter_never_repeats_across_senders(pg_dsn):
    drawn = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def sender():
        with PostgresSerialCounter(pg_dsn, b"key-1") as counter:
            barrier.wait()
            mine = [counter.next() for _ in range(100)]
        assert mine == sorted(mine) and len(set(mine)) == 100
        with lock:
            drawn.extend(mine)

    floor = time.time_ns() // 1000 - 10_000_000
    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(drawn) == 400 and len(set(drawn)) == 400 and min(drawn) > floor
    with PostgresSerialCounter(pg_dsn, b"key-2") as other, PostgresSerialCounter(pg_dsn, b"key-1") as again:
        assert other.next() > floor  # its own sequence, from the time floor
        assert again.next() > max(drawn)


def test_factory_and_connection_strings(pg_dsn, tmp_path, monkeypatch):
    for dsn in ("postgresql://h/db", "postgres://u@h:5/db", "service=fleet", "host=db dbname=x", " dbname=x"):
        assert is_postgres_dsn(dsn), dsn
    for path in ("replay.sqlite3", "/var/lib/x=y/db", "./a=b", "", "postgresql:/x"):
        assert not is_postgres_dsn(path), path
    with open_cache(pg_dsn) as cache:
        assert isinstance(cache, PostgresReplayCache)
    monkeypatch.setenv("TOKENCSP_REPLAY_DB", pg_dsn)
    with open_cache() as cache:
        assert isinstance(cache, PostgresReplayCache)
    monkeypatch.setenv("TOKENCSP_REPLAY_DB", str(tmp_path / "r.sqlite3"))
    with open_cache() as cache:
        assert type(cache).__name__ == "SQLiteReplayCache" and (tmp_path / "r.sqlite3").exists()
    with open_serial_counter(b"k", pg_dsn) as counter:
        assert isinstance(counter, PostgresSerialCounter)
    with pytest.raises(ConfigError):
        open_serial_counter(b"k", str(tmp_path / "file"))
    for secret in ("postgresql://u:hunter2@h/db", "host=h password=hunter2", "postgresql://u@h/db?password=hunter2"):
        with pytest.raises(ConfigError, match="pgpass") as refused:
            refuse_password_on_command_line(secret, "--replay-db")
        assert "hunter2" not in str(refused.value)
        assert "hunter2" not in redact_dsn(secret)
    refuse_password_on_command_line(pg_dsn, "--replay-db")
    refuse_password_on_command_line("a/path:with@at", "--replay-db")


def test_a_service_name_selects_the_cache(pg_server, pg_dsn, tmp_path, monkeypatch):
    schema = pg_dsn.rsplit("search_path%3D", 1)[1]
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[fleet]\nhost={pg_server.socket_dir}\nport=5432\ndbname=tokencsp\nuser=tokencsp\n"
                        f"options=-csearch_path={schema}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    now = time.time()
    with open_cache("service=fleet") as cache:
        assert isinstance(cache, PostgresReplayCache) and cache.name == "replay cache postgresql service=fleet"
        cache.accept(b"via-service", now, now, POLICY)
    with pytest.raises(ReplayedMessage), PostgresReplayCache(pg_dsn) as same:
        same.accept(b"via-service", now, now, POLICY)


def test_without_a_server_the_suite_skips_locally_and_fails_under_ci(tmp_path):
    import os
    import subprocess
    import sys

    here = Path(__file__).resolve()
    env = {**os.environ, "PGTEST_BINDIR": str(tmp_path)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{here}::test_status_reports_what_operators_need"]
    local = subprocess.run(command, env={**env, "CI": "false"}, capture_output=True, text=True, cwd=here.parent.parent,
                           timeout=600)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout + local.stderr
    ci = subprocess.run(command, env={**env, "CI": "true"}, capture_output=True, text=True, cwd=here.parent.parent,
                        timeout=600)
    assert ci.returncode == 1 and "cannot start a PostgreSQL test server" in ci.stdout, ci.stdout + ci.stderr


def test_a_wrong_password_fails_at_once_without_echoing_it(pg_server, pg_dsn, monkeypatch):
    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    started = time.monotonic()
    with pytest.raises(ReplayCacheError, match="authentication failed") as refused:
        PostgresReplayCache(pg_dsn)
    assert time.monotonic() - started < 5  # not retried: waiting will not fix it
    assert "not-the-password" not in str(refused.value)
    monkeypatch.setenv("PGPASSWORD", pg_server.password)  # PGPASSWORD works as well as the pgpass file
    PostgresReplayCache(pg_dsn).close()


def test_status_reports_what_operators_need(pg_dsn):
    now = time.time()
    with PostgresReplayCache(pg_dsn) as cache:
        cache.accept(b"a", now, now, POLICY, sender_id=b"s", serial=1)
        facts = cache.status()
    assert facts["schema_version"] == SCHEMA_VERSION and facts["ids"] == 1 and facts["senders"] == 1
    assert facts["synchronous_commit"] == "on" and facts["fsync"] == "on" and facts["standby"] is False
    assert facts["retention"] == POLICY.retention() and facts["horizon"] is None
    assert abs(facts["clock_offset"]) < 5 and facts["prunable"] == 0


def test_same_semantics_as_the_memory_cache_on_a_random_history(pg_dsn):
    """A random mix of ids, senders and serials: PostgreSQL refuses exactly what the in-memory cache refuses."""
    rng = random.Random(7)
    now = time.time()
    reference = MemoryReplayCache()
    with PostgresReplayCache(pg_dsn) as cache:
        for _ in range(400):
            message = bytes([rng.randrange(60)])
            sender = rng.choice([None, b"a", b"b"])
            serial = rng.choice([None, rng.randrange(40)]) if sender else None
            policy = ReplayPolicy(strict_serial=rng.choice([None, False, True]))
            outcomes = []
            for target in (reference, cache):
                try:
                    target.accept(message, now, now, policy, sender_id=sender, serial=serial)
                    outcomes.append("ok")
                except (ReplayedMessage, SerialNotIncreasing) as exc:
                    outcomes.append(type(exc).__name__)
            assert outcomes[0] == outcomes[1], (message, sender, serial, policy)
