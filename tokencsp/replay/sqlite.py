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
from .base import ReplayCache, next_serial
from .paths import default_replay_db_path
from .policy import check_now

__all__ = ["SQLiteReplayCache"]

_SERIAL_OFFSET = 2**63
SCHEMA_VERSION = 1

_SCHEMA = (  # executescript() would COMMIT the surrounding transaction, so one by one
    "CREATE TABLE seen (message_id BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX seen_expires ON seen (expires)",
    "CREATE TABLE senders (sender_id BLOB PRIMARY KEY, last_serial INTEGER NOT NULL) WITHOUT ROWID",
)


class SQLiteReplayCache(ReplayCache):
    """Replay cache in an SQLite file that several receiver processes may share."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> None:
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
                    if version == 0:
                        for statement in _SCHEMA:
                            db.execute(statement)
                        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    elif version != SCHEMA_VERSION:
                        raise ReplayCacheError(f"replay cache {self.path} has schema version {version}; "
                                               f"this tokencsp understands {SCHEMA_VERSION}")
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

    def _accept(self, message_id: bytes, expires: float, now: float, sender_id: bytes | None,
                serial: int | None, strict: bool) -> None:
        with self._lock, self._errors(), self._transaction() as db:
            if db.execute("SELECT 1 FROM seen WHERE message_id = ?", (message_id,)).fetchone():
                raise ReplayedMessage()
            row = db.execute("SELECT last_serial FROM senders WHERE sender_id = ?", (sender_id,)).fetchone()
            last = None if row is None else row[0] + _SERIAL_OFFSET
            new = next_serial(last, serial, sender_id, strict)
            if self._accepts % self.PRUNE_EVERY == 0:
                db.execute("DELETE FROM seen WHERE expires < ?", (now,))
            db.execute("INSERT INTO seen (message_id, expires) VALUES (?, ?)", (message_id, expires))
            if new is not None and new != last:
                db.execute("INSERT OR REPLACE INTO senders (sender_id, last_serial) VALUES (?, ?)",
                           (sender_id, new - _SERIAL_OFFSET))
            self._accepts += 1

    def prune(self, now: float) -> int:
        check_now(now)
        with self._lock, self._errors(), self._transaction() as db:
            return db.execute("DELETE FROM seen WHERE expires < ?", (now,)).rowcount

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
