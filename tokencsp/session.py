"""Host-side session keys with the CryptEncrypt/CryptDecrypt semantics of rsaenh.

rsaenh (the Microsoft Enhanced RSA and AES provider) runs its block ciphers in
CBC mode with PKCS#5 padding, an all-zero IV unless KP_IV is set, and a single
chaining vector per key that every non-final CryptEncrypt *and* CryptDecrypt
call carries forward and every final call (successful or not) resets to the
IV.  Wine's dlls/rsaenh/rsaenh.c mirrors it; its tests hold Windows output.
"""

from __future__ import annotations

import os

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES  # cryptography >= 43 (pyproject)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from .blobs import SESSION_KEY_LENGTHS, AlgId, PlaintextKeyBlob, PublicKeyBlob, SimpleBlob
from .errors import DecryptionError, InvalidKeyError, UnsupportedAlgorithm

__all__ = ["ALG_NAMES", "SessionKey", "alg_from_name"]

ALG_NAMES: dict[str, AlgId] = {
    "aes128": AlgId.CALG_AES_128,
    "aes192": AlgId.CALG_AES_192,
    "aes256": AlgId.CALG_AES_256,
    "3des": AlgId.CALG_3DES,
    "3des112": AlgId.CALG_3DES_112,
}

_TRIPLE_DES = frozenset({AlgId.CALG_3DES, AlgId.CALG_3DES_112})
MIN_RECIPIENT_BITS = 512
BAD_PADDING = "bad padding"
NOT_WHOLE_BLOCKS = "ciphertext is empty or not a whole number of blocks"


def alg_from_name(name: str) -> AlgId:
    """Map "aes128", "aes192", "aes256", "3des" or "3des112" (any case) to its ALG_ID."""
    try:
        return ALG_NAMES[name.strip().lower()]
    except KeyError:
        raise UnsupportedAlgorithm(
            f"unknown session key algorithm {name!r}; choose one of {', '.join(ALG_NAMES)}"
        ) from None


def _coerce_alg(alg: AlgId | str | int) -> AlgId:
    if isinstance(alg, str):
        return alg_from_name(alg)
    try:
        alg_id = AlgId(alg)
    except ValueError:
        raise UnsupportedAlgorithm(f"unknown ALG_ID {alg!r}") from None
    if alg_id not in SESSION_KEY_LENGTHS:
        raise UnsupportedAlgorithm(f"{alg_id.name} is not a session key algorithm")
    return alg_id


def _odd_parity(key: bytes) -> bytearray:
    # CryptGenKey hands out DES keys with odd parity in every byte's low bit.
    return bytearray((b & 0xFE) | ((bin(b >> 1).count("1") + 1) & 1) for b in key)


