"""Sealing (docs/FORMAT.md sections 2-6, sealer rules S1-S6).

The clock, randomness and the signature key come from the caller (``now``,
``message_id``/``session_key``, ``signer``), with the system clock and
``os.urandom`` as defaults.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from ..blobs import AlgId
from ..errors import InvalidKeyError
from ..pubkeys import fingerprint
from ..session import SessionKey
from ._chunks import Chunker, blocks_into
from ._format import (
    DEFAULT_CHUNK_SIZE,
    KEY_SIZE,
    MAX_RSA_BYTES,
    MESSAGE_ID_SIZE,
    MIN_RSA_BYTES,
    Header,
    is_key_blob,
    nonce,
    prefix,
    signed_data,
)

__all__ = ["Signer", "seal", "seal_bytes"]


class Signer(Protocol):  # a tokencsp KeyPair holding a signature key
    def public_key(self) -> rsa.RSAPublicKey: ...
    def sign(self, data: bytes) -> bytes: ...


def check_rsa(key: rsa.RSAPublicKey, role: str) -> None:
    """S6: 2048..8192-bit RSA keys only."""
    if not isinstance(key, rsa.RSAPublicKey):
        raise TypeError(f"the {role} key must be an RSA public key")
    if not MIN_RSA_BYTES * 8 <= key.key_size <= MAX_RSA_BYTES * 8:
        raise InvalidKeyError(f"the {role} key has {key.key_size} bits; sealed messages need 2048..8192")


def seal(source: BinaryIO, sink: BinaryIO, recipient: rsa.RSAPublicKey, *, signer: Signer | None = None,
         serial: int | None = None, now: float | None = None, oaep: bool = True,
         chunk_size: int = DEFAULT_CHUNK_SIZE, message_id: bytes | None = None,
         session_key: bytes | None = None, key_blob: bytes | None = None) -> Header:
    """Seal everything ``source`` yields to ``recipient`` and write the message to ``sink``.

    ``serial`` is required with a ``signer``.  ``message_id``, ``session_key`` and
    ``key_blob`` (a SIMPLEBLOB that already wraps ``session_key``) exist for test
    vectors only: reusing them breaks rules S1/S2.
    """
    check_rsa(recipient, "recipient")
    if signer is not None and serial is None:
        raise ValueError("a signed message needs a serial number (serial=...)")
    if key_blob is not None and session_key is None:
        raise ValueError("key_blob needs the session_key it wraps")
    key = os.urandom(KEY_SIZE) if session_key is None else bytes(session_key)  # S1
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"the session key must be {KEY_SIZE} bytes")
    sender_id = None
    if signer is not None:
        sender_key = signer.public_key()
        check_rsa(sender_key, "signature")
        sender_id = fingerprint(sender_key)
    header = Header(
        recipient_id=fingerprint(recipient),
        message_id=os.urandom(MESSAGE_ID_SIZE) if message_id is None else bytes(message_id),  # S2
        timestamp_ms=round((time.time() if now is None else now) * 1000),  # S3
        serial=0 if serial is None else serial,
        sender_id=sender_id, oaep=oaep, chunk_size=chunk_size,
    )
    if key_blob is None:
        key_blob = SessionKey.from_bytes(AlgId.CALG_AES_256, key).export_simpleblob(recipient, oaep=oaep)
    elif not is_key_blob(key_blob):
        raise InvalidKeyError("key_blob must be an AES-256 SIMPLEBLOB for a 2048..8192-bit key")
    signature = signer.sign(signed_data(header, key_blob)) if signer is not None else None
    raw = prefix(header, key_blob, signature)
    sink.write(raw)
    chunker = Chunker(key, hashlib.sha256(raw).digest(), chunk_size)
    for index, (block, last) in enumerate(blocks_into(source, chunk_size)):  # S5
        sink.write(chunker.encrypt(nonce(index, last), block))
    return header


def seal_bytes(data: bytes, recipient: rsa.RSAPublicKey, **kw: Any) -> bytes:
    sink = io.BytesIO()
    seal(io.BytesIO(data), sink, recipient, **kw)
    return sink.getvalue()
