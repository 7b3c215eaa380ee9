"""Decode a raw RSA block (CKM_RSA_X_509 output) on the host, for a key length known in advance.

The decrypt path for card keys (CKA_DECRYPT without CKA_UNWRAP) asks the
token for raw RSA only, so the token never judges the padding; this module
does, in the style implicit rejection needs:

* the expected message length comes from the ALG_ID, so the position of
  every field is fixed and nothing is searched for: no index, loop bound or
  early exit depends on the block's content;
* every check is folded into one accumulator with integer operations, and
  the result is chosen between the decoded key and the caller's substitute
  with a mask, not a branch.

Python gives no constant-time guarantee (big-integer and bytes operations
are not audited for it), which is why every import is also padded to the
deadline (tokencsp.implicit).  Pure: no I/O, no token.
"""

from __future__ import annotations

import hashlib

__all__ = ["OAEP_HASHES", "decode_oaep", "decode_oaep_sha1", "decode_pkcs1_v15", "select"]

#: The OAEP hashes decoded here (MGF1 over the same hash, empty label): hashlib names.
OAEP_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512")
_MIN_PS = 8  # RFC 8017 7.2.2: at least eight padding bytes


def _nonzero(value: int) -> int:
    """1 when 0 <= value < 2**16 is non-zero, else 0, without a branch."""
    return ((-value) >> 16) & 1


def select(ok: int, value: bytes, substitute: bytes) -> bytes:
    """``value`` when ``ok`` is 1, ``substitute`` when it is 0 (same length), by masking."""
    mask = -ok & 0xFF
    return bytes((v & mask) | (s & ~mask & 0xFF) for v, s in zip(value, substitute, strict=True))


def decode_pkcs1_v15(block: bytes, length: int, substitute: bytes) -> tuple[int, bytes]:
    """EME-PKCS1-v1_5 decoding of ``block`` (k bytes) for a ``length``-byte message.

    Returns ``(ok, key)``: ``ok`` is 1 and ``key`` the message when the block
    is 00 02 PS 00 M with PS at least 8 non-zero bytes and M exactly
    ``length`` bytes; otherwise ``ok`` is 0 and ``key`` is ``substitute``.
    """
    k = len(block)
    if len(substitute) != length:
        raise ValueError("the substitute must have the message length")
    separator = k - length - 1
    if separator < 2 + _MIN_PS:
        return 0, bytes(substitute)  # a length no block of this modulus can carry: public, not secret
    bad = block[0] | (block[1] ^ 2) | block[separator]
    for byte in block[2:separator]:
        bad |= 1 - _nonzero(byte)
    ok = 1 - _nonzero(bad)
    return ok, select(ok, block[separator + 1:], substitute)


def _mgf1(hash_name: str, seed: bytes, length: int) -> bytes:
    size = hashlib.new(hash_name).digest_size
    blocks = (length + size - 1) // size
    out = b"".join(hashlib.new(hash_name, seed + i.to_bytes(4, "big")).digest() for i in range(blocks))
    return out[:length]


def decode_oaep(block: bytes, length: int, substitute: bytes, hash_name: str = "sha1") -> tuple[int, bytes]:
    """EME-OAEP decoding with ``hash_name`` (MGF1 over the same hash, empty label) for a ``length``-byte message.

    The block is 00 maskedSeed maskedDB; DB must be lHash 00..00 01 M with M
    exactly ``length`` bytes.  Returns ``(ok, key)`` as :func:`decode_pkcs1_v15`.
    The hash is the message's public algorithm identifier, never the block's.
    """
    if hash_name not in OAEP_HASHES:
        raise ValueError(f"unknown OAEP hash {hash_name!r}")
    k = len(block)
    if len(substitute) != length:
        raise ValueError("the substitute must have the message length")
    h_len = hashlib.new(hash_name).digest_size
    db_len = k - h_len - 1
    one = db_len - length - 1  # where the 01 separator must be
    if one < h_len:
        return 0, bytes(substitute)  # a length no block of this modulus can carry: public, not secret
    masked_seed, masked_db = block[1:1 + h_len], block[1 + h_len:]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1(hash_name, masked_db, h_len), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1(hash_name, seed, db_len), strict=True))
    bad = block[0] | (db[one] ^ 1)
    for a, b in zip(db[:h_len], hashlib.new(hash_name, b"").digest(), strict=True):
        bad |= a ^ b
    for byte in db[h_len:one]:
        bad |= byte
    ok = 1 - _nonzero(bad)
    return ok, select(ok, db[one + 1:], substitute)


def decode_oaep_sha1(block: bytes, length: int, substitute: bytes) -> tuple[int, bytes]:
    """EME-OAEP with SHA-1, MGF1-SHA-1 and an empty label: CryptoAPI's CRYPT_OAEP (:func:`decode_oaep`)."""
    return decode_oaep(block, length, substitute, "sha1")
