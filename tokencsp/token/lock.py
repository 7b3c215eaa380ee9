"""The cross-process lock around C_Initialize, token enumeration and C_Login.

SoftHSM rewrites token.object on every login and reads it, without its lock,
when a process initialises the module: four processes opening a token at once
saw "no such token" and CKR_GENERAL_ERROR (measured).  An flock per module and
SoftHSM configuration keeps tokencsp processes from tearing each other's reads;
the critical section is a few milliseconds.

The lock file lives in a directory only this user can enter -- never the
shared /tmp, where another local user could pre-create the file and hold it
(issue 9, finding 6): ``$XDG_RUNTIME_DIR/tokencsp`` when the runtime dir is
ours, else ``$XDG_STATE_HOME/tokencsp`` (``~/.local/state/tokencsp``).  The
directory must be ours and 0700, the file is opened with O_NOFOLLOW and must
be ours, and waiting for it times out (``TOKENCSP_LOCK_TIMEOUT`` seconds,
default 30) with a :class:`~tokencsp.errors.TokenLockError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..config import env_number
from ..errors import TokenLockError

__all__ = ["DEFAULT_TIMEOUT", "cross_process_lock", "lock_directory", "lock_path"]

DEFAULT_TIMEOUT = 30.0
_POLL = 0.01

# Re-entrant within the process (flock on a second descriptor would wait for
# ourselves); the RLock also serialises this process's threads.
_guard = threading.RLock()
_held: set[str] = set()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the guard (or the flock) at fork
    # time; the child has neither that thread nor, once it closes the
    # inherited descriptor, the lock.
    global _guard
    _guard = threading.RLock()
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _private(directory: Path, create: bool) -> Path | None:
    """``directory`` if it is (or can be made) a 0700 directory owned by us; None if it does not exist."""
    if create:
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700, parents=False)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise TokenLockError(f"lock directory {directory} is not a directory (a symlink?): refusing to use it")
    if info.st_uid != os.geteuid():
        raise TokenLockError(f"lock directory {directory} belongs to uid {info.st_uid}, not to us: refusing to use it")
    if info.st_mode & 0o077:
        raise TokenLockError(f"lock directory {directory} is open to other users "
                             f"(mode {stat.S_IMODE(info.st_mode):04o}): refusing to use it")
    return directory


def lock_directory() -> Path:
    """The private directory for lock files (created 0700 on first use)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            info = os.stat(runtime)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            found = _private(Path(runtime) / "tokencsp", create=True)
            if found is not None:
                return found
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenLockError(f"cannot create a directory for the token lock under {base}: {exc.strerror}") from None
    found = _private(base / "tokencsp", create=True)
    if found is None:  # removed between mkdir and lstat
        raise TokenLockError(f"cannot create the token lock directory {base / 'tokencsp'}")
    return found


def _timeout() -> float:
    return max(env_number("TOKENCSP_LOCK_TIMEOUT", float, DEFAULT_TIMEOUT, what="a number of seconds",
                          error=TokenLockError), 0.0)


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenLockError(f"token lock {path} is a symlink: refusing to follow it") from None
        raise TokenLockError(f"cannot open the token lock {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise TokenLockError(f"token lock {path} is not a file of ours: refusing to use it")
    return fd


def lock_path(module: str) -> Path:
    """The lock file for ``module`` (a real path) and the current SOFTHSM2_CONF; makes its directory."""
    key = hashlib.sha256(f"{module}\0{os.environ.get('SOFTHSM2_CONF', '')}".encode()).hexdigest()[:16]
    return lock_directory() / f"open-{key}.lock"


@contextlib.contextmanager
def cross_process_lock(module: str) -> Iterator[None]:
    """Hold the lock for ``module`` (a real path) and the current SOFTHSM2_CONF."""
    with _guard:
        path = lock_path(module)
        name = str(path)
        if name in _held:
            yield
            return
        fd = _open(path)
        try:
            limit = _timeout()
            deadline = time.monotonic() + limit
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TokenLockError(f"timed out after {limit:g} s waiting for the token lock {path} "
                                             "(another process holds it)") from None
                    time.sleep(_POLL)
            _held.add(name)
            try:
                yield
            finally:
                _held.discard(name)
        finally:
            os.close(fd)  # releases the lock