class SessionKey:
    """An AES or 3DES session key that encrypts exactly like an rsaenh key handle."""

    __slots__ = ("_alg", "_chain", "_cipher_key", "_iv", "_key", "_wiped")

    def __init__(self, alg: AlgId, key: bytes | bytearray) -> None:
        self._alg = alg
        self._key = bytearray(key)
        # cryptography deprecates two-key TripleDES, so hand it K1K2K1 itself.
        self._cipher_key = self._key + self._key[:8] if alg is AlgId.CALG_3DES_112 else self._key
        self._iv = bytes(self.block_size)
        self._chain = self._iv
        self._wiped = False

    # -- construction ---------------------------------------------------------

    @classmethod
    def generate(cls, alg: AlgId | str) -> SessionKey:
        alg_id = _coerce_alg(alg)
        raw = os.urandom(SESSION_KEY_LENGTHS[alg_id])
        return cls(alg_id, _odd_parity(raw) if alg_id in _TRIPLE_DES else raw)

    @classmethod
    def from_bytes(cls, alg: AlgId | str, key: bytes) -> SessionKey:
        alg_id = _coerce_alg(alg)
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError("a session key must be bytes")
        expected = SESSION_KEY_LENGTHS[alg_id]
        if len(key) != expected:
            raise InvalidKeyError(f"{alg_id.name} keys are {expected} bytes, got {len(key)}")
        return cls(alg_id, key)

    @classmethod
    def from_plaintext_blob(cls, data: bytes) -> SessionKey:
        blob = PlaintextKeyBlob.from_bytes(data)
        return cls.from_bytes(blob.alg_id, blob.key)

    # -- properties -----------------------------------------------------------

    @property
    def alg(self) -> AlgId:
        return self._alg

    @property
    def key(self) -> bytes:
        return bytes(self._live())

    @property
    def block_size(self) -> int:
        return 8 if self._alg in _TRIPLE_DES else 16

    @property
    def iv(self) -> bytes:
        self._live()
        return self._iv

    @iv.setter
    def iv(self, value: bytes) -> None:
        self._live()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError("the IV must be bytes")
        if len(value) != self.block_size:
            raise InvalidKeyError(f"the IV of {self._alg.name} is {self.block_size} bytes, got {len(value)}")
        # CPSetKeyParam(KP_IV) calls setup_key(), which restarts the chaining.
        self._iv = bytes(value)
        self._chain = self._iv

    # -- CryptEncrypt / CryptDecrypt -------------------------------------------

    # The output is a bytearray written by update_into: no copy of the input to pad it, none of
    # the output to strip the padding (docs/PERFORMANCE.md: 0.9x of raw CBC needs both gone).

    def encrypt(self, data: bytes | bytearray | memoryview, final: bool = True) -> bytearray:
        """CryptEncrypt: CBC; a final call appends 1..block_size bytes of PKCS#5 padding."""
        self._live()
        with memoryview(data) as given, given.cast("B") as view:  # released even when this raises
            return self._encrypt(view, final)

    def _encrypt(self, view: memoryview, final: bool) -> bytearray:
        bs = self.block_size
        tail = len(view) % bs
        if not final and tail:
            # rsaenh: NTE_BAD_DATA, before touching the chaining state.
            raise ValueError(f"a non-final encrypt needs whole {bs}-byte blocks, got {len(view)} bytes")
        head = len(view) - tail
        size = head + bs if final else head
        out = bytearray(head + 2 * bs - 1)  # update_into wants block_size - 1 bytes of slack
        if size:
            ctx = self._cipher().encryptor()
            done = ctx.update_into(view[:head], out) if head else 0
            if final:
                pad = bs - tail  # a whole extra block when already aligned
                ctx.update_into(bytes(view[head:]) + bytes([pad]) * pad, memoryview(out)[done:])
        del out[size:]
        self._chain = self._iv if final else (bytes(out[-bs:]) if out else self._chain)
        return out

    def decrypt(self, data: bytes | bytearray | memoryview, final: bool = True) -> bytearray:
        """CryptDecrypt: CBC; a final call checks and strips the PKCS#5 padding."""
        self._live()
        with memoryview(data) as given, given.cast("B") as view:
            return self._decrypt(view, final)

    def _decrypt(self, view: memoryview, final: bool) -> bytearray:
        bs = self.block_size
        if len(view) % bs or (final and not view):
            self._chain = self._iv
            raise DecryptionError(NOT_WHOLE_BLOCKS)
        out = bytearray(len(view) + bs - 1)
        # The next chaining vector, copied before the caller can change its buffer.
        following = bytes(view[-bs:]) if view else self._chain
        if view:
            self._cipher().decryptor().update_into(view, out)
        del out[len(view):]
        if not final:
            self._chain = following
            return out
        # A final CryptDecrypt resets the key even when the padding is bad
        # (Wine's tests check this against Windows).
        self._chain = self._iv
        pad = out[-1]
        if not 1 <= pad <= bs or out[-pad:] != bytes([pad]) * pad:
            raise DecryptionError(BAD_PADDING)
        del out[-pad:]
        return out

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(self._algorithm(), modes.CBC(self._chain))

    def _algorithm(self) -> BlockCipherAlgorithm:
        if self._alg in _TRIPLE_DES:
            return TripleDES(bytes(self._cipher_key))
        return algorithms.AES(self._cipher_key)

    # -- export ---------------------------------------------------------------

    def export_simpleblob(
        self, recipient: bytes | PublicKeyBlob | rsa.RSAPublicKey, oaep: bool = False
    ) -> bytes:
        """CryptExportKey(SIMPLEBLOB): the key RSA-encrypted to an exchange key.

        PKCS#1 v1.5 by default; ``oaep=True`` is CRYPT_OAEP (SHA-1, MGF1-SHA-1, no label).
        """
        key = bytes(self._live())
        public_key = _recipient_key(recipient)
        if oaep:
            scheme: padding.AsymmetricPadding = padding.OAEP(
                mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None
            )
        else:
            scheme = padding.PKCS1v15()
        try:
            ciphertext = public_key.encrypt(key, scheme)
        except ValueError:
            raise InvalidKeyError(
                f"a {public_key.key_size}-bit RSA key is too small to carry a {self._alg.name} key"
                + (" with OAEP" if oaep else "")
            ) from None
        return SimpleBlob(self._alg, ciphertext).to_bytes()

    def export_plaintext_blob(self) -> bytes:
        return PlaintextKeyBlob(self._alg, bytes(self._live())).to_bytes()

    # -- lifetime -------------------------------------------------------------

    def wipe(self) -> None:
        """Zero the key material (best effort: Python and OpenSSL may hold copies)."""
        for buf in (self._key, self._cipher_key):
            buf[:] = bytes(len(buf))
        self._wiped = True

    def _live(self) -> bytearray:
        if self._wiped:
            raise ValueError("this session key has been wiped")
        return self._key

    def __repr__(self) -> str:
        state = "wiped" if self._wiped else f"{len(self._key)} bytes"
        return f"SessionKey(alg={self._alg.name}, key=<{state}>)"


def _recipient_key(recipient: bytes | PublicKeyBlob | rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    if isinstance(recipient, (bytes, bytearray, memoryview)):
        recipient = PublicKeyBlob.from_bytes(bytes(recipient))
    if isinstance(recipient, PublicKeyBlob):
        if recipient.alg_id is AlgId.CALG_RSA_SIGN:
            raise InvalidKeyError("a signature key (CALG_RSA_SIGN) cannot receive session keys")
        recipient = recipient.to_public_key()
    if not isinstance(recipient, rsa.RSAPublicKey):
        raise TypeError("the recipient must be a PUBLICKEYBLOB, a PublicKeyBlob or an RSA public key")
    if recipient.key_size < MIN_RECIPIENT_BITS:
        raise InvalidKeyError(
            f"a {recipient.key_size}-bit RSA key is too weak to receive a session key "
            f"(minimum {MIN_RECIPIENT_BITS})"
        )
    return recipient
