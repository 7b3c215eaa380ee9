"""The replay cache and sender serial counters in PostgreSQL, shared by a fleet (docs/FLEET.md).

Decisions (tests/test_replay_postgres.py pins each one down against a real server):

* One accept is one READ COMMITTED transaction: ``INSERT … ON CONFLICT DO
  NOTHING`` of the message key, then a conditional upsert of the sender's
  serial (``WHERE last_serial < new``), committed with
  ``synchronous_commit = on`` (set on every connection, whatever the server's
  default).  Concurrent accepts of one key queue on its unique index: exactly
  one inserts it.  A refusal rolls back, so nothing is recorded.
* **The database's clock decides.**  The time window is checked against
  ``clock_timestamp()`` on the server, before the insert (so that a stale
  message is refused as too old, as by every cache) and again right after it,
  and pruning uses the same clock.  Receivers' own clocks, which may disagree,
  never decide whether an id may be forgotten, so clock skew between receivers
  cannot let two of them accept one message.  The ``now`` that callers pass to
  ``accept``/``prune`` is not used by this backend.
* Ids are kept while any receiver could still accept their timestamp (the
  contract of ``ReplayCache``, issue 9 finding 3): the cache records the
  longest window (``max_age + max_skew``) any receiver has used, never lower
  than the default policy's or what ``init`` set, raised by an accept whose
  policy is longer.  A prune first moves the *horizon* to the database's now
  minus that window (it never moves back), then deletes ids whose *message
  timestamp* is below it; every accept refuses a timestamp below the horizon
  as too old ("older than the replay cache remembers"), reading the horizon
  *after* its insert so that a prune committing meanwhile is seen.
* Sender serials: numeric(20,0), unsigned 64-bit like everywhere else; they
  only go up (the conditional upsert), records never expire.
* A dropped connection or a serialization failure/deadlock is retried
  (reconnecting) for at most ``retry_seconds`` and ``max_attempts``; then
  ``ReplayCacheError`` and nothing is accepted.  A commit whose
  acknowledgement was lost is recognised on the retry by the random accept
  token stored with the key, so it is neither accepted twice nor refused as
  its own replay.
* The schema is created on first use (or by ``tokencsp replay init``) under an
  advisory lock, with a version table and forward migrations; tables go to the
  first schema of the connection's ``search_path``.  A database whose schema is
  newer than this code is refused.
* The password never comes from tokencsp: libpq reads ``~/.pgpass``
  (``PGPASSFILE``), ``PGPASSWORD`` or a service file.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ConfigError, MessageTooOld, ReplayCacheError, ReplayedMessage, SerialNotIncreasing
from .base import SERIAL_MAX, ReplayCache
from .policy import ReplayPolicy

__all__ = ["PostgresReplayCache", "PostgresSerialCounter", "is_postgres_dsn", "dsn_has_password", "redact_dsn",
           "SCHEMA_VERSION"]

SCHEMA_VERSION = 2
PRUNE_BATCH = 1000
_T = TypeVar("_T")

# Forward migrations: MIGRATIONS[v] takes a database from version v - 1 to v.
# Never edit a released step; add the next one.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tokencsp_replay_settings (
               singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
               retention double precision NOT NULL CHECK (retention >= 0),
               complete_since double precision NOT NULL)""",
        """CREATE TABLE tokencsp_seen (
               message_key bytea PRIMARY KEY,
               msg_time double precision NOT NULL,
               accept_token bytea NOT NULL)""",
        "CREATE INDEX tokencsp_seen_msg_time ON tokencsp_seen (msg_time)",
        """CREATE TABLE tokencsp_senders (
               sender_id bytea PRIMARY KEY,
               last_serial numeric(20, 0) NOT NULL CHECK (last_serial BETWEEN 0 AND 18446744073709551615))""",
        """CREATE TABLE tokencsp_serial_counters (
               key_id bytea PRIMARY KEY,
               last_serial numeric(20, 0) NOT NULL CHECK (last_serial BETWEEN 0 AND 18446744073709551615))""",
    ),
    # 1 moved its lower bound only when the retention was raised; the horizon
    # moves with every prune.  Both mean "timestamps below are refused".
    2: ("ALTER TABLE tokencsp_replay_settings RENAME COLUMN complete_since TO horizon",),
}
_ADVISORY_LOCK = 0x746F6B656E637370  # "tokencsp": serialises schema creation across processes

