"""Per-sender serial numbers for signed messages (FORMAT.md rule S4), persisted in a file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path

from .._wire import U64_MAX
from ..errors import ReplayCacheError
from .paths import default_state_dir, make_parent

__all__ = ["SerialCounter"]


class SerialCounter:
    """Monotonic per-sender serial numbers persisted in a file; next() never repeats across processes.

    ``next()`` returns ``max(last + 1, microseconds since the epoch)``.  The time
    floor means a lost, wiped or restored-from-backup counter file does not
    restart at 1 (or at an old value): receivers with strict serials would refuse
    every such message as a replay.  It stays well inside 64 bits for millennia.
    Serializing is done with flock on ``<path>.lock``; the value file is replaced
    atomically (fsync'ed temp file + rename + directory fsync), so a crash leaves
    the old or the new value, never a torn one.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else make_parent(default_state_dir() / "serials" / "default")

    @classmethod
    def for_key(cls, key_id: bytes) -> SerialCounter:
        return cls(make_parent(default_state_dir() / "serials" / key_id.hex()))

    def next(self) -> int:
        try:
            lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ReplayCacheError(f"serial counter {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            last = self._read()
            value = max(last + 1, time.time_ns() // 1000)
            if value > U64_MAX:
                raise ReplayCacheError(f"serial counter {self.path} is exhausted")
            self._write(value)
            return value
        except OSError as exc:
            raise ReplayCacheError(f"serial counter {self.path}: {exc.strerror}") from None
        finally:
            os.close(lock_fd)  # releases the flock

    def _read(self) -> int:
        try:
            text = self.path.read_text("ascii").strip()
        except FileNotFoundError:
            return 0
        except (UnicodeDecodeError, ValueError):
            text = "?"
        if not text.isdigit():
            # Guessing would risk repeating a serial; let a human look.
            raise ReplayCacheError(f"serial counter {self.path} is corrupt")
        return int(text)

    def _write(self, value: int) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{value}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
