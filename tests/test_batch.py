"""tokencsp.batch.open_many on the token: imports run ahead of the host's work, the first one alone."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from tokencsp import batch, envelope
from tokencsp.errors import AuthenticationFailed
from tokencsp.replay import MemoryReplayCache

KEY_PREFIX = "batch-lib"


class Watched:
    """The real exchange key, with each implicit import's start and end noted (no token call is replaced)."""

    def __init__(self, key, concurrent_imports: int | None = None, calibrated: bool = False,
                 pause: float = 0.02, warm: bool = False) -> None:
        self._key = key
        self._pause = pause
        self.spans: list[tuple[float, float, float]] = []  # (start, end, deadline at start) per import
        if warm:
            self.warm_sessions = self._warm
        if calibrated:  # the key's own calibration: open_many sizes its depth from it
            self.rejection = key.rejection
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.events: list[tuple[str, int]] = []
        if concurrent_imports is not None:
            self.concurrent_imports = concurrent_imports

    def public_key(self):
        return self._key.public_key()

    def import_simpleblob(self, blob, oaep=False):
        return self._key.import_simpleblob(blob, oaep)

    def _warm(self, count):
        with self._lock:
            self.events.append(("warm", count))
        return self._key.warm_sessions(count)

    def import_simpleblob_implicit(self, blob, oaep=False):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.events.append(("start", self.running))
        deadline = self._key.rejection.padder.deadline  # only rises while the batch runs
        start = time.perf_counter()  # the padder's clock, read before the padded call starts
        try:
            if self._pause:
                time.sleep(self._pause)  # long enough that imports queued together overlap
            return self._key.import_simpleblob_implicit(blob, oaep)
        finally:
            end = time.perf_counter()
            with self._lock:
                self.running -= 1
                self.events.append(("end", self.running))
                self.spans.append((start, end, deadline))


def _sealed(tmp_path, public, count: int):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"m{i}.tcsp"
        path.write_bytes(envelope.seal_bytes(b"message %d" % i, public))
        paths.append(str(path))
    out = tmp_path / "out"
    out.mkdir()
    return paths, out


def test_imports_run_ahead_of_the_host_and_the_first_runs_alone(keys, tmp_path):
    receiver = Watched(keys["alice"])
    paths, out = _sealed(tmp_path, receiver.public_key(), 8)
    switch = sys.getswitchinterval()
    outcomes = list(batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache(), depth=4))
    assert [o.error for o in outcomes] == [None] * 8
    assert [(out / f"m{i}").read_bytes() for i in range(8)] == [b"message %d" % i for i in range(8)]
    assert receiver.events[:2] == [("start", 1), ("end", 0)]  # the first import (it may calibrate) alone
    assert receiver.most >= 2  # then several in flight while the host decrypts
    assert receiver.most <= 4
    assert sys.getswitchinterval() == switch  # restored


def test_a_receiver_that_takes_one_import_at_a_time_gets_one(keys, tmp_path):
    receiver = Watched(keys["alice"], concurrent_imports=1)  # as the agent client says
    paths, out = _sealed(tmp_path, receiver.public_key(), 5)
    outcomes = list(batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache(), depth=4))
    assert [o.error for o in outcomes] == [None] * 5
    assert receiver.most == 1


def test_a_replay_inside_the_batch_is_refused_though_both_imports_ran_ahead(keys, tmp_path):
    """Acceptance is decided in input order on the host, however many imports were in flight."""
    receiver = Watched(keys["alice"])
    paths, out = _sealed(tmp_path, receiver.public_key(), 4)
    with open(paths[1], "rb") as original, open(paths[2], "wb") as copy:
        copy.write(original.read())
    outcomes = list(batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache(), depth=4))
    assert [o.error is None for o in outcomes] == [True, True, False, True]
    assert "replay" in str(outcomes[2].error)
    assert not (out / "m2").exists()


def test_depth_below_one_is_refused(keys, tmp_path):
    with pytest.raises(ValueError):
        list(batch.open_many([], str(tmp_path), keys["alice"], cache=MemoryReplayCache(), depth=0))


def test_depth_leaves_one_typical_import_of_headroom_under_the_deadline():
    assert batch.depth_for(0.00124, 0.00067) == 1  # idle (docs/SECURITY.md figures): one at a time
    assert batch.depth_for(0.0027, 0.00067) == 3  # 4 x 0.67 ms fits 2.7 ms: 3 in flight + headroom
    assert batch.depth_for(0.032, 0.001) == batch.MAX_DEPTH  # loaded: preempted probes set the deadline
    assert batch.depth_for(0.001, 0.002) == 1
    assert batch.depth_for(0.002, None) == batch.DEPTH  # a calibration that kept no median
    for typical_us in (300, 670, 1000, 2500):
        for deadline_us in range(typical_us, 40 * typical_us, 37):
            deadline, typical = deadline_us / 1e6, typical_us / 1e6
            depth = batch.depth_for(deadline, typical)
            # A serialised wave of `depth` typical imports ends one typical import before the deadline.
            assert depth == 1 or (depth + 1) * typical <= deadline * (1 + 1e-9), (deadline, typical, depth)


