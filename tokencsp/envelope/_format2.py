"""Sealed messages to several recipients, version 2 (docs/FORMAT.md section 9): header, entries, key schedule.

Pure: bytes in and out, plus the binary readers handed in (no token, no clock,
no randomness).  ``read_header`` reads either version: the version byte decides.
Rule names (S7.., K1.., R1.., O6c, G1'.., T1..) refer to FORMAT.md section 9.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._wire import Readable, be_bytes, is_u64, read_exact
from ..errors import AuthenticationFailed, EnvelopeFormatError
from ._format import (
    DEFAULT_CHUNK_SIZE,
    FLAG_OAEP,
    FLAG_SIGNED,
    ID_SIZE,
    KEY_SIZE,
    LENGTH_SIZE,
    MAGIC,
    MAX_CHUNK_SIZE,
    MAX_KEY_BLOB,
    MAX_RSA_BYTES,
    MESSAGE_ID_SIZE,
    MIN_CHUNK_SIZE,
    MIN_KEY_BLOB,
    MIN_RSA_BYTES,
    SIMPLEBLOB_HEADER,
    Preamble,
    _field,
    _length,
    read_v1_prefix,
)

__all__ = ["MAX_RECIPIENTS", "VERSION2", "Addressed", "Entry", "Header2", "Preamble2", "derive_keys",
           "read_header", "replay_key2", "signed_data2", "trailer_signed_data2"]

VERSION2 = 2
SUITE2 = 2
MAX_RECIPIENTS = 16  # R2
COMMITMENT_SIZE = 32
PAYLOAD_KEY_LABEL = b"tokencsp sealed message v2 payload key"  # section 9.3
COMMITMENT_LABEL = b"tokencsp sealed message v2 key commitment"
REPLAY_KEY_LABEL = b"tokencsp sealed message v2 replay key\x00"  # section 9.7
# Section 9.5, G3': the prefix and the trailer signature each have their own context, and the
# prefix's is not the one of the header-only draft ("tokencsp sealed message v2 signature").
SIGNATURE_CONTEXT2 = b"tokencsp sealed message v2 prefix signature\x00"
TRAILER_CONTEXT2 = b"tokencsp sealed message v2 trailer signature\x00"

FIXED2 = struct.Struct(">8sBHBI16sQQB")  # magic .. recipient_count: 49 bytes
_START = len(MAGIC) + 1  # magic and version: enough to tell the versions apart


# -- header (section 9.2) ----------------------------------------------------------------


@dataclass(frozen=True)
class Header2:
    """The fixed part of a version 2 message; ``to_bytes``/``parse`` are exact inverses."""

    message_id: bytes
    timestamp_ms: int
    recipient_count: int
    serial: int = 0
    sender_id: bytes | None = None
    oaep: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    version: int = VERSION2
    suite: int = SUITE2

    def __post_init__(self) -> None:
        checks = (
            (self.version == VERSION2, f"version must be {VERSION2}"),
            (self.suite == SUITE2, f"suite must be {SUITE2}"),
            (MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE,
             f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, not {self.chunk_size}"),
            (1 <= self.recipient_count <= MAX_RECIPIENTS, f"recipient_count must be 1..{MAX_RECIPIENTS}"),
            (isinstance(self.message_id, bytes) and len(self.message_id) == MESSAGE_ID_SIZE,
             "message_id must be 16 bytes"),
            (self.sender_id is None or (isinstance(self.sender_id, bytes) and len(self.sender_id) == ID_SIZE),
             "sender_id must be 32 bytes or None"),
            (is_u64(self.timestamp_ms), "timestamp_ms must be an unsigned 64-bit integer"),
            (is_u64(self.serial), "serial must be an unsigned 64-bit integer"),
        )
        problem = next((message for ok, message in checks if not ok), None)
        if problem:
            raise ValueError(problem)

    @property
    def signed(self) -> bool:
        return self.sender_id is not None

    @property
    def timestamp(self) -> float:
        return self.timestamp_ms / 1000

    @property
    def flags(self) -> int:
        return (FLAG_OAEP if self.oaep else 0) | (FLAG_SIGNED if self.signed else 0)

    def to_bytes(self) -> bytes:
        fixed = FIXED2.pack(MAGIC, self.version, self.suite, self.flags, self.chunk_size, self.message_id,
                            self.timestamp_ms, self.serial, self.recipient_count)
        return fixed + (self.sender_id or b"")

    @classmethod
    def parse(cls, data: bytes) -> Header2:
        """Exactly one header (49 bytes, 81 when signed); EnvelopeFormatError names the bad field."""
        data = bytes(data)
        message_id, ts, serial, count, flags, chunk_size = _unpack_fixed2(data)
        size = FIXED2.size + (ID_SIZE if flags & FLAG_SIGNED else 0)
        if len(data) != size:
            raise EnvelopeFormatError(f"sender_id: header is {len(data)} bytes, expected {size}")
        sender = data[FIXED2.size:] if flags & FLAG_SIGNED else None
        return cls(message_id, ts, count, serial, sender, bool(flags & FLAG_OAEP), chunk_size)


def _unpack_fixed2(data: bytes) -> tuple[bytes, int, int, int, int, int]:
    """Check the 49 fixed bytes field by field (O1, O2, R2: the count before any entry is read)."""
    if len(data) < FIXED2.size:
        raise EnvelopeFormatError(f"header: truncated at {len(data)} of {FIXED2.size} bytes")
    magic, version, suite, flags, chunk_size, message_id, ts, serial, count = FIXED2.unpack_from(data)
    if magic != MAGIC:
        raise EnvelopeFormatError("magic: not a tokencsp sealed message")
    if version != VERSION2:
        raise EnvelopeFormatError(f"version: {version} is not supported (expected 1 or {VERSION2})")
    if suite != SUITE2:
        raise EnvelopeFormatError(f"suite: {suite} is not supported with version 2 (expected {SUITE2})")
    if flags & ~(FLAG_OAEP | FLAG_SIGNED):
        raise EnvelopeFormatError(f"flags: unknown bits 0x{flags:02x}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise EnvelopeFormatError(f"chunk_size: {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    if not 1 <= count <= MAX_RECIPIENTS:
        raise EnvelopeFormatError(f"recipient_count: {count} outside 1..{MAX_RECIPIENTS}")
    return message_id, ts, serial, count, flags, chunk_size


# -- entries, commitment, prefix (sections 9.2, 9.5) -------------------------------------


class Entry(NamedTuple):
    """One recipient's key-transport entry: its key id and the SIMPLEBLOB of the file key to it."""

    recipient_id: bytes
    key_blob: bytes

    def to_bytes(self) -> bytes:
        return self.recipient_id + be_bytes(len(self.key_blob), LENGTH_SIZE) + self.key_blob


