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

Layout: ``$XDG_STATE_HOME/tokencsp/deadlines/<key fingerprint hex>.json``
and ``<key fingerprint hex>.secret`` (directories 0700, files 0600),
written to a temporary file and renamed, under an flock on the directory,
re-reading first so that two processes never lower each other's figure or
make two secrets.  A file that is corrupt, not a regular file, not owned by
this user or writable by others (a secret: readable by others) is ignored,
as is a directory that is not private: the caller then calibrates from its
own probes, or holds a secret of its own, which is always safe.
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

__all__ = ["MAX_DEADLINE", "SECRET_BYTES", "CalibrationCache"]

# A deadline above this is not a measurement but a corrupt or hostile file:
# honouring it would make every import of the key that slow.
MAX_DEADLINE = 1.0
_FORMAT = 1
SECRET_BYTES = 32


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
        record = self._read(self.path(fingerprint), fingerprint, 0o022)
        return None if record is None else _deadline(record)

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
                self._write(self.path(fingerprint), {"format": _FORMAT, "key": fingerprint.hex(), "deadline": deadline})
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
        try:
            with self._locked():
                record = self._read(self.secret_path(fingerprint), fingerprint, 0o077)
                value = None if record is None else _secret(record)
                if value is None:
                    value = os.urandom(SECRET_BYTES)
                    self._write(self.secret_path(fingerprint),
                                {"format": _FORMAT, "key": fingerprint.hex(), "secret": value.hex()})
                return value
        except OSError:
            return None

    def _read(self, path: Path, fingerprint: bytes, forbidden_mode: int) -> dict[str, object] | None:
        if not self._private_dir(create=False):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != self._owner or info.st_mode & forbidden_mode \
                    or info.st_size > 4096:
                return None
            data = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or record.get("format") != _FORMAT or record.get("key") != fingerprint.hex():
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


def _deadline(record: dict[str, object]) -> float | None:
    deadline = record.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        return None
    if not (math.isfinite(deadline) and 0.0 < deadline <= MAX_DEADLINE):
        return None
    return float(deadline)


def _secret(record: dict[str, object]) -> bytes | None:
    value = record.get("secret")
    if not isinstance(value, str) or len(value) != 2 * SECRET_BYTES:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
