"""Legacy CryptoAPI ciphers (tokencsp.legacy): RFC 2268 RC2 vectors, and rsaenh vectors from Wine's
rsaenh tests (which pass on Windows) for RC2/RC4 salt and effective-key-length rules."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from helpers import assert_one_line_error, kept_substitute, tokencsp
from tokencsp.blobs import AlgId, SimpleBlob
from tokencsp.errors import BlobFormatError, DecryptionError, InvalidKeyError
from tokencsp.legacy import LegacyAlg, LegacyKey, default_salt, legacy_simpleblob, rc2_decrypt_block, rc2_key_schedule

# RFC 2268 section 5: (key, effective bits, plaintext, ciphertext)
RFC2268 = [
    ("0000000000000000", 63, "0000000000000000", "ebb773f993278eff"),
    ("ffffffffffffffff", 64, "ffffffffffffffff", "278b27e42e2f0d49"),
    ("3000000000000000", 64, "1000000000000001", "30649edf9be7d2c2"),
    ("88", 64, "0000000000000000", "61a8a244adacccf0"),
    ("88bca90e90875a", 64, "0000000000000000", "6ccf4308974c267f"),
    ("88bca90e90875a7f0f79c384627bafb2", 64, "0000000000000000", "1a807d272bbe5db1"),
    ("88bca90e90875a7f0f79c384627bafb2", 128, "0000000000000000", "2269552ab0f85ca6"),
    ("88bca90e90875a7f0f79c384627bafb216f80a6f85920584c42fceb0be255daf1e", 129, "0000000000000000",
     "5b78d3a43dfff1f1"),
]


@pytest.mark.parametrize(("key", "bits", "plain", "cipher"), RFC2268)
def test_rc2_block_matches_rfc_2268(key, bits, plain, cipher):
    assert rc2_decrypt_block(rc2_key_schedule(bytes.fromhex(key), bits), bytes.fromhex(cipher)) == bytes.fromhex(plain)


# Wine dlls/rsaenh/tests/rsaenh.c, test_rc2/test_rc4: a 40-bit key derived (CRYPT_CREATE_SALT) from
# the MD5 of the test buffer; CryptDeriveKey fills key || salt from the hash.  The Enhanced
# provider gives such a key no salt, the Base provider 11 bytes.  The plaintext is 16 x 0xAF.
RC4_40_SALT_ENH = bytes.fromhex("41E633C950A1BF88124DD3E347886DA5")
RC4_40_SALT_BASE = bytes.fromhex("2FACEAEAFF687E77F4B9487C4E79A6B5")
RC2_40_SALT_ENH = bytes.fromhex("A3D741877AD018DBD46A4FEEF3CACD34B3159A2A885F43A5")
RC2_40_SALT_BASE = bytes.fromhex("8C4EA6009B15EF9E8881D065D65357080A7780FA7E891455")
# The RC2 test's buffer starts with the 16 bytes the provider's previous step encrypted into it.
RC2_128_ENCRYPTED = bytes.fromhex("8281f7ffddd7888c2a2ac0ce4c89b666")  # Enhanced
RC2_40DEF_ENCRYPTED = bytes.fromhex("23c87013422ea8985cdf7a9beadb961b")  # Base
BUFFER = bytes(i & 0xFF for i in range(2000))


def test_rc4_40_bit_salt_rules_match_windows():
    digest = hashlib.md5(BUFFER).digest()
    assert LegacyKey(LegacyAlg.CALG_RC4, digest[:5], salt=b"").decrypt(RC4_40_SALT_ENH) == b"\xaf" * 16
    assert LegacyKey(LegacyAlg.CALG_RC4, digest[:5], salt=digest[5:16]).decrypt(RC4_40_SALT_BASE) == b"\xaf" * 16


@pytest.mark.parametrize(("prefix", "salted", "vector"), [(RC2_128_ENCRYPTED, False, RC2_40_SALT_ENH),
                                                          (RC2_40DEF_ENCRYPTED, True, RC2_40_SALT_BASE)])
def test_rc2_40_bit_salt_and_effective_length_match_windows(prefix, salted, vector):
    digest = hashlib.md5(prefix + BUFFER[16:]).digest()
    key = LegacyKey(LegacyAlg.CALG_RC2, digest[:5], salt=digest[5:16] if salted else b"")
    assert key.decrypt(vector) == b"\xaf" * 16


def test_imported_40_bit_keys_get_eleven_zero_salt_bytes():
    assert default_salt(LegacyAlg.CALG_RC4, 5) == bytes(11)
    assert default_salt(LegacyAlg.CALG_RC2, 5) == bytes(11)
    assert default_salt(LegacyAlg.CALG_RC4, 16) == b""
    assert default_salt(LegacyAlg.CALG_DES, 8) == b""
    key = bytes.fromhex("0102030405")
    salted = LegacyKey(LegacyAlg.CALG_RC4, key)
    assert salted.decrypt(bytes(16)) == LegacyKey(LegacyAlg.CALG_RC4, key, salt=bytes(11)).decrypt(bytes(16))
    assert salted.decrypt(bytes(16)) != LegacyKey(LegacyAlg.CALG_RC4, key, salt=b"").decrypt(bytes(16))


def _openssl_enc(cipher: str, key: bytes, plain: bytes, pad: bool = True) -> bytes:
    result = subprocess.run(["openssl", "enc", "-e", f"-{cipher}", "-provider", "legacy", "-provider", "default",
                             "-K", key.hex(), "-iv", "00" * 8, *([] if pad else ["-nopad"])], input=plain,
                            capture_output=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"openssl has no {cipher} (legacy provider): {result.stderr.decode()[:200]}")
    return result.stdout


@pytest.mark.parametrize(("alg", "cipher", "key"), ids=["des", "rc2"], argvalues=[
    (LegacyAlg.CALG_DES, "des-cbc", bytes.fromhex("133457799bbcdff1")),
    (LegacyAlg.CALG_RC2, "rc2-cbc", bytes(range(16))),
])
def test_cbc_and_padding_match_openssl(alg, cipher, key):
    plain = bytes(range(100))
    encrypted = _openssl_enc(cipher, key, plain)
    legacy = LegacyKey(alg, key)
    assert legacy.decrypt(encrypted[:48], final=False) + legacy.decrypt(encrypted[48:]) == plain


def test_bad_padding_and_partial_blocks_are_decryption_errors():
    key = LegacyKey(LegacyAlg.CALG_DES, bytes(8))
    with pytest.raises(DecryptionError):
        key.decrypt(bytes(7))
    with pytest.raises(DecryptionError):
        key.decrypt(bytes(8))  # decrypts to a block whose last byte is no valid pad (with all-zero key and data)


@pytest.mark.parametrize(("alg", "key"), [(LegacyAlg.CALG_DES, bytes(7)), (LegacyAlg.CALG_RC4, bytes(4)),
                                          (LegacyAlg.CALG_RC2, bytes(17))])
def test_key_sizes_are_checked(alg, key):
    with pytest.raises(InvalidKeyError):
        LegacyKey(alg, key)


# -- capi decrypt --allow-legacy, the key on the token --------------------------------------------

KEY = "legacy-kx"


@pytest.fixture(scope="module")
def token_key(softhsm_kit):
    tokencsp("key", "generate", KEY)
    yield load_pem_public_key(tokencsp("key", "export", KEY, "--format", "pem").stdout)
    tokencsp("key", "delete", "--yes", KEY, check=False)


def _legacy_blob(public_key, alg: int, key: bytes) -> bytes:
    wrapped = public_key.encrypt(key, padding.PKCS1v15())
    return bytes([1, 2, 0, 0]) + alg.to_bytes(4, "little") + (0xA400).to_bytes(4, "little") + wrapped[::-1]


def _rc4(key: bytes, data: bytes) -> bytes:
    return Cipher(ARC4(key), mode=None).encryptor().update(data)


def test_a_windows_style_40_bit_rc4_archive_opens_with_allow_legacy(token_key, tmp_path):
    session = bytes.fromhex("a1b2c3d4e5")
    plain = b"an old archive\n" * 1000
    (tmp_path / "blob").write_bytes(_legacy_blob(token_key, LegacyAlg.CALG_RC4, session))
    (tmp_path / "data").write_bytes(_rc4(session + bytes(11), plain))  # rsaenh: 11 zero salt bytes
    args = ["capi", "decrypt", "--key", KEY, "--blob", str(tmp_path / "blob"), str(tmp_path / "data")]
    refused = tokencsp(*args, check=False)
    assert_one_line_error(refused, 1, "--allow-legacy")
    assert tokencsp(*args, "--allow-legacy").stdout == plain
    assert tokencsp(*args, "--allow-legacy", "--salt", "").stdout != plain  # CRYPT_NO_SALT is another key


def _substitute_of(public_key, blob: bytes, length: int) -> bytes:
    """The key every tokencsp process of this user decrypts a refused legacy blob with."""
    from tokencsp.blobs import AlgId, SimpleBlob
    return kept_substitute(public_key, SimpleBlob(AlgId.CALG_AES_128, blob[12:][::-1]), length)


def test_a_bad_legacy_blob_fails_like_a_bad_padding(token_key, tmp_path):
    """RC2: the refused blob decrypts with its 16-byte substitute, so a payload whose padding that key rejects
    fails with the bad padding's line, and one it pads correctly is accepted garbage (as under any key)."""
    session = bytes(range(16))
    good = _legacy_blob(token_key, LegacyAlg.CALG_RC2, session)
    bad = bytearray(good)
    bad[20] ^= 0x10
    substitute = _substitute_of(token_key, bytes(bad), 16)
    encrypted = _openssl_enc("rc2-cbc", session, b"payload" * 10)
    corrupt = bytearray(encrypted)
    corrupt[-9] ^= 0x01  # the last plaintext byte: the padding (2 becomes 3)
    zeros = _openssl_enc("rc2-cbc", substitute, bytes(64), pad=False)  # decrypts to zeros: pad byte 0
    lines = []
    for name, blob, data in (("blob", bytes(bad), zeros), ("padding", good, bytes(corrupt))):
        (tmp_path / f"{name}.blob").write_bytes(blob)
        (tmp_path / f"{name}.data").write_bytes(data)
        result = tokencsp("capi", "decrypt", "--allow-legacy", "--key", KEY, "--blob", str(tmp_path / f"{name}.blob"),
                          "-o", str(tmp_path / f"{name}.out"), str(tmp_path / f"{name}.data"), check=False)
        lines.append(assert_one_line_error(result, 4, "could not be decrypted"))
        assert not (tmp_path / f"{name}.out").exists()
    assert lines[0] == lines[1]
    (tmp_path / "good.blob").write_bytes(good)
    (tmp_path / "good.data").write_bytes(encrypted)
    assert tokencsp("capi", "decrypt", "--allow-legacy", "--key", KEY, "--blob", str(tmp_path / "good.blob"),
                    str(tmp_path / "good.data")).stdout == b"payload" * 10
    (tmp_path / "lucky.data").write_bytes(_openssl_enc("rc2-cbc", substitute, b"garbage"))
    assert tokencsp("capi", "decrypt", "--allow-legacy", "--key", KEY, "--blob", str(tmp_path / "blob.blob"),
                    str(tmp_path / "lucky.data")).stdout == b"garbage"


