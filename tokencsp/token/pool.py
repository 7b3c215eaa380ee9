"""A bounded pool of PKCS#11 sessions for one token.

Threads lease a session for one operation and give it back; beyond
``TOKENCSP_MAX_SESSIONS`` (default 8) they wait.  YubiKey PIV and YubiHSM 2
allow 16 sessions in total, and ``listen`` may run 64 handshakes at once.
At least one session stays open while the pool lives: PKCS#11 logs the token
out when the application's last session closes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pkcs11 import exceptions as p11
from pkcs11.types import PrivateKey, Session

from ..config import env_number
from ..errors import ConfigError

__all__ = ["DEFAULT_MAX_SESSIONS", "Lease", "SessionPool", "max_sessions"]

DEFAULT_MAX_SESSIONS = 8


def max_sessions() -> int:
    value = env_number("TOKENCSP_MAX_SESSIONS", int, DEFAULT_MAX_SESSIONS, what="a whole number")
    if value < 1:
        raise ConfigError("TOKENCSP_MAX_SESSIONS must be at least 1")
    return value


@dataclass(eq=False)
class Lease:
    """One session and the key objects found through it (python-pkcs11 binds objects to a session)."""

    session: Session
    keys: dict[bytes, PrivateKey] = field(default_factory=dict)
    broken: bool = False  # set by the holder when the session must not be reused


class SessionPool:
    def __init__(self, open_session: Callable[[], Session], limit: int) -> None:
        self._open = open_session
        self.limit = limit
        self._idle: list[Lease] = []
        self._all: list[Lease] = []
        self._cond = threading.Condition()
        self.peak = 0  # most sessions leased at once (for tests)
        self._leased = 0

    def first(self) -> Lease:
        """Open the pool's first session (the caller logs in on it)."""
        lease = Lease(self._open())
        with self._cond:
            self._all.append(lease)
            self._idle.append(lease)
        return lease

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        with self._cond:
            while not self._idle and len(self._all) >= self.limit:
                self._cond.wait()
            lease = self._idle.pop() if self._idle else None
            if lease is None:
                self._all.append(placeholder := Lease(session=None))  # type: ignore[arg-type]
            self._leased += 1
            self.peak = max(self.peak, self._leased)
        if lease is None:
            try:
                lease = Lease(self._open())
            except BaseException:
                with self._cond:
                    self._all.remove(placeholder)
                    self._leased -= 1
                    self._cond.notify()
                raise
            with self._cond:
                self._all[self._all.index(placeholder)] = lease
        try:
            yield lease
        finally:
            self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        if lease.broken:
            # Replace before closing, so the token never loses its last session (and the login).
            try:
                replacement: Lease | None = Lease(self._open())
            except Exception:  # noqa: BLE001 -- no replacement: keep the broken one rather than lose the login
                replacement = None
            with self._cond:
                self._all.remove(lease)
                if replacement is not None:
                    self._all.append(replacement)
                    self._idle.append(replacement)
                self._leased -= 1
                self._cond.notify()
            if replacement is not None:
                with contextlib.suppress(p11.PKCS11Error):
                    lease.session.close()
            return
        with self._cond:
            self._idle.append(lease)
            self._leased -= 1
            self._cond.notify()

    def drain(self) -> list[Session]:
        """Forget every session (the caller closes them, or not after a fork); returns them newest first."""
        with self._cond:
            sessions = [lease.session for lease in reversed(self._all) if lease.session is not None]
            self._all, self._idle = [], []
            self._cond.notify_all()
        return sessions

    def __len__(self) -> int:
        with self._cond:
            return len(self._all)
