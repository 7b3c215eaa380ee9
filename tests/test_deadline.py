"""DeadlinePadder with a fake clock: every call ends at start + deadline, whatever it took."""

from __future__ import annotations

from tokencsp.deadline import DeadlinePadder


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-7  # the busy-wait must see time pass
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_calls_end_at_the_learned_deadline():
    clock = FakeClock()
    padder = DeadlinePadder(window=64, quantile=0.9, margin=1.5, minimum_samples=4, clock=clock, sleep=clock.sleep)
    assert not padder.calibrated

    def takes(seconds):
        def operation():
            clock.now += seconds
            return seconds
        return operation

    for duration in (0.001, 0.002, 0.001, 0.002):
        padder.run(takes(duration))
    assert padder.calibrated
    assert abs(padder.deadline - 0.003) < 1e-6  # 0.9 quantile of {1, 1, 2, 2} ms, times 1.5
    ends = []
    for duration in (0.0005, 0.0015, 0.001):  # within the learned range: the deadline stays put
        start = clock.now
        assert padder.run(takes(duration)) == duration
        ends.append(clock.now - start)
    assert all(abs(end - ends[0]) < 1e-5 for end in ends), ends
    assert ends[0] >= 0.003


def test_an_operation_over_the_deadline_is_not_delayed_further():
    clock = FakeClock()
    padder = DeadlinePadder(minimum_samples=1, margin=1.0, clock=clock, sleep=clock.sleep)
    padder.run(lambda: clock.sleep(0.001))
    start = clock.now
    padder.run(lambda: clock.sleep(0.01))
    assert clock.now - start < 0.0101


def test_failures_are_padded_and_recorded_too():
    clock = FakeClock()
    padder = DeadlinePadder(minimum_samples=2, margin=1.0, quantile=0.99, clock=clock, sleep=clock.sleep)
    padder.run(lambda: clock.sleep(0.002))
    padder.run(lambda: clock.sleep(0.002))

    def boom():
        clock.sleep(0.0001)
        raise ValueError("x")

    start = clock.now
    try:
        padder.run(boom)
    except ValueError:
        pass
    assert clock.now - start >= 0.002