def test_a_bad_rc4_blob_gives_garbage_like_an_unknown_key(token_key, tmp_path):
    """RC4 has no padding: a refused blob's substitute decrypts to garbage and succeeds, exactly as a good blob
    carrying a key the data was not made with -- never an error that would tell the two apart in one query."""
    good = _legacy_blob(token_key, LegacyAlg.CALG_RC4, bytes(range(16)))
    bad = bytearray(good)
    bad[20] ^= 0x10
    substitute = _substitute_of(token_key, bytes(bad), 16)
    (tmp_path / "bad.blob").write_bytes(bytes(bad))
    (tmp_path / "twin.blob").write_bytes(_legacy_blob(token_key, LegacyAlg.CALG_RC4, substitute))
    (tmp_path / "data").write_bytes(b"made under neither key")
    outputs = [tokencsp("capi", "decrypt", "--allow-legacy", "--key", KEY, "--blob", str(tmp_path / name),
                        str(tmp_path / "data")).stdout for name in ("bad.blob", "twin.blob")]
    assert outputs[0] == outputs[1] == _rc4(substitute, b"made under neither key")


def test_a_des_salt_is_refused_before_the_token(token_key, tmp_path):
    """A refusal after the unwrap that depended on the key would tell a substitute from an unwrapped key."""
    (tmp_path / "blob").write_bytes(_legacy_blob(token_key, LegacyAlg.CALG_DES, bytes(8)))
    (tmp_path / "data").write_bytes(bytes(8))
    result = tokencsp("capi", "decrypt", "--allow-legacy", "--key", KEY, "--salt", "00", "--blob",
                      str(tmp_path / "blob"), str(tmp_path / "data"), env={"TOKENCSP_PIN": "wrong"}, check=False)
    assert_one_line_error(result, 2, "DES keys take no salt")


