"""DER/BER, PEM (``-----BEGIN CMS-----``) or S/MIME (``smime.p7m``) input, as one BER byte stream.

:func:`decoded` looks at the first bytes: a SEQUENCE tag is binary BER and passes through; text is
PEM or a MIME entity whose base64 body is decoded line by line, so a large S/MIME file streams in
constant memory as well.  Pure: bytes come from the ``read`` callable.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

from ..errors import CmsFormatError
from .ber import CHUNK, Read

__all__ = ["decoded"]

_MAX_LINE = 1 << 16
_MIME_TYPES = (b"application/pkcs7-mime", b"application/x-pkcs7-mime")


class _Lines:
    def __init__(self, read: Read, head: bytes) -> None:
        self._read = read
        self._buf = bytearray(head)
        self._eof = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            cut = self._buf.find(b"\n")
            while cut < 0 and not self._eof:
                data = self._read(CHUNK)
                if not data:
                    self._eof = True
                else:
                    self._buf += data
                    cut = self._buf.find(b"\n")
                if len(self._buf) > _MAX_LINE and cut < 0:
                    raise CmsFormatError("a text line of the CMS input is too long")
            if cut < 0:
                if not self._buf:
                    return
                line, self._buf = bytes(self._buf), bytearray()
            else:
                line = bytes(self._buf[:cut])
                del self._buf[:cut + 1]
            yield line.rstrip(b"\r")


def _base64(lines: Iterator[bytes], *, pem: bool) -> Iterator[bytes]:
    pending = b""
    for line in lines:
        text = line.strip()
        if pem and text.startswith(b"-----END"):
            break
        if not pem and (not text or text.startswith(b"--")):
            break
        pending += text
        whole = len(pending) // 4 * 4
        if whole:
            try:
                yield base64.b64decode(pending[:whole], validate=True)
            except binascii.Error:
                raise CmsFormatError("the CMS input's base64 is corrupt") from None
            pending = pending[whole:]
    if pending:
        raise CmsFormatError("the CMS input's base64 is truncated")


def _mime_body(lines: Iterator[bytes]) -> Iterator[bytes]:
    headers: list[bytes] = []
    for line in lines:
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1] += line
        else:
            headers.append(line)
        if len(headers) > 100:
            raise CmsFormatError("too many MIME header lines")
    fields = {}
    for header in headers:
        name, _, value = header.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if not fields.get(b"content-type", b"").startswith(_MIME_TYPES):
        raise CmsFormatError("not CMS: neither BER, PEM nor an S/MIME application/pkcs7-mime entity")
    if fields.get(b"content-transfer-encoding", b"base64") != b"base64":
        raise CmsFormatError("the S/MIME entity is not base64-encoded")
    return _base64(lines, pem=False)


def decoded(read: Read) -> Read:
    """A ``read`` callable giving the BER of the CMS message in ``read``'s DER, PEM or S/MIME."""
    head = read(CHUNK)
    if head[:1] == b"\x30":
        pending = [head]

        def passthrough(n: int) -> bytes:
            return pending.pop() if pending else read(n)
        return passthrough
    lines = iter(_Lines(read, head))
    start = head.lstrip()[:11]
    if start.startswith(b"-----BEGIN "):
        for line in lines:
            if line.startswith(b"-----BEGIN "):
                if line.strip() not in (b"-----BEGIN CMS-----", b"-----BEGIN PKCS7-----"):
                    raise CmsFormatError("a PEM file, but not -----BEGIN CMS----- or PKCS7")
                break
        pieces = _base64(lines, pem=True)
    else:
        pieces = _mime_body(lines)
    buffer = bytearray()

    def decoded_read(n: int) -> bytes:
        while len(buffer) < n:
            piece = next(pieces, None)
            if piece is None:
                break
            buffer.extend(piece)
        out = bytes(buffer[:n])
        del buffer[:n]
        return out
    return decoded_read