_NOW = "extract(epoch FROM clock_timestamp())::float8"
BEYOND_HORIZON = "message is older than the replay cache remembers"


def is_postgres_dsn(target: str) -> bool:
    """A libpq URI (postgresql:// or postgres://) or a keyword/value string such as ``service=fleet``."""
    text = target.strip()
    if text.startswith(("postgresql://", "postgres://")):
        return True
    first = text.split(None, 1)[0] if text else ""
    key = first.split("=", 1)[0]
    return "=" in first and key.isidentifier() and "/" not in key


def _conninfo(dsn: str) -> dict[str, str]:
    psycopg = _psycopg()
    try:
        return {str(k): str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid PostgreSQL connection string: {_one_line(exc)}") from None


def dsn_has_password(dsn: str) -> bool:
    return bool(_conninfo(dsn).get("password"))


def redact_dsn(dsn: str) -> str:
    """user@host/dbname (or service=NAME) for messages: never the password, never raw options."""
    try:
        info = _conninfo(dsn)
    except ConfigError:
        return "postgresql (unparsable connection string)"
    if "service" in info:
        return f"postgresql service={info['service']}"
    user = info.get("user", "")
    host = info.get("host", "")
    return f"postgresql://{user + '@' if user else ''}{host}/{info.get('dbname', '')}"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a postgresql:// replay cache needs psycopg: pip install 'tokencsp[postgres]'") from None
    return psycopg


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# libpq reports connection-time failures without a SQLSTATE: these words mark
# the ones that waiting will not fix (wrong password, unknown role/database).
_PERMANENT = ("authentication failed", "no password supplied", "does not exist", "pg_hba.conf",
              "permission denied", "invalid connection option", "certificate")


def _is_permanent(exc: BaseException) -> bool:
    code = getattr(exc, "sqlstate", None)
    if isinstance(code, str):
        return code.startswith(("28", "3D", "42"))
    text = str(exc).lower()
    return any(word in text for word in _PERMANENT)


class _Connection:
    """One libpq connection with bounded, reconnecting retries; not shared across threads without its lock."""

    def __init__(self, dsn: str, what: str, *, retry_seconds: float, max_attempts: int) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigError("PostgreSQL connection string must be a non-empty string")
        self._psycopg = _psycopg()
        self._dsn = dsn
        self._kwargs = self._defaults(_conninfo(dsn))
        self.name = f"{what} {redact_dsn(dsn)}"
        self.retry_seconds = retry_seconds
        self.max_attempts = max_attempts
        self.lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()

    @staticmethod
    def _defaults(info: dict[str, str]) -> dict[str, Any]:
        """libpq parameters tokencsp sets unless the DSN sets them itself."""
        wanted = {"connect_timeout": "10", "application_name": "tokencsp",
                  # A receiver host that vanishes mid-transaction must not hold row locks for hours.
                  "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}
        return {k: v for k, v in wanted.items() if k not in info}

    def _open(self) -> Any:
        if self._conn is not None and not self._conn.closed and self._pid == os.getpid():
            return self._conn
        self.discard()
        conn = self._psycopg.connect(self._dsn, autocommit=True, **self._kwargs)
        try:
            # Durability of every acceptance is the point: never inherit a
            # server or role default of synchronous_commit=off/local.
            conn.execute("SET synchronous_commit = on")
            # Every transaction here is written for READ COMMITTED: each
            # statement sees what committed before it (the horizon read after
            # the insert, the schema check after the advisory lock).  A role or
            # server default of REPEATABLE READ/SERIALIZABLE would break that.
            conn.execute("SET default_transaction_isolation = 'read committed'")
            # A client that dies inside a transaction (SIGKILL, lost host) must not hold locks.
            conn.execute("SET idle_in_transaction_session_timeout = '60s'")
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            # A broken connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    def run(self, work: Callable[[Any, int], _T]) -> _T:
        """``work(conn, attempt)`` inside one transaction, retried on a dropped connection or a
        serialization failure; tokencsp's own refusals (raised by ``work``) roll back and pass through."""
        psycopg = self._psycopg
        errors = psycopg.errors
        deadline = time.monotonic() + self.retry_seconds
        backoff = 0.05  # for a lost server: it takes a while to come back
        pause = 0.0
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                if time.monotonic() + pause > deadline:
                    break
                time.sleep(pause)
            try:
                conn = self._open()
                with conn.transaction():
                    return work(conn, attempt)
            except (errors.SerializationFailure, errors.DeadlockDetected) as exc:
                last = exc
                pause = secrets.randbelow(20) / 1000  # a conflict clears at once; jitter breaks lockstep
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if _is_permanent(exc):
                    raise ReplayCacheError(f"{self.name}: {_one_line(exc)}") from None
                last = exc
                self.discard()
                pause, backoff = backoff, min(backoff * 2, 1.0)
            except psycopg.Error as exc:  # anything else is not going to change by retrying
                raise ReplayCacheError(f"{self.name}: {_one_line(exc)}") from None
        assert last is not None
        raise ReplayCacheError(f"{self.name}: {_one_line(last)} (gave up after {attempt + 1} attempts)") from None

    def ensure_schema(self, retention: float) -> None:
        def migrate(db: Any, attempt: int) -> None:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
            exists = db.execute("SELECT to_regclass('tokencsp_schema') IS NOT NULL").fetchone()[0]
            if not exists:
                db.execute("CREATE TABLE tokencsp_schema (version integer PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
            version = db.execute("SELECT coalesce(max(version), 0) FROM tokencsp_schema").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ReplayCacheError(f"{self.name} has schema version {version}; "
                                       f"this tokencsp understands up to {SCHEMA_VERSION}")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
                if step == 1:
                    db.execute("INSERT INTO tokencsp_replay_settings (retention, complete_since) "
                               "VALUES (%s, '-infinity')", (retention,))
                db.execute("INSERT INTO tokencsp_schema (version) VALUES (%s)", (step,))

        self.run(migrate)


class PostgresReplayCache(ReplayCache):
    """Replay cache in PostgreSQL that every receiver of a fleet shares; see the module docstring."""

    def __init__(self, dsn: str, *, retention: float | None = None, retry_seconds: float = 10.0,
                 max_attempts: int = 20) -> None:
        """Connects and creates (or migrates) the schema now, so a bad DSN fails before any token work.

        ``retention`` (seconds) is the floor for how long ids are kept when the
        schema is created (default: the default policy's max_age + max_skew);
        use ``raise_retention`` to change it later.
        """
        floor = ReplayPolicy().retention() if retention is None else _seconds(retention, "retention")
        self._db = _Connection(dsn, "replay cache", retry_seconds=retry_seconds, max_attempts=max_attempts)
        self.name = self._db.name
        self._accepts = 0
        self._db.ensure_schema(floor)

    # -- accept ----------------------------------------------------------------

    def _check_and_record(self, message_key: bytes, timestamp: float, now: float, policy: ReplayPolicy,
                          sender_id: bytes | None, serial: int | None) -> None:
        """Check the window (database clock), the horizon, the key, then the serial, and record it all in one commit.

        ``now`` is ignored: the database's clock decides (ReplayCache.accept checked the arguments).
        """
        strict = policy.is_strict(sender_id)
        token = secrets.token_bytes(16)
        with self._db.lock:
            if self._accepts % self.PRUNE_EVERY == 0:
                self._prune_batch(PRUNE_BATCH)
            self._db.run(lambda db, attempt: self._accept_tx(db, attempt, message_key, timestamp, policy,
                                                              sender_id, serial, strict, token))
            self._accepts += 1

    def _accept_tx(self, db: Any, attempt: int, key: bytes, timestamp: float, policy: ReplayPolicy,
                   sender_id: bytes | None, serial: int | None, strict: bool, token: bytes) -> None:
        db_now, retention, horizon = db.execute(
            f"SELECT {_NOW}, retention, horizon FROM tokencsp_replay_settings").fetchone()
        policy.check_time(timestamp, db_now)
        if timestamp < horizon:
            raise MessageTooOld(BEYOND_HORIZON)
        row = db.execute(f"INSERT INTO tokencsp_seen (message_key, msg_time, accept_token) VALUES (%s, %s, %s) "
                         f"ON CONFLICT (message_key) DO NOTHING RETURNING {_NOW}", (key, timestamp, token)).fetchone()
        if row is None:
            if attempt and self._ours(db, key, token):
                return  # our earlier attempt committed; only its acknowledgement was lost
            raise ReplayedMessage()
        # Read after the insert: a prune that deleted this key (and moved the
        # horizon) committed before the insert could proceed, so it is seen here.
        (horizon,) = db.execute("SELECT horizon FROM tokencsp_replay_settings").fetchone()
        if timestamp < horizon:
            raise MessageTooOld(BEYOND_HORIZON)
        policy.check_time(timestamp, row[0])  # a transaction that stalled is judged by the clock now
        if policy.retention() > retention:
            self._raise(db, policy.retention())
        if strict and (sender_id is None or serial is None):
            raise SerialNotIncreasing("message carries no sender serial number")
        if sender_id is not None and serial is not None:
            raised = db.execute(
                "INSERT INTO tokencsp_senders AS s (sender_id, last_serial) VALUES (%s, %s) "
                "ON CONFLICT (sender_id) DO UPDATE SET last_serial = EXCLUDED.last_serial "
                "WHERE s.last_serial < EXCLUDED.last_serial RETURNING 1", (sender_id, serial)).fetchone()
            if raised is None and strict:
                raise SerialNotIncreasing()

    @staticmethod
    def _ours(db: Any, key: bytes, token: bytes) -> bool:
        row = db.execute("SELECT accept_token FROM tokencsp_seen WHERE message_key = %s", (key,)).fetchone()
        return row is not None and bytes(row[0]) == token

    @staticmethod
    def _raise(db: Any, retention: float) -> None:
        db.execute("UPDATE tokencsp_replay_settings SET retention = %s WHERE retention < %s", (retention, retention))

    def _accept(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - _check_and_record is overridden
        raise NotImplementedError("PostgresReplayCache._check_and_record does the whole check in the database")

    # -- maintenance -------------------------------------------------------------

    def raise_retention(self, retention: float) -> None:
        """Keep ids at least ``retention`` seconds past their timestamp from now on (never lowers it)."""
        value = _seconds(retention, "retention")
        with self._db.lock:
            self._db.run(lambda db, attempt: self._raise(db, value))

    def _prune_batch(self, limit: int) -> int:
        def prune(db: Any, attempt: int) -> int:
            # Nothing to do is the common case: find out without taking a lock,
            # which would cost a transaction id and a WAL flush.
            due = db.execute(f"SELECT EXISTS (SELECT 1 FROM tokencsp_seen WHERE msg_time < {_NOW} - "
                             f"(SELECT retention FROM tokencsp_replay_settings))").fetchone()[0]
            if not due:
                return 0
            # The horizon moves (and commits) with the deletes it allows; the
            # row lock also orders this prune with a concurrent raise.
            (horizon,) = db.execute(f"UPDATE tokencsp_replay_settings SET horizon = greatest(horizon, "
                                    f"{_NOW} - retention) RETURNING horizon").fetchone()
            cur = db.execute(
                "DELETE FROM tokencsp_seen WHERE message_key IN ("
                "SELECT message_key FROM tokencsp_seen WHERE msg_time < %s "
                "ORDER BY msg_time LIMIT %s FOR UPDATE SKIP LOCKED)", (horizon, limit))
            return int(cur.rowcount)

        return self._db.run(prune)

    def prune(self, now: float | None = None, *, batch: int = 10_000) -> int:
        """Move the horizon to the database's now minus the retention and forget every id below it.

        Deletes in batches of ``batch`` (one short transaction each), so a large
        backlog never holds locks for long.  ``now`` is ignored: the database's clock decides.
        """
        total = 0
        with self._db.lock:
            while True:
                deleted = self._prune_batch(batch)
                total += deleted
                if deleted < batch:
                    return total

    def status(self) -> dict[str, Any]:
        """Facts for operators (``tokencsp replay status``)."""
        def read(db: Any, attempt: int) -> dict[str, Any]:
            version = db.execute("SELECT max(version) FROM tokencsp_schema").fetchone()[0]
            db_now, retention, horizon = db.execute(
                f"SELECT {_NOW}, retention, horizon FROM tokencsp_replay_settings").fetchone()
            ids, oldest, newest = db.execute(
                "SELECT count(*), min(msg_time), max(msg_time) FROM tokencsp_seen").fetchone()
            prunable = db.execute("SELECT count(*) FROM tokencsp_seen WHERE msg_time < %s",
                                  (db_now - retention,)).fetchone()[0]
            senders = db.execute("SELECT count(*) FROM tokencsp_senders").fetchone()[0]
            counters = db.execute("SELECT count(*) FROM tokencsp_serial_counters").fetchone()[0]
            settings = dict(db.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit', 'fsync', 'synchronous_standby_names', 'server_version')").fetchall())
            in_recovery = db.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            return {
                "schema_version": version, "database_time": db_now, "clock_offset": time.time() - db_now,
                "retention": retention, "horizon": None if math.isinf(horizon) else horizon,
                "ids": ids, "oldest_timestamp": oldest, "newest_timestamp": newest, "prunable": prunable,
                "senders": senders, "serial_counters": counters,
                "synchronous_commit": settings.get("synchronous_commit"), "fsync": settings.get("fsync"),
                "synchronous_standby_names": settings.get("synchronous_standby_names"),
                "server_version": settings.get("server_version"), "standby": in_recovery,
            }

        with self._db.lock:
            return self._db.run(read)

    def close(self) -> None:
        with self._db.lock:
            self._db.discard()


class PostgresSerialCounter:
    """Sender serial numbers drawn from PostgreSQL: N senders sharing one key never repeat or go back.

    ``next()`` returns ``max(last + 1, microseconds since the epoch by the
    database's clock)`` in one atomic upsert, the same rule as the file-based
    ``SerialCounter``.  A retry after a lost commit acknowledgement may skip a
    number; it never reuses one.
    """

    def __init__(self, dsn: str, key_id: bytes, *, retry_seconds: float = 10.0, max_attempts: int = 20) -> None:
        if not isinstance(key_id, bytes) or not key_id:
            raise ValueError("key_id must be non-empty bytes")
        self.key_id = key_id
        self._db = _Connection(dsn, "serial counter", retry_seconds=retry_seconds, max_attempts=max_attempts)
        self._db.ensure_schema(ReplayPolicy().retention())

    def next(self) -> int:
        def draw(db: Any, attempt: int) -> int:
            (value,) = db.execute(
                f"INSERT INTO tokencsp_serial_counters AS c (key_id, last_serial) "
                f"VALUES (%s, floor({_NOW} * 1000000)) ON CONFLICT (key_id) DO UPDATE "
                f"SET last_serial = greatest(c.last_serial + 1, EXCLUDED.last_serial) "
                f"RETURNING last_serial", (self.key_id,)).fetchone()
            if value > SERIAL_MAX:
                raise ReplayCacheError(f"{self._db.name}: serial numbers for this key are exhausted")
            return int(value)

        with self._db.lock:
            return self._db.run(draw)

    def close(self) -> None:
        with self._db.lock:
            self._db.discard()

    def __enter__(self) -> PostgresSerialCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seconds(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)
