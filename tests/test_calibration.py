"""The per-key deadline floor in the state directory: private, atomic, only ever raised, distrustful."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tokencsp.calibration import MAX_DEADLINE, CalibrationCache

KEY = bytes(range(32))
OTHER = bytes(32)


@pytest.fixture
def cache(tmp_path):
    return CalibrationCache(tmp_path / "state" / "tokencsp" / "deadlines")


def test_store_then_load_with_private_modes(cache):
    assert cache.load(KEY) is None
    assert cache.store(KEY, 0.002) == 0.002
    assert cache.load(KEY) == 0.002
    assert cache.load(OTHER) is None
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.directory.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.path(KEY)).st_mode) == 0o600
    assert sorted(p.name for p in cache.directory.iterdir()) == [f"{KEY.hex()}.json"]  # no temporary left


def test_the_floor_is_only_ever_raised(cache):
    cache.store(KEY, 0.003)
    assert cache.store(KEY, 0.001) == 0.003
    assert cache.load(KEY) == 0.003
    assert cache.store(KEY, 0.004) == 0.004
    assert cache.load(KEY) == 0.004


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"format": 1}', b'{"format": 2, "key": "%s", "deadline": 0.002}',
    b'{"format": 1, "key": "%s", "deadline": "0.002"}', b'{"format": 1, "key": "%s", "deadline": true}',
    b'{"format": 1, "key": "%s", "deadline": -1}', b'{"format": 1, "key": "%s", "deadline": 1e9}',
    b'{"format": 1, "key": "%s", "deadline": NaN}', b'\xff\xfe',
], ids=["empty", "text", "list", "no key", "format 2", "string", "bool", "negative", "huge", "nan", "binary"])
def test_a_corrupt_file_is_ignored_and_replaced(cache, content):
    cache.store(OTHER, 0.001)  # makes the directories
    data = content.replace(b"%s", KEY.hex().encode()) if b"%s" in content else content
    cache.path(KEY).write_bytes(data)
    os.chmod(cache.path(KEY), 0o600)
    assert cache.load(KEY) is None
    assert cache.store(KEY, 0.002) == 0.002
    assert cache.load(KEY) == 0.002


def test_another_keys_record_is_not_taken(cache):
    cache.store(OTHER, 0.005)
    os.replace(cache.path(OTHER), cache.path(KEY))  # right place, wrong key inside
    assert cache.load(KEY) is None


def test_a_file_of_another_owner_is_ignored(cache):
    cache.store(KEY, 0.002)
    as_someone_else = CalibrationCache(cache.directory, owner=os.geteuid() + 1)
    assert as_someone_else.load(KEY) is None
    assert as_someone_else.store(KEY, 0.004) is None  # nor written through a directory not its own
    assert cache.load(KEY) == 0.002


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_a_file_really_owned_by_another_user_is_ignored(cache):
    cache.store(KEY, 0.002)
    os.chown(cache.path(KEY), 65534, 65534)
    assert cache.load(KEY) is None


def test_a_file_others_can_write_is_ignored(cache):
    cache.store(KEY, 0.002)
    os.chmod(cache.path(KEY), 0o622)
    assert cache.load(KEY) is None


def test_a_symlink_is_not_followed(cache, tmp_path):
    cache.store(OTHER, 0.001)
    target = tmp_path / "planted.json"
    target.write_text(json.dumps({"format": 1, "key": KEY.hex(), "deadline": 0.5}))
    os.symlink(target, cache.path(KEY))
    assert cache.load(KEY) is None


def test_a_directory_others_can_write_is_not_used(cache):
    cache.store(KEY, 0.002)
    os.chmod(cache.directory, 0o777)
    try:
        assert cache.load(KEY) is None
        assert cache.store(KEY, 0.003) is None
    finally:
        os.chmod(cache.directory, 0o700)


def test_unusable_deadlines_are_not_stored(cache):
    for value in (0.0, -1.0, float("inf"), float("nan"), MAX_DEADLINE * 2):
        assert cache.store(KEY, value) is None
    assert cache.load(KEY) is None


def test_an_unwritable_state_dir_leaves_the_cache_unused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = CalibrationCache(blocker / "tokencsp" / "deadlines")
    assert cache.store(KEY, 0.002) is None
    assert cache.load(KEY) is None


# -- the rejection secret: one substitute per bad blob in every process (issue 9, finding 10) -----


def test_the_rejection_secret_is_made_once_and_kept_private(cache):
    first = cache.secret(KEY)
    assert first is not None and len(first) == 32
    assert cache.secret(KEY) == first  # read back, not made again
    assert CalibrationCache(cache.directory).secret(KEY) == first  # another process's cache object
    assert cache.secret(OTHER) not in (None, first)
    assert stat.S_IMODE(os.stat(cache.secret_path(KEY)).st_mode) == 0o600
    assert cache.load(KEY) is None  # a secret is not a deadline


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