def test_a_des_archive_opens(token_key, tmp_path):
    session = bytes.fromhex("133457799bbcdff1")
    (tmp_path / "blob").write_bytes(_legacy_blob(token_key, LegacyAlg.CALG_DES, session))
    (tmp_path / "data").write_bytes(_openssl_enc("des-cbc", session, b"DES era"))
    assert tokencsp("capi", "decrypt", "--allow-legacy", "--key", KEY, "--blob", str(tmp_path / "blob"),
                    str(tmp_path / "data")).stdout == b"DES era"


# -- a real Windows archive: Wine's rsaenh test_import_private (which passes on Windows) ------------
# abPlainPrivateKey: a 1024-bit AT_KEYEXCHANGE PRIVATEKEYBLOB; abSessionKey: a SIMPLEBLOB that
# Windows' CryptImportKey opens with it (CALG_RC4, a 56-bit key); abEncryptedMessage: what
# CryptDecrypt turns into "Wine rocks!\0" with that session key.  (The C array is declared 148
# bytes with 140 initialisers; the SIMPLEBLOB is the 140.)
WINE_PRIVATE_KEY = bytes.fromhex(
    "0702000000a400005253413200040000010001009b64efce317cad56e21e9b96b3f029886ea8c21133d6cc8c69b21afd"
    "fc2321304d2945b63a6711801a91f29f01acc011505fcdb9ad769f6e915571da9796962275b48344899ef844407cd6cd"
    "9d88d688bc56b764e92c242f0d78551cb267b15ebc0ccf1ce9d39ea2152473d6db6f83b2f8bce7473b01ef490898d6a3"
    "f92557e9393c53301bf2c96231435d842430219aaddb6291c807d92fd6b5376ffe7a12bcd9d22bbfd7b1fa7dc048dd74"
    "dd5504a18bc10ac4a55762ee088bf9196c5206f8730f24c9719fc545173eae0681a2964006bfeb9e802b27208f38cfeb"
    "ff3b3841356966131d3c013bf637ca9c617498cfc96ee890c7b733c0073cf8c8f6f2d7f02162588a55bfa12d3da669c5"
    "021931f0940f455c951b53bcf5b01a8fbf40e0c773e7726eebb10f38c5f8ee04ed341a10f95334f33ee65cd14765cdbd"
    "f106cbb4b126399f71fe3df862ab228b0edcb9e87406fc8c25a1a9cf07f9ac21017b1cdc94bd47e1a08659356a6fb970"
    "267c3cfdbd81393642c2bdbe84279a6981da9927c24f6233f47930c5635471f14722259b6c002f1cf41f85bcf6676ae3"
    "f6558aefd00bd3a2c55170150af0984cb719620e2d2a4a7d7a0ac417e35d2052a998c3aa11f6bf4c94998189f07f66aa"
    "c888d7318471b66409760b7f1a1f2efecd592a541184d46a61dfaa76669d8211563dd252e6425a77929834f3566c9610"
    "405916cb7761e3bf4bd439fbb14ec174ec7aea3d68bb0be6c606bfdd7f9442c00fe492336c6e1bba73f97984df4500e4"
    "94889d0889cff2a4c547458586a5cca8f25d5807")
