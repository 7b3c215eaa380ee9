"""One direction of the record channel (docs/THREEPHASE.md, "The record channel"): AES-256-GCM, implicit seq."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ProtocolError, RecordError
from .messages import MsgType

__all__ = ["RecordProtection", "nonce"]

_SEQ_LIMIT = 1 << 64


def nonce(seq: int) -> bytes:
    if seq >= _SEQ_LIMIT:
        raise ProtocolError("record sequence number exhausted")  # 2^64 records: never in practice
    return bytes(4) + seq.to_bytes(8, "big")


class RecordProtection:
    """The key and the counter of one direction; the counter is never sent, so position is authenticated."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.seq = 0

    def seal(self, kind: MsgType, plaintext: bytes) -> bytes:
        """The record payload: type ‖ ciphertext ‖ tag."""
        sealed = self._aead.encrypt(nonce(self.seq), plaintext, bytes([kind]))
        self.seq += 1
        return bytes([kind]) + sealed

    def open(self, payload: bytes) -> bytes:
        kind = payload[:1]
        try:
            plaintext = self._aead.decrypt(nonce(self.seq), payload[1:], kind)
        except InvalidTag:
            raise RecordError("record authentication failed (altered, replayed, reordered or dropped)") from None
        self.seq += 1
        return plaintext
