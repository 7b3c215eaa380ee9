"""The receiver's replay policy: the time window and whether serials are strict.  Pure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import ConfigError, MessageFromFuture, MessageTooOld

__all__ = ["ReplayPolicy", "check_now", "parse_duration"]


@dataclass(frozen=True)
class ReplayPolicy:
    max_age: float = 24 * 3600
    max_skew: float = 300
    strict_serial: bool | None = None  # None: strict when the message is signed

    def __post_init__(self) -> None:
        for name in ("max_age", "max_skew"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"replay policy {name} must be a finite number >= 0, not {value!r}")

    def check_time(self, timestamp: float, now: float) -> None:
        check_now(now)
        if timestamp - now > self.max_skew:
            raise MessageFromFuture()
        if not now - timestamp <= self.max_age:  # written so that NaN is refused
            raise MessageTooOld()

    def retention(self) -> float:
        return self.max_age + self.max_skew

    def is_strict(self, sender_id: bytes | None) -> bool:
        return sender_id is not None if self.strict_serial is None else self.strict_serial


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUM = r"[0-9]+(?:\.[0-9]+)?"  # not \d: that also matches non-ASCII digits
_DURATION = re.compile("".join(rf"(?:(?P<{u}>{_NUM}){u})?" for u in _UNITS))


def parse_duration(text: str) -> float:
    """Seconds in "300", "90s", "15m", "24h", "7d", "1h30m" (units largest first, each once)."""
    s = text.strip().lower() if isinstance(text, str) else ""
    if re.fullmatch(_NUM, s):
        return float(s)
    match = _DURATION.fullmatch(s)
    if not s or match is None:
        raise ConfigError(f"invalid duration {text!r}: use e.g. 300, 90s, 15m, 24h, 7d or 1h30m")
    return sum(float(v) * _UNITS[u] for u, v in match.groupdict().items() if v is not None)


def check_now(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time, not {now!r}")


