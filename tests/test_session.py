"""SessionKey against Windows, OpenSSL, Wycheproof and rsaenh's chaining rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]

from tokencsp import blobs
from tokencsp.blobs import AlgId
from tokencsp.errors import BlobFormatError, DecryptionError, InvalidKeyError, TokenCSPError, UnsupportedAlgorithm
from tokencsp.session import ALG_NAMES, SessionKey, alg_from_name

ALL_ALGS = [AlgId.CALG_AES_128, AlgId.CALG_AES_192, AlgId.CALG_AES_256, AlgId.CALG_3DES, AlgId.CALG_3DES_112]
BLOCK = {alg: 8 if alg in (AlgId.CALG_3DES, AlgId.CALG_3DES_112) else 16 for alg in ALL_ALGS}
OPENSSL_CIPHER = {
    AlgId.CALG_AES_128: "aes-128-cbc",
    AlgId.CALG_AES_192: "aes-192-cbc",
    AlgId.CALG_AES_256: "aes-256-cbc",
    AlgId.CALG_3DES: "des-ede3-cbc",
    AlgId.CALG_3DES_112: "des-ede-cbc",
}
# Fixed, arbitrary keys (3DES ones with distinct K1/K2/K3).
FIXED_KEYS = {
    AlgId.CALG_AES_128: bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
    AlgId.CALG_AES_192: bytes.fromhex("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"),
    AlgId.CALG_AES_256: bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"),
    AlgId.CALG_3DES: bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123"),
    AlgId.CALG_3DES_112: bytes.fromhex("0123456789abcdef23456789abcdef01"),
}


def reference_cbc(alg: AlgId, key: bytes, iv: bytes, data: bytes, pad: bool = True) -> bytes:
    """CBC + PKCS#5 straight from the cryptography primitive, padded by hand."""
    bs = BLOCK[alg]
    if pad:
        n = bs - len(data) % bs
        data += bytes([n]) * n
    if alg in (AlgId.CALG_3DES, AlgId.CALG_3DES_112):
        cipher_alg = TripleDES(key + key[:8] if len(key) == 16 else key)
    else:
        cipher_alg = algorithms.AES(key)
    enc = Cipher(cipher_alg, modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def fixed(alg: AlgId) -> SessionKey:
    return SessionKey.from_bytes(alg, FIXED_KEYS[alg])


# --- Windows output ------------------------------------------------------------
#
# Wine's dlls/rsaenh/tests/rsaenh.c (test_aes, test_3des, test_3des112), which
# pass on Windows, encrypt with keys from CryptDeriveKey over an MD2 hash of the
# bytes i & 0xff for i < 2000.  The keys below are what that derivation yields
# (computed once with a stand-alone MD2); the ciphertexts are Windows' output.
_DERIVED = bytes.fromhex("1d2879e482f2d02ed400ef4f6fff4d54db5a6856318ad42404764f3b28954fb5")
_AES_PLAIN = b"AES Test With 2 Blocks Of Data.\0"
WINDOWS_VECTORS = [
    (AlgId.CALG_AES_128, _DERIVED[:16], _AES_PLAIN,
     "fe853be1f5e15875d5a974e309eaa5042335a23b5cf16c6fb9cd64063e4183ef"
     "2afeeab56c1720798c513e56ede14768"),
    (AlgId.CALG_AES_192, _DERIVED[:24], _AES_PLAIN,
     "6bf0fd32eec60613a8e63c8185b82ea1d43be822a5744abe9dcfcc3726195ad1"
     "7f76bf9428ce27216187ebb98ba8b457"),
    (AlgId.CALG_AES_256, _DERIVED, _AES_PLAIN,
     "2057170b1776d83b26908b4cf2007933292b139ce29509c1cd20872232709d75"
     "9a94f5765cb1622ce1767c8673e67a23"),
    (AlgId.CALG_3DES, _DERIVED[:24], bytes(range(13)), "7bbadda239d37bb3c751814153e8cfeb"),
    (AlgId.CALG_3DES_112, bytes.fromhex("d5e1a7e9ac38c127f7731dba811698e0"), bytes(range(13)),
     "8e0c3ca305885f7a32a1065264d2441c"),
]


@pytest.mark.parametrize("alg,key,plain,expected", WINDOWS_VECTORS, ids=lambda v: getattr(v, "name", None))
def test_windows_known_answers(alg: AlgId, key: bytes, plain: bytes, expected: str) -> None:
    k = SessionKey.from_bytes(alg, key)
    ct = k.encrypt(plain)
    assert ct.hex() == expected
    assert k.decrypt(ct) == plain


# --- OpenSSL and the raw primitive -----------------------------------------------

MESSAGE_LENGTHS = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_matches_openssl_enc(alg: AlgId) -> None:
    key = FIXED_KEYS[alg]
    for n in MESSAGE_LENGTHS:
        msg = bytes((7 * i + n) & 0xFF for i in range(n))
        expected = subprocess.run(
            ["openssl", "enc", f"-{OPENSSL_CIPHER[alg]}", "-K", key.hex(), "-iv", "00" * BLOCK[alg]],
            input=msg, capture_output=True, check=True,
        ).stdout
        k = SessionKey.from_bytes(alg, key)
        assert k.encrypt(msg) == expected, n
        assert k.decrypt(expected) == msg, n


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_matches_reference_cbc(alg: AlgId) -> None:
    k = fixed(alg)
    for n in MESSAGE_LENGTHS:
        msg = bytes(range(n))
        assert k.encrypt(msg) == reference_cbc(alg, FIXED_KEYS[alg], bytes(BLOCK[alg]), msg)


def test_3des112_is_3des_with_k3_equal_k1() -> None:
    k12 = FIXED_KEYS[AlgId.CALG_3DES_112]
    short = SessionKey.from_bytes(AlgId.CALG_3DES_112, k12)
    full = SessionKey.from_bytes(AlgId.CALG_3DES, k12 + k12[:8])
    msg = b"two-key triple DES is K1 K2 K1"
    assert short.encrypt(msg) == full.encrypt(msg)
    assert short.decrypt(full.encrypt(msg)) == msg
    assert short.key == k12  # exported as 16 bytes, like rsaenh


# --- padding and lengths ---------------------------------------------------------

@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_final_padding_always_adds_one_to_block_size_bytes(alg: AlgId) -> None:
    k, bs = fixed(alg), BLOCK[alg]
    assert len(k.encrypt(b"")) == bs
    assert len(k.encrypt(bytes(bs - 1))) == bs
    assert len(k.encrypt(bytes(bs))) == 2 * bs
    assert len(k.encrypt(bytes(2 * bs))) == 3 * bs
    assert k.decrypt(k.encrypt(b"")) == b""


def test_aes_32_bytes_become_48_and_empty_becomes_one_block() -> None:
    k = fixed(AlgId.CALG_AES_128)
    ct = k.encrypt(bytes(32))
    assert len(ct) == 48
    # The extra block is a full block of 0x10 padding.
    last = reference_cbc(AlgId.CALG_AES_128, FIXED_KEYS[AlgId.CALG_AES_128], ct[16:32], bytes([16]) * 16, pad=False)
    assert ct[32:] == last
    assert len(k.encrypt(b"")) == 16
    assert k.encrypt(b"") == reference_cbc(AlgId.CALG_AES_128, FIXED_KEYS[AlgId.CALG_AES_128], bytes(16), b"")


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_final_resets_chaining_so_repeats_match(alg: AlgId) -> None:
    k = fixed(alg)
    msg = b"the same message, twice"
    first = k.encrypt(msg)
    assert k.encrypt(msg) == first
    assert k.decrypt(first) == msg
    assert k.decrypt(first) == msg


def test_non_final_encrypt_requires_whole_blocks() -> None:
    k = fixed(AlgId.CALG_AES_128)
    for n in (1, 15, 17, 31):
        with pytest.raises(ValueError) as info:
            k.encrypt(bytes(n), final=False)
        assert not isinstance(info.value, DecryptionError)
    assert k.encrypt(b"", final=False) == b""
    # The refused call left the chaining alone.
    assert k.encrypt(b"abc") == reference_cbc(AlgId.CALG_AES_128, FIXED_KEYS[AlgId.CALG_AES_128], bytes(16), b"abc")


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_decrypt_rejects_partial_blocks_and_empty_final(alg: AlgId) -> None:
    k, bs = fixed(alg), BLOCK[alg]
    ct = k.encrypt(b"some plaintext that spans blocks")
    for bad in (ct[:-1], ct + b"\0", ct[: bs - 1], b""):
        with pytest.raises(DecryptionError):
            k.decrypt(bad)
    for bad in (ct[:-1], ct[:1]):
        with pytest.raises(DecryptionError):
            k.decrypt(bad, final=False)
    assert k.decrypt(b"", final=False) == b""
    assert k.decrypt(ct) == b"some plaintext that spans blocks"


def _encrypt_raw_blocks(alg: AlgId, plain_blocks: bytes) -> bytes:
    return reference_cbc(alg, FIXED_KEYS[alg], bytes(BLOCK[alg]), plain_blocks, pad=False)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_bad_padding_is_rejected_with_a_fixed_message(alg: AlgId) -> None:
    bs = BLOCK[alg]
    body = b"A" * bs
    corruptions = {
        "zero pad byte": b"B" * (bs - 1) + b"\x00",
        "pad byte above block size": b"B" * (bs - 1) + bytes([bs + 1]),
        "pad byte 0xff": b"B" * (bs - 1) + b"\xff",
        "inconsistent pad bytes": b"B" * (bs - 3) + b"\x03\x02\x03",
        "zero padding": b"B" * (bs - 2) + b"\x00\x00",
        "full block with one wrong byte": bytes([bs]) * (bs - 1) + bytes([bs - 1]),
        "full block with a bad first byte": bytes([bs + 1]) + bytes([bs]) * (bs - 1),
    }
    messages = set()
    for name, last_block in corruptions.items():
        assert len(last_block) == bs, name
        ct = _encrypt_raw_blocks(alg, body + last_block)
        with pytest.raises(DecryptionError) as info:
            fixed(alg).decrypt(ct)
        messages.add(str(info.value))
    assert messages == {"bad padding"}
    # And the mirror check: every correct padding length is accepted.
    for n in range(1, bs + 1):
        ct = _encrypt_raw_blocks(alg, body + b"C" * (bs - n) + bytes([n]) * n)
        assert fixed(alg).decrypt(ct) == body + b"C" * (bs - n)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_flipped_last_byte_fails_and_resets_like_windows(alg: AlgId) -> None:
    # The sequence of Wine's test_aes/test_3des "bad data" checks, which pass on
    # Windows: a failed final decrypt restores the key's initial state.
    k = fixed(alg)
    ct = k.encrypt(b"abcdefgh")
    assert k.decrypt(ct, final=False)  # moves the chaining state on
    bad = ct[:-1] + bytes([ct[-1] ^ 0xFF])
    with pytest.raises(DecryptionError):
        k.decrypt(bad)
    assert k.decrypt(ct) == b"abcdefgh"


def test_failed_partial_decrypt_also_resets() -> None:
    k = fixed(AlgId.CALG_AES_256)
    ct = k.encrypt(b"x" * 40)
    k.decrypt(ct[:16], final=False)
    with pytest.raises(DecryptionError):
        k.decrypt(ct[16:20], final=False)
    assert k.decrypt(ct) == b"x" * 40


# --- streaming --------------------------------------------------------------------

def _split(data: bytes, cuts: list[int], bs: int) -> list[bytes]:
    """Cut data into whole-block pieces at the given block counts (the tail is left over)."""
    pieces, pos = [], 0
    for c in cuts:
        end = min(pos + c * bs, len(data) - len(data) % bs)
        pieces.append(data[pos:end])
        pos = end
    pieces.append(data[pos:])
    return pieces


@settings(max_examples=150, deadline=None)
@given(
    alg=st.sampled_from(ALL_ALGS),
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=5), max_size=6),
)
def test_streaming_equals_one_shot(alg: AlgId, data: bytes, cuts: list[int]) -> None:
    bs = BLOCK[alg]
    k = fixed(alg)
    one_shot = k.encrypt(data)

    *middle, tail = _split(data, cuts, bs)
    streamed = b"".join(k.encrypt(p, final=False) for p in middle) + k.encrypt(tail)
    assert streamed == one_shot

    # Decrypt in whole-block pieces too; the final piece must be non-empty.
    *cmid, ctail = _split(one_shot[:-bs], cuts, bs)
    ctail += one_shot[-bs:]
    plain = b"".join(k.decrypt(p, final=False) for p in cmid) + k.decrypt(ctail)
    assert plain == data
    assert k.decrypt(one_shot) == data


