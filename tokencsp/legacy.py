"""CryptoAPI's legacy session-key ciphers, decrypt-only: RC4, RC2 and DES as rsaenh runs them.

Old Windows archives carry SIMPLEBLOBs for CALG_RC4 (0x6801), CALG_RC2 (0x6602) and CALG_DES
(0x6601), the Base and Enhanced providers' defaults for years.  tokencsp opens them (behind
``allow_legacy`` / ``--allow-legacy``) and never makes new ones.

rsaenh's rules (Wine's rsaenh.c, whose tests pass on Windows):

* a 40-bit RC2/RC4 key gets *salt*: 11 zero bytes appended (``16 - key length``) unless the
  caller set another (KP_SALT) or none (CRYPT_NO_SALT) -- pass ``salt``; the cipher is keyed with
  key || salt;
* RC2's effective key length (KP_EFFECTIVE_KEYLEN) defaults to the key's own length in bits, salt
  not counted;
* RC2 and DES run CBC with an all-zero IV and PKCS#5 padding (checked on the final call), RC4 is a
  stream: no padding, no IV.

RC2 is implemented here from RFC 2268 (cryptography's decrepit RC2 takes neither effective key
lengths nor short keys); RC4 and DES come from cryptography's decrepit ciphers.  Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4, TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .blobs import AlgId, BlobType, simpleblob_header
from .errors import DecryptionError, InvalidKeyError

__all__ = ["LegacyAlg", "LegacyKey", "default_salt", "legacy_facts", "legacy_simpleblob", "rc2_decrypt_block",
           "rc2_key_schedule"]


class LegacyAlg(IntEnum):
    CALG_DES = 0x6601
    CALG_RC2 = 0x6602
    CALG_RC4 = 0x6801


#: RFC 2268 section 2: the permutation "based on the digits of pi".
_PITABLE = bytes.fromhex(
    "d978f9c419ddb5ed28e9fd794aa0d89dc67e37832b76538e624c6488448bfba2"
    "179a59f587b34f1361456d8d09817d32bd8f40eb86b77b0bf09521225c6b4e82"
    "54d66593ce60b21c7356c014a78cf1dc1275ca1f3bbee4d1423dd430a33cb626"
    "6fbf0eda4669075727f21d9bbc944303f811c7f690ef3ee706c3d52fc8661ed7"
    "08e8eade8052eef784aa72ac354d6a2a961ad2715a1549744b9fd05e0418a4ec"
    "c2e0416e0f51cbcc2491af50a1f47039997c3a8523b8b47afc02365b25559731"
    "2d5dfa98e38a92ae05df2910676cbac9d300e6cfe19ea82c6316013f58e289a9"
    "0d38341bab33ffb0bb480c5fb9b1cd2ec5f3db47e5a59c770aa62068fe7fc1ad")

_MIN_KEY, _MAX_KEY = 5, 16  # 40..128-bit RC2/RC4 keys, as rsaenh allows
_DES_KEY = 8


def default_salt(alg: LegacyAlg, key_length: int) -> bytes:
    """rsaenh's salt for an imported key: 11 zero bytes for a 40-bit RC2/RC4 key, else none."""
    return bytes(16 - key_length) if alg in (LegacyAlg.CALG_RC2, LegacyAlg.CALG_RC4) and key_length == 5 else b""


def rc2_key_schedule(key: bytes, effective_bits: int) -> list[int]:
    """RFC 2268 section 2: the 64 16-bit subkeys for ``key`` (1..128 bytes) at ``effective_bits``."""
    if not 1 <= len(key) <= 128 or not 1 <= effective_bits <= 1024:
        raise InvalidKeyError("RC2 keys are 1..128 bytes with 1..1024 effective bits")
    expanded = bytearray(key) + bytearray(128 - len(key))
    for i in range(len(key), 128):
        expanded[i] = _PITABLE[(expanded[i - 1] + expanded[i - len(key)]) & 0xFF]
    t8 = (effective_bits + 7) // 8
    mask = 0xFF >> (8 * t8 - effective_bits)
    expanded[128 - t8] = _PITABLE[expanded[128 - t8] & mask]
    for i in range(127 - t8, -1, -1):
        expanded[i] = _PITABLE[expanded[i + 1] ^ expanded[i + t8]]
    return [expanded[2 * i] | expanded[2 * i + 1] << 8 for i in range(64)]


