"""Sealed messages: SIMPLEBLOB key transport, AES-256-GCM STREAM payload, optional signature.

``docs/FORMAT.md`` is the specification; the step numbers and rule names
(S1.., G1.., O1..) in comments refer to it.  Pure apart from the binary
streams handed in: the clock, randomness and token operations come from the
caller (``now``, ``message_id``/``session_key``, ``signer``/``receiver``),
with the system clock and ``os.urandom`` as defaults.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..blobs import AlgId
from ..errors import (AuthenticationFailed, BadSignature, EnvelopeFormatError, InvalidKeyError, NotForThisKey,
                     SignatureRequired, TokenError, TruncatedMessage, UntrustedSender)
from ..pubkeys import fingerprint
from ..replay import ReplayCache, ReplayPolicy
from ..session import SessionKey

__all__ = ["DEFAULT_CHUNK_SIZE", "MIN_CHUNK_SIZE", "MAX_CHUNK_SIZE", "Header", "Preamble", "Opened",
           "seal", "seal_bytes", "read_header", "open_message", "open_", "open_bytes", "trust_set",
           "signed_data"]

MAGIC = b"TCSPSEAL"
VERSION = 1
SUITE = 1
FLAG_OAEP = 0x01
FLAG_SIGNED = 0x02
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 1024 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
ID_SIZE = 32
MESSAGE_ID_SIZE = 16
MIN_RSA_BYTES, MAX_RSA_BYTES = 256, 1024  # 2048..8192-bit keys (S6)
SIMPLEBLOB_HEADER = bytes.fromhex("010200001066000000a40000")  # section 4
SIGNATURE_CONTEXT = b"tokencsp sealed message v1 signature\x00"
U64_MAX = 2**64 - 1

_FIXED = struct.Struct(">8sBHBI32s16sQQ")  # magic .. serial: 80 bytes
_U16 = struct.Struct(">H")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


class Signer(Protocol):  # a tokencsp KeyPair holding a signature key
    def public_key(self) -> rsa.RSAPublicKey: ...
    def sign(self, data: bytes) -> bytes: ...


class Receiver(Protocol):  # a tokencsp ExchangeKey
    def public_key(self) -> rsa.RSAPublicKey: ...
    def import_simpleblob(self, blob: bytes, oaep: bool = False) -> SessionKey: ...


# -- header ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The fixed part of a sealed message (section 2.1); ``to_bytes``/``parse`` are exact inverses."""

    recipient_id: bytes
    message_id: bytes
    timestamp_ms: int
    serial: int = 0
    sender_id: bytes | None = None
    oaep: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    version: int = VERSION
    suite: int = SUITE

    def __post_init__(self) -> None:
        problem = _header_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def signed(self) -> bool:
        return self.sender_id is not None

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch, as the replay policy wants it."""
        return self.timestamp_ms / 1000

    @property
    def flags(self) -> int:
        return (FLAG_OAEP if self.oaep else 0) | (FLAG_SIGNED if self.signed else 0)

    def to_bytes(self) -> bytes:
        fixed = _FIXED.pack(MAGIC, self.version, self.suite, self.flags, self.chunk_size,
                            self.recipient_id, self.message_id, self.timestamp_ms, self.serial)
        return fixed + (self.sender_id or b"")

    @classmethod
    def parse(cls, data: bytes) -> Header:
        """Exactly one header (80 bytes, 112 when signed); EnvelopeFormatError names the bad field."""
        data = bytes(data)
        recipient, message_id, ts, serial, flags, chunk_size = _unpack_fixed(data)
        size = _FIXED.size + (ID_SIZE if flags & FLAG_SIGNED else 0)
        if len(data) != size:
            raise EnvelopeFormatError(f"sender_id: header is {len(data)} bytes, expected {size}")
        sender = data[_FIXED.size:] if flags & FLAG_SIGNED else None
        return cls(recipient, message_id, ts, serial, sender, bool(flags & FLAG_OAEP), chunk_size)


def _unpack_fixed(data: bytes) -> tuple[bytes, bytes, int, int, int, int]:
    """Check the 80 fixed header bytes field by field (O1, O2)."""
    if len(data) < _FIXED.size:
        raise EnvelopeFormatError(f"header: truncated at {len(data)} of {_FIXED.size} bytes")
    magic, version, suite, flags, chunk_size, recipient, message_id, ts, serial = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise EnvelopeFormatError("magic: not a tokencsp sealed message")
    if version != VERSION:
        raise EnvelopeFormatError(f"version: {version} is not supported (expected {VERSION})")
    if suite != SUITE:
        raise EnvelopeFormatError(f"suite: {suite} is not supported (expected {SUITE})")
    if flags & ~(FLAG_OAEP | FLAG_SIGNED):
        raise EnvelopeFormatError(f"flags: unknown bits 0x{flags:02x}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise EnvelopeFormatError(f"chunk_size: {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    return recipient, message_id, ts, serial, flags, chunk_size


def _header_problem(h: Header) -> str | None:
    checks = (
        (h.version == VERSION, f"version must be {VERSION}"),
        (h.suite == SUITE, f"suite must be {SUITE}"),
        (MIN_CHUNK_SIZE <= h.chunk_size <= MAX_CHUNK_SIZE,
         f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, not {h.chunk_size}"),
        (_is_bytes(h.recipient_id, ID_SIZE), "recipient_id must be 32 bytes"),
        (_is_bytes(h.message_id, MESSAGE_ID_SIZE), "message_id must be 16 bytes"),
        (h.sender_id is None or _is_bytes(h.sender_id, ID_SIZE), "sender_id must be 32 bytes or None"),
        (_is_u64(h.timestamp_ms), "timestamp_ms must be an unsigned 64-bit integer"),
        (_is_u64(h.serial), "serial must be an unsigned 64-bit integer"),
    )
    return next((message for ok, message in checks if not ok), None)


def _is_bytes(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size


def _is_u64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


class Preamble(NamedTuple):
    """Everything before the first chunk, parsed: what ``tokencsp inspect`` shows."""

    header: Header
    key_blob: bytes
    signature: bytes | None
    raw: bytes  # the exact prefix bytes: AD = SHA-256(raw)


@dataclass(frozen=True)
class Opened:
    """What ``open_message`` found.  ``verified_sender`` is None unless a trust set vouched for it."""

    header: Header
    verified_sender: bytes | None
    plaintext_length: int

    @property
    def sender_verified(self) -> bool:
        return self.verified_sender is not None


# -- prefix ------------------------------------------------------------------------------


def _read_exact(source: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of input (short reads from pipes are retried)."""
    parts: list[bytes] = []
    want = size
    while want > 0:
        part = source.read(want)
        if not part:
            break
        parts.append(part)
        want -= len(part)
    return b"".join(parts)


