"""Output that never leaves a partial file behind.

A file output is written to a temporary file in the target's directory and
renamed over the target only when the writer says the content is complete;
on any failure the temporary file is removed and the target is untouched.
A target that is not a regular file (a device such as /dev/null, a FIFO) is
written to in place by the callers that ask for it (the CLI's ``-o``), as
stdout is: it cannot hold a partial file, and a rename would replace it.
Where the system allows it (Linux O_TMPFILE) the temporary file has no name
until the commit, so even a SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .errors import InputError, OutputError

__all__ = ["atomic_output", "open_input", "read_input", "writes_in_place"]


def writes_in_place(path: str | None) -> bool:
    """Whether ``path`` names something that is not a regular file: a device (``/dev/null``), a FIFO, a socket.

    Such a target is written to directly, as stdout is (``atomic_output(..., devices_in_place=True)``):
    renaming a temporary file over it would replace the device itself -- as root, ``-o /dev/null``
    once turned the machine's /dev/null into a regular file.
    """
    if path in (None, "-"):
        return False
    try:
        info = os.stat(path)  # follows a symlink: /dev/stdout, /dev/fd/N
    except OSError:
        return False
    return not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode)


@contextlib.contextmanager
def atomic_output(path: str | None, mode: int = 0o600, *, replace: bool = True,
                  devices_in_place: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary writer for ``path`` (stdout for None or "-"); commit on clean exit only.

    Files are created 0600: plaintext and key material should not be
    world-readable just because the umask allows it.  With ``replace=False``
    an existing ``path`` is never overwritten: the commit is a link(), which
    fails atomically when the name exists (OutputError; nothing is written).
    """
    if path in (None, "-"):
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    in_place = writes_in_place(path)
    if devices_in_place and replace and in_place:
        try:
            stream = open(path, "wb")  # noqa: SIM115 -- closed below
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        with stream:
            yield stream
            stream.flush()
        return
    if in_place:
        # Never rename over a device or FIFO (as root that replaces /dev/null for every process).
        raise OutputError(f"{path} is not a regular file; not overwritten")
    directory = os.path.dirname(os.path.abspath(path))
    tmp: str | None = None
    try:
        fd = _open_unnamed(directory)
        if fd is None:
            fd, tmp = tempfile.mkstemp(prefix=".tokencsp-", suffix=".part", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write to {directory}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            if tmp is None:
                tmp = _name_unnamed(handle.fileno(), directory)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            _unlink(tmp)
    except FileExistsError:
        _unlink(tmp)
        raise OutputError(f"{path} exists; not overwritten") from None
    except OSError as exc:
        _unlink(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _open_unnamed(directory: str) -> int | None:
    """An O_TMPFILE file in ``directory``, or None where the system or filesystem has none."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):  # EISDIR: kernel before 3.11
            return None
        raise


def _name_unnamed(fd: int, directory: str) -> str:
    """Give the O_TMPFILE file a temporary name next to the target (linkat through /proc)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            name = f".tokencsp-{os.urandom(6).hex()}.part"
            try:
                # A dir fd makes Python call linkat(..., AT_SYMLINK_FOLLOW); link() would not follow.
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                continue
            return os.path.join(directory, name)
    finally:
        os.close(dir_fd)


def _unlink(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[BinaryIO]:
    """A binary reader for ``path``, stdin for None or "-"."""
    if path in (None, "-"):
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- outside the with: only open()'s failure is an InputError
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
