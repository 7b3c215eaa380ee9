"""A per-key floor for the implicit-rejection deadline, kept in the state directory.

Without it every process calibrates afresh: ``tokencsp open`` spent 16 probe
unwraps before anything was authenticated (issue 9, finding 13), and a
process calibrated on a quiet machine could choose a lower deadline than the
last one.  The file holds the highest deadline any process of this user has
calibrated for the key; processes start from it and only ever raise it.

Layout: ``$XDG_STATE_HOME/tokencsp/deadlines/<key fingerprint hex>.json``
(directories 0700, file 0600), written to a temporary file and renamed, under
an flock on the directory, re-reading the value first so that two processes
never lower each other's figure.  A file that is corrupt, not a regular
file, not owned by this user or writable by others is ignored, as is a
directory that is not private: the caller then calibrates from its own
probes, which is always safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .replay.paths import default_state_dir

__all__ = ["MAX_DEADLINE", "CalibrationCache"]

# A deadline above this is not a measurement but a corrupt or hostile file:
# honouring it would make every import of the key that slow.
MAX_DEADLINE = 1.0
_FORMAT = 1


class CalibrationCache:
    """Highest calibrated deadline per key fingerprint, one small JSON file each."""

    def __init__(self, directory: str | os.PathLike[str], owner: int | None = None) -> None:
        self.directory = Path(directory)
        self._owner = os.geteuid() if owner is None else owner

    @classmethod
    def default(cls) -> CalibrationCache:
        return cls(default_state_dir() / "deadlines")

    def path(self, fingerprint: bytes) -> Path:
        return self.directory / f"{fingerprint.hex()}.json"

    def load(self, fingerprint: bytes) -> float | None:
        """The cached deadline for this key, or None when there is no usable file."""
        if not self._private_dir(create=False):
            return None
        try:
            fd = os.open(self.path(fingerprint), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != self._owner or info.st_mode & 0o022 \
                    or info.st_size > 4096:
                return None
            data = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        return _parse(data, fingerprint)

    def store(self, fingerprint: bytes, deadline: float) -> float | None:
        """Record ``deadline`` unless the file already holds a higher one; returns what the file now holds.

        None when the cache is unusable (nothing is written then).
        """
        if not (math.isfinite(deadline) and 0.0 < deadline <= MAX_DEADLINE):
            return None
        if not self._private_dir(create=True):
            return None
        try:
            with self._locked():
                current = self.load(fingerprint)
                if current is not None and current >= deadline:
                    return current
                payload = json.dumps({"format": _FORMAT, "key": fingerprint.hex(), "deadline": deadline})
                fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".deadline-", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
                        handle.write(payload)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.replace(temporary, self.path(fingerprint))
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary)
                    raise
                return deadline
        except OSError:
            return None

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


def _parse(data: bytes, fingerprint: bytes) -> float | None:
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != _FORMAT or record.get("key") != fingerprint.hex():
        return None
    deadline = record.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        return None
    if not (math.isfinite(deadline) and 0.0 < deadline <= MAX_DEADLINE):
        return None
    return float(deadline)
