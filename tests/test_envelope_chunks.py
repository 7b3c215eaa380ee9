"""The payload loop's reused buffers (tokencsp/envelope/_chunks.py): same bytes as the plain calls.

No token: the chunker and the block reader are checked against cryptography's allocating AESGCM
calls and against ``_format.blocks``, including the fallback for cryptography < 45 (no
encrypt_into/decrypt_into) and readers that only have ``read``.
"""

from __future__ import annotations

import io
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokencsp.envelope._chunks import Chunker, blocks_into
from tokencsp.envelope._format import TAG_SIZE, blocks, nonce


class ReadOnly:
    """A source with read() only, answering in short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 7) if size > 0 else size)


class CountingBytesIO(io.BytesIO):
    """A BytesIO whose read is overridden: readinto must not bypass it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.seen = 0

    def read(self, size: int | None = -1) -> bytes:
        part = super().read(size)
        self.seen += len(part)
        return part


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 48, 100])
@pytest.mark.parametrize("source", [io.BytesIO, ReadOnly, CountingBytesIO])
def test_blocks_into_yields_what_blocks_yields(size, source):
    data = os.urandom(size)
    got = [(bytes(view), last) for view, last in blocks_into(source(data), 16)]
    assert got == list(blocks(io.BytesIO(data), 16))


@pytest.mark.parametrize("size", [0, 5, 16, 33])
def test_blocks_from_a_file_and_the_stream_position_match_plain_reads(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(b"head" + data)
    with open(tmp_path / "f", "rb") as handle:  # BufferedReader: the readinto path
        handle.read(4)
        assert [(bytes(v), last) for v, last in blocks_into(handle, 16)] == list(blocks(io.BytesIO(data), 16))
    # BytesIO is sliced in place; after each block the position is where reading would have left it.
    ours, theirs = io.BytesIO(b"head" + data), io.BytesIO(b"head" + data)
    ours.read(4), theirs.read(4)
    for (_, mine_last), (_, their_last) in zip(blocks_into(ours, 16), blocks(theirs, 16), strict=True):
        assert ours.tell() == theirs.tell() and mine_last == their_last


def test_a_reader_that_overrides_read_sees_every_byte():
    data = os.urandom(1000)
    reader = CountingBytesIO(data)
    assert b"".join(bytes(view) for view, _ in blocks_into(reader, 64)) == data
    assert reader.seen == len(data)


@pytest.mark.parametrize("into", [True, False], ids=["encrypt_into", "allocating"])
def test_chunker_matches_plain_aesgcm(into):
    key, ad = AESGCM.generate_key(256), os.urandom(32)
    chunker = Chunker(key, ad, 64)
    chunker._into = into  # the path taken with cryptography < 45
    plain = AESGCM(key)
    for index, size in enumerate((0, 1, 63, 64)):
        block = memoryview(os.urandom(size))
        sealed = bytes(chunker.encrypt(nonce(index, False), block))
        assert sealed == plain.encrypt(nonce(index, False), bytes(block), ad)
        assert bytes(chunker.decrypt(nonce(index, False), memoryview(sealed))) == bytes(block)


@pytest.mark.parametrize("into", [True, False], ids=["decrypt_into", "allocating"])
def test_a_bad_chunk_is_none_and_leaves_no_plaintext(into):
    key, ad = AESGCM.generate_key(256), os.urandom(32)
    chunker = Chunker(key, ad, 64)
    chunker._into = into
    secret = b"s" * 40
    sealed = bytearray(AESGCM(key).encrypt(nonce(0, True), secret, ad))
    sealed[0] ^= 1
    assert chunker.decrypt(nonce(0, True), memoryview(bytes(sealed))) is None
    assert secret[:8] not in bytes(chunker._out)  # decrypt_into's unauthenticated output is wiped
    assert chunker.decrypt(nonce(0, True), memoryview(b"short")) is None
    assert len(sealed) == len(secret) + TAG_SIZE
