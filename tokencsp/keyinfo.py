"""What tokencsp knows about a key container on a token: plain data, no PKCS#11."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["KeyInfo", "KeyUsage", "RsaPrivateParts"]


class KeyUsage(str, Enum):
    EXCHANGE = "exchange"
    SIGNATURE = "signature"


@dataclass(frozen=True)
class KeyInfo:
    """What the token says about one key container (a private key and its public half)."""

    name: str
    id: bytes
    usage: KeyUsage | None
    bits: int
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    local: bool
    can_unwrap: bool
    can_decrypt: bool
    can_sign: bool
    has_public: bool
    oaep_only: bool = False

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "id": self.id.hex(),
            "usage": self.usage.value if self.usage else None,
            "bits": self.bits,
            "sensitive": self.sensitive,
            "extractable": self.extractable,
            "always_sensitive": self.always_sensitive,
            "never_extractable": self.never_extractable,
            "local": self.local,
            "unwrap": self.can_unwrap,
            "decrypt": self.can_decrypt,
            "sign": self.can_sign,
            "has_public": self.has_public,
            "oaep_only": self.oaep_only,
        }


@dataclass(frozen=True, repr=False)
class RsaPrivateParts:
    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int