def entries_problem(entries: tuple[Entry, ...]) -> str | None:
    """What makes ``entries`` unusable in a message (S8, R1, R2), or None."""
    if not 1 <= len(entries) <= MAX_RECIPIENTS:
        return f"a version 2 message has 1..{MAX_RECIPIENTS} recipients, not {len(entries)}"
    for before, entry in itertools.pairwise(entries):
        if entry.recipient_id <= before.recipient_id:
            return "recipient entries must be in strictly ascending key id order, without duplicates"
    for entry in entries:
        if len(entry.recipient_id) != ID_SIZE:
            return "recipient_id must be 32 bytes"
        blob = entry.key_blob
        if (blob[:len(SIMPLEBLOB_HEADER)] != SIMPLEBLOB_HEADER or len(blob) % 2
                or not MIN_KEY_BLOB <= len(blob) <= MAX_KEY_BLOB):
            return "key_blob must be an AES-256 SIMPLEBLOB for a 2048..8192-bit key"
    return None


def signed_data2(header: Header2, entries: tuple[Entry, ...], commitment: bytes) -> bytes:
    """What the prefix signature signs (section 9.5): header, every entry and the commitment (G1', G2')."""
    return SIGNATURE_CONTEXT2 + header.to_bytes() + b"".join(e.to_bytes() for e in entries) + commitment


def trailer_signed_data2(message_hash: bytes) -> bytes:
    """What the trailer signature signs (section 9.5, T1-T3): SHA-256 of every byte before the trailer."""
    if len(message_hash) != 32:
        raise ValueError("message_hash must be a 32-byte SHA-256 digest")
    return TRAILER_CONTEXT2 + message_hash


def prefix2(header: Header2, entries: tuple[Entry, ...], commitment: bytes, signature: bytes | None) -> bytes:
    """The bytes before chunk 0 (section 9.2)."""
    raw = header.to_bytes() + b"".join(e.to_bytes() for e in entries) + commitment
    return raw + (be_bytes(len(signature), LENGTH_SIZE) + signature if signature is not None else b"")


# -- key schedule (section 9.3) and replay key (9.7) -------------------------------------


def _hkdf(file_key: bytes, salt: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=label).derive(file_key)


