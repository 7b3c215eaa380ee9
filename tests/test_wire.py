"""tokencsp._wire: the shared readers every wire format uses (pure: no token)."""

from __future__ import annotations

import io

import pytest

from tokencsp import _wire as W
from tokencsp.errors import BlobFormatError


def test_take_returns_field_and_rest_without_copying() -> None:
    data = W.view(b"abcdef")
    field, rest = W.take(data, 2, "x")
    assert (bytes(field), bytes(rest)) == (b"ab", b"cdef")
    assert field.obj is data.obj  # a slice of the same buffer


@pytest.mark.parametrize("size", [4, 7, 100])
def test_short_read_is_typed_and_names_the_field(size: int) -> None:
    with pytest.raises(W.Truncated, match=f"truncated modulus: 3 bytes, need {size}") as info:
        W.take(W.view(b"abc"), size, "modulus")
    assert (info.value.what, info.value.have, info.value.need) == ("modulus", 3, size)
    assert isinstance(info.value, ValueError)


def test_exact_size_is_not_short() -> None:
    field, rest = W.take(W.view(b"abc"), 3, "x")
    assert bytes(field) == b"abc" and len(rest) == 0
    W.check_empty(rest, "x")


def test_trailing_bytes_counted() -> None:
    with pytest.raises(W.TrailingBytes, match="2 trailing bytes after the key"):
        W.check_empty(W.view(b"zz"), "key")


def test_integers_in_both_byte_orders() -> None:
    data = W.view(bytes.fromhex("0102030405"))
    assert W.uint_be(data, 2, "x")[0] == 0x0102
    assert W.uint_le(data, 2, "x")[0] == 0x0201
    value, rest = W.uint_be(data, 4, "x")
    assert value == 0x01020304 and bytes(rest) == b"\x05"
    assert W.be_bytes(0x0102, 2) == b"\x01\x02" and W.le_bytes(0x0102, 2) == b"\x02\x01"
    assert W.from_be(b"\x01\x02") == 0x0102 and W.from_le(b"\x01\x02") == 0x0201
    with pytest.raises(W.Truncated):
        W.uint_le(data, 8, "x")


def test_length_prefixed_checks_the_maximum_before_slicing() -> None:
    body, rest = W.take_prefixed(W.view(b"\x00\x03abcz"), 2, "name")
    assert (bytes(body), bytes(rest)) == (b"abc", b"z")
    with pytest.raises(W.WireError, match="name length 3 exceeds 2"):
        W.take_prefixed(W.view(b"\x00\x03abc"), 2, "name", maximum=2)
    with pytest.raises(W.Truncated, match="truncated name: 1 bytes, need 3"):
        W.take_prefixed(W.view(b"\x00\x03a"), 2, "name")
    with pytest.raises(W.Truncated, match="truncated name length"):
        W.take_prefixed(W.view(b"\x00"), 2, "name")
    body, _ = W.take_prefixed(W.view(b"\x02\x00ab"), 2, "le", order="little")
    assert bytes(body) == b"ab"


def test_view_refuses_non_bytes_and_snapshots_bytearrays() -> None:
    with pytest.raises(TypeError):
        W.view("text")  # type: ignore[arg-type]
    source = bytearray(b"abc")
    data = W.view(source)
    source[0] = 0
    assert bytes(data) == b"abc"
    assert data.readonly


def test_reraise_as_keeps_the_message_and_the_callers_type() -> None:
    with pytest.raises(BlobFormatError, match="truncated BLOBHEADER: 1 bytes, need 8"), W.reraise_as(BlobFormatError):
        W.take(W.view(b"\x01"), 8, "BLOBHEADER")


def test_u64_bounds() -> None:
    assert W.is_u64(0) and W.is_u64(W.U64_MAX)
    assert not W.is_u64(W.U64_MAX + 1) and not W.is_u64(-1) and not W.is_u64(True) and not W.is_u64(1.0)


class _Trickle(io.RawIOBase):
    """A pipe that hands out one byte per read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out, self._data = self._data[:1], self._data[1:]
        return out


def test_read_exact_retries_short_reads_and_stops_at_eof() -> None:
    assert W.read_exact(_Trickle(b"abcdef"), 4) == b"abcd"
    assert W.read_exact(_Trickle(b"ab"), 4) == b"ab"
    assert W.read_exact(io.BytesIO(b""), 0) == b""