def _field(source: BinaryIO, size: int, name: str) -> bytes:
    data = _read_exact(source, size)
    if len(data) != size:
        raise EnvelopeFormatError(f"{name}: truncated at {len(data)} of {size} bytes")
    return data


def _length(source: BinaryIO, name: str, low: int, high: int, even: bool = False) -> int:
    (value,) = _U16.unpack(_field(source, _U16.size, f"{name}_length"))
    if not low <= value <= high or (even and value % 2):
        raise EnvelopeFormatError(f"{name}_length: {value} outside {low}..{high}" + (", even" if even else ""))
    return value


def _check_key_blob(blob: bytes) -> None:
    if blob[: len(SIMPLEBLOB_HEADER)] != SIMPLEBLOB_HEADER:
        raise EnvelopeFormatError("key_blob: not a SIMPLEBLOB of a CALG_AES_256 key wrapped with CALG_RSA_KEYX")


def read_header(source: BinaryIO) -> Preamble:
    """Parse the prefix (header, key blob, signature) without decrypting; step 1 of opening."""
    fixed = _field(source, _FIXED.size, "header")
    signed = _unpack_fixed(fixed)[4] & FLAG_SIGNED
    raw_header = fixed + (_field(source, ID_SIZE, "sender_id") if signed else b"")
    header = Header.parse(raw_header)
    blob_len = _length(source, "key_blob", len(SIMPLEBLOB_HEADER) + MIN_RSA_BYTES,
                       len(SIMPLEBLOB_HEADER) + MAX_RSA_BYTES, even=True)
    key_blob = _field(source, blob_len, "key_blob")
    _check_key_blob(key_blob)
    raw = raw_header + _U16.pack(blob_len) + key_blob
    signature = None
    if header.signed:
        sig_len = _length(source, "signature", MIN_RSA_BYTES, MAX_RSA_BYTES)
        signature = _field(source, sig_len, "signature")
        raw += _U16.pack(sig_len) + signature
    return Preamble(header, key_blob, signature, raw)