@settings(max_examples=100, deadline=None)
@given(alg=st.sampled_from(ALL_ALGS), data=st.binary(max_size=100), iv_seed=st.binary(min_size=16, max_size=16))
def test_decrypt_inverts_encrypt_for_any_key_and_iv(alg: AlgId, data: bytes, iv_seed: bytes) -> None:
    k = SessionKey.generate(alg)
    k.iv = iv_seed[: BLOCK[alg]]
    ct = k.encrypt(data)
    assert ct == reference_cbc(alg, k.key, iv_seed[: BLOCK[alg]], data)
    assert k.decrypt(ct) == data


def test_one_chaining_vector_serves_encrypt_and_decrypt() -> None:
    # rsaenh keeps one abChainVector per key: a non-final CryptEncrypt leaves
    # its last ciphertext block there for a following CryptDecrypt too.
    k = fixed(AlgId.CALG_AES_128)
    p1, p2 = b"1" * 16, b"second half"
    ct = k.encrypt(p1 + p2)
    assert k.encrypt(p1, final=False) == ct[:16]
    assert k.decrypt(ct[16:]) == p2


# --- IV ------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_iv_defaults_to_zero_and_is_settable(alg: AlgId) -> None:
    k, bs = fixed(alg), BLOCK[alg]
    assert k.iv == bytes(bs)
    iv = bytes(range(1, bs + 1))
    k.iv = iv
    assert k.iv == iv
    msg = b"with a chosen IV"
    ct = k.encrypt(msg)
    assert ct == reference_cbc(alg, FIXED_KEYS[alg], iv, msg)
    assert k.encrypt(msg) == ct  # the final call went back to the set IV, not to zeros
    assert k.decrypt(ct) == msg
    for wrong in (b"", bytes(bs - 1), bytes(bs + 1), bytes(32 if bs == 16 else 16)):
        with pytest.raises(ValueError):
            k.iv = wrong
    with pytest.raises(TypeError):
        k.iv = "0" * bs  # type: ignore[assignment]
    assert k.iv == iv


