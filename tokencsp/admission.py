"""Which connections a listener serves before their sender is authenticated (docs/THREEPHASE.md, "Denial of service").

Pure: no sockets, the caller passes the time.  Every three-phase connection
costs the listener a token unwrap (PHASE1) and an RSA encryption before the
peer has proved anything, so :class:`Admission` caps that unauthenticated
work three ways: handshakes in progress per source, new handshakes per second
per source, and new handshakes per second from everyone.  A source is an IPv4
address or an IPv6 /64 (one host usually holds a whole /64).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["Admission", "AdmissionPolicy", "Ticket", "source_of"]

_IPV6_SOURCE_PREFIX = 64
_MAX_IDLE_BUCKETS = 4096  # past this many sources, full buckets are forgotten


@dataclass(frozen=True)
class AdmissionPolicy:
    per_source: int = 8             # unauthenticated handshakes at once from one source
    per_source_rate: float = 10.0   # new handshakes per second from one source (burst: the same number)
    total_rate: float = 200.0       # new handshakes per second from all sources (burst: the same number)

    def __post_init__(self) -> None:
        if self.per_source < 1 or self.per_source_rate <= 0 or self.total_rate <= 0:
            raise ValueError("admission limits must be positive")


def source_of(address: str) -> str:
    """The unit the per-source limits count: the IPv4 address, or the IPv6 /64 (unparsable: as given)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


@dataclass
class _Bucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` of them."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    @classmethod
    def full(cls, rate: float, now: float) -> _Bucket:
        burst = max(1.0, rate)
        return cls(rate, burst, burst, now)


@dataclass
class Ticket:
    """One admitted handshake; :meth:`release` it once the peer authenticated or the session ended."""

    source: str
    _admission: Admission = field(repr=False)
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.source)


class Admission:
    def __init__(self, policy: AdmissionPolicy = AdmissionPolicy()) -> None:
        self.policy = policy
        self._pending: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._total: _Bucket | None = None

    def pending(self, source: str) -> int:
        return self._pending.get(source, 0)

    def admit(self, address: str, now: float) -> Ticket | str:
        """A :class:`Ticket`, or the reason (one short phrase) the connection is refused."""
        source = source_of(address)
        if self._pending.get(source, 0) >= self.policy.per_source:
            return f"{self.policy.per_source} unauthenticated handshakes from {source} already in progress"
        total = self._total or _Bucket.full(self.policy.total_rate, now)
        bucket = self._buckets.get(source) or _Bucket.full(self.policy.per_source_rate, now)
        total.refill(now)
        bucket.refill(now)
        if total.tokens < 1:
            return f"more than {self.policy.total_rate:g} new handshakes per second"
        if bucket.tokens < 1:
            return f"more than {self.policy.per_source_rate:g} new handshakes per second from {source}"
        total.tokens -= 1
        bucket.tokens -= 1
        self._total = total
        self._forget_idle(now)
        self._buckets[source] = bucket
        self._pending[source] = self._pending.get(source, 0) + 1
        return Ticket(source, self)

    def _release(self, source: str) -> None:
        left = self._pending[source] - 1
        if left:
            self._pending[source] = left
        else:
            del self._pending[source]

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < _MAX_IDLE_BUCKETS:
            return
        for source, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.burst and source not in self._pending:
                del self._buckets[source]
