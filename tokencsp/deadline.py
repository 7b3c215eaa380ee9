"""Pad an operation to a deadline calibrated from the caller's own probes.

Why: a token that fails a PKCS#1/OAEP unwrap returns before creating the key
object that a successful unwrap creates, so the two outcomes differ in time
(``make audit`` measures it).  tokencsp cannot remove that difference inside
the token; it can make every implicit-rejection import *finish* at the same
moment after it started.

What keeps the deadline out of an attacker's hands (issue 9, finding 1):

* it is learned only from durations handed to :meth:`DeadlinePadder.calibrate`
  -- probe imports of blobs the process made itself, valid and invalid --
  never from the operations :meth:`~DeadlinePadder.run` pads: live traffic
  cannot move it (a flood of blobs the token rejects fast once pulled a
  learned deadline below a real unwrap);
* it falls only by a whole fresh calibration: ``calibrate`` and ``raise_to``
  only ever raise it; ``calibrate(durations, replace=True)`` sets it to what
  one complete set of own probes gives, which the caller does only when its
  figure has expired (a wall-clock age, never a reaction to any blob:
  :mod:`tokencsp.implicit`), so that a calibration made under a passing load
  does not slow the key for good;
* an operation that overruns it ends at the next multiple of the deadline
  (a *quantum*), not when it happens to finish: an overrun tells at most
  how many quanta passed.

Pure: the clock and the sleep are parameters.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["DeadlinePadder"]

T = TypeVar("T")


class DeadlinePadder:
    """``run(fn)`` returns (or raises) fn's outcome at ``start + k * deadline``, k >= 1 the smallest that fits.

    The deadline is the ``quantile`` of a calibration's durations times
    ``margin``, and the highest such value seen (or given to ``raise_to``).
    """

    def __init__(self, quantile: float = 0.9, margin: float = 1.5,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0.0 < quantile <= 1.0 or margin < 1.0:
            raise ValueError("quantile must be in (0, 1] and margin at least 1")
        self._quantile, self._margin = quantile, margin
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._deadline = 0.0
        self.padded = 0  # calls run() has padded (a test can see the padder was used)
        self.overruns = 0  # of those, calls that needed more than one quantum
        self.last_padded_until: float | None = None

    @property
    def calibrated(self) -> bool:
        return self._deadline > 0.0

    @property
    def deadline(self) -> float:
        return self._deadline

    def deadline_for(self, durations: Sequence[float]) -> float:
        """The deadline these calibration durations alone would give."""
        if not durations:
            raise ValueError("a calibration needs at least one duration")
        ordered = sorted(durations)
        return ordered[min(len(ordered) - 1, int(len(ordered) * self._quantile))] * self._margin

    def calibrate(self, durations: Sequence[float], *, replace: bool = False, floor: float | None = None) -> float:
        """Raise the deadline to what these probe durations give (and ``floor``); returns the deadline.

        ``replace=True`` sets it to their figure (at least ``floor``), lower or higher: only for a
        complete fresh calibration from own probes that replaces an expired one.  ``floor`` (the
        figure another process keeps) is applied in the same step, so the deadline is published once.
        """
        deadline = self.deadline_for(durations)
        if floor is not None:
            if not math.isfinite(floor) or floor < 0.0:
                raise ValueError("a deadline is a finite, non-negative number of seconds")
            deadline = max(deadline, floor)
        if not replace:
            return self.raise_to(deadline)
        with self._lock:
            self._deadline = deadline
            return deadline

    def raise_to(self, deadline: float) -> float:
        """Raise the deadline to ``deadline`` if that is higher (e.g. from a cached calibration)."""
        if not math.isfinite(deadline) or deadline < 0.0:
            raise ValueError("a deadline is a finite, non-negative number of seconds")
        with self._lock:
            self._deadline = max(self._deadline, deadline)
            return self._deadline

    def measure(self, operation: Callable[[], object]) -> float:
        """How long ``operation`` takes on this padder's clock, unpadded (for calibration probes)."""
        start = self._clock()
        operation()
        return self._clock() - start

    def run(self, operation: Callable[[], T]) -> T:
        deadline = self._deadline  # fixed before this call's own duration is known
        if deadline <= 0.0:
            raise RuntimeError("DeadlinePadder.run before any calibration")
        start = self._clock()
        try:
            return operation()
        finally:
            # Runs on success and on failure alike; an exception propagates unchanged.
            quanta = max(1, math.ceil((self._clock() - start) / deadline))
            until = start + quanta * deadline
            with self._lock:
                self.padded += 1
                self.overruns += quanta > 1
                self.last_padded_until = until
            self.wait_until(until)

    def wait_until(self, moment: float) -> None:
        # Sleep most of the way (releases the GIL), then spin the last stretch:
        # sleep() alone overshoots by a scheduler tick.
        remaining = moment - self._clock()
        if remaining > 0.0005:
            self._sleep(remaining - 0.0003)
        while self._clock() < moment:
            pass