def derive_keys(file_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """(payload_key, commitment) from the file key (S7)."""
    return _hkdf(file_key, message_id, PAYLOAD_KEY_LABEL), _hkdf(file_key, message_id, COMMITMENT_LABEL)


def replay_key2(recipient_id: bytes, ad: bytes) -> bytes:
    """O6c: the authenticated prefix (through AD) and the opener's own recipient id."""
    return hashlib.sha256(REPLAY_KEY_LABEL + recipient_id + ad).digest()


class Preamble2(NamedTuple):
    """A version 2 prefix, parsed: what ``tokencsp inspect`` shows."""

    header: Header2
    entries: tuple[Entry, ...]
    commitment: bytes
    signature: bytes | None
    raw: bytes  # the exact prefix bytes: AD = SHA-256(raw) (R4)

    @property
    def recipients(self) -> tuple[bytes, ...]:
        return tuple(entry.recipient_id for entry in self.entries)

    def for_recipient(self, key_id: bytes) -> Addressed | None:
        """Step 2: the one entry for ``key_id`` (R3: no other is ever used), or None."""
        entry = next((e for e in self.entries if e.recipient_id == key_id), None)
        return None if entry is None else Addressed(self, entry)

    def signed_data(self) -> bytes:
        return signed_data2(self.header, self.entries, self.commitment)

    @property
    def trailer_length(self) -> int:
        """Bytes of trailer after the last chunk (9.2): the prefix signature's length when signed, else 0."""
        return len(self.signature) if self.signature is not None else 0


class Addressed(NamedTuple):
    """A version 2 prefix as one recipient opens it: its own entry picked out (step 2)."""

    whole: Preamble2
    entry: Entry

    @property
    def header(self) -> Header2:
        return self.whole.header

    @property
    def key_blob(self) -> bytes:
        return self.entry.key_blob

    @property
    def signature(self) -> bytes | None:
        return self.whole.signature

    @property
    def raw(self) -> bytes:
        return self.whole.raw

    @property
    def recipient_id(self) -> bytes:
        return self.entry.recipient_id

    @property
    def recipients(self) -> tuple[bytes, ...]:
        return self.whole.recipients

    def signed_data(self) -> bytes:
        return self.whole.signed_data()

    @property
    def trailer_length(self) -> int:
        return self.whole.trailer_length

    def payload_key(self, file_key: bytes) -> bytes:
        """Step 5a (K1, K2): the payload key, once the file key matches the commitment.

        A mismatch -- a wrong or substitute file key, or a salamander's other
        entry -- is the one AuthenticationFailed a corrupted chunk gets, before
        any chunk is read.
        """
        payload_key, commitment = derive_keys(file_key, self.header.message_id)
        if not hmac.compare_digest(commitment, self.whole.commitment):
            raise AuthenticationFailed()
        return payload_key

    def replay_key(self, ad: bytes) -> bytes:
        return replay_key2(self.entry.recipient_id, ad)

    def serial_scope(self, sender_id: bytes) -> bytes:
        """O7a: serials count per sender *and* recipient key; every recipient sees the one serial."""
        return sender_id + self.entry.recipient_id


def _read_v2_prefix(first: bytes, source: Readable) -> Preamble2:
    fixed = first + read_exact(source, FIXED2.size - len(first))
    flags = _unpack_fixed2(fixed)[4]
    raw_header = fixed + (_field(source, ID_SIZE, "sender_id") if flags & FLAG_SIGNED else b"")
    header = Header2.parse(raw_header)
    entries: list[Entry] = []
    for index in range(header.recipient_count):
        recipient_id = _field(source, ID_SIZE, f"recipient_id[{index}]")
        if entries and recipient_id <= entries[-1].recipient_id:  # R1, before the blob is read
            raise EnvelopeFormatError(f"recipient_id[{index}]: not above the one before "
                                      "(entries must be in strictly ascending order, no duplicates)")
        blob_len = _length(source, "key_blob", MIN_KEY_BLOB, MAX_KEY_BLOB, even=True)  # R2, O2
        key_blob = _field(source, blob_len, f"key_blob[{index}]")
        if key_blob[:len(SIMPLEBLOB_HEADER)] != SIMPLEBLOB_HEADER:
            raise EnvelopeFormatError(f"key_blob[{index}]: not a SIMPLEBLOB of a CALG_AES_256 key wrapped "
                                      "with CALG_RSA_KEYX")
        entries.append(Entry(recipient_id, key_blob))
    commitment = _field(source, COMMITMENT_SIZE, "commitment")
    signature = None
    if header.signed:
        signature = _field(source, _length(source, "signature", MIN_RSA_BYTES, MAX_RSA_BYTES), "signature")
    frozen = tuple(entries)
    return Preamble2(header, frozen, commitment, signature, prefix2(header, frozen, commitment, signature))


def read_header(source: Readable) -> Preamble | Preamble2:
    """Parse a prefix of either version without decrypting (step 1); the version byte decides."""
    first = read_exact(source, _START)
    if len(first) == _START and first[:len(MAGIC)] == MAGIC and first[-1] == VERSION2:
        return _read_v2_prefix(first, source)
    return read_v1_prefix(first, source)