def test_setting_iv_resets_chaining() -> None:
    k = fixed(AlgId.CALG_AES_192)
    k.encrypt(b"z" * 32, final=False)
    k.iv = bytes(16)
    assert k.encrypt(b"msg") == fixed(AlgId.CALG_AES_192).encrypt(b"msg")


# --- Wycheproof ---------------------------------------------------------------------

def test_wycheproof_aes_cbc_pkcs5(vectors_dir: Path) -> None:
    data = json.loads((vectors_dir / "aes_cbc_pkcs5_test.json").read_text())
    alg_for_bits = {128: AlgId.CALG_AES_128, 192: AlgId.CALG_AES_192, 256: AlgId.CALG_AES_256}
    counts = {"valid": 0, "invalid": 0}
    failures = []
    for group in data["testGroups"]:
        alg = alg_for_bits[group["keySize"]]
        for case in group["tests"]:
            k = SessionKey.from_bytes(alg, bytes.fromhex(case["key"]))
            k.iv = bytes.fromhex(case["iv"])
            msg, ct = bytes.fromhex(case["msg"]), bytes.fromhex(case["ct"])
            counts[case["result"]] += 1
            if case["result"] == "valid":
                if k.encrypt(msg) != ct or k.decrypt(ct) != msg:
                    failures.append(case["tcId"])
            else:
                try:
                    k.decrypt(ct)
                except DecryptionError:
                    continue
                failures.append(case["tcId"])
    assert counts["valid"] > 0 and counts["invalid"] > 0
    assert sum(counts.values()) == data["numberOfTests"]
    assert failures == []


