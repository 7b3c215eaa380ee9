"""The per-key deadline floor in the state directory: private, atomic, raised by calibrations, replaced only
once expired, distrustful."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tokencsp.calibration import MAX_AGE, MAX_DEADLINE, CalibrationCache, KeyPlace

KEY = bytes(range(32))
OTHER = bytes(32)
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
HERE = KeyPlace(MODULE, "0123456789abcdef", KEY)
OTHER_KEY = KeyPlace(MODULE, "0123456789abcdef", OTHER)


@pytest.fixture
def cache(tmp_path):
    return CalibrationCache(tmp_path / "state" / "tokencsp" / "deadlines")


def test_store_then_load_with_private_modes(cache):
    assert cache.load(HERE) is None
    assert cache.store(HERE, 0.002) == 0.002
    entry = cache.load(HERE)
    assert entry.deadline == 0.002 and not entry.stale and entry.trusted(cache.now())
    assert cache.load(OTHER_KEY) is None
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.directory.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.path(HERE)).st_mode) == 0o600
    assert sorted(p.name for p in cache.directory.iterdir()) == [f"{HERE.digest()}.json"]  # no temporary left


def test_the_entry_is_per_module_token_and_key(cache):
    """A deadline measures one key on one token through one module: any other is a miss."""
    cache.store(HERE, 0.002)
    for other in (KeyPlace(MODULE, "another-serial", KEY), KeyPlace("/usr/lib/other/libpkcs11.so", HERE.serial, KEY),
                  OTHER_KEY):
        assert cache.load(other) is None, other
        assert cache.path(other) != cache.path(HERE)
    os.replace(cache.path(HERE), cache.path(KeyPlace(MODULE, "another-serial", KEY)))  # right place, wrong token inside
    assert cache.load(KeyPlace(MODULE, "another-serial", KEY)) is None


def test_the_floor_is_only_ever_raised(cache):
    cache.store(HERE, 0.003)
    assert cache.store(HERE, 0.001) == 0.003
    assert cache.load(HERE).deadline == 0.003
    assert cache.store(HERE, 0.004) == 0.004
    assert cache.load(HERE).deadline == 0.004


def test_a_replacing_store_lowers_only_an_expired_entry(cache):
    """A fresh calibration of an expired entry replaces it, lower too; one that is not expired stays the floor."""
    clock = [1000.0]
    cache.now = lambda: clock[0]
    cache.store(HERE, 0.003)
    assert cache.store(HERE, 0.001, replace=True) == 0.003  # another process calibrated within the day: kept
    clock[0] += MAX_AGE + 1
    assert cache.store(HERE, 0.001) == 0.003  # a calibration that is not a replacement never lowers
    clock[0] += MAX_AGE + 1
    assert cache.store(HERE, 0.001, replace=True) == 0.001
    entry = cache.load(HERE)
    assert (entry.deadline, entry.calibrated, entry.stale) == (0.001, clock[0], False)
    assert cache.store(HERE, 0.0005, replace=True) == 0.001  # now fresh: the floor again


def test_the_typical_probe_is_kept_beside_the_deadline(cache):
    """The calibration's median probe (tokencsp.batch sizes its imports in flight by it) is optional."""
    assert cache.store(HERE, 0.003, typical=0.001) == 0.003
    assert cache.load(HERE).typical == 0.001
    cache.mark_stale(HERE)
    assert cache.load(HERE).typical == 0.001  # kept by a write that brings none
    assert cache.store(OTHER_KEY, 0.003) == 0.003 and cache.load(OTHER_KEY).typical is None
    assert cache.store(OTHER_KEY, 0.003, typical=float("nan")) == 0.003 and cache.load(OTHER_KEY).typical is None
    process = Process(cache, 0.001, where=("/lib/p11.so", "serial-9"))
    process.run(0.001)
    assert process.rejection.typical == _about(0.001)
    again = Process(cache, 0.5, where=("/lib/p11.so", "serial-9"))
    again.run(0.001)
    assert again.rejection.probes == 0 and again.rejection.typical == _about(0.001)  # from the cached entry


