"""A progress line on stderr for large streams, only when stderr is a terminal."""

from __future__ import annotations

import os
import stat
import time
from typing import BinaryIO

from ._common import Console

__all__ = ["PROGRESS_MIN_BYTES", "ProgressReader"]

PROGRESS_MIN_BYTES = 16 << 20
_INTERVAL = 0.2


class ProgressReader:
    """Wraps a binary reader; shows "label: N MiB (P%)" at most five times a second."""

    def __init__(self, source: BinaryIO, label: str, total: int | None, console: Console) -> None:
        self._source = source
        self._label = label
        self._total = total
        self._done = 0
        self._shown = 0.0
        self._console = console

    @classmethod
    def wrap(cls, source: BinaryIO, label: str, console: Console, quiet: bool = False) -> BinaryIO | ProgressReader:
        total = _size(source)
        wanted = not quiet and console.stderr_is_terminal() and (total is None or total >= PROGRESS_MIN_BYTES)
        return cls(source, label, total, console) if wanted else source

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._done += len(data)
        now = time.monotonic()
        if now - self._shown >= _INTERVAL or not data:
            self._shown = now
            share = f" ({self._done * 100 // self._total}%)" if self._total else ""
            self._console.progress(f"{self._label}: {self._done >> 20} MiB{share}", done=not data)
        return data


def _size(source: BinaryIO) -> int | None:
    try:
        info = os.fstat(source.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None
