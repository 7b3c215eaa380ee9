"""Replay protection for sealed messages: the receiver's policy and its persistent cache.

Decisions (the tests pin each one down):

* Time window, both bounds inclusive: accepted while ``now - timestamp <= max_age``
  and ``timestamp - now <= max_skew``.  A NaN timestamp counts as too old.
* An accepted id is remembered until ``max(timestamp, now) + max_age + max_skew``.
  The message itself stops passing the time check at ``timestamp + max_age``, so
  pruning an expired id can never let a replay in, provided the ``now`` fed in does
  not go backwards and ``max_age`` is not raised later (ids recorded under a
  shorter window may already be gone).  An id still stored is refused even past
  its expiry: pruning decides when an id is forgotten, nothing else.
* Order of checks: time window, then id, then serial; a refused message records
  nothing (no burnt id, no advanced serial).
* Per-sender serials are strict by default for signed messages only (an unsigned
  message has no sender to key them on).  ``strict_serial=True`` refuses messages
  that carry no sender serial.  Non-strict acceptance still records the highest
  serial seen.  Sender records never expire: they are a few dozen bytes each, and
  keeping them makes "serials never go backwards" independent of the clock, which
  the time window and id expiry both rely on.
* Serials are unsigned 64-bit; SQLite stores them as ``serial - 2**63``, an
  order-preserving map into its signed 64-bit INTEGER.
* SQLite: WAL, ``synchronous=FULL``, every accept one ``BEGIN IMMEDIATE``
  transaction, so receiver processes sharing the file serialize and exactly one
  accepts a given id.  Expired ids are pruned in the first accept of each cache
  object and every ``PRUNE_EVERY`` accepts after that.  Do not share one cache
  object across ``fork()``; open one per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import sqlite3
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import (ConfigError, MessageFromFuture, MessageTooOld, ReplayCacheError,
                     ReplayedMessage, SerialNotIncreasing)

__all__ = ["ReplayPolicy", "parse_duration", "ReplayCache", "MemoryReplayCache",
           "SQLiteReplayCache", "SerialCounter", "default_replay_db_path", "default_state_dir"]

ENV_REPLAY_DB = "TOKENCSP_REPLAY_DB"
SERIAL_MAX = 2**64 - 1
_SERIAL_OFFSET = 2**63
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReplayPolicy:
    max_age: float = 24 * 3600
    max_skew: float = 300
    strict_serial: bool | None = None  # None: strict when the message is signed

    def __post_init__(self) -> None:
        for name in ("max_age", "max_skew"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"replay policy {name} must be a finite number >= 0, not {value!r}")

    def check_time(self, timestamp: float, now: float) -> None:
        _check_now(now)
        if timestamp - now > self.max_skew:
            raise MessageFromFuture()
        if not now - timestamp <= self.max_age:  # written so that NaN is refused
            raise MessageTooOld()

    def retention(self) -> float:
        return self.max_age + self.max_skew

    def is_strict(self, sender_id: bytes | None) -> bool:
        return sender_id is not None if self.strict_serial is None else self.strict_serial


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUM = r"[0-9]+(?:\.[0-9]+)?"  # not \d: that also matches non-ASCII digits
_DURATION = re.compile("".join(rf"(?:(?P<{u}>{_NUM}){u})?" for u in _UNITS))


def parse_duration(text: str) -> float:
    """Seconds in "300", "90s", "15m", "24h", "7d", "1h30m" (units largest first, each once)."""
    s = text.strip().lower() if isinstance(text, str) else ""
    if re.fullmatch(_NUM, s):
        return float(s)
    match = _DURATION.fullmatch(s)
    if not s or match is None:
        raise ConfigError(f"invalid duration {text!r}: use e.g. 300, 90s, 15m, 24h, 7d or 1h30m")
    return sum(float(v) * _UNITS[u] for u, v in match.groupdict().items() if v is not None)


def _check_now(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time, not {now!r}")


def _next_serial(last: int | None, serial: int | None, sender_id: bytes | None, strict: bool) -> int | None:
    """The sender's new last serial (None: nothing to record); raises when strict and not increasing."""
    if strict and (sender_id is None or serial is None):
        raise SerialNotIncreasing("message carries no sender serial number")
    if sender_id is None or serial is None:
        return None
    if last is None:
        return serial
    if strict and serial <= last:
        raise SerialNotIncreasing()
    return max(last, serial)