# --- SIMPLEBLOB export -------------------------------------------------------------

@pytest.fixture(scope="module")
def exchange_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
@pytest.mark.parametrize("oaep", [False, True], ids=["pkcs1v15", "oaep"])
def test_export_simpleblob_decrypts_to_the_key(exchange_key: rsa.RSAPrivateKey, alg: AlgId, oaep: bool) -> None:
    k = SessionKey.generate(alg)
    wire = k.export_simpleblob(exchange_key.public_key(), oaep=oaep)

    assert wire[:8] == bytes([0x01, 0x02, 0, 0]) + int(alg).to_bytes(4, "little")
    assert wire[8:12] == int(AlgId.CALG_RSA_KEYX).to_bytes(4, "little")
    assert len(wire) == 12 + 256
    blob = blobs.parse(wire)
    assert isinstance(blob, blobs.SimpleBlob) and blob.alg_id is alg
    assert blob.encrypted_key == wire[12:][::-1]  # little-endian on the wire

    scheme = OAEP_SHA1 if oaep else padding.PKCS1v15()
    assert exchange_key.decrypt(blob.encrypted_key, scheme) == k.key
    # The other padding must not yield the key (OpenSSL's PKCS#1 v1.5 implicit
    # rejection returns a synthetic message rather than raising).
    other = padding.PKCS1v15() if oaep else OAEP_SHA1
    try:
        wrong = exchange_key.decrypt(blob.encrypted_key, other)
    except ValueError:
        wrong = None
    assert wrong != k.key


