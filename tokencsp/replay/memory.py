"""An in-process replay cache."""

from __future__ import annotations

import threading

from ..errors import ReplayedMessage
from .base import ReplayCache, next_serial
from .policy import check_now

__all__ = ["MemoryReplayCache"]


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
            new = next_serial(last, serial, sender_id, strict)
            if self._accepts % self.PRUNE_EVERY == 0:
                self._prune_locked(now)
            self._accepts += 1
            self._seen[message_id] = expires
            if sender_id is not None and new is not None:
                self._serials[sender_id] = new

    def prune(self, now: float) -> int:
        check_now(now)
        with self._lock:
            return self._prune_locked(now)

    def _prune_locked(self, now: float) -> int:
        before = len(self._seen)
        self._seen = {k: expires for k, expires in self._seen.items() if expires >= now}
        return before - len(self._seen)
