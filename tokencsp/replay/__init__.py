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

from .base import SERIAL_MAX, ReplayCache
from .memory import MemoryReplayCache
from .paths import ENV_REPLAY_DB, default_replay_db_path, default_state_dir
from .policy import ReplayPolicy, parse_duration
from .serial import SerialCounter
from .sqlite import SCHEMA_VERSION, SQLiteReplayCache

__all__ = ["ENV_REPLAY_DB", "SCHEMA_VERSION", "SERIAL_MAX", "MemoryReplayCache", "ReplayCache", "ReplayPolicy",
           "SQLiteReplayCache", "SerialCounter", "default_replay_db_path", "default_state_dir", "parse_duration"]

from .factory import draw_serial, open_cache, open_serial_counter
from .postgres import PostgresReplayCache, PostgresSerialCounter

__all__ += ["PostgresReplayCache", "PostgresSerialCounter", "draw_serial", "open_cache", "open_serial_counter"]
