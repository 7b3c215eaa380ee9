"""The interface every replay cache backend implements, and the rules they share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .._wire import U64_MAX
from ..errors import MessageTooOld, SerialNotIncreasing
from .policy import ReplayPolicy

__all__ = ["BEYOND_HORIZON", "DEFAULT_RETENTION", "Acceptance", "ReplayCache", "checked_serial", "prune_horizon",
           "retention_floor"]

SERIAL_MAX = U64_MAX  # serials are unsigned 64-bit (FORMAT.md section 2.1)
# A new cache keeps ids at least this long (the default policy's window), so
# that a short-window run using it first cannot make a default run refuse
# messages it would accept.  Backends take a ``retention`` argument to change it.
DEFAULT_RETENTION = ReplayPolicy().retention()
BEYOND_HORIZON = "message is older than the replay cache remembers"


@dataclass(frozen=True)
class Acceptance:
    """One accept() call, checked and ready for a backend to record."""

    key: bytes  # what makes the message unique: the envelope passes SHA-256 of its authenticated prefix
    timestamp: float  # the message's own time (seconds since the epoch)
    now: float  # the receiver's clock at accept time
    window: float  # the policy's max_age + max_skew: how long this run still accepts the timestamp
    sender_id: bytes | None
    serial: int | None
    strict: bool

    def check_horizon(self, horizon: float) -> None:
        """Refuse a message whose id the cache may already have forgotten."""
        if self.timestamp < horizon:
            raise MessageTooOld(BEYOND_HORIZON)


def checked_serial(last: int | None, serial: int | None, sender_id: bytes | None, strict: bool) -> int | None:
    """The sender's new highest serial (None: nothing to record); raises when strict and not increasing."""
    if strict and (sender_id is None or serial is None):
        raise SerialNotIncreasing("message carries no sender serial number")
    if sender_id is None or serial is None:
        return None
    if last is None:
        return serial
    if strict and serial <= last:
        raise SerialNotIncreasing()
    return max(last, serial)


def retention_floor(retention: float | None) -> float:
    """The window a new cache starts from: ``retention`` seconds, or the default policy's."""
    if retention is None:
        return DEFAULT_RETENTION
    if not (isinstance(retention, (int, float)) and math.isfinite(retention) and retention >= 0):
        raise ValueError(f"retention must be a finite number of seconds >= 0, not {retention!r}")
    return float(retention)


def prune_horizon(horizon: float, max_window: float, now: float) -> float:
    """The new horizon when pruning at ``now``: it never moves back, and stays ``max_window`` behind ``now``."""
    return max(horizon, now - max_window)


class ReplayCache(ABC):
    """Remembers accepted messages and each sender's highest serial.

    The contract every backend (memory, SQLite, PostgreSQL...) implements in
    :meth:`_accept`, **atomically** -- as one transaction that is serialized
    with every other accept on the same store, by any process or host:

    1. ``timestamp < horizon`` -> :class:`MessageTooOld` ("older than the
       replay cache remembers").  The *horizon* is a per-store time below
       which ids may have been pruned; it only moves forward.
    2. ``key`` already stored -> :class:`ReplayedMessage`.  ``key`` is
       opaque bytes; the envelope passes SHA-256 of the message's
       authenticated prefix, so that nobody who merely saw a message id can
       burn another sender's message (docs/FORMAT.md step 7).
    3. :func:`checked_serial` on the sender's stored highest serial ->
       :class:`SerialNotIncreasing` when strict and not above it.
    4. Record: insert ``(key, timestamp)``; raise the store's *max window*
       (initially the backend's ``retention``, by default the default
       policy's window) to ``window`` if larger; store the sender's serial if it is higher
       than the stored one (the highest, never merely the latest).
    5. Optionally prune (every ``PRUNE_EVERY`` accepts): horizon :=
       :func:`prune_horizon` (horizon, max window, now); delete every id
       whose timestamp is below the new horizon.
    6. Commit durably before returning.  A refusal or any error leaves the
       store exactly as it was (no burnt id, no advanced serial, no moved
       horizon).

    Why this never lets a replay through: an id is deleted only when its
    timestamp is below the horizon, and from then on step 1 refuses that
    timestamp, whatever policy a later run uses and whatever its clock says.
    Because the horizon trails the newest clock by the longest window ever
    used on the store, a run whose window is no longer than that and whose
    clock is not behind the pruner's never sees a false refusal.  Sender
    records never expire.  Errors are :class:`tokencsp.errors.ReplayCacheError`
    with one line; never "accept without recording".
    """

    PRUNE_EVERY = 256

    def accept(self, message_key: bytes, timestamp: float, now: float, policy: ReplayPolicy,
               sender_id: bytes | None = None, serial: int | None = None) -> None:
        """Check the time window, then (atomically) the horizon, the key and the serial, and record.

        Either everything is recorded (durably, for a persistent cache) on
        return or nothing is.
        """
        if not isinstance(message_key, bytes) or not message_key:
            raise ValueError("message_key must be non-empty bytes")
        if sender_id is not None and not isinstance(sender_id, bytes):
            raise TypeError("sender_id must be bytes or None")
        if serial is not None and not (isinstance(serial, int) and 0 <= serial <= SERIAL_MAX):
            raise ValueError(f"serial must be an unsigned 64-bit integer, not {serial!r}")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise TypeError("timestamp must be a number")
        self._check_and_record(message_key, float(timestamp), now, policy, sender_id, serial)

    def _check_and_record(self, message_key: bytes, timestamp: float, now: float, policy: ReplayPolicy,
                          sender_id: bytes | None, serial: int | None) -> None:
        """After accept()'s argument checks: the time window against ``now``, then the atomic :meth:`_accept`.

        A backend whose own clock decides the window (PostgreSQL: the database's, inside the
        transaction) overrides this hook -- never :meth:`accept` and its argument checks.
        """
        policy.check_time(timestamp, now)  # refuses NaN too, so timestamp is finite below
        self._accept(Acceptance(message_key, timestamp, now, policy.retention(), sender_id, serial,
                                policy.is_strict(sender_id)))

    @abstractmethod
    def _accept(self, acceptance: Acceptance) -> None: ...

    @abstractmethod
    def prune(self, now: float) -> int:
        """Move the horizon to ``now`` minus the longest window ever used and forget older ids; how many."""

    def close(self) -> None:  # noqa: B027 - optional hook; backends without resources keep it
        """Release the backend's resources (a no-op for in-memory caches)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
