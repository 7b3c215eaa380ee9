"""Output that never leaves a partial file behind.

A file output is written to a temporary file in the target's directory and
renamed over the target only when the writer says the content is complete;
on any failure the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .errors import InputError, OutputError

__all__ = ["atomic_output", "open_input", "read_input"]


@contextlib.contextmanager
def atomic_output(path: str | None, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary writer for ``path`` (stdout for None or "-"); commit on clean exit only.

    Files are created 0600: plaintext and key material should not be
    world-readable just because the umask allows it.
    """
    if path in (None, "-"):
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tokencsp-", suffix=".part", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write to {directory}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[BinaryIO]:
    """A binary reader for ``path``, stdin for None or "-"."""
    if path in (None, "-"):
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        yield handle


def read_input(path: str | None) -> bytes:
    with open_input(path) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