def test_an_overrun_marks_the_entry_stale_and_a_calibration_clears_it(cache):
    clock = [1000.0]
    cache.now = lambda: clock[0]
    assert cache.mark_stale(HERE) is None  # nothing to mark: no file is made
    assert cache.load(HERE) is None
    cache.store(HERE, 0.003)
    clock[0] += 60
    assert cache.mark_stale(HERE) == 0.003
    entry = cache.load(HERE)
    assert (entry.deadline, entry.calibrated, entry.stale) == (0.003, 1000.0, True)  # the figure and its age kept
    assert not entry.trusted(clock[0])
    assert cache.store(HERE, 0.002) == 0.003  # a re-calibration: never lower, no longer stale
    assert cache.load(HERE).trusted(clock[0])


def test_an_entry_expires(cache):
    clock = [1000.0]
    cache.now = lambda: clock[0]
    cache.store(HERE, 0.003)
    assert cache.load(HERE).trusted(clock[0] + MAX_AGE)
    assert not cache.load(HERE).trusted(clock[0] + MAX_AGE + 1)
    assert not cache.load(HERE).trusted(clock[0] - 1)  # written "in the future": the clock moved back


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"format": 2}', b'{"format": 1, "key": "%s", "deadline": 0.002}',
    b'{"format": 2, %f, "deadline": "0.002", "calibrated": 1, "stale": false}',
    b'{"format": 2, %f, "deadline": true, "calibrated": 1, "stale": false}',
    b'{"format": 2, %f, "deadline": -1, "calibrated": 1, "stale": false}',
    b'{"format": 2, %f, "deadline": 1e9, "calibrated": 1, "stale": false}',
    b'{"format": 2, %f, "deadline": NaN, "calibrated": 1, "stale": false}',
    b'{"format": 2, %f, "deadline": 0.002, "stale": false}',
    b'{"format": 2, %f, "deadline": 0.002, "calibrated": 1, "stale": 0}',
    b'\xff\xfe',
], ids=["empty", "text", "list", "no key", "format 1", "string", "bool", "negative", "huge", "nan", "no time",
        "stale not bool", "binary"])
def test_a_corrupt_file_is_ignored_and_replaced(cache, content):
    cache.store(OTHER_KEY, 0.001)  # makes the directories
    fields = json.dumps(HERE.fields())[1:-1].encode()
    data = content.replace(b"%s", KEY.hex().encode()).replace(b"%f", fields)
    cache.path(HERE).write_bytes(data)
    os.chmod(cache.path(HERE), 0o600)
    assert cache.load(HERE) is None
    assert cache.store(HERE, 0.002) == 0.002
    assert cache.load(HERE).deadline == 0.002


def test_another_keys_record_is_not_taken(cache):
    cache.store(OTHER_KEY, 0.005)
    os.replace(cache.path(OTHER_KEY), cache.path(HERE))  # right place, wrong key inside
    assert cache.load(HERE) is None


def test_a_file_of_another_owner_is_ignored(cache):
    cache.store(HERE, 0.002)
    as_someone_else = CalibrationCache(cache.directory, owner=os.geteuid() + 1)
    assert as_someone_else.load(HERE) is None
    assert as_someone_else.store(HERE, 0.004) is None  # nor written through a directory not its own
    assert cache.load(HERE).deadline == 0.002


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_a_file_really_owned_by_another_user_is_ignored(cache):
    cache.store(HERE, 0.002)
    os.chown(cache.path(HERE), 65534, 65534)
    assert cache.load(HERE) is None


def test_a_file_others_can_write_is_ignored(cache):
    cache.store(HERE, 0.002)
    os.chmod(cache.path(HERE), 0o622)
    assert cache.load(HERE) is None


