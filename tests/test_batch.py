"""tokencsp.batch.open_many on the token: imports run ahead of the host's work, the first one alone."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from tokencsp import batch, envelope
from tokencsp.replay import MemoryReplayCache

KEY_PREFIX = "batch-lib"


class Watched:
    """The real exchange key, with each implicit import's start and end noted (no token call is replaced)."""

    def __init__(self, key, concurrent_imports: int | None = None, calibrated: bool = False) -> None:
        self._key = key
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

    def import_simpleblob_implicit(self, blob, oaep=False):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.events.append(("start", self.running))
        try:
            time.sleep(0.02)  # long enough that imports queued together overlap
            return self._key.import_simpleblob_implicit(blob, oaep)
        finally:
            with self._lock:
                self.running -= 1
                self.events.append(("end", self.running))


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


def test_depth_is_the_deadline_over_the_typical_import():
    assert batch.depth_for(0.0013, 0.00065) == 2  # idle: the deadline is about twice the median probe
    assert batch.depth_for(0.032, 0.001) == batch.MAX_DEPTH  # loaded: preempted probes set the deadline
    assert batch.depth_for(0.001, 0.002) == 1
    assert batch.depth_for(0.002, None) == batch.DEPTH  # a calibration that kept no median


def test_the_default_depth_comes_from_the_keys_own_calibration(keys, tmp_path):
    receiver = Watched(keys["alice"], calibrated=True)
    paths, out = _sealed(tmp_path, receiver.public_key(), 6)
    outcomes = list(batch.open_many(paths, str(out), receiver, cache=MemoryReplayCache()))
    assert [o.error for o in outcomes] == [None] * 6
    rejection = keys["alice"].rejection
    assert rejection.typical is not None and 0 < rejection.typical <= rejection.padder.deadline
    assert receiver.most <= min(batch.depth_for(rejection.padder.deadline, rejection.typical),
                                keys["alice"].concurrent_imports)
