"""The sealed-message wire format (docs/FORMAT.md sections 2-6): constants, header, prefix, nonces.

Pure: bytes in and out, plus the binary readers handed in (no token, no clock,
no randomness).  Section and rule names (S1.., G1.., O1..) refer to FORMAT.md.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .._wire import SIMPLEBLOB_PREFIX_LEN, Readable, be_bytes, from_be, is_u64, read_exact
from ..errors import EnvelopeFormatError

__all__ = ["DEFAULT_CHUNK_SIZE", "MAX_CHUNK_SIZE", "MIN_CHUNK_SIZE", "Header", "Preamble", "read_v1_prefix",
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
assert len(SIMPLEBLOB_HEADER) == SIMPLEBLOB_PREFIX_LEN
MIN_KEY_BLOB = SIMPLEBLOB_PREFIX_LEN + MIN_RSA_BYTES  # section 2.5
MAX_KEY_BLOB = SIMPLEBLOB_PREFIX_LEN + MAX_RSA_BYTES
SIGNATURE_CONTEXT = b"tokencsp sealed message v1 signature\x00"  # section 6, G3

FIXED = struct.Struct(">8sBHBI32s16sQQ")  # section 2.1, magic .. serial: 80 bytes
LENGTH_SIZE = 2  # u16 key_blob_length / signature_length


# -- header (section 2.1) ----------------------------------------------------------------


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
        fixed = FIXED.pack(MAGIC, self.version, self.suite, self.flags, self.chunk_size,
                           self.recipient_id, self.message_id, self.timestamp_ms, self.serial)
        return fixed + (self.sender_id or b"")

    @classmethod
    def parse(cls, data: bytes) -> Header:
        """Exactly one header (80 bytes, 112 when signed); EnvelopeFormatError names the bad field."""
        data = bytes(data)
        recipient, message_id, ts, serial, flags, chunk_size = unpack_fixed(data)
        size = FIXED.size + (ID_SIZE if flags & FLAG_SIGNED else 0)
        if len(data) != size:
            raise EnvelopeFormatError(f"sender_id: header is {len(data)} bytes, expected {size}")
        sender = data[FIXED.size:] if flags & FLAG_SIGNED else None
        return cls(recipient, message_id, ts, serial, sender, bool(flags & FLAG_OAEP), chunk_size)


def unpack_fixed(data: bytes) -> tuple[bytes, bytes, int, int, int, int]:
    """Check the 80 fixed header bytes field by field (O1, O2)."""
    if len(data) < FIXED.size:
        raise EnvelopeFormatError(f"header: truncated at {len(data)} of {FIXED.size} bytes")
    magic, version, suite, flags, chunk_size, recipient, message_id, ts, serial = FIXED.unpack_from(data)
    if magic != MAGIC:
        raise EnvelopeFormatError("magic: not a tokencsp sealed message")
    if version != VERSION:
        raise EnvelopeFormatError(f"version: {version} is not supported (expected {VERSION} or 2)")
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
        (is_u64(h.timestamp_ms), "timestamp_ms must be an unsigned 64-bit integer"),
        (is_u64(h.serial), "serial must be an unsigned 64-bit integer"),
    )
    return next((message for ok, message in checks if not ok), None)


def _is_bytes(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size


# -- prefix (sections 2.2, 2.3, 7 step 1) ------------------------------------------------


class Preamble(NamedTuple):
    """Everything before the first chunk, parsed: what ``tokencsp inspect`` shows."""

    header: Header
    key_blob: bytes
    signature: bytes | None
    raw: bytes  # the exact prefix bytes: AD = SHA-256(raw) (O10)

    # The interface a version 2 prefix shares (``_format2.Preamble2`` / ``Addressed``), so that
    # opening does not branch on the version.

    @property
    def recipients(self) -> tuple[bytes, ...]:
        return (self.header.recipient_id,)

    @property
    def recipient_id(self) -> bytes:
        return self.header.recipient_id

    def for_recipient(self, key_id: bytes) -> Preamble | None:
        """The prefix as the holder of ``key_id`` opens it, or None when not addressed to it (step 2)."""
        return self if self.header.recipient_id == key_id else None

    def signed_data(self) -> bytes:
        return signed_data(self.header, self.key_blob)

    @property
    def trailer_length(self) -> int:
        """Version 1 has no trailer: nothing follows the last chunk (section 2.4)."""
        return 0

    def payload_key(self, session_key: bytes) -> bytes:
        """Version 1 encrypts the payload with the session key itself (section 5)."""
        return session_key

    def replay_key(self, ad: bytes) -> bytes:
        """O6b: the replay cache's key is AD = SHA-256(prefix)."""
        return ad

    def serial_scope(self, sender_id: bytes) -> bytes:
        """Whose serial the cache compares (O7): the sender's, whoever it wrote to."""
        return sender_id