class ReplayCache(ABC):
    """Remembers accepted message ids and each sender's last serial."""

    PRUNE_EVERY = 256

    def accept(self, message_id: bytes, timestamp: float, now: float, policy: ReplayPolicy,
               sender_id: bytes | None = None, serial: int | None = None) -> None:
        """Atomically check the time window, the id, then the serial, and record the message.

        Either everything is recorded (durably, for a persistent cache) on
        return or nothing is.
        """
        if not isinstance(message_id, bytes) or not message_id:
            raise ValueError("message_id must be non-empty bytes")
        if sender_id is not None and not isinstance(sender_id, bytes):
            raise TypeError("sender_id must be bytes or None")
        if serial is not None and not (isinstance(serial, int) and 0 <= serial <= SERIAL_MAX):
            raise ValueError(f"serial must be an unsigned 64-bit integer, not {serial!r}")
        policy.check_time(timestamp, now)
        expires = max(timestamp, now) + policy.retention()
        self._accept(message_id, expires, now, sender_id, serial, policy.is_strict(sender_id))

    @abstractmethod
    def _accept(self, message_id: bytes, expires: float, now: float, sender_id: bytes | None,
                serial: int | None, strict: bool) -> None: ...

    @abstractmethod
    def prune(self, now: float) -> int:
        """Forget ids whose expiry is before ``now``; returns how many."""

    def close(self) -> None:  # noqa: B027 - optional hook; backends without resources keep it
        """Release the backend's resources (a no-op for in-memory caches)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class MemoryReplayCache(ReplayCache):
    """In-process cache (tests, one-shot tools); thread-safe, forgets everything on exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[bytes, float] = {}
        self._serials: dict[bytes, int] = {}
        self._accepts = 0

    def _accept(self, message_id: bytes, expires: float, now: float, sender_id: bytes | None,
                serial: int | None, strict: bool) -> None:
        with self._lock:
            if message_id in self._seen:
                raise ReplayedMessage()
            last = self._serials.get(sender_id) if sender_id is not None else None
            new = _next_serial(last, serial, sender_id, strict)
            if self._accepts % self.PRUNE_EVERY == 0:
                self._prune_locked(now)
            self._accepts += 1
            self._seen[message_id] = expires
            if sender_id is not None and new is not None:
                self._serials[sender_id] = new

    def prune(self, now: float) -> int:
        _check_now(now)
        with self._lock:
            return self._prune_locked(now)

    def _prune_locked(self, now: float) -> int:
        before = len(self._seen)
        self._seen = {k: expires for k, expires in self._seen.items() if expires >= now}
        return before - len(self._seen)


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/tokencsp, else ~/.local/state/tokencsp (not created)."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"  # XDG: relative is invalid
    return base / "tokencsp"


def _make_parent(path: Path) -> Path:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplayCacheError(f"cannot create {path.parent}: {exc.strerror}") from None
    return path


def default_replay_db_path() -> Path:
    """$TOKENCSP_REPLAY_DB, else <state dir>/replay.sqlite3; the parent is created 0700."""
    env = os.environ.get(ENV_REPLAY_DB)
    return _make_parent(Path(env) if env else default_state_dir() / "replay.sqlite3")


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
            new = _next_serial(last, serial, sender_id, strict)
            if self._accepts % self.PRUNE_EVERY == 0:
                db.execute("DELETE FROM seen WHERE expires < ?", (now,))
            db.execute("INSERT INTO seen (message_id, expires) VALUES (?, ?)", (message_id, expires))
            if new is not None and new != last:
                db.execute("INSERT OR REPLACE INTO senders (sender_id, last_serial) VALUES (?, ?)",
                           (sender_id, new - _SERIAL_OFFSET))
            self._accepts += 1

    def prune(self, now: float) -> int:
        _check_now(now)
        with self._lock, self._errors(), self._transaction() as db:
            return db.execute("DELETE FROM seen WHERE expires < ?", (now,)).rowcount

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class SerialCounter:
    """Monotonic per-sender serial numbers persisted in a file; next() never repeats across processes.

    ``next()`` returns ``max(last + 1, microseconds since the epoch)``.  The time
    floor means a lost, wiped or restored-from-backup counter file does not
    restart at 1 (or at an old value): receivers with strict serials would refuse
    every such message as a replay.  It stays well inside 64 bits for millennia.
    Serializing is done with flock on ``<path>.lock``; the value file is replaced
    atomically (fsync'ed temp file + rename + directory fsync), so a crash leaves
    the old or the new value, never a torn one.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else _make_parent(default_state_dir() / "serials" / "default")

    @classmethod
    def for_key(cls, key_id: bytes) -> SerialCounter:
        return cls(_make_parent(default_state_dir() / "serials" / key_id.hex()))

    def next(self) -> int:
        try:
            lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ReplayCacheError(f"serial counter {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            last = self._read()
            value = max(last + 1, time.time_ns() // 1000)
            if value > SERIAL_MAX:
                raise ReplayCacheError(f"serial counter {self.path} is exhausted")
            self._write(value)
            return value
        except OSError as exc:
            raise ReplayCacheError(f"serial counter {self.path}: {exc.strerror}") from None
        finally:
            os.close(lock_fd)  # releases the flock

    def _read(self) -> int:
        try:
            text = self.path.read_text("ascii").strip()
        except FileNotFoundError:
            return 0
        except (UnicodeDecodeError, ValueError):
            text = "?"
        if not text.isdigit():
            # Guessing would risk repeating a serial; let a human look.
            raise ReplayCacheError(f"serial counter {self.path} is corrupt")
        return int(text)

    def _write(self, value: int) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{value}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


from .factory import next_serial, open_cache, open_serial_counter  # noqa: E402 - the backends import this module first
from .postgres import PostgresReplayCache, PostgresSerialCounter  # noqa: E402

__all__ += ["open_cache", "open_serial_counter", "next_serial", "PostgresReplayCache", "PostgresSerialCounter"]
