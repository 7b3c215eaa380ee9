"""Transcript hash, key derivation and the two handshake MACs (docs/THREEPHASE.md, "Key schedule")."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

__all__ = [
    "LABEL_IR",
    "LABEL_K2",
    "LABEL_K3",
    "LABEL_RI",
    "TRANSCRIPT_LABEL",
    "Schedule",
    "derive_keys",
    "schedule",
    "transcript_hash",
]

TRANSCRIPT_LABEL = b"tokencsp three-phase v1 transcript"
LABEL_K2 = b"tokencsp three-phase v1 phase 2 mac"
LABEL_K3 = b"tokencsp three-phase v1 phase 3 mac"
LABEL_IR = b"tokencsp three-phase v1 initiator to responder"
LABEL_RI = b"tokencsp three-phase v1 responder to initiator"


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def transcript_hash(m1: bytes, m2_prefix: bytes) -> bytes:
    """TH over PHASE1 and PHASE2 without its MAC; M1 is self-delimiting, so the join is unambiguous."""
    return hashlib.sha256(TRANSCRIPT_LABEL + m1 + m2_prefix).digest()


def derive_keys(a: bytes, b: bytes, th: bytes) -> dict[str, bytes]:
    """HKDF-SHA256 (one output block per label) from A‖B with salt TH."""
    prk = _hmac(th, a + b)
    return {name: _hmac(prk, label + b"\x01") for name, label in
            (("k2", LABEL_K2), ("k3", LABEL_K3), ("ir", LABEL_IR), ("ri", LABEL_RI))}


@dataclass(frozen=True, repr=False)
class Schedule:
    """Everything one handshake derives; ``repr`` stays silent about the keys."""

    th: bytes
    mac2: bytes
    mac3: bytes
    key_ir: bytes  # initiator -> responder traffic key
    key_ri: bytes  # responder -> initiator traffic key

    def __repr__(self) -> str:
        return f"Schedule(th={self.th.hex()})"


def schedule(a: bytes, b: bytes, m1: bytes, m2_prefix: bytes) -> Schedule:
    th = transcript_hash(m1, m2_prefix)
    keys = derive_keys(a, b, th)
    return Schedule(th=th, mac2=_hmac(keys["k2"], b"phase 2" + th), mac3=_hmac(keys["k3"], b"phase 3" + th),
                    key_ir=keys["ir"], key_ri=keys["ri"])
