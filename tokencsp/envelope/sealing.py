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
from collections.abc import Sequence
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
from ._format2 import (
    MAX_RECIPIENTS,
    Entry,
    Header2,
    derive_keys,
    entries_problem,
    prefix2,
    signed_data2,
    trailer_signed_data2,
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


def seal(source: BinaryIO, sink: BinaryIO, recipient: rsa.RSAPublicKey | Sequence[rsa.RSAPublicKey], *,
         signer: Signer | None = None, serial: int | None = None, now: float | None = None, oaep: bool = True,
         chunk_size: int = DEFAULT_CHUNK_SIZE, message_id: bytes | None = None,
         session_key: bytes | None = None, key_blob: bytes | None = None, version: int | None = None,
         key_blobs: Sequence[bytes] | None = None) -> Header | Header2:
    """Seal everything ``source`` yields to ``recipient`` and write the message to ``sink``.

    ``recipient`` is one RSA public key or a sequence of them (1..16, no key twice).
    One recipient gets a version 1 message, two or more version 2 (docs/FORMAT.md
    section 9.1); ``version=2`` forces version 2 for one recipient.

    ``serial`` is required with a ``signer``.  ``message_id``, ``session_key`` (the
    file key in version 2), ``key_blob`` (version 1) and ``key_blobs`` (version 2, one
    per recipient in the order given) exist for test vectors only: reusing them
    breaks rules S1/S2.
    """
    recipients = [recipient] if isinstance(recipient, rsa.RSAPublicKey) else list(recipient)
    if version is None:
        version = 1 if len(recipients) == 1 else 2
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, not {version}")
    if version == 2:
        return _seal_v2(source, sink, recipients, signer=signer, serial=serial, now=now, oaep=oaep,
                        chunk_size=chunk_size, message_id=message_id, file_key=session_key, key_blobs=key_blobs)
    if len(recipients) != 1:
        raise ValueError("a version 1 message has exactly one recipient")
    recipient = recipients[0]
    check_rsa(recipient, "recipient")
    if signer is not None and serial is None:
        raise ValueError("a signed message needs a serial number (serial=...)")
    if key_blob is not None and session_key is None:
        raise ValueError("key_blob needs the session_key it wraps")
    key = os.urandom(KEY_SIZE) if session_key is None else bytes(session_key)  # S1
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"the session key must be {KEY_SIZE} bytes")
    sender_id = _sender_id(signer)
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
    _write_chunks(source, sink, key, hashlib.sha256(raw).digest(), chunk_size)
    return header


def _sender_id(signer: Signer | None) -> bytes | None:
    if signer is None:
        return None
    sender_key = signer.public_key()
    check_rsa(sender_key, "signature")
    return fingerprint(sender_key)


def _write_chunks(source: BinaryIO, sink: BinaryIO, key: bytes, ad: bytes, chunk_size: int,
                  digest: Any = None) -> None:
    """Every chunk, written as it is encrypted; ``digest`` (a hashlib object) also sees every chunk (T2)."""
    chunker = Chunker(key, ad, chunk_size)
    for index, (block, last) in enumerate(blocks_into(source, chunk_size)):  # S5
        chunk = chunker.encrypt(nonce(index, last), block)
        if digest is not None:
            digest.update(chunk)
        sink.write(chunk)


def _seal_v2(source: BinaryIO, sink: BinaryIO, recipients: list[rsa.RSAPublicKey], *, signer: Signer | None,
             serial: int | None, now: float | None, oaep: bool, chunk_size: int, message_id: bytes | None,
             file_key: bytes | None, key_blobs: Sequence[bytes] | None) -> Header2:
    """Version 2 (docs/FORMAT.md section 9): one file key, one entry per recipient, a key commitment;
    signed, a prefix signature and, after the last chunk, the trailer signature over the whole message (9.5)."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:  # S8
        raise InvalidKeyError(f"a sealed message has 1..{MAX_RECIPIENTS} recipients, not {len(recipients)}")
    for key in recipients:
        check_rsa(key, "recipient")
    ids = [fingerprint(key) for key in recipients]
    twice = sorted({key_id.hex() for key_id in ids if ids.count(key_id) > 1})
    if twice:  # S8
        raise InvalidKeyError(f"the same recipient key is given twice (key id {twice[0]})")
    if signer is not None and serial is None:
        raise ValueError("a signed message needs a serial number (serial=...)")
    if key_blobs is not None and (file_key is None or len(key_blobs) != len(recipients)):
        raise ValueError("key_blobs needs the file key (session_key=) and one blob per recipient")
    fk = os.urandom(KEY_SIZE) if file_key is None else bytes(file_key)  # S1
    if len(fk) != KEY_SIZE:
        raise InvalidKeyError(f"the file key must be {KEY_SIZE} bytes")
    if key_blobs is None:  # S9: the same file key in every entry
        session = SessionKey.from_bytes(AlgId.CALG_AES_256, fk)
        key_blobs = [session.export_simpleblob(key, oaep=oaep) for key in recipients]
    entries = tuple(sorted(Entry(key_id, bytes(blob)) for key_id, blob in zip(ids, key_blobs, strict=True)))
    problem = entries_problem(entries)
    if problem:
        raise InvalidKeyError(problem)
    header = Header2(
        message_id=os.urandom(MESSAGE_ID_SIZE) if message_id is None else bytes(message_id),  # S2
        timestamp_ms=round((time.time() if now is None else now) * 1000),  # S3
        recipient_count=len(entries), serial=0 if serial is None else serial,
        sender_id=_sender_id(signer), oaep=oaep, chunk_size=chunk_size,
    )
    payload_key, commitment = derive_keys(fk, header.message_id)  # S7
    signature = signer.sign(signed_data2(header, entries, commitment)) if signer is not None else None
    raw = prefix2(header, entries, commitment, signature)
    sink.write(raw)
    digest = hashlib.sha256(raw) if signer is not None else None  # message_hash: the prefix, then every chunk
    _write_chunks(source, sink, payload_key, hashlib.sha256(raw).digest(), chunk_size, digest)
    if signer is not None and signature is not None and digest is not None:
        trailer = signer.sign(trailer_signed_data2(digest.digest()))  # T1, same key as the prefix's
        if len(trailer) != len(signature):  # S10: openers find the chunks' end by this length
            raise InvalidKeyError(f"the signer made a {len(trailer)}-byte trailer signature after a "
                                  f"{len(signature)}-byte prefix signature")
        sink.write(trailer)
    return header


def seal_bytes(data: bytes, recipient: rsa.RSAPublicKey | Sequence[rsa.RSAPublicKey], **kw: Any) -> bytes:
    sink = io.BytesIO()
    seal(io.BytesIO(data), sink, recipient, **kw)
    return sink.getvalue()
