"""Replay protection for sealed messages: the receiver's policy and its persistent cache.

``ReplayCache`` (``base.py``) states the contract every backend implements;
``MemoryReplayCache`` and ``SQLiteReplayCache`` are the backends here.
Decisions (the tests pin each one down):

* Time window, both bounds inclusive: accepted while ``now - timestamp <= max_age``
  and ``timestamp - now <= max_skew``.  A NaN timestamp counts as too old.
* A message is remembered under a key that only its authenticated content
  determines (the envelope passes SHA-256 of the prefix), with its own
  timestamp.  Ids are forgotten only by moving the cache's *horizon* forward:
  pruning at ``now`` sets ``horizon = max(horizon, now - W)``, where ``W`` is the
  longest ``max_age + max_skew`` any accept has used on this cache, and
  deletes ids stamped before it; from then on every message stamped before
  the horizon is refused as ``MessageTooOld``.  So pruning can never let a
  replay in, whichever policy or clock a later run uses, and a run whose
  window is no longer than ``W`` is never refused by the horizon (unless its
  clock is behind the pruner's).  An id still stored is refused even past its
  window: pruning decides when an id is forgotten, nothing else.
* Order of checks: time window, horizon, key, then serial; a refused message
  records nothing (no burnt key, no advanced serial, no moved horizon).
* Per-sender serials are strict by default for signed messages only (an unsigned
  message has no sender to key them on).  ``strict_serial=True`` refuses messages
  that carry no sender serial.  Non-strict acceptance still records the highest
  serial seen (never merely the latest).  Sender records never expire: they are
  a few dozen bytes each, and keeping them makes "serials never go backwards"
  independent of the clock.
* Serials are unsigned 64-bit; SQLite stores them as ``serial - 2**63``, an
  order-preserving map into its signed 64-bit INTEGER.
* SQLite: WAL, ``synchronous=FULL``, every accept one ``BEGIN IMMEDIATE``
  transaction, so receiver processes sharing the file serialize and exactly one
  accepts a given message.  The horizon and ``W`` live in the file, shared by
  every process using it.  Pruning runs in the first accept of each cache
  object and every ``PRUNE_EVERY`` accepts after that.  Schema version 2; a
  version 1 file is upgraded in place (see ``sqlite.py``).  Do not share one
  cache object across ``fork()``; open one per process.
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