def _ror(word: int, shift: int) -> int:
    return ((word >> shift) | (word << (16 - shift))) & 0xFFFF


def rc2_decrypt_block(subkeys: list[int], block: bytes) -> bytes:
    """RFC 2268 section 4: one 8-byte block."""
    r = [block[0] | block[1] << 8, block[2] | block[3] << 8, block[4] | block[5] << 8, block[6] | block[7] << 8]
    shifts = (1, 2, 3, 5)
    j = 63

    def mix_rounds(count: int) -> None:
        nonlocal j
        for _ in range(count):
            for i in (3, 2, 1, 0):
                r[i] = _ror(r[i], shifts[i])
                r[i] = (r[i] - subkeys[j] - (r[i - 1] & r[i - 2]) - (~r[i - 1] & r[i - 3])) & 0xFFFF
                j -= 1

    def mash() -> None:
        for i in (3, 2, 1, 0):
            r[i] = (r[i] - subkeys[r[i - 1] & 63]) & 0xFFFF

    mix_rounds(5)
    mash()
    mix_rounds(6)
    mash()
    mix_rounds(5)
    return b"".join(word.to_bytes(2, "little") for word in r)


class LegacyKey:
    """A decrypt-only rsaenh key handle for RC4, RC2 or DES (CryptDecrypt semantics)."""

    def __init__(self, alg: LegacyAlg | int, key: bytes, *, salt: bytes | None = None,
                 effective_bits: int | None = None) -> None:
        self.alg = LegacyAlg(alg)
        if self.alg is LegacyAlg.CALG_DES:
            if len(key) != _DES_KEY or salt:
                raise InvalidKeyError("DES keys are 8 bytes and take no salt")
        elif not _MIN_KEY <= len(key) <= _MAX_KEY:
            raise InvalidKeyError(f"{self.alg.name} keys are 40..128 bits, got {len(key) * 8}")
        self._salt = default_salt(self.alg, len(key)) if salt is None else bytes(salt)
        if len(key) + len(self._salt) > 128:
            raise InvalidKeyError("key and salt together exceed 128 bytes")
        self._key = bytes(key)
        self._effective_bits = effective_bits or len(key) * 8
        self.block_size = 0 if self.alg is LegacyAlg.CALG_RC4 else 8
        self._reset()

    def _reset(self) -> None:
        keyed = self._key + self._salt
        if self.alg is LegacyAlg.CALG_RC4:
            self._stream = Cipher(ARC4(keyed), mode=None).decryptor()
        elif self.alg is LegacyAlg.CALG_RC2:
            self._subkeys = rc2_key_schedule(keyed, self._effective_bits)
        self._chain = bytes(8)

    def _blocks(self, data: bytes) -> bytes:
        if self.alg is LegacyAlg.CALG_DES:
            ctx = Cipher(TripleDES(self._key * 3), modes.CBC(self._chain)).decryptor()  # K1=K2=K3 is DES
            out = ctx.update(data) + ctx.finalize()
        else:
            pieces = []
            chain = self._chain
            decrypt: Callable[[list[int], bytes], bytes] = rc2_decrypt_block
            for at in range(0, len(data), 8):
                block = data[at:at + 8]
                plain = decrypt(self._subkeys, block)
                pieces.append(bytes(a ^ b for a, b in zip(plain, chain, strict=True)))
                chain = block
            out = b"".join(pieces)
        if data:
            self._chain = data[-8:]
        return out

    def decrypt(self, data: bytes, final: bool = True) -> bytes:
        """CryptDecrypt: a final call checks and strips the PKCS#5 padding (block ciphers) and resets the key."""
        data = bytes(data)
        if self.alg is LegacyAlg.CALG_RC4:
            out = self._stream.update(data)
            if final:
                self._reset()
            return out
        if len(data) % 8 or (final and not data):
            self._reset()
            raise DecryptionError("the ciphertext is not a whole number of blocks")
        out = self._blocks(data)
        if not final:
            return out
        self._reset()
        pad = out[-1]
        if not 1 <= pad <= 8 or out[-pad:] != bytes([pad]) * pad:
            raise DecryptionError("bad padding")
        return out[:-pad]