WINE_RC4_SIMPLEBLOB = bytes.fromhex(
    "010200000168000000a40000b8a4df5e9eb1bf853d242d1e69b767138e78f2dfc669ce467ef2f233206fa1a5598325cb"
    "3ab18a1263023cfb4afaef8ef72957b19ea7f302fdcadf5a1f71b626092439dac0de2a0ecd1fe5b64f82a0a990d3d96a"
    "43142af7acd5a05493c4b9e724844d695ecc2a32b5fbe4b408d536585940fb297fa71725c40d7837048c4992")
WINE_RC4_MESSAGE = bytes.fromhex("406428e88ae7a4d41cfdde71")
WINE_KEY = "legacy-wine-kx"


def test_a_windows_rc4_simpleblob_opens_with_allow_legacy(softhsm_kit, tmp_path):
    """The Done-when item: Windows' own RC4 SIMPLEBLOB, its 1024-bit key moved onto the token with key import --legacy."""
    (tmp_path / "key.prv").write_bytes(WINE_PRIVATE_KEY)
    (tmp_path / "blob").write_bytes(WINE_RC4_SIMPLEBLOB)
    (tmp_path / "data").write_bytes(WINE_RC4_MESSAGE)
    refused = tokencsp("key", "import", WINE_KEY, "--private-blob", str(tmp_path / "key.prv"), check=False)
    assert_one_line_error(refused, 1, "--legacy")
    tokencsp("key", "import", WINE_KEY, "--private-blob", str(tmp_path / "key.prv"), "--legacy")
    try:
        args = ["capi", "decrypt", "--key", WINE_KEY, "--blob", str(tmp_path / "blob"), str(tmp_path / "data")]
        assert_one_line_error(tokencsp(*args, check=False), 1, "--allow-legacy")
        assert tokencsp(*args, "--allow-legacy").stdout == b"Wine rocks!\x00"
        tokencsp(*args, "--allow-legacy", "-o", str(tmp_path / "out"))
        assert (tmp_path / "out").read_bytes() == b"Wine rocks!\x00"
    finally:
        tokencsp("key", "delete", "--yes", WINE_KEY, check=False)


