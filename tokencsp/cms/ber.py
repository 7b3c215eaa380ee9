"""A streaming BER reader: CMS headers as whole elements, the encrypted content in chunks.

``openssl cms -stream`` writes indefinite-length BER (``30 80 ... 00 00``) with the content as a
constructed OCTET STRING of many pieces, so no library that wants the whole message in memory can
open a large one.  :class:`BerReader` pulls bytes from a ``read(n)`` callable and keeps only the
element at hand: containers are *entered* (their end is a byte position or an end-of-contents
marker), small elements are read whole (capped), and an OCTET STRING's value is yielded piece by
piece.  Pure: bytes come from the callable the caller hands in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import CmsFormatError

__all__ = ["BerReader", "Container", "Header", "Read"]

Read = Callable[[int], bytes]

#: No CMS header element (recipient infos, algorithm parameters, attributes) is anywhere near this.
MAX_ELEMENT = 1 << 20
CHUNK = 1 << 16
_MAX_DEPTH = 32


@dataclass(frozen=True)
class Header:
    tag: bytes  # identifier octets as on the wire (first byte: class, constructed bit, number)
    length: int | None  # None: indefinite
    raw: bytes  # identifier and length octets

    @property
    def constructed(self) -> bool:
        return bool(self.tag[0] & 0x20)


@dataclass(frozen=True)
class Container:
    end: int | None  # byte position after the last content byte; None: ends at 00 00


class BerReader:
    def __init__(self, read: Read) -> None:
        self._read = read
        self._buf = bytearray()
        self.pos = 0  # bytes consumed

    # -- bytes -----------------------------------------------------------------

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            data = self._read(max(n - len(self._buf), CHUNK))
            if not data:
                return False
            self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise CmsFormatError("the CMS message is truncated")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.pos += n
        return out

    def peek(self, n: int = 1) -> bytes:
        self._fill(n)
        return bytes(self._buf[:n])

    def at_end_of_input(self) -> bool:
        return not self._fill(1)

    # -- elements ----------------------------------------------------------------

    def header(self) -> Header:
        first = self._take(1)
        tag = first
        if first[0] & 0x1F == 0x1F:  # high tag number form
            while True:
                octet = self._take(1)
                tag += octet
                if not octet[0] & 0x80:
                    break
                if len(tag) > 5:
                    raise CmsFormatError("a BER tag is too long")
        lead = self._take(1)
        raw = tag + lead
        if lead[0] < 0x80:
            length: int | None = lead[0]
        elif lead[0] == 0x80:
            if not first[0] & 0x20:
                raise CmsFormatError("indefinite length on a primitive BER element")
            length = None
        else:
            count = lead[0] & 0x7F
            if count > 8:
                raise CmsFormatError("a BER length is too long")
            octets = self._take(count)
            raw += octets
            length = int.from_bytes(octets, "big")
        return Header(tag, length, raw)

    def _expect(self, tag: int) -> Header:
        head = self.header()
        if head.tag != bytes([tag]):
            raise CmsFormatError(f"unexpected BER element: tag {head.tag.hex()} where {tag:02x} belongs")
        return head

    def enter(self, tag: int) -> Container:
        """Read a constructed element's header; the caller reads its contents, then :meth:`leave`."""
        head = self._expect(tag)
        if not head.constructed:
            raise CmsFormatError(f"BER element {tag:02x} must be constructed")
        return Container(None if head.length is None else self.pos + head.length)

    def more(self, box: Container) -> bool:
        """Whether ``box`` has another element (an end-of-contents marker is left for :meth:`leave`)."""
        if box.end is None:
            return self.peek(2) != b"\x00\x00"
        if self.pos > box.end:
            raise CmsFormatError("a BER element overruns its container")
        return self.pos < box.end

    def leave(self, box: Container) -> None:
        if box.end is None:
            if self._take(2) != b"\x00\x00":
                raise CmsFormatError("a BER container has trailing elements")
        elif self.pos != box.end:
            raise CmsFormatError("a BER container has trailing elements")

    def peek_tag(self) -> int | None:
        data = self.peek(1)
        return data[0] if data else None

    def element(self, tag: int | None = None, limit: int = MAX_ELEMENT) -> bytes:
        """A whole element (identifier, length, contents) as on the wire, at most ``limit`` bytes."""
        head = self.header() if tag is None else self._expect(tag)
        return head.raw + self._contents(head, limit - len(head.raw), 0)

    def _contents(self, head: Header, limit: int, depth: int) -> bytes:
        if depth > _MAX_DEPTH:
            raise CmsFormatError("BER nesting too deep")
        if head.length is not None:
            if head.length > limit:
                raise CmsFormatError("a CMS header element is too large")
            return self._take(head.length)
        out = bytearray()
        while self.peek(2) != b"\x00\x00":
            inner = self.header()
            out += inner.raw + self._contents(inner, limit - len(out) - len(inner.raw), depth + 1)
            if len(out) > limit:
                raise CmsFormatError("a CMS header element is too large")
        out += self._take(2)
        return bytes(out)

    def octets(self, head: Header, depth: int = 0) -> Iterator[bytes]:
        """The value of an OCTET STRING-like element whose header was read, in pieces."""
        if not head.constructed:
            remaining = head.length or 0
            while remaining:
                piece = self._take(min(remaining, CHUNK))
                remaining -= len(piece)
                yield piece
            return
        if depth > _MAX_DEPTH:
            raise CmsFormatError("BER nesting too deep")
        box = Container(None if head.length is None else self.pos + head.length)
        while self.more(box):
            inner = self.header()
            if inner.tag != b"\x04":
                raise CmsFormatError("a constructed OCTET STRING holds something else")
            yield from self.octets(inner, depth + 1)
        self.leave(box)
