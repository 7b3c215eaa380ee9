"""Implicit rejection for one exchange key: the substitute key and the deadline.

A receiver that answers a bad SIMPLEBLOB differently from a good one -- in
its error, its output or its timing -- is a Bleichenbacher padding oracle.
:class:`ImplicitRejection` holds what one key needs so that it never does:

* a per-key secret from which a bad blob's *substitute* session key is
  derived (HMAC-SHA256 over the blob, as OpenSSL 3.2 does for PKCS#1 v1.5):
  the same bad blob always yields the same wrong key, and the failure shows
  only where the payload fails to authenticate;
* a :class:`~tokencsp.deadline.DeadlinePadder` whose deadline is learned from
  probe imports this object makes itself (valid and invalid blobs alike),
  so that every import ends at the same moment after it started.

No token here: the caller hands in the import operation.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from .blobs import SESSION_KEY_LENGTHS, AlgId, SimpleBlob
from .deadline import DeadlinePadder
from .session import SessionKey

__all__ = ["ImplicitRejection", "substitute_key"]

T = TypeVar("T")

# Probe imports: blobs of both outcomes, alternately, until the padder has its samples.
ProbeImport = Callable[[SimpleBlob, bool], object]


def substitute_key(secret: bytes, blob: SimpleBlob, length: int) -> bytes:
    """The key a bad ``blob`` stands for: HMAC-SHA256(secret, i || blob) blocks, ``length`` bytes."""
    wire = blob.to_bytes()
    stream = b"".join(hmac.new(secret, bytes([i]) + wire, "sha256").digest() for i in range((length + 31) // 32))
    return stream[:length]


class ImplicitRejection:
    """The rejection secret and the deadline padder of one exchange key."""

    def __init__(self, public_key: rsa.RSAPublicKey, padder: DeadlinePadder | None = None,
                 secret: bytes | None = None) -> None:
        self._public = public_key
        self._secret = os.urandom(32) if secret is None else secret
        self.padder = DeadlinePadder() if padder is None else padder

    def substitute(self, blob: SimpleBlob) -> bytes:
        return substitute_key(self._secret, blob, SESSION_KEY_LENGTHS[blob.alg_id])

    def choose(self, blob: SimpleBlob, value: bytes, substitute: bytes) -> SessionKey:
        """The unwrapped ``value`` when it has the ALG_ID's length, else ``substitute``."""
        length = SESSION_KEY_LENGTHS[blob.alg_id]
        return SessionKey.from_bytes(blob.alg_id, value if len(value) == length else substitute)

    def run(self, operation: Callable[[], T], probe: ProbeImport, oaep: bool) -> T:
        """``operation`` padded to the deadline, calibrating first if needed."""
        if not self.padder.calibrated:
            self.calibrate(probe, oaep)
        return self.padder.run(operation)

    def calibrate(self, probe: ProbeImport, oaep: bool) -> None:
        """Learn the deadline from imports that succeed and imports that fail, alternately."""
        modulus_bytes = (self._public.key_size + 7) // 8
        while not self.padder.calibrated:
            for valid in (True, False):
                if valid:
                    wire = SessionKey.generate("aes256").export_simpleblob(self._public, oaep=oaep)
                    blob = SimpleBlob.from_bytes(wire)
                else:
                    blob = SimpleBlob(AlgId.CALG_AES_256, b"\x00" + os.urandom(modulus_bytes - 1))
                self.padder.run(lambda blob=blob: probe(blob, oaep))  # type: ignore[misc]
