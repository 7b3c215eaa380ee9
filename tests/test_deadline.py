"""DeadlinePadder with a fake clock: calls end on a quantum of a deadline that only calibration moves."""

from __future__ import annotations

import pytest

from tokencsp.deadline import DeadlinePadder


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-7  # the busy-wait must see time pass
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _padder(clock: FakeClock, **kw: float) -> DeadlinePadder:
    return DeadlinePadder(clock=clock, sleep=clock.sleep, **kw)


def _takes(clock: FakeClock, seconds: float):
    def operation() -> float:
        clock.now += seconds
        return seconds
    return operation


def test_calls_end_at_the_calibrated_deadline():
    clock = FakeClock()
    padder = _padder(clock, quantile=0.9, margin=1.5)
    assert not padder.calibrated
    assert padder.calibrate([0.001, 0.002, 0.001, 0.002]) == pytest.approx(0.003)  # 0.9 quantile of 1,1,2,2 ms x 1.5
    assert padder.calibrated
    ends = []
    for duration in (0.0005, 0.0015, 0.001, 0.0029):
        start = clock.now
        assert padder.run(_takes(clock, duration)) == duration
        ends.append(clock.now - start)
    assert all(abs(end - ends[0]) < 1e-5 for end in ends), ends
    assert ends[0] >= 0.003


def test_live_calls_never_move_the_deadline():
    """Finding 1: 600 fast operations (an attacker's cheap rejects) used to pull a learned deadline down."""
    clock = FakeClock()
    padder = _padder(clock)
    deadline = padder.calibrate([0.001] * 24)
    for _ in range(600):
        padder.run(_takes(clock, 0.0002))
    assert padder.deadline == deadline
    for _ in range(50):  # slow ones do not move it either: only calibration does
        padder.run(_takes(clock, 0.01))
    assert padder.deadline == deadline


def test_the_deadline_never_falls():
    clock = FakeClock()
    padder = _padder(clock, quantile=1.0, margin=1.0)
    assert padder.calibrate([0.002]) == pytest.approx(0.002)
    assert padder.calibrate([0.0005]) == pytest.approx(0.002)
    assert padder.raise_to(0.001) == pytest.approx(0.002)
    assert padder.raise_to(0.004) == pytest.approx(0.004)
    assert padder.calibrate([0.003]) == pytest.approx(0.004)
    with pytest.raises(ValueError):
        padder.raise_to(float("nan"))
    with pytest.raises(ValueError):
        padder.calibrate([])


def test_only_a_replacing_calibration_lowers_the_deadline():
    """``replace=True`` (a whole fresh calibration of an expired figure, tokencsp.implicit) sets the figure;
    nothing else lowers it, and live calls never move it."""
    clock = FakeClock()
    padder = _padder(clock, quantile=1.0, margin=1.0)
    padder.calibrate([0.004])
    for _ in range(100):
        padder.run(_takes(clock, 0.0001))
    assert padder.deadline == pytest.approx(0.004)
    assert padder.calibrate([0.001], replace=True) == pytest.approx(0.001)
    assert padder.deadline == pytest.approx(0.001)
    assert padder.calibrate([0.0005]) == pytest.approx(0.001)
    assert padder.calibrate([0.003], replace=True) == pytest.approx(0.003)  # a replacement may raise too
    start = clock.now
    padder.run(_takes(clock, 0.0001))
    assert clock.now - start == pytest.approx(0.003, rel=1e-3)


def test_an_overrun_is_padded_to_the_next_quantum():
    clock = FakeClock()
    padder = _padder(clock, quantile=1.0, margin=1.0)
    padder.calibrate([0.001])
    for duration, quanta in ((0.0023, 3), (0.0010001, 2), (0.0051, 6)):
        start = clock.now
        padder.run(_takes(clock, duration))
        elapsed = clock.now - start
        assert quanta * 0.001 <= elapsed < quanta * 0.001 + 1e-5, (duration, elapsed)
        assert padder.last_padded_until == pytest.approx(start + quanta * 0.001, abs=1e-6)
    assert padder.overruns == 3 and padder.padded == 3


def test_failures_are_padded_and_propagate_unchanged():
    clock = FakeClock()
    padder = _padder(clock, quantile=1.0, margin=1.0)
    padder.calibrate([0.002])
    raised = ValueError("x")

    def boom():
        clock.sleep(0.0001)
        raise raised

    start = clock.now
    with pytest.raises(ValueError) as caught:
        padder.run(boom)
    assert caught.value is raised
    assert clock.now - start >= 0.002
    assert padder.padded == 1


def test_run_before_calibration_is_a_programming_error():
    clock = FakeClock()
    padder = _padder(clock)
    with pytest.raises(RuntimeError):
        padder.run(lambda: None)
    assert padder.padded == 0


def test_measure_is_unpadded():
    clock = FakeClock()
    padder = _padder(clock, quantile=1.0, margin=1.0)
    padder.calibrate([0.01])
    start = clock.now
    assert padder.measure(_takes(clock, 0.001)) == pytest.approx(0.001, abs=1e-6)
    assert clock.now - start < 0.0011 and padder.padded == 0
