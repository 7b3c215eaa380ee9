"""The replay cache in an SQLite file that several receiver processes may share."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import ReplayCacheError, ReplayedMessage
from .base import Acceptance, ReplayCache, checked_serial, prune_horizon, retention_floor
from .paths import default_replay_db_path
from .policy import check_now

__all__ = ["SQLiteReplayCache"]

_SERIAL_OFFSET = 2**63
SCHEMA_VERSION = 2
_V1_WINDOW = 24 * 3600 + 300  # the default policy's window, which version 1 did not record

# executescript() would COMMIT the surrounding transaction, so one statement at a time.
_SCHEMA = (
    # key: SHA-256 of the message's authenticated prefix; ts: the message's own timestamp
    "CREATE TABLE seen (key BLOB PRIMARY KEY, ts REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX seen_ts ON seen (ts)",
    "CREATE TABLE senders (sender_id BLOB PRIMARY KEY, last_serial INTEGER NOT NULL) WITHOUT ROWID",
    # horizon: ids with ts below it may be gone, so such messages are refused;
    # max_window: the longest max_age + max_skew any accept has used here.
    "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 0), horizon REAL NOT NULL, max_window REAL NOT NULL)",
    "INSERT INTO state (id, horizon, max_window) VALUES (0, -1e308, :window)",
)
# Version 1 keyed ids on the cleartext message_id with a per-run expiry.  Its
# rows cannot be matched against prefix hashes, so the upgrade drops them and
# moves the horizon to the moment of the upgrade: messages stamped before it
# are refused as older than the cache remembers (never accepted twice).
_FROM_V1 = ("DROP TABLE seen", *(s for s in _SCHEMA if "senders" not in s), "UPDATE state SET horizon = :now")


class SQLiteReplayCache(ReplayCache):
    """Replay cache in an SQLite file that several receiver processes may share."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0,
                 retention: float | None = None) -> None:
        """Open (creating it if needed) the cache at ``path``, default :func:`default_replay_db_path`.

        ``retention``: keep ids at least this many seconds past their timestamp
        (default: the default policy's window); it only ever raises the value
        stored in the file.
        """
        floor = retention_floor(retention)
        self.path = Path(path) if path is not None else default_replay_db_path()
        self._lock = threading.Lock()
        self._accepts = 0
        self._conn: sqlite3.Connection | None = None
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise ReplayCacheError(f"replay cache {self.path}: {exc.strerror}") from None
        try:
            with self._errors():
                self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                             check_same_thread=False)
                self._use_wal(time.monotonic() + timeout)
                self._conn.execute("PRAGMA synchronous=FULL")
                with self._transaction() as db:
                    version = db.execute("PRAGMA user_version").fetchone()[0]
                    if version not in (0, 1, SCHEMA_VERSION):
                        raise ReplayCacheError(f"replay cache {self.path} has schema version {version}; "
                                               f"this tokencsp understands {SCHEMA_VERSION}")
                    if version < SCHEMA_VERSION:
                        window = floor if version == 0 else max(floor, _V1_WINDOW)
                        for statement in _SCHEMA if version == 0 else _FROM_V1:
                            db.execute(statement, {"now": time.time(), "window": window})
                        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    db.execute("UPDATE state SET max_window = ? WHERE max_window < ?", (floor, floor))
        except BaseException:
            self.close()
            raise

    def _use_wal(self, deadline: float) -> None:
        assert self._conn is not None
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL fails at once, without the busy
                # handler, while another process is opening it too: retry.
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        if mode != "wal":
            raise ReplayCacheError(f"replay cache {self.path}: cannot use WAL journal mode here")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise ReplayCacheError(f"replay cache {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (refusals included)."""
        db = self._conn
        if db is None:
            raise ReplayCacheError(f"replay cache {self.path} is closed")
        db.execute("BEGIN IMMEDIATE")  # the write lock up front: racing processes queue here
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _accept(self, a: Acceptance) -> None:
        with self._lock, self._errors(), self._transaction() as db:
            horizon, max_window = db.execute("SELECT horizon, max_window FROM state").fetchone()
            a.check_horizon(horizon)
            if db.execute("SELECT 1 FROM seen WHERE key = ?", (a.key,)).fetchone():
                raise ReplayedMessage()
            row = db.execute("SELECT last_serial FROM senders WHERE sender_id = ?", (a.sender_id,)).fetchone()
            last = None if row is None else row[0] + _SERIAL_OFFSET
            new = checked_serial(last, a.serial, a.sender_id, a.strict)
            db.execute("INSERT INTO seen (key, ts) VALUES (?, ?)", (a.key, a.timestamp))
            if a.window > max_window:
                db.execute("UPDATE state SET max_window = ?", (a.window,))
            if new is not None and new != last:
                db.execute("INSERT OR REPLACE INTO senders (sender_id, last_serial) VALUES (?, ?)",
                           (a.sender_id, new - _SERIAL_OFFSET))
            if self._accepts % self.PRUNE_EVERY == 0:
                self._prune(db, a.now)
            self._accepts += 1

    def prune(self, now: float) -> int:
        check_now(now)
        with self._lock, self._errors(), self._transaction() as db:
            return self._prune(db, now)

    @staticmethod
    def _prune(db: sqlite3.Connection, now: float) -> int:
        horizon, max_window = db.execute("SELECT horizon, max_window FROM state").fetchone()
        horizon = prune_horizon(horizon, max_window, now)
        db.execute("UPDATE state SET horizon = ?", (horizon,))
        return db.execute("DELETE FROM seen WHERE ts < ?", (horizon,)).rowcount

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