def test_a_symlink_is_not_followed(cache, tmp_path):
    cache.store(OTHER_KEY, 0.001)
    target = tmp_path / "planted.json"
    target.write_text(json.dumps({"format": 2, **HERE.fields(), "deadline": 0.5, "calibrated": 1, "stale": False}))
    os.symlink(target, cache.path(HERE))
    assert cache.load(HERE) is None


def test_a_directory_others_can_write_is_not_used(cache):
    cache.store(HERE, 0.002)
    os.chmod(cache.directory, 0o777)
    try:
        assert cache.load(HERE) is None
        assert cache.store(HERE, 0.003) is None
    finally:
        os.chmod(cache.directory, 0o700)


def test_unusable_deadlines_are_not_stored(cache):
    for value in (0.0, -1.0, float("inf"), float("nan"), MAX_DEADLINE * 2):
        assert cache.store(HERE, value) is None
    assert cache.load(HERE) is None


def test_an_unwritable_state_dir_leaves_the_cache_unused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = CalibrationCache(blocker / "tokencsp" / "deadlines")
    assert cache.store(HERE, 0.002) is None
    assert cache.load(HERE) is None


# -- ImplicitRejection's use of the cache: no timing, a fake clock (issue 9, finding 13) ----------


def _about(seconds: float):
    return pytest.approx(seconds, rel=1e-3)  # the fake clock ticks 0.1 µs per reading


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-7  # the busy-wait must see time pass
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Process:
    """One receiving process's view of a key: its own padder on a fake clock, probes of a chosen cost."""

    def __init__(self, cache: CalibrationCache, probe_cost: float, where=("/lib/p11.so", "serial-1"), **kw) -> None:
        from tokencsp.deadline import DeadlinePadder
        from tokencsp.implicit import ImplicitRejection

        self.clock = FakeClock()
        self.probe_cost = probe_cost
        self.rejection = ImplicitRejection(PUBLIC, padder=DeadlinePadder(clock=self.clock, sleep=self.clock.sleep),
                                           cache=cache, where=where, **kw)

    def probe(self, blob, oaep) -> None:
        self.clock.now += self.probe_cost

    def run(self, cost: float) -> None:
        def operation() -> None:
            self.clock.now += cost
        self.rejection.run(operation, self.probe)


PRIVATE = rsa.generate_private_key(65537, 2048)
PUBLIC = PRIVATE.public_key()