# -- blob inspect of legacy SIMPLEBLOBs: no token, the header's facts and rsaenh's rules ------------


def test_blob_inspect_names_a_windows_rc4_blob(tmp_path):
    (tmp_path / "blob").write_bytes(WINE_RC4_SIMPLEBLOB)
    text = tokencsp("blob", "inspect", str(tmp_path / "blob")).stdout.decode()
    for line in ("type: SIMPLEBLOB", "alg_id: CALG_RC4", "wrap_alg_id: CALG_RSA_KEYX", "recipient_bits: 1024",
                 "cipher: RC4", "key_bits_min: 40", "key_bits_max: 128", "--allow-legacy"):
        assert line in text, (line, text)
    assert "11 zero salt bytes" in text and "--salt" in text


@pytest.mark.parametrize(("alg", "cipher", "bits", "salted", "effective"), [
    (LegacyAlg.CALG_RC4, "RC4", (40, 128), True, False),
    (LegacyAlg.CALG_RC2, "RC2", (40, 128), True, True),
    (LegacyAlg.CALG_DES, "DES", (56, 56), False, False),
])
def test_blob_inspect_json_of_legacy_blobs(token_key, tmp_path, alg, cipher, bits, salted, effective):
    (tmp_path / "blob").write_bytes(_legacy_blob(token_key, alg, bytes(8 if alg is LegacyAlg.CALG_DES else 5)))
    facts = json.loads(tokencsp("blob", "inspect", "--json", str(tmp_path / "blob")).stdout)
    assert facts["type"] == "SIMPLEBLOB" and facts["alg_id"] == alg.name and facts["legacy"] is True
    assert facts["cipher"] == cipher and (facts["key_bits_min"], facts["key_bits_max"]) == bits
    assert facts["recipient_bits"] == 2048 and facts["wrap_alg_id"] == "CALG_RSA_KEYX"
    assert ("11 zero salt bytes" in facts["salt"]) == salted
    assert ("effective_bits" in facts) == effective
    assert "capi decrypt --allow-legacy" in facts["opens_with"]
    assert "CBC" in facts["mode"] if alg is not LegacyAlg.CALG_RC4 else "stream" in facts["mode"]