def _field(source: Readable, size: int, name: str) -> bytes:
    data = read_exact(source, size)
    if len(data) != size:
        raise EnvelopeFormatError(f"{name}: truncated at {len(data)} of {size} bytes")
    return data


def _length(source: Readable, name: str, low: int, high: int, even: bool = False) -> int:
    """A u16 length, checked against section 2.5 before anything it announces is read (O2)."""
    value = from_be(_field(source, LENGTH_SIZE, f"{name}_length"))
    if not low <= value <= high or (even and value % 2):
        raise EnvelopeFormatError(f"{name}_length: {value} outside {low}..{high}" + (", even" if even else ""))
    return value


def is_key_blob(blob: bytes) -> bool:
    """An AES-256 SIMPLEBLOB for a 2048..8192-bit key (sections 2.5 and 4)."""
    return (blob[:SIMPLEBLOB_PREFIX_LEN] == SIMPLEBLOB_HEADER and len(blob) % 2 == 0
            and MIN_KEY_BLOB <= len(blob) <= MAX_KEY_BLOB)


def read_v1_prefix(first: bytes, source: Readable) -> Preamble:
    """The rest of a version 1 prefix after its ``first`` bytes (at most 80); step 1 of opening."""
    fixed = first + (read_exact(source, FIXED.size - len(first)) if len(first) < FIXED.size else b"")
    if len(fixed) < FIXED.size:
        raise EnvelopeFormatError(f"header: truncated at {len(fixed)} of {FIXED.size} bytes")
    signed = unpack_fixed(fixed)[4] & FLAG_SIGNED
    raw_header = fixed + (_field(source, ID_SIZE, "sender_id") if signed else b"")
    header = Header.parse(raw_header)
    blob_len = _length(source, "key_blob", MIN_KEY_BLOB, MAX_KEY_BLOB, even=True)
    key_blob = _field(source, blob_len, "key_blob")
    if key_blob[:SIMPLEBLOB_PREFIX_LEN] != SIMPLEBLOB_HEADER:
        raise EnvelopeFormatError("key_blob: not a SIMPLEBLOB of a CALG_AES_256 key wrapped with CALG_RSA_KEYX")
    raw = raw_header + be_bytes(blob_len, LENGTH_SIZE) + key_blob
    signature = None
    if header.signed:
        sig_len = _length(source, "signature", MIN_RSA_BYTES, MAX_RSA_BYTES)
        signature = _field(source, sig_len, "signature")
        raw += be_bytes(sig_len, LENGTH_SIZE) + signature
    return Preamble(header, key_blob, signature, raw)


def signed_data(header: Header, key_blob: bytes) -> bytes:
    """The bytes the sender signs (section 6)."""
    return SIGNATURE_CONTEXT + header.to_bytes() + be_bytes(len(key_blob), LENGTH_SIZE) + key_blob


def prefix(header: Header, key_blob: bytes, signature: bytes | None) -> bytes:
    """The bytes before chunk 0 (section 2)."""
    raw = header.to_bytes() + be_bytes(len(key_blob), LENGTH_SIZE) + key_blob
    return raw + (be_bytes(len(signature), LENGTH_SIZE) + signature if signature is not None else b"")


# -- chunks (sections 2.4, 5) ------------------------------------------------------------


def nonce(index: int, last: bool) -> bytes:
    """nonce_i = u88_be(i) ‖ last_i (section 5)."""
    return be_bytes(index, 11) + (b"\x01" if last else b"\x00")


def blocks(source: Readable, size: int) -> Iterator[tuple[bytes, bool]]:
    """``size``-byte blocks and whether each is the last; one byte of look-ahead, no more."""
    block = read_exact(source, size)
    while True:
        if len(block) < size:
            yield block, True
            return
        ahead = read_exact(source, 1)
        if not ahead:
            yield block, True
            return
        yield block, False
        block = ahead + read_exact(source, size - 1)
