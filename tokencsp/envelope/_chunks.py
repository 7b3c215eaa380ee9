"""The payload's hot loop without per-chunk copies: one reused input and one reused output buffer.

``blocks_into`` reads each chunk with ``readinto`` into the same buffer (a
``BytesIO``'s bytes are not even copied, only sliced) and hands out views of
it; ``Chunker`` encrypts or decrypts a chunk into its own reused buffer
(``encrypt_into``/``decrypt_into``, cryptography >= 45, else the allocating
calls).  A view handed out is valid until the next chunk is asked for; sinks
get it through ``write``, which by the io contract must not keep it.
docs/PERFORMANCE.md has the rates before and after.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._wire import Readable
from ._format import TAG_SIZE

__all__ = ["Chunker", "HoldBack", "blocks_into"]

# readinto only where it is the same stream as read: a subclass that overrides read (a
# progress or test reader) must see every byte through its own read.
_NATIVE_READS = frozenset({io.BufferedReader.read, io.BufferedRandom.read, io.FileIO.read, io.BytesIO.read})


def _fill(source: Readable, view: memoryview) -> int:
    """Fill ``view`` from ``source``; fewer bytes only at end of input (short reads are retried)."""
    readinto = getattr(source, "readinto", None) if getattr(type(source), "read", None) in _NATIVE_READS else None
    got, want = 0, len(view)
    while got < want:
        if readinto is not None:
            count = readinto(view[got:]) or 0
        else:
            part = source.read(want - got)
            count = len(part)
            view[got:got + count] = part
        if not count:
            break
        got += count
    return got


def blocks_into(source: Readable, size: int) -> Iterator[tuple[memoryview, bool]]:
    """``_format.blocks`` over one reused buffer: ``size``-byte views and whether each is the last."""
    if type(source) is io.BytesIO:  # exactly: a subclass may override read
        yield from _blocks_in_memory(source, size)
        return
    view = memoryview(bytearray(size + 1))  # the extra byte is the one byte of look-ahead
    filled = _fill(source, view[:size])
    while True:
        if filled < size:
            yield view[:filled], True
            return
        if not _fill(source, view[size:]):
            yield view[:size], True
            return
        yield view[:size], False
        view[0] = view[size]
        filled = 1 + _fill(source, view[1:size])


def _blocks_in_memory(source: io.BytesIO, size: int) -> Iterator[tuple[memoryview, bool]]:
    """Views of the BytesIO's bytes, no copy at all (seal_bytes, open_bytes, in-memory callers).

    getvalue(), not getbuffer(): a BytesIO made from bytes shares them, and getvalue() hands out
    that object, where getbuffer() would copy it first.  The stream position moves as reading
    would move it: past each block and its byte of look-ahead.
    """
    with memoryview(source.getvalue()) as whole:
        start, end = source.tell(), len(whole)
        while True:
            stop = min(start + size, end)
            last = stop >= end
            source.seek(stop if last else stop + 1)
            yield whole[start:stop], last
            if last:
                return
            start = stop


class Chunker:
    """AES-256-GCM over chunks of at most ``chunk_size`` plaintext bytes, into one reused buffer."""

    def __init__(self, key: bytes, ad: bytes, chunk_size: int) -> None:
        self._aead = AESGCM(key)
        self._ad = ad
        self._out = memoryview(bytearray(chunk_size + TAG_SIZE))
        self._into = hasattr(self._aead, "encrypt_into")

    def encrypt(self, nonce: bytes, block: memoryview) -> memoryview | bytes:
        if not self._into:
            return self._aead.encrypt(nonce, block, self._ad)
        out = self._out[:len(block) + TAG_SIZE]
        self._aead.encrypt_into(nonce, block, self._ad, out)
        return out

    def decrypt(self, nonce: bytes, data: memoryview) -> memoryview | bytes | None:
        """The plaintext, or None when the chunk does not authenticate under ``nonce``."""
        if len(data) < TAG_SIZE:
            return None
        try:
            if not self._into:
                return self._aead.decrypt(nonce, data, self._ad)
            out = self._out[:len(data) - TAG_SIZE]
            self._aead.decrypt_into(nonce, data, self._ad, out)
        except InvalidTag:
            if self._into:
                out[:] = bytes(len(out))  # decrypt_into leaves unauthenticated plaintext behind
            return None
        return out


class HoldBack:
    """A reader that never hands out the last ``keep`` bytes of ``source``: a trailer of known length.

    Version 2's trailer (docs/FORMAT.md 9.2) has no length field and follows the
    last chunk, whose end is found by the end of input: the chunks are read
    through this, and once it returned end of input, :meth:`tail` holds the
    trailer -- fewer than ``keep`` bytes when the input was shorter.  At most
    ``keep`` (<= 1024) bytes more than asked for are buffered.
    """

    def __init__(self, source: Readable, keep: int) -> None:
        self._source = source
        self._keep = keep
        self._buffer = bytearray()
        self._ended = False

    def read(self, size: int | None = -1) -> bytes:
        want = None if size is None or size < 0 else size + self._keep
        while not self._ended and (want is None or len(self._buffer) < want):
            part = self._source.read(-1 if want is None else want - len(self._buffer))
            if not part:
                self._ended = True
            else:
                self._buffer += part
        available = max(0, len(self._buffer) - self._keep)
        count = available if size is None or size < 0 else min(size, available)
        out = bytes(self._buffer[:count])
        del self._buffer[:count]
        return out

    def tail(self) -> bytes:
        """The held-back bytes; complete only once :meth:`read` has returned end of input."""
        return bytes(self._buffer)