# -- the header: one parse (blobs.simpleblob_header) for legacy and AES/3DES SIMPLEBLOBs -----------


def _with_header(blob: bytes, *, version: int = 2, reserved: int = 0) -> bytes:
    return blob[:1] + bytes([version]) + reserved.to_bytes(2, "little") + blob[4:]


@pytest.mark.parametrize("alg", list(LegacyAlg), ids=[alg.name for alg in LegacyAlg])
@pytest.mark.parametrize(("field", "needle"), [({"reserved": 1}, "reserved field is 0x0001, expected 0"),
                                               ({"reserved": 0x8000}, "reserved field is 0x8000, expected 0"),
                                               ({"version": 3}, "bVersion is 3, expected 2")],
                         ids=["reserved-1", "reserved-8000", "version-3"])
def test_a_legacy_blob_header_is_refused_as_an_aes_blobs_is(alg, field, needle):
    legacy = _with_header(WINE_RC4_SIMPLEBLOB[:4] + alg.to_bytes(4, "little") + WINE_RC4_SIMPLEBLOB[8:], **field)
    aes = _with_header(WINE_RC4_SIMPLEBLOB[:4] + AlgId.CALG_AES_256.to_bytes(4, "little") + WINE_RC4_SIMPLEBLOB[8:],
                       **field)
    with pytest.raises(BlobFormatError) as refused_aes:
        SimpleBlob.from_bytes(aes)
    with pytest.raises(BlobFormatError) as refused_legacy:
        legacy_simpleblob(legacy)
    assert str(refused_legacy.value) == str(refused_aes.value) and needle in str(refused_legacy.value)
    assert legacy_simpleblob(_with_header(legacy)) == (alg, WINE_RC4_SIMPLEBLOB[12:][::-1])  # mended: it reads


def test_other_blobs_are_not_legacy_ones():
    aes = WINE_RC4_SIMPLEBLOB[:4] + AlgId.CALG_AES_128.to_bytes(4, "little") + WINE_RC4_SIMPLEBLOB[8:]
    public = bytes([6]) + WINE_RC4_SIMPLEBLOB[1:]  # a PUBLICKEYBLOB's bType: blobs.parse judges it
    for data in (aes, public, WINE_RC4_SIMPLEBLOB[:11], b""):
        assert legacy_simpleblob(data) is None


def test_blob_inspect_and_capi_decrypt_refuse_a_legacy_blob_with_reserved_set(tmp_path):
    """Refused from the header alone: one line, exit 1, before any key or token is looked at."""
    (tmp_path / "blob").write_bytes(_with_header(WINE_RC4_SIMPLEBLOB, reserved=1))
    (tmp_path / "data").write_bytes(bytes(16))
    assert_one_line_error(tokencsp("blob", "inspect", str(tmp_path / "blob"), check=False), 1,
                          "reserved field is 0x0001")
    refused = tokencsp("capi", "decrypt", "--allow-legacy", "--key", "nobody", "--blob", str(tmp_path / "blob"),
                       "-o", str(tmp_path / "out"), str(tmp_path / "data"), check=False,
                       env={"TOKENCSP_MODULE": str(tmp_path / "no-such-module.so")})
    assert_one_line_error(refused, 1, "reserved field is 0x0001")
    assert not (tmp_path / "out").exists()
