"""A progress line on stderr for large streams, only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import BinaryIO

__all__ = ["ProgressReader", "PROGRESS_MIN_BYTES"]

PROGRESS_MIN_BYTES = 16 << 20
_INTERVAL = 0.2


class ProgressReader:
    """Wraps a binary reader; prints "label: N MiB (P%)" at most five times a second."""

    def __init__(self, source: BinaryIO, label: str, total: int | None, enabled: bool) -> None:
        self._source = source
        self._label = label
        self._total = total
        self._done = 0
        self._shown = 0.0
        self._enabled = enabled

    @classmethod
    def wrap(cls, source: BinaryIO, label: str, quiet: bool = False) -> BinaryIO | ProgressReader:
        total = _size(source)
        wanted = not quiet and sys.stderr.isatty() and (total is None or total >= PROGRESS_MIN_BYTES)
        return cls(source, label, total, wanted) if wanted else source

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._done += len(data)
        now = time.monotonic()
        if self._enabled and (now - self._shown >= _INTERVAL or not data):
            self._shown = now
            share = f" ({self._done * 100 // self._total}%)" if self._total else ""
            end = "\n" if not data else ""
            print(f"\r{self._label}: {self._done >> 20} MiB{share}", end=end, file=sys.stderr, flush=True)
        return data


def _size(source: BinaryIO) -> int | None:
    try:
        import os

        info = os.fstat(source.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    import stat

    return info.st_size if stat.S_ISREG(info.st_mode) else None
