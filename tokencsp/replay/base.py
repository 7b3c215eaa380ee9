"""The interface every replay cache backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

from .._wire import U64_MAX
from ..errors import SerialNotIncreasing
from .policy import ReplayPolicy

__all__ = ["ReplayCache", "next_serial"]

SERIAL_MAX = U64_MAX  # serials are unsigned 64-bit (FORMAT.md section 2.1)


def next_serial(last: int | None, serial: int | None, sender_id: bytes | None, strict: bool) -> int | None:
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


