"""What implicit rejection keeps per key in the state directory: the deadline floor and the secret.

Without a kept deadline every process calibrates afresh: ``tokencsp open``
spent 16 probe unwraps before anything was authenticated (issue 9, finding
13), and a process calibrated on a quiet machine could choose a lower
deadline than the last one.  The file holds the highest deadline any process
of this user has calibrated for the key; processes start from it and only
ever raise it.

The rejection secret (from which a bad blob's substitute key is derived) is
kept too, so that one bad blob stands for one substitute key in every
process, as a good blob stands for its one key: with a secret per process,
whether a CryptoAPI payload decrypts under a bad blob's substitute would
change from run to run, and a repeated query would tell a bad blob from a
good one.

Keying: a deadline measures one key on one token through one module, so an
entry is per :class:`KeyPlace` (module real path, token serial, key
fingerprint); the same key on another token, or behind another module, is a
miss and is calibrated there.  When a process re-calibrates (its own probes
only): when an entry is older than :data:`MAX_AGE` -- that calibration's
figure then *replaces* the entry, lower or higher (``store(..., replace=True)``),
so that a calibration made under a passing load does not slow the key for
good -- or was marked *stale* -- an import overran the deadline since the last
calibration (``mark_stale``); that re-calibration only raises, so that
one-import CLI processes, which never reach a periodic re-calibration, still
follow a machine that got slower.  Nothing but a whole fresh calibration of an
expired entry ever lowers a figure: live traffic never writes one.

Layout: ``$XDG_STATE_HOME/tokencsp/deadlines/<sha256 of module, serial,
key>.json`` (``{"format": 2, "module", "serial", "key", "deadline",
"calibrated", "stale"}`` and, optionally, ``"typical"``: that calibration's
median probe, which sizes a batch's imports in flight and nothing else) and ``<key fingerprint hex>.secret``
(directories 0700, files 0600), written to a temporary file and renamed,
under an flock on the directory, re-reading first so that two processes
never lower each other's figure or make two secrets.  A file that is
corrupt, not a regular file, not owned by this user or writable by others
(a secret: readable by others) is ignored, as is a directory that is not
private: the caller then calibrates from its own probes, or holds a secret
of its own, which is always safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .replay.paths import default_state_dir

__all__ = ["MAX_AGE", "MAX_DEADLINE", "SECRET_BYTES", "CachedDeadline", "CalibrationCache", "KeyPlace"]

# A deadline above this is not a measurement but a corrupt or hostile file:
# honouring it would make every import of the key that slow.
MAX_DEADLINE = 1.0
#: A cached calibration older than this is re-done (from the process's own probes) before it is trusted.
MAX_AGE = 24 * 3600.0
SECRET_BYTES = 32
_DEADLINE_FORMAT = 2  # 1 was keyed by the fingerprint alone: such files are ignored (and left alone)
_SECRET_FORMAT = 1


@dataclass(frozen=True)
class KeyPlace:
    """Where a key's imports run: the PKCS#11 module (real path), the token's serial, the key's fingerprint.

    A deadline measures one key on one token through one module: the same key imported onto a
    faster token, or reached through another module, is another calibration.
    """

    module: str
    serial: str
    fingerprint: bytes

    def digest(self) -> str:
        named = json.dumps([self.module, self.serial, self.fingerprint.hex()]).encode()
        return hashlib.sha256(named).hexdigest()

    def fields(self) -> dict[str, object]:
        return {"module": self.module, "serial": self.serial, "key": self.fingerprint.hex()}


@dataclass(frozen=True)
class CachedDeadline:
    deadline: float
    calibrated: float  # time.time() of the calibration that last wrote it
    stale: bool  # an import overran it since: the next process re-calibrates first
    typical: float | None = None  # that calibration's median probe: what one import costs the token, unloaded

    def trusted(self, now: float, max_age: float = MAX_AGE) -> bool:
        """Whether a process may start from it without probing: not stale, not older than ``max_age``."""
        return not self.stale and 0.0 <= now - self.calibrated <= max_age

    def expired(self, now: float, max_age: float = MAX_AGE) -> bool:
        """Older than ``max_age``: a fresh calibration may replace it.  One dated in the future (the clock
        was set back) is not expired -- not trusted either: a raising calibration re-dates it to now."""
        return now - self.calibrated > max_age


class CalibrationCache:
    """Per (module, token, key): the highest deadline calibrated since the figure last expired; per key: the secret.

    One small JSON file each; ``now`` is the wall clock the ages are judged by.
    """

    def __init__(self, directory: str | os.PathLike[str], owner: int | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._owner = os.geteuid() if owner is None else owner
        self.now = now

    @classmethod
    def default(cls) -> CalibrationCache:
        return cls(default_state_dir() / "deadlines")

    def path(self, place: KeyPlace) -> Path:
        return self.directory / f"{place.digest()}.json"

    def load(self, place: KeyPlace) -> CachedDeadline | None:
        """The cached deadline for this key on this token, or None when there is no usable file."""
        record = self._read(self.path(place), {"format": _DEADLINE_FORMAT, **place.fields()}, 0o022)
        return None if record is None else _entry(record)

    def store(self, place: KeyPlace, deadline: float, *, replace: bool = False,
              typical: float | None = None) -> float | None:
        """Record a calibration: the higher of ``deadline`` and the file's, now, not stale; returns it.

        ``replace=True`` (a fresh calibration of an entry that had expired) records ``deadline``
        itself -- unless another process has meanwhile written a calibration that is not expired
        (its figure is as fresh as this one: the higher of the two is kept).  None when the
        cache is unusable (nothing is written then).  ``typical`` (the calibration's median probe) is
        kept beside it, for callers that size their concurrency (tokencsp.batch); it never sets a deadline.
        """
        if not (math.isfinite(deadline) and 0.0 < deadline <= MAX_DEADLINE):
            return None
        if typical is not None and not (math.isfinite(typical) and 0.0 < typical <= MAX_DEADLINE):
            typical = None

        def value(current: CachedDeadline | None) -> float:
            if current is None:
                return deadline
            if replace and current.expired(self.now()):
                return deadline
            return max(deadline, current.deadline)
        return self._update(place, value, False, typical)

    def mark_stale(self, place: KeyPlace) -> float | None:
        """An import overran the deadline: keep the figure, but make the next process re-calibrate first."""
        return self._update(place, lambda current: current.deadline if current else None, True)

    def _update(self, place: KeyPlace, value: Callable[[CachedDeadline | None], float | None],
                stale: bool, typical: float | None = None) -> float | None:
        if not self._private_dir(create=True):
            return None
        try:
            with self._locked():
                current = self.load(place)
                deadline = value(current)
                if deadline is None:
                    return None
                calibrated = current.calibrated if stale and current is not None else self.now()
                if typical is None and current is not None:
                    typical = current.typical
                record = {"format": _DEADLINE_FORMAT, **place.fields(), "deadline": deadline,
                          "calibrated": calibrated, "stale": stale}
                if typical is not None:
                    record["typical"] = typical
                self._write(self.path(place), record)
                return deadline
        except OSError:
            return None

    def secret_path(self, fingerprint: bytes) -> Path:
        return self.directory / f"{fingerprint.hex()}.secret"

    def secret(self, fingerprint: bytes) -> bytes | None:
        """This key's implicit-rejection secret: read, or made (32 random bytes) and kept; None when unusable.

        Kept so that one bad blob stands for one substitute key in every process, as a good
        blob stands for one key: with a secret per process, a CBC payload that happened to
        decrypt with valid padding under a bad blob's substitute would fail in the next
        process, and a replayed query would tell a bad blob from a good one.
        """
        if not self._private_dir(create=True):
            return None
        expected = {"format": _SECRET_FORMAT, "key": fingerprint.hex()}
        try:
            with self._locked():
                record = self._read(self.secret_path(fingerprint), expected, 0o077)
                value = None if record is None else _secret(record)
                if value is None:
                    value = os.urandom(SECRET_BYTES)
                    self._write(self.secret_path(fingerprint), {**expected, "secret": value.hex()})
                return value
        except OSError:
            return None

    def _read(self, path: Path, expected: dict[str, object], forbidden_mode: int) -> dict[str, object] | None:
        if not self._private_dir(create=False):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != self._owner or info.st_mode & forbidden_mode \
                    or info.st_size > 8192:
                return None
            data = os.read(fd, 8192)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or any(record.get(name) != want for name, want in expected.items()):
            return None
        return record

    def _write(self, path: Path, record: dict[str, object]) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".deadline-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
                handle.write(json.dumps(record))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _private_dir(self, *, create: bool) -> bool:
        """True when the directory (and its parent, the state dir) is ours and not writable by others."""
        for top, directory in ((True, self.directory.parent), (False, self.directory)):
            if create:
                try:
                    directory.mkdir(mode=0o700, parents=top, exist_ok=True)
                except OSError:
                    return False
            try:
                info = os.lstat(directory)
            except OSError:
                return False
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != self._owner or info.st_mode & 0o022:
                return False
        return True


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _entry(record: dict[str, object]) -> CachedDeadline | None:
    deadline, calibrated, stale = _number(record.get("deadline")), _number(record.get("calibrated")), \
        record.get("stale")
    if deadline is None or not 0.0 < deadline <= MAX_DEADLINE or calibrated is None or not isinstance(stale, bool):
        return None
    typical = _number(record.get("typical"))  # optional (files written before it lack it)
    if typical is not None and not 0.0 < typical <= MAX_DEADLINE:
        typical = None
    return CachedDeadline(deadline, calibrated, stale, typical)


def _secret(record: dict[str, object]) -> bytes | None:
    value = record.get("secret")
    if not isinstance(value, str) or len(value) != 2 * SECRET_BYTES:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