def _kind(blob, oaep) -> tuple[bool, bool]:
    """(oaep, valid) of a calibration probe's blob, found with the private key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if oaep:
        try:
            PRIVATE.decrypt(blob.encrypted_key, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
        except ValueError:
            return True, False
        return True, True
    numbers = PRIVATE.private_numbers()
    size = len(blob.encrypted_key)
    m = pow(int.from_bytes(blob.encrypted_key, "big"), numbers.d, numbers.public_numbers.n).to_bytes(size, "big")
    return False, m[:2] == b"\x00\x02" and m[-33] == 0 and 0 not in m[2:-33]  # 32-byte AES-256 key


def test_a_new_process_trusts_a_fresh_entry_and_probes_nothing(cache):
    first = Process(cache, 0.001)
    first.run(0.001)
    assert first.rejection.probes == 24
    deadline = cache.load(first.rejection.place).deadline
    assert deadline == _about(0.0015)
    second = Process(cache, 0.001)
    second.run(0.001)
    assert second.rejection.probes == 0 and second.rejection.padder.deadline == deadline


def test_another_tokens_serial_misses_the_cache(cache):
    Process(cache, 0.001).run(0.001)
    elsewhere = Process(cache, 0.002, where=("/lib/p11.so", "serial-2"))
    elsewhere.run(0.001)
    assert elsewhere.rejection.probes == 24
    assert elsewhere.rejection.padder.deadline == _about(0.003)
    assert cache.load(Process(cache, 0, ).rejection.place).deadline == _about(0.0015)  # serial-1's untouched


def test_an_overrun_raises_the_persisted_deadline_through_the_next_process(cache):
    """A CLI process makes one import: its overrun marks the entry stale, the next process re-calibrates
    from its own probes before its import, and the persisted deadline rises (it never falls)."""
    first = Process(cache, 0.001)
    first.run(0.001)
    place = first.rejection.place
    assert cache.load(place).deadline == _about(0.0015)
    first.run(0.004)  # the machine got slower: 0.004 s against a 0.0015 s deadline
    assert first.rejection.padder.overruns == 1
    assert cache.load(place).stale
    slower = Process(cache, 0.002)
    slower.run(0.002)
    assert slower.rejection.probes == 24  # the stale entry was not trusted
    assert cache.load(place).deadline == _about(0.003) and not cache.load(place).stale
    faster = Process(cache, 0.0005)  # a quiet moment never takes it back down
    faster.run(0.0005)
    faster.run(0.004)  # overruns 0.003: stale again
    assert Process(cache, 0.0005).rejection.calibrate(lambda blob, oaep: None) >= 0.003
    assert cache.load(place).deadline == _about(0.003)


def test_an_overrun_makes_a_long_lived_process_recalibrate_after_the_spacing(cache):
    process = Process(cache, 0.001, overrun_spacing=4)
    process.run(0.001)
    assert process.rejection.calibrations == 1
    process.probe_cost = 0.002
    process.run(0.004)  # overrun at import 2
    for _ in range(2):
        process.run(0.001)
    assert process.rejection.calibrations == 1  # imports 3 and 4: not yet
    process.run(0.001)  # import 5: 4 since the calibration
    assert process.rejection.calibrations == 2
    assert process.rejection.padder.deadline == _about(0.003)
    assert cache.load(process.rejection.place).deadline == _about(0.003)
    for _ in range(10):  # no overrun: no further calibration
        process.run(0.001)
    assert process.rejection.calibrations == 2


def test_an_expired_entry_is_replaced_by_a_fresh_calibration(cache):
    """A figure calibrated under a passing load (here 0.003 s) is replaced, after MAX_AGE, by a whole fresh
    calibration from own probes (0.0015 s): the persisted deadline can fall, but only this way."""
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    Process(cache, 0.002).run(0.001)
    clock[0] += MAX_AGE / 2
    within = Process(cache, 0.001)
    within.run(0.001)
    assert within.rejection.probes == 0 and within.rejection.padder.deadline == _about(0.003)  # trusted, not re-done
    clock[0] += MAX_AGE / 2 + 1
    later = Process(cache, 0.001)
    later.run(0.001)
    assert later.rejection.probes == 24
    assert later.rejection.padder.deadline == _about(0.0015)  # the fresh figure, not the old 0.003
    entry = cache.load(later.rejection.place)
    assert entry.deadline == _about(0.0015) and entry.trusted(clock[0])
    assert Process(cache, 0.0005).rejection.calibrate(lambda blob, oaep: None) == _about(0.0015)  # not expired: floor


def test_an_expired_and_stale_entry_is_replaced_too(cache):
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    first = Process(cache, 0.002)
    first.run(0.001)
    first.run(0.01)  # overruns: stale
    assert cache.load(first.rejection.place).stale
    clock[0] += MAX_AGE + 1
    later = Process(cache, 0.001)
    later.run(0.001)
    assert later.rejection.padder.deadline == _about(0.0015)
    assert not cache.load(later.rejection.place).stale


def test_a_long_lived_process_replaces_its_figure_once_it_is_a_day_old(cache):
    """The agent: its own calibration expires like a cached one; live imports in between move nothing."""
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    process = Process(cache, 0.002)
    process.run(0.001)
    process.probe_cost = 0.001  # the load has passed
    for _ in range(20):
        process.run(0.0001)
    assert process.rejection.calibrations == 1 and process.rejection.padder.deadline == _about(0.003)
    clock[0] += MAX_AGE + 1
    process.run(0.001)
    assert process.rejection.calibrations == 2
    assert process.rejection.padder.deadline == _about(0.0015)
    assert cache.load(process.rejection.place).deadline == _about(0.0015)
    process.run(0.001)
    assert process.rejection.calibrations == 2  # fresh again: no calibration per import


def test_a_figure_from_the_future_is_kept_not_replaced(cache):
    """The wall clock stepped back: a negative age is not "expired" -- the figure is never lowered at a
    moment the clock-setter picks; the entry is re-dated by a raising calibration instead."""
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    Process(cache, 0.002).run(0.001)  # 0.003 s, written at 10_000
    assert cache.store(HERE, 0.003) and cache.store(HERE, 0.001, replace=True) == 0.003
    clock[0] -= 3600  # set back an hour
    assert cache.store(HERE, 0.001, replace=True) == 0.003  # a replacing store keeps a future-dated entry
    later = Process(cache, 0.001)
    later.run(0.001)
    assert later.rejection.probes == 24  # not trusted: re-calibrated, but only raising
    assert later.rejection.padder.deadline == _about(0.003)
    entry = cache.load(later.rejection.place)
    assert entry.deadline == _about(0.003) and entry.calibrated == clock[0]  # re-dated to now


def test_a_long_lived_process_keeps_its_figure_when_the_clock_steps_back(cache):
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    process = Process(cache, 0.002)
    process.run(0.001)
    process.probe_cost = 0.001
    clock[0] -= MAX_AGE * 10  # stepped back far
    process.run(0.001)
    assert process.rejection.calibrations == 1 and process.rejection.padder.deadline == _about(0.003)
    clock[0] += MAX_AGE  # a day after the step (not a day after the calibration's own date): not yet
    process.run(0.001)
    assert process.rejection.calibrations == 1
    clock[0] += 1  # re-dated at the step: now a day and a second old -- but the file is future-dated too
    process.run(0.001)
    assert process.rejection.calibrations == 2 and process.rejection.padder.deadline == _about(0.003)  # kept
    assert cache.load(process.rejection.place).calibrated == clock[0]  # and the file re-dated to now
    clock[0] += MAX_AGE + 1  # a real day later the replacement happens as usual
    process.run(0.001)
    assert process.rejection.calibrations == 3 and process.rejection.padder.deadline == _about(0.0015)


def test_after_a_replacement_the_first_overrun_recalibrates(cache):
    """A replacement may lower the figure below the load of the moment: the first import that overruns
    it makes the next import re-calibrate (only raising), not after OVERRUN_SPACING imports."""
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    process = Process(cache, 0.002, overrun_spacing=256)
    process.run(0.001)
    process.probe_cost = 0.001
    clock[0] += MAX_AGE + 1
    process.run(0.001)  # replaced: 0.0015
    assert process.rejection.calibrations == 2 and process.rejection.padder.deadline == _about(0.0015)
    process.probe_cost = 0.002  # the load is back
    process.run(0.004)  # overruns
    assert process.rejection.calibrations == 2
    process.run(0.001)  # the very next import re-calibrates first
    assert process.rejection.calibrations == 3 and process.rejection.padder.deadline == _about(0.003)
    process.run(0.01)  # overruns a raising calibration: the ordinary spacing again
    for _ in range(5):
        process.run(0.001)
    assert process.rejection.calibrations == 3


def test_a_replacement_publishes_its_final_figure_once(cache):
    """Another process wrote a fresh, higher figure: the replacing calibration's lower figure is never
    published in the padder, even while ``store`` is still working out the floor."""
    clock = [10_000.0]
    cache.now = lambda: clock[0]
    process = Process(cache, 0.002)
    process.run(0.001)  # 0.003, own calibration at 10_000
    clock[0] += MAX_AGE + 1
    cache.store(process.rejection.place, 0.003)  # another process calibrated just now
    seen = []
    store = cache.store

    def watching_store(*args, **kw):
        seen.append(process.rejection.padder.deadline)
        return store(*args, **kw)
    cache.store = watching_store
    process.probe_cost = 0.001
    process.run(0.001)  # own figure expired: a replacing calibration (0.0015), floored by the fresh 0.003
    assert process.rejection.calibrations == 2 and seen == [_about(0.003)]
    assert process.rejection.padder.deadline == _about(0.003)


@pytest.mark.parametrize("per_kind", [1, 6])
def test_a_cold_first_probe_does_not_set_the_figure(cache, per_kind):
    """A process's first unwrap -- and first rejection -- of each padding is slow (caches, lazy set-up):
    the calibration's untimed probes take one of each of the four kinds, and only those.  With one
    timed probe per kind (p90 of 4 is the slowest) a single cold timed probe would set the figure."""
    process = Process(cache, 0.001, probes_per_kind=per_kind)
    calls = []

    def probe(blob, oaep) -> None:
        kind = _kind(blob, oaep)
        process.clock.now += 0.05 if kind not in calls else 0.001  # each kind's first call is cold
        calls.append(kind)
    process.probe = probe  # type: ignore[method-assign]
    process.run(0.001)
    kinds = [(False, True), (False, False), (True, True), (True, False)]
    assert sorted(calls[:4]) == sorted(kinds)  # the warm-ups: one of each kind, before any timed probe
    assert all(calls[4:].count(kind) == per_kind for kind in kinds)  # the timed probes: per_kind each
    assert process.rejection.warmups == 4 and process.rejection.probes == 4 * per_kind
    assert process.rejection.padder.deadline == _about(0.0015)


def test_live_imports_alone_never_move_the_persisted_deadline(cache):
    process = Process(cache, 0.001)
    for cost in (0.001, 0.0001, 0.0001, 0.0014) * 50:  # fast and slow, none overrunning
        process.run(cost)
    assert process.rejection.calibrations == 1
    assert cache.load(process.rejection.place).deadline == _about(0.0015)


# -- the rejection secret: one substitute per bad blob in every process (issue 9, finding 10) -----


def test_the_rejection_secret_is_made_once_and_kept_private(cache):
    first = cache.secret(KEY)
    assert first is not None and len(first) == 32
    assert cache.secret(KEY) == first  # read back, not made again
    assert CalibrationCache(cache.directory).secret(KEY) == first  # another process's cache object
    assert cache.secret(OTHER) not in (None, first)
    assert stat.S_IMODE(os.stat(cache.secret_path(KEY)).st_mode) == 0o600
    assert cache.load(HERE) is None  # a secret is not a deadline


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_secret_others_can_read_or_write_is_replaced(cache, mode):
    first = cache.secret(KEY)
    os.chmod(cache.secret_path(KEY), mode)
    second = cache.secret(KEY)
    assert second is not None and second != first
    assert stat.S_IMODE(os.stat(cache.secret_path(KEY)).st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"{}", b'{"format": 1, "key": "%s", "secret": "00"}',
                                     b'{"format": 1, "key": "%s", "secret": 7}', b'{"format": 1, "key": "%s"}'],
                         ids=["empty", "no key", "short", "number", "missing"])
def test_a_corrupt_secret_is_replaced(cache, content):
    cache.secret(KEY)
    cache.secret_path(KEY).write_bytes(content.replace(b"%s", KEY.hex().encode()))
    value = cache.secret(KEY)
    assert value is not None and len(value) == 32
    assert cache.secret(KEY) == value


def test_no_secret_from_an_unusable_directory(cache, tmp_path):
    cache.secret(KEY)
    os.chmod(cache.directory, 0o777)
    try:
        assert cache.secret(KEY) is None
    finally:
        os.chmod(cache.directory, 0o700)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert CalibrationCache(blocker / "tokencsp" / "deadlines").secret(KEY) is None
