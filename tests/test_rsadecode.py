"""Host-side decoding of raw RSA blocks (the decrypt path): against cryptography's own padding, bit by bit."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokencsp.rsadecode import _nonzero, decode_oaep, decode_oaep_sha1, decode_pkcs1_v15, select

OAEP = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(65537, 2048)


def _raw(key, ciphertext: bytes) -> bytes:
    """What CKM_RSA_X_509 returns: c^d mod n, modulus-length, leading zeros kept."""
    numbers = key.private_numbers()
    m = pow(int.from_bytes(ciphertext, "big"), numbers.d, numbers.public_numbers.n)
    return m.to_bytes(256, "big")


def test_nonzero_and_select():
    assert [_nonzero(v) for v in (0, 1, 2, 255, 256, 65535)] == [0, 1, 1, 1, 1, 1]
    assert select(1, b"ab", b"xy") == b"ab" and select(0, b"ab", b"xy") == b"xy"


@pytest.mark.parametrize("length", [16, 24, 32])
def test_valid_blocks_decode(key, length):
    value, substitute = os.urandom(length), os.urandom(length)
    assert decode_pkcs1_v15(_raw(key, key.public_key().encrypt(value, padding.PKCS1v15())), length,
                            substitute) == (1, value)
    assert decode_oaep_sha1(_raw(key, key.public_key().encrypt(value, OAEP)), length, substitute) == (1, value)


def test_every_bad_block_gives_the_substitute(key):
    value, substitute = os.urandom(32), os.urandom(32)
    pkcs1 = bytearray(_raw(key, key.public_key().encrypt(value, padding.PKCS1v15())))
    separator = 256 - 32 - 1
    bad_pkcs1 = {
        "first byte": lambda b: b.__setitem__(0, 1),
        "block type 1": lambda b: b.__setitem__(1, 1),
        "zero in PS": lambda b: b.__setitem__(5, 0),
        "zero in last PS byte": lambda b: b.__setitem__(separator - 1, 0),
        "no separator": lambda b: b.__setitem__(separator, 7),
    }
    for name, damage in bad_pkcs1.items():
        block = bytearray(pkcs1)
        damage(block)
        assert decode_pkcs1_v15(bytes(block), 32, substitute) == (0, substitute), name
    assert decode_pkcs1_v15(bytes(pkcs1), 16, os.urandom(16))[0] == 0  # a 32-byte key is not a 16-byte one
    assert decode_pkcs1_v15(bytes(pkcs1), 24, os.urandom(24))[0] == 0
    assert decode_pkcs1_v15(os.urandom(256), 32, substitute) == (0, substitute)

    oaep = _raw(key, key.public_key().encrypt(value, OAEP))
    for position in (0, 1, 20, 21, 40, 100, 255):
        block = bytearray(oaep)
        block[position] ^= 1
        assert decode_oaep_sha1(bytes(block), 32, substitute) == (0, substitute), position
    assert decode_oaep_sha1(oaep, 16, os.urandom(16))[0] == 0
    assert decode_oaep_sha1(bytes(pkcs1), 32, substitute) == (0, substitute)
    assert decode_pkcs1_v15(oaep, 32, substitute) == (0, substitute)


_SHA2 = {"sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


@pytest.mark.parametrize("hash_name", sorted(_SHA2))
def test_oaep_with_a_sha2_hash_decodes_and_every_bad_block_gives_the_substitute(key, hash_name):
    """CMS RSAES-OAEP with SHA-256 etc. on the decrypt path: MGF1 over the same hash, empty label."""
    algorithm = _SHA2[hash_name]()
    scheme = padding.OAEP(padding.MGF1(algorithm), algorithm, None)
    value, substitute = os.urandom(32), os.urandom(32)
    block = _raw(key, key.public_key().encrypt(value, scheme))
    assert decode_oaep(block, 32, substitute, hash_name) == (1, value)
    size = algorithm.digest_size
    for position in (0, 1, size, size + 1, 2 * size + 1, 200, 255):
        damaged = bytearray(block)
        damaged[position] ^= 1
        assert decode_oaep(bytes(damaged), 32, substitute, hash_name) == (0, substitute), position
    assert decode_oaep(block, 16, os.urandom(16), hash_name)[0] == 0
    assert decode_oaep(block, 32, substitute, "sha1") == (0, substitute)  # the hash the message names, no other
    sha1_block = _raw(key, key.public_key().encrypt(value, OAEP))
    assert decode_oaep(sha1_block, 32, substitute, hash_name) == (0, substitute)
    mixed = padding.OAEP(padding.MGF1(hashes.SHA1()), algorithm, None)  # MGF1-SHA-1: not this scheme
    assert decode_oaep(_raw(key, key.public_key().encrypt(value, mixed)), 32, substitute, hash_name) == (0, substitute)
    labelled = padding.OAEP(padding.MGF1(algorithm), algorithm, b"label")
    assert decode_oaep(_raw(key, key.public_key().encrypt(value, labelled)), 32, substitute,
                       hash_name) == (0, substitute)
    with pytest.raises(ValueError):
        decode_oaep(block, 32, substitute, "md5")


def test_labelled_oaep_is_refused(key):
    labelled = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), b"label")
    substitute = os.urandom(32)
    assert decode_oaep_sha1(_raw(key, key.public_key().encrypt(os.urandom(32), labelled)), 32,
                            substitute) == (0, substitute)


def test_a_length_the_modulus_cannot_carry_is_the_substitute(key):
    substitute = os.urandom(250)
    assert decode_pkcs1_v15(os.urandom(256), 250, substitute) == (0, substitute)
    assert decode_oaep_sha1(os.urandom(256), 250, substitute) == (0, substitute)
    with pytest.raises(ValueError):
        decode_pkcs1_v15(os.urandom(256), 32, b"short")


def _raw_or_none(numbers, ct: bytes, k: int) -> bytes | None:
    """Raw RSA as a token does it; None where a token refuses the ciphertext itself (length, c >= n)."""
    c = int.from_bytes(ct, "big")
    if len(ct) != k or c >= numbers.public_numbers.n:
        return None
    return pow(c, numbers.d, numbers.public_numbers.n).to_bytes(k, "big")


@pytest.mark.parametrize("name, decode", [
    ("rsa_pkcs1_2048_test.json", decode_pkcs1_v15),
    ("rsa_pkcs1_3072_test.json", decode_pkcs1_v15),
    ("rsa_oaep_2048_sha1_mgf1sha1_test.json", decode_oaep_sha1),
    ("rsa_oaep_2048_sha256_mgf1sha256_test.json", lambda b, n, s: decode_oaep(b, n, s, "sha256")),
    ("rsa_oaep_3072_sha256_mgf1sha256_test.json", lambda b, n, s: decode_oaep(b, n, s, "sha256")),
])
def test_wycheproof_vectors(vectors_dir, name, decode):
    """Every vector, decoded for the length of its message: valid ones recover it, invalid ones give the substitute."""
    import json

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    checked = 0
    for group in json.loads((vectors_dir / name).read_text())["testGroups"]:
        numbers = load_pem_private_key(group["privateKeyPem"].encode(), None).private_numbers()
        k = (numbers.public_numbers.n.bit_length() + 7) // 8
        for case in group["tests"]:
            if case.get("label"):
                continue  # CRYPT_OAEP has no label; labelled vectors are for the token's own OAEP
            msg, block = bytes.fromhex(case["msg"]), _raw_or_none(numbers, bytes.fromhex(case["ct"]), k)
            substitute = os.urandom(len(msg))
            if block is None:
                assert case["result"] == "invalid", case["tcId"]
                continue
            expected = (1, msg) if case["result"] == "valid" else (0, substitute)
            assert decode(block, len(msg), substitute) == expected, case["tcId"]
            checked += 1
    assert checked > 20
