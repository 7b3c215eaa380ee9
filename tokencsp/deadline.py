"""Pad an operation to a deadline learned from its own recent durations.

Why: a token that fails a PKCS#1/OAEP unwrap returns before creating the key
object that a successful unwrap creates, so the two outcomes differ in time
(``make audit`` measures it).  tokencsp cannot remove that difference inside
the token; it can make every implicit-rejection import *finish* at the same
moment: a high quantile of recent import times plus a margin.  Both outcomes
feed the same window, so the deadline says nothing about the current blob.
Pure: the clock and the sleep are parameters.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DeadlinePadder"]

T = TypeVar("T")


class DeadlinePadder:
    """``run(fn)`` returns fn's result no earlier than ``start + deadline``.

    The deadline is the ``quantile`` of the last ``window`` durations times
    ``margin``; until ``minimum_samples`` durations are known, calls are not
    padded (callers calibrate first, see ``calibrated``).
    """

    def __init__(self, window: int = 512, quantile: float = 0.98, margin: float = 1.25,
                 minimum_samples: int = 16, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._durations: deque[float] = deque(maxlen=window)
        self._quantile, self._margin, self._minimum = quantile, margin, minimum_samples
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._deadline = 0.0

    @property
    def calibrated(self) -> bool:
        return len(self._durations) >= self._minimum

    @property
    def deadline(self) -> float:
        return self._deadline

    def record(self, duration: float) -> None:
        with self._lock:
            self._durations.append(duration)
            if len(self._durations) >= self._minimum:
                ordered = sorted(self._durations)
                self._deadline = ordered[min(len(ordered) - 1, int(len(ordered) * self._quantile))] * self._margin

    def run(self, operation: Callable[[], T]) -> T:
        deadline = self._deadline  # fixed before this call's own duration is known
        start = self._clock()
        try:
            return operation()
        finally:
            self.record(self._clock() - start)
            self.wait_until(start + deadline)

    def wait_until(self, moment: float) -> None:
        # Sleep most of the way (releases the GIL), then spin the last stretch:
        # sleep() alone overshoots by a scheduler tick.
        remaining = moment - self._clock()
        if remaining > 0.0005:
            self._sleep(remaining - 0.0003)
        while self._clock() < moment:
            pass