def test_export_simpleblob_accepts_every_recipient_form(exchange_key: rsa.RSAPrivateKey) -> None:
    k = SessionKey.generate("aes256")
    pub_blob = blobs.PublicKeyBlob.from_public_key(exchange_key.public_key())
    for recipient in (exchange_key.public_key(), pub_blob, pub_blob.to_bytes(), bytearray(pub_blob.to_bytes())):
        wire = k.export_simpleblob(recipient)
        key = exchange_key.decrypt(blobs.SimpleBlob.from_bytes(wire).encrypted_key, padding.PKCS1v15())
        assert key == k.key
    with pytest.raises(TypeError):
        k.export_simpleblob(12345)  # type: ignore[arg-type]


def test_export_simpleblob_refuses_a_signature_key(exchange_key: rsa.RSAPrivateKey) -> None:
    sign_blob = blobs.PublicKeyBlob.from_public_key(exchange_key.public_key(), alg_id=AlgId.CALG_RSA_SIGN)
    k = SessionKey.generate("aes128")
    for recipient in (sign_blob, sign_blob.to_bytes()):
        with pytest.raises(InvalidKeyError, match="signature key"):
            k.export_simpleblob(recipient)


def test_export_simpleblob_key_size_limits() -> None:
    k = SessionKey.generate("aes256")
    tiny = blobs.PublicKeyBlob(modulus=(1 << 447) | 0xB5)  # 448 bits: below 512
    with pytest.raises(InvalidKeyError):
        k.export_simpleblob(tiny)
    # 1024 bits is legacy CryptoAPI and still allowed.
    legacy = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    wire = k.export_simpleblob(legacy.public_key(), oaep=True)
    assert legacy.decrypt(blobs.SimpleBlob.from_bytes(wire).encrypted_key, OAEP_SHA1) == k.key
    # 512 bits passes the size check but OAEP-SHA1 cannot carry 32 bytes in 64.
    small = blobs.PublicKeyBlob(modulus=(1 << 511) | 0xC5)
    assert len(k.export_simpleblob(small)) == 12 + 64
    with pytest.raises(InvalidKeyError, match="too small"):
        k.export_simpleblob(small, oaep=True)


# --- PLAINTEXTKEYBLOB ---------------------------------------------------------------

def test_plaintext_blob_documented_layout() -> None:
    key = bytes(range(0xA0, 0xB0))
    wire = SessionKey.from_bytes(AlgId.CALG_AES_128, key).export_plaintext_blob()
    assert wire == bytes.fromhex("08020000 0e660000 10000000") + key


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_plaintext_blob_round_trip(alg: AlgId) -> None:
    k = SessionKey.generate(alg)
    wire = k.export_plaintext_blob()
    again = SessionKey.from_plaintext_blob(wire)
    assert again.alg is alg and again.key == k.key
    assert again.export_plaintext_blob() == wire
    assert again.encrypt(b"same key") == k.encrypt(b"same key")