def test_each_import_in_a_batch_is_padded_to_its_own_deadline(keys, tmp_path):
    """Several in flight, valid and invalid blobs mixed: none ends before its own start + deadline."""
    receiver = Watched(keys["alice"], pause=0.0, warm=True)
    paths, out = _sealed(tmp_path, receiver.public_key(), 10)
    bad = (2, 5, 6)
    for index in bad:  # a bad key blob: a byte inside the RSA block flipped (unsigned: bytes 94-349)
        path = tmp_path / "in" / f"m{index}.tcsp"
        data = bytearray(path.read_bytes())
        data[200] ^= 0x01
        path.write_bytes(bytes(data))
    padded = keys["alice"].rejection.padder.padded
    outcomes = list(batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache(), depth=4))
    assert [type(o.error) for o in outcomes] == [AuthenticationFailed if i in bad else type(None) for i in range(10)]
    assert len(receiver.spans) == 10
    assert keys["alice"].rejection.padder.padded - padded == 10
    deadline = keys["alice"].rejection.padder.deadline
    first = min(receiver.spans)
    assert first[1] - first[0] >= deadline  # the first may calibrate: its deadline is known only after
    for start, end, at_start in receiver.spans:
        assert at_start > 0.0 or (start, end, at_start) == first
        assert end - start >= at_start, (end - start, at_start)
    assert receiver.most >= 2  # they did run side by side
    warm = [e for e in receiver.events if e[0] == "warm"]
    assert warm == [("warm", 4)]
    assert receiver.events.index(("warm", 4)) == 2  # after the first import, before any other started


def test_warm_sessions_opens_the_pool_with_the_key_found_in_each(keys):
    key = keys["alice"]
    token = key._token
    limit = token.max_sessions
    assert key.warm_sessions(limit + 5) == limit  # never more than the pool
    idle = list(token._pool._idle)
    assert len(idle) == limit
    assert all(key.key_id in lease.keys for lease in idle)


def test_two_batches_at_once_restore_the_switch_interval(keys, tmp_path):
    """The interval is process-wide: batch b starts inside batch a and ends after it; neither may
    leave it lowered (b saving a's lowered value would restore that) nor raise it while b runs."""
    original = sys.getswitchinterval()
    assert original > batch.SWITCH_INTERVAL
    receiver = Watched(keys["alice"], pause=0.005)
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            (tmp_path / name).mkdir()
            paths, out = _sealed(tmp_path / name, receiver.public_key(), 4)
            opened = batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache(), depth=2)
            if name == "b":
                assert a_inside.wait(60)
            next(opened)  # inside the batch: the interval is lowered
            seen[name] = sys.getswitchinterval()
            if name == "a":
                a_inside.set()
                assert b_inside.wait(60)
                assert [o.error for o in opened] == [None] * 3
                seen["a left, b inside"] = sys.getswitchinterval()
                a_done.set()
            else:
                b_inside.set()
                assert a_done.wait(60)
                opened.close()  # a generator closed early restores as well
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)
            for event in (a_inside, b_inside, a_done):
                event.set()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert seen == {"a": batch.SWITCH_INTERVAL, "b": batch.SWITCH_INTERVAL,
                    "a left, b inside": batch.SWITCH_INTERVAL}
    assert sys.getswitchinterval() == original


def test_the_switch_guard_restores_out_of_order_and_on_an_exception():
    original = sys.getswitchinterval()
    assert original > batch.SWITCH_INTERVAL  # else nothing below could tell a lowered interval
    first, second = batch.fast_switching(), batch.fast_switching()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first holder leaves first
    assert sys.getswitchinterval() == batch.SWITCH_INTERVAL  # the second is still inside
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == original
    with pytest.raises(KeyboardInterrupt), batch.fast_switching():
        assert sys.getswitchinterval() == batch.SWITCH_INTERVAL
        raise KeyboardInterrupt
    assert sys.getswitchinterval() == original


def test_the_default_depth_comes_from_the_keys_own_calibration(keys, tmp_path):
    receiver = Watched(keys["alice"], calibrated=True)
    paths, out = _sealed(tmp_path, receiver.public_key(), 6)
    outcomes = list(batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache()))
    assert [o.error for o in outcomes] == [None] * 6
    rejection = keys["alice"].rejection
    assert rejection.typical is not None and 0 < rejection.typical <= rejection.padder.deadline
    assert receiver.most <= min(batch.depth_for(rejection.padder.deadline, rejection.typical),
                                keys["alice"].concurrent_imports)