def signed_data(header: Header, key_blob: bytes) -> bytes:
    """The bytes the sender signs (section 6)."""
    return SIGNATURE_CONTEXT + header.to_bytes() + _U16.pack(len(key_blob)) + key_blob


def _prefix(header: Header, key_blob: bytes, signature: bytes | None) -> bytes:
    raw = header.to_bytes() + _U16.pack(len(key_blob)) + key_blob
    return raw + (_U16.pack(len(signature)) + signature if signature is not None else b"")


# -- chunks ------------------------------------------------------------------------------


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _blocks(source: BinaryIO, size: int) -> Iterator[tuple[bytes, bool]]:
    """``size``-byte blocks and whether each is the last; one byte of look-ahead, no more."""
    block = _read_exact(source, size)
    while True:
        if len(block) < size:
            yield block, True
            return
        ahead = _read_exact(source, 1)
        if not ahead:
            yield block, True
            return
        yield block, False
        block = ahead + _read_exact(source, size - 1)


def _decrypt(aead: AESGCM, nonce: bytes, data: bytes, ad: bytes) -> bytes | None:
    try:
        return aead.decrypt(nonce, data, ad)
    except InvalidTag:
        return None


def _open_chunk(aead: AESGCM, ad: bytes, index: int, data: bytes, last: bool, chunk_size: int) -> bytes:
    """One chunk, authenticated; a full last chunk that is really a middle one means truncation."""
    if last and not data and index == 0:
        raise TruncatedMessage()
    plaintext = _decrypt(aead, _nonce(index, last), data, ad)
    if plaintext is None:
        full = last and len(data) == chunk_size + TAG_SIZE
        if full and _decrypt(aead, _nonce(index, False), data, ad) is not None:
            raise TruncatedMessage()
        raise AuthenticationFailed()
    if last and not plaintext and index > 0:
        raise EnvelopeFormatError("chunk: empty last chunk after data (not canonical)")
    return plaintext


# -- sealing -----------------------------------------------------------------------------


def _check_rsa(key: rsa.RSAPublicKey, role: str) -> None:
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
    _check_rsa(recipient, "recipient")
    if signer is not None and serial is None:
        raise ValueError("a signed message needs a serial number (serial=...)")
    if key_blob is not None and session_key is None:
        raise ValueError("key_blob needs the session_key it wraps")
    key = os.urandom(KEY_SIZE) if session_key is None else bytes(session_key)
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"the session key must be {KEY_SIZE} bytes")
    sender_id = None
    if signer is not None:
        sender_key = signer.public_key()
        _check_rsa(sender_key, "signature")
        sender_id = fingerprint(sender_key)
    header = Header(
        recipient_id=fingerprint(recipient),
        message_id=os.urandom(MESSAGE_ID_SIZE) if message_id is None else bytes(message_id),
        timestamp_ms=round((time.time() if now is None else now) * 1000),
        serial=0 if serial is None else serial,
        sender_id=sender_id, oaep=oaep, chunk_size=chunk_size,
    )
    if key_blob is None:
        key_blob = SessionKey.from_bytes(AlgId.CALG_AES_256, key).export_simpleblob(recipient, oaep=oaep)
    elif (key_blob[:12] != SIMPLEBLOB_HEADER or len(key_blob) % 2
          or not MIN_RSA_BYTES <= len(key_blob) - 12 <= MAX_RSA_BYTES):
        raise InvalidKeyError("key_blob must be an AES-256 SIMPLEBLOB for a 2048..8192-bit key")
    signature = signer.sign(signed_data(header, key_blob)) if signer is not None else None
    prefix = _prefix(header, key_blob, signature)
    sink.write(prefix)
    aead, ad = AESGCM(key), hashlib.sha256(prefix).digest()
    for index, (block, last) in enumerate(_blocks(source, chunk_size)):
        sink.write(aead.encrypt(_nonce(index, last), block, ad))
    return header