def test_from_plaintext_blob_rejects_other_blobs(exchange_key: rsa.RSAPrivateKey) -> None:
    pub = blobs.PublicKeyBlob.from_public_key(exchange_key.public_key()).to_bytes()
    with pytest.raises(BlobFormatError):
        SessionKey.from_plaintext_blob(pub)


# --- construction ------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_wrong_key_lengths_rejected(alg: AlgId) -> None:
    n = blobs.SESSION_KEY_LENGTHS[alg]
    for bad in (0, 1, n - 1, n + 1, 2 * n):
        with pytest.raises(InvalidKeyError):
            SessionKey.from_bytes(alg, bytes(bad))
    with pytest.raises(TypeError):
        SessionKey.from_bytes(alg, "x" * n)  # type: ignore[arg-type]
    assert SessionKey.from_bytes(alg, bytearray(n)).key == bytes(n)


def test_algorithm_names() -> None:
    assert set(ALG_NAMES) == {"aes128", "aes192", "aes256", "3des", "3des112"}
    assert alg_from_name("AES256") is AlgId.CALG_AES_256
    assert alg_from_name("3DES112") is AlgId.CALG_3DES_112
    assert SessionKey.generate("Aes192").alg is AlgId.CALG_AES_192
    assert SessionKey.from_bytes("3des", bytes(24)).alg is AlgId.CALG_3DES
    for bad in ("aes", "des", "rc4", ""):
        with pytest.raises(UnsupportedAlgorithm):
            alg_from_name(bad)
    with pytest.raises(ValueError):
        SessionKey.generate("blowfish")
    for not_session in (AlgId.CALG_RSA_KEYX, AlgId.CALG_RSA_SIGN, 0x6601):
        with pytest.raises(UnsupportedAlgorithm):
            SessionKey.generate(not_session)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_generate(alg: AlgId) -> None:
    keys = {SessionKey.generate(alg).key for _ in range(8)}
    assert len(keys) == 8
    assert all(len(key) == blobs.SESSION_KEY_LENGTHS[alg] for key in keys)
    k = SessionKey.generate(alg)
    assert k.alg is alg and k.block_size == BLOCK[alg] and k.iv == bytes(BLOCK[alg])
    if alg in (AlgId.CALG_3DES, AlgId.CALG_3DES_112):
        for key in keys:
            assert all(bin(b).count("1") % 2 == 1 for b in key)  # odd DES parity


# --- wiping and repr ------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_repr_never_shows_the_key(alg: AlgId) -> None:
    k = fixed(alg)
    text = repr(k)
    assert alg.name in text
    assert FIXED_KEYS[alg].hex() not in text.lower()
    assert repr(FIXED_KEYS[alg]) not in text
    assert str(k) == text


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_wipe(alg: AlgId, exchange_key: rsa.RSAPrivateKey) -> None:
    k = SessionKey.from_bytes(alg, FIXED_KEYS[alg])
    internal = k._key  # white-box: the buffer the key lived in
    k.wipe()
    assert internal == bytearray(len(FIXED_KEYS[alg]))
    uses = [
        lambda: k.key,
        lambda: k.iv,
        lambda: k.encrypt(b"x"),
        lambda: k.decrypt(bytes(16)),
        lambda: k.export_plaintext_blob(),
        lambda: k.export_simpleblob(exchange_key.public_key()),
    ]
    for use in uses:
        with pytest.raises(ValueError):
            use()
    with pytest.raises(ValueError):
        k.iv = bytes(BLOCK[alg])
    assert "wiped" in repr(k)
    k.wipe()  # idempotent


def test_errors_are_in_the_hierarchy() -> None:
    k = fixed(AlgId.CALG_AES_128)
    with pytest.raises(TokenCSPError):
        k.decrypt(bytes(15))
    with pytest.raises(TokenCSPError):
        SessionKey.from_bytes(AlgId.CALG_AES_128, bytes(15))
