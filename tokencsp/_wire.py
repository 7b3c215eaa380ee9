"""Shared byte readers and constants for tokencsp's wire formats.

Pure: no I/O, no token.  Readers work on a ``memoryview`` and return
``(value, rest)``; they raise :class:`Truncated` on a short read and
:func:`check_empty` raises :class:`TrailingBytes`, both :class:`WireError`
(a ``ValueError``).  A format module turns them into its own error class at
its boundary with :func:`reraise_as`, so the reader code is the same
everywhere while each format keeps its documented error type::

    with reraise_as(BlobFormatError):
        header, rest = take(view(data), 8, "BLOBHEADER")
        check_empty(rest, "BLOBHEADER")

Integer helpers state their byte order in their name: CryptoAPI BLOBs are
little-endian, tokencsp's own formats (sealed messages, three-phase, net)
big-endian.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

__all__ = [
    "SIMPLEBLOB_PREFIX_LEN",
    "U16_MAX",
    "U32_MAX",
    "U64_MAX",
    "Buffer",
    "Readable",
    "TrailingBytes",
    "Truncated",
    "WireError",
    "be_bytes",
    "check_empty",
    "from_be",
    "from_le",
    "is_u64",
    "le_bytes",
    "read_exact",
    "reraise_as",
    "take",
    "take_bytes",
    "take_prefixed",
    "uint_be",
    "uint_le",
    "view",
]

Buffer = bytes | bytearray | memoryview

U16_MAX = 2**16 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# A SIMPLEBLOB's bytes before the RSA ciphertext: BLOBHEADER (bType, bVersion,
# reserved, aiKeyAlg: 8 bytes) and the wrapping ALG_ID (4 bytes); docs/BLOBS.md.
SIMPLEBLOB_PREFIX_LEN = 12


class WireError(ValueError):
    """Bytes that do not have the shape a reader asked for."""


class Truncated(WireError):
    """Fewer bytes left than a field needs."""

    def __init__(self, what: str, have: int, need: int) -> None:
        super().__init__(f"truncated {what}: {have} bytes, need {need}")
        self.what, self.have, self.need = what, have, need


class TrailingBytes(WireError):
    """Bytes left over after the last field."""

    def __init__(self, what: str, count: int) -> None:
        super().__init__(f"{count} trailing bytes after the {what}")
        self.what, self.count = what, count


def view(data: Buffer) -> memoryview:
    """A read-only memoryview of ``data`` (a copy of a bytearray, so later edits cannot race a parse)."""
    if isinstance(data, bytearray):
        data = bytes(data)
    if not isinstance(data, (bytes, memoryview)):
        raise TypeError(f"expected bytes, not {type(data).__name__}")
    return memoryview(data).toreadonly().cast("B")


def take(data: memoryview, size: int, what: str) -> tuple[memoryview, memoryview]:
    """The first ``size`` bytes and the rest."""
    if size < 0:
        raise ValueError("size must be >= 0")
    if len(data) < size:
        raise Truncated(what, len(data), size)
    return data[:size], data[size:]


def take_bytes(data: memoryview, size: int, what: str) -> tuple[bytes, memoryview]:
    """Like :func:`take`, the field copied out as ``bytes``."""
    field, rest = take(data, size, what)
    return bytes(field), rest


def uint_be(data: memoryview, size: int, what: str) -> tuple[int, memoryview]:
    """A ``size``-byte unsigned big-endian integer."""
    field, rest = take(data, size, what)
    return int.from_bytes(field, "big"), rest


def uint_le(data: memoryview, size: int, what: str) -> tuple[int, memoryview]:
    """A ``size``-byte unsigned little-endian integer."""
    field, rest = take(data, size, what)
    return int.from_bytes(field, "little"), rest


def take_prefixed(data: memoryview, size: int, what: str, *, order: Literal["big", "little"] = "big",
                  maximum: int | None = None) -> tuple[memoryview, memoryview]:
    """A field preceded by its ``size``-byte length; ``maximum`` is checked before the body is sliced."""
    length_field, rest = take(data, size, f"{what} length")
    length = int.from_bytes(length_field, order)
    if maximum is not None and length > maximum:
        raise WireError(f"{what} length {length} exceeds {maximum}")
    return take(rest, length, what)


def check_empty(rest: memoryview | bytes, what: str) -> None:
    """Refuse bytes after the last field of ``what``."""
    if len(rest):
        raise TrailingBytes(what, len(rest))


def be_bytes(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def le_bytes(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def from_be(data: Buffer) -> int:
    return int.from_bytes(data, "big")


def from_le(data: Buffer) -> int:
    return int.from_bytes(data, "little")


def is_u64(value: object) -> bool:
    """An int (not a bool) that fits in an unsigned 64-bit field."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


@contextlib.contextmanager
def reraise_as(error: Callable[[str], Exception]) -> Iterator[None]:
    """Turn a :class:`WireError` raised inside the block into ``error(message)``."""
    try:
        yield
    except WireError as exc:
        raise error(str(exc)) from None


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def read_exact(source: Readable, size: int) -> bytes:
    """Up to ``size`` bytes from a stream; fewer only at end of input (short pipe reads are retried)."""
    parts: list[bytes] = []
    want = size
    while want > 0:
        part = source.read(want)
        if not part:
            break
        parts.append(part)
        want -= len(part)
    return b"".join(parts)