def seal_bytes(data: bytes, recipient: rsa.RSAPublicKey, **kw: object) -> bytes:
    sink = io.BytesIO()
    seal(io.BytesIO(data), sink, recipient, **kw)  # type: ignore[arg-type]
    return sink.getvalue()


# -- opening -----------------------------------------------------------------------------


def trust_set(keys: Iterable[rsa.RSAPublicKey]) -> dict[bytes, rsa.RSAPublicKey]:
    """A trust set for ``open_message``: each signature public key under its key id."""
    return {fingerprint(key): key for key in keys}


def _verify_sender(pre: Preamble, trust: Mapping[bytes, rsa.RSAPublicKey] | None) -> bytes | None:
    """Step 4: the verified sender id, or None when there is no trust set to verify against."""
    if trust is None:
        return None
    sender, signature = pre.header.sender_id, pre.signature
    if sender is None or signature is None:
        raise SignatureRequired()
    key = trust.get(sender)
    if not isinstance(key, rsa.RSAPublicKey) or fingerprint(key) != sender:
        raise UntrustedSender()
    try:
        key.verify(signature, signed_data(pre.header, pre.key_blob), _PSS, hashes.SHA256())
    except InvalidSignature:
        raise BadSignature() from None
    return sender


def _import_key(receiver: Receiver, pre: Preamble) -> bytes:
    """Step 5 with implicit rejection (O4): any failure yields a random key that fails at chunk 0.

    Only failures that say the receiver's own key or token is unusable (which no
    message can cause) propagate.
    """
    # A tokencsp ExchangeKey rejects implicitly on the token side too, making
    # the same PKCS#11 calls whatever the padding; other receivers fall back here.
    importer = getattr(receiver, "import_simpleblob_implicit", receiver.import_simpleblob)
    try:
        session = importer(pre.key_blob, oaep=pre.header.oaep)
        key = session.key if session.alg is AlgId.CALG_AES_256 else b""
        session.wipe()
    except _RECEIVER_PROBLEMS:
        raise
    except Exception:  # noqa: BLE001 -- implicit rejection: every other failure looks the same
        key = b""
    return key if len(key) == KEY_SIZE else os.urandom(KEY_SIZE)


# The receiver's own token being unusable (closed, logged out, removed, key
# gone) is no message's doing and says nothing about the blob: report it.
_RECEIVER_PROBLEMS = (TokenError,)


def open_message(source: BinaryIO, sink: BinaryIO, receiver: Receiver, *, cache: ReplayCache,
                 policy: ReplayPolicy | None = None, trust: Mapping[bytes, rsa.RSAPublicKey] | None = None,
                 now: float | None = None) -> Opened:
    """Open a sealed message from ``source`` into ``sink`` (docs/FORMAT.md section 7, steps 1-8).

    Nothing is written to ``sink`` unless chunk 0 authenticated and the replay
    cache accepted the message; a later failure raises after the chunks before
    it were written (discard the output).
    """
    policy = ReplayPolicy() if policy is None else policy
    now = time.time() if now is None else now
    pre = read_header(source)  # 1
    header = pre.header
    if header.recipient_id != fingerprint(receiver.public_key()):  # 2
        raise NotForThisKey()
    policy.check_time(header.timestamp, now)  # 3
    sender = _verify_sender(pre, trust)  # 4
    aead = AESGCM(_import_key(receiver, pre))  # 5
    ad = hashlib.sha256(pre.raw).digest()
    written = 0
    for index, (data, last) in enumerate(_blocks(source, header.chunk_size + TAG_SIZE)):
        plaintext = _open_chunk(aead, ad, index, data, last, header.chunk_size)  # 6, 8
        if index == 0:  # 7
            cache.accept(header.message_id, header.timestamp, now, policy,
                         sender, header.serial if sender is not None else None)
        sink.write(plaintext)
        written += len(plaintext)
    return Opened(header, sender, written)


open_ = open_message


def open_bytes(data: bytes, receiver: Receiver, **kw: object) -> bytes:
    sink = io.BytesIO()
    open_message(io.BytesIO(data), sink, receiver, **kw)  # type: ignore[arg-type]
    return sink.getvalue()