#: A legitimately unwrapped legacy session key has one of these lengths.
KEY_LENGTHS = {LegacyAlg.CALG_DES: frozenset({8}), LegacyAlg.CALG_RC2: frozenset(range(5, 17)),
               LegacyAlg.CALG_RC4: frozenset(range(5, 17))}


def legacy_simpleblob(data: bytes) -> tuple[LegacyAlg, bytes] | None:
    """(cipher, RSA ciphertext in PKCS#1 order) of a SIMPLEBLOB for RC4/RC2/DES; None for any other blob.

    The header is judged as every SIMPLEBLOB's (:func:`tokencsp.blobs.simpleblob_header`): a wrong
    bVersion or a non-zero reserved field is the same ``BlobFormatError`` here as for an AES blob.
    """
    if len(data) < 12 or data[0] != BlobType.SIMPLEBLOB:
        return None  # not a SIMPLEBLOB with a wrapping ALG_ID: blobs.parse says what it is
    alg_id, rest = simpleblob_header(data)
    if alg_id not in LegacyAlg.__members__.values():
        return None
    if int.from_bytes(rest[:4], "little") != AlgId.CALG_RSA_KEYX:
        raise InvalidKeyError("SIMPLEBLOBs are wrapped with CALG_RSA_KEYX")
    ciphertext = rest[4:]
    if not 128 <= len(ciphertext) <= 2048 or len(ciphertext) % 2:
        raise InvalidKeyError(f"SIMPLEBLOB ciphertext of {len(ciphertext)} bytes fits no RSA modulus")
    return LegacyAlg(alg_id), bytes(ciphertext[::-1])


def legacy_facts(alg: LegacyAlg) -> dict[str, object]:
    """What a legacy SIMPLEBLOB's header says about its cipher, and rsaenh's rules for it (blob inspect).

    The key's length is not in the header: it is inside the RSA-encrypted part, so only the
    unwrap on the token learns it.
    """
    if alg is LegacyAlg.CALG_DES:
        return {"legacy": True, "cipher": "DES", "mode": "CBC, zero IV, PKCS#5 padding",
                "key_bits_min": 56, "key_bits_max": 56, "key_length": "8 bytes with parity",
                "salt": "none (DES takes no salt)",
                "opens_with": "capi decrypt --allow-legacy (decrypt only; tokencsp never makes one)"}
    facts: dict[str, object] = {
        "legacy": True, "cipher": alg.name.removeprefix("CALG_"),
        "mode": "stream, no IV, no padding" if alg is LegacyAlg.CALG_RC4 else "CBC, zero IV, PKCS#5 padding",
        "key_bits_min": _MIN_KEY * 8, "key_bits_max": _MAX_KEY * 8,
        "key_length": "inside the encrypted key: known after the token's unwrap",
        "salt": f"a 40-bit key gets {16 - _MIN_KEY} zero salt bytes (rsaenh, KP_SALT) unless --salt HEX "
                "('' for none); a longer key gets none",
    }
    if alg is LegacyAlg.CALG_RC2:
        facts["effective_bits"] = "the key's length, salt not counted, unless --effective-bits N (KP_EFFECTIVE_KEYLEN)"
    facts["opens_with"] = "capi decrypt --allow-legacy (decrypt only; tokencsp never makes one)"
    return facts


class DeferredLegacyKey:
    """A legacy key whose every decrypt failure is one :class:`DecryptionError` with ``message``.

    The key is the unwrapped one or, when the token refused the blob, its substitute; nothing here
    knows which.  A substitute decrypts as any unknown key would (RC4: garbage, never an error;
    RC2/DES: garbage where the padding happens to be valid), so the outcome does not tell a bad
    blob from a good blob carrying another key.
    """

    def __init__(self, key: LegacyKey, message: str) -> None:
        self._key = key
        self._message = message

    def decrypt(self, data: bytes, final: bool = True) -> bytes:
        try:
            return self._key.decrypt(data, final)
        except DecryptionError:
            raise DecryptionError(self._message) from None

    def wipe(self) -> None:
        self._key = LegacyKey(LegacyAlg.CALG_DES, bytes(8))
