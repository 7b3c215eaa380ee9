"""An in-process replay cache."""

from __future__ import annotations

import threading

from ..errors import ReplayedMessage
from .base import Acceptance, ReplayCache, checked_serial, prune_horizon, retention_floor
from .policy import check_now

__all__ = ["MemoryReplayCache"]


class MemoryReplayCache(ReplayCache):
    """In-process cache (tests, one-shot tools); thread-safe, forgets everything on exit."""

    def __init__(self, *, retention: float | None = None) -> None:
        self._lock = threading.Lock()
        self._seen: dict[bytes, float] = {}  # key -> message timestamp
        self._serials: dict[bytes, int] = {}
        self._horizon = float("-inf")
        self._max_window = retention_floor(retention)
        self._accepts = 0

    def _accept(self, a: Acceptance) -> None:
        with self._lock:
            a.check_horizon(self._horizon)
            if a.key in self._seen:
                raise ReplayedMessage()
            last = self._serials.get(a.sender_id) if a.sender_id is not None else None
            new = checked_serial(last, a.serial, a.sender_id, a.strict)
            self._seen[a.key] = a.timestamp
            self._max_window = max(self._max_window, a.window)
            if a.sender_id is not None and new is not None:
                self._serials[a.sender_id] = new
            if self._accepts % self.PRUNE_EVERY == 0:
                self._prune_locked(a.now)
            self._accepts += 1

    def prune(self, now: float) -> int:
        check_now(now)
        with self._lock:
            return self._prune_locked(now)

    def _prune_locked(self, now: float) -> int:
        self._horizon = prune_horizon(self._horizon, self._max_window, now)
        before = len(self._seen)
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= self._horizon}
        return before - len(self._seen)
