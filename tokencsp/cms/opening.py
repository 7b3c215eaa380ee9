"""Open a CMS EnvelopedData (RFC 5652) or AuthEnvelopedData (RFC 5083/5084) message from a stream.

The RecipientInfo's encrypted key goes to ``import_key`` -- in tokencsp an exchange key's
``import_simpleblob_deferred``, with the RSAES-OAEP hash the message names (``oaep_hash``, for
OAEP other than SHA-1; the exchange key refuses a hash its token cannot do before it uses the
key): the token unwraps under implicit rejection, and a key that did not
unwrap comes back as a substitute key that fails exactly where a corrupted payload fails (CBC: the
final padding check; GCM: the tag).  So a bad key transport and a bad ciphertext give one
:class:`DecryptionError` with one message, at the end of the content.  The content is decrypted on
the host in pieces as the BER reader yields them: constant memory whatever the message size.

CBC EnvelopedData has **no integrity**: the output written before the end is unauthenticated,
and the final padding check is the only check (a padding oracle to whoever can watch the
outcome).  AuthEnvelopedData with AES-GCM authenticates everything, but only at the end: the
caller must hold back the output until this function returned (the CLI's ``-o`` writes to a
temporary file that appears only then).  Pure: bytes in through ``read``, out through ``write``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from asn1crypto import algos, core
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..blobs import AlgId, SimpleBlob
from ..errors import CmsFormatError, DecryptionError, UnsupportedAlgorithm
from ..session import SessionKey
from .armor import decoded
from .ber import BerReader, Read
from .recipients import parse_recipient_infos, select_recipient

__all__ = ["CMS_DECRYPT_FAILED", "CONTENT_ALGORITHMS", "CmsInfo", "open_stream"]

OID_DATA = "1.2.840.113549.1.7.1"
OID_ENVELOPED = "1.2.840.113549.1.7.3"
OID_AUTH_ENVELOPED = "1.2.840.113549.1.9.16.1.23"

CMS_DECRYPT_FAILED = "the CMS message could not be decrypted (not for this key, bad key transport or corrupted content)"

#: asn1crypto's name -> (CryptoAPI ALG_ID of the session key, mode)
CONTENT_ALGORITHMS: dict[str, tuple[AlgId, str]] = {
    "aes128_cbc": (AlgId.CALG_AES_128, "cbc"), "aes192_cbc": (AlgId.CALG_AES_192, "cbc"),
    "aes256_cbc": (AlgId.CALG_AES_256, "cbc"), "tripledes_3key": (AlgId.CALG_3DES, "cbc"),
    "aes128_gcm": (AlgId.CALG_AES_128, "gcm"), "aes192_gcm": (AlgId.CALG_AES_192, "gcm"),
    "aes256_gcm": (AlgId.CALG_AES_256, "gcm"),
}



class KeyImport(Protocol):
    """``ExchangeKey.import_simpleblob_deferred``'s shape: (blob, oaep, oaep_hash=) -> a session key."""

    def __call__(self, blob: SimpleBlob, oaep: bool = False, *, oaep_hash: str = "sha1") -> SessionKey: ...


Write = Callable[[bytes], object]


class GcmParameters(core.Sequence):  # type: ignore[misc]  # RFC 5084: asn1crypto has no spec for the GCM OIDs
    _fields: ClassVar = [("aes_nonce", core.OctetString), ("aes_icvlen", core.Integer, {"default": 12})]


@dataclass(frozen=True)
class CmsInfo:
    authenticated: bool  # AuthEnvelopedData (GCM)
    algorithm: str  # asn1crypto's name, e.g. aes256_cbc
    oaep: bool
    recipient_matched: bool
    oaep_hash: str | None = None  # RSAES-OAEP's hash (sha1, sha256...); None for PKCS#1 v1.5


def _oid(reader: BerReader) -> str:
    return str(core.ObjectIdentifier.load(reader.element(0x06)).dotted)


class _Cbc:
    def __init__(self, key: SessionKey, params: core.Asn1Value) -> None:
        iv = params.native if isinstance(params, core.OctetString) else None
        if not isinstance(iv, bytes) or len(iv) != key.block_size:
            raise CmsFormatError("the CBC parameters are not an IV of one block")
        key.iv = iv
        self._key = key
        self._pending = bytearray()

    def update(self, data: bytes) -> tuple[bytes, ...]:
        """The plaintext of all but the last block seen so far (the final call's, for its padding).

        ``data`` is decrypted where it lies (a memoryview): of the ciphertext only the block or less
        carried over between pieces is copied; the plaintext once, into the ``bytes`` ``write`` takes.
        """
        bs = self._key.block_size
        pending = self._pending  # at most one block, carried from the piece before
        total = len(pending) + len(data)
        keep = total % bs or bs
        if total <= keep:
            pending += data
            return ()
        view = memoryview(data)
        split = len(data) - keep  # >= 0 since len(pending) <= bs: data[split:] is kept for later
        fill = -len(pending) % bs  # the bytes of data that complete the pending block
        out: tuple[bytes, ...] = ()
        if pending:
            out = (bytes(self._key.decrypt(bytes(pending) + view[:fill], final=False)),)
        if split > fill:
            out += (bytes(self._key.decrypt(view[fill:split], final=False)),)
        self._pending = bytearray(view[split:])
        return out

    def finish(self) -> bytes:
        return bytes(self._key.decrypt(self._pending, final=True))


class _Gcm:
    def __init__(self, key: SessionKey, params: core.Asn1Value) -> None:
        try:
            parsed = GcmParameters.load(params.dump())
            nonce, self._icvlen = parsed["aes_nonce"].native, parsed["aes_icvlen"].native
        except (ValueError, TypeError):
            raise CmsFormatError("the GCM parameters are malformed") from None
        if not 12 <= self._icvlen <= 16 or not 1 <= len(nonce) <= 64:
            raise CmsFormatError("the GCM parameters are out of range (tag 12..16 bytes)")
        self._ctx = Cipher(algorithms.AES(key.key), modes.GCM(nonce, min_tag_length=self._icvlen)).decryptor()
        self.tag = b""

    def update(self, data: bytes) -> tuple[bytes, ...]:
        return (self._ctx.update(data),)

    def finish(self) -> bytes:
        if len(self.tag) != self._icvlen:
            raise CmsFormatError("the AuthEnvelopedData MAC length differs from its GCM parameters")
        try:
            return self._ctx.finalize_with_tag(self.tag)
        except InvalidTag:
            raise DecryptionError(CMS_DECRYPT_FAILED) from None


def open_stream(read: Read, write: Write, *, public_key: rsa.RSAPublicKey, import_key: KeyImport,
                cert: x509.Certificate | None = None, certs: Sequence[x509.Certificate] = ()) -> CmsInfo:
    """Decrypt the CMS message ``read`` gives (DER/BER, PEM or S/MIME) into ``write``.

    ``cert`` and ``certs`` are the key's certificates, for recipients named by issuer and serial
    (``select_recipient``).
    """
    reader = BerReader(decoded(read))
    info = reader.enter(0x30)
    content_type = _oid(reader)
    if content_type not in (OID_ENVELOPED, OID_AUTH_ENVELOPED):
        raise CmsFormatError(f"CMS content type {content_type} is not EnvelopedData or AuthEnvelopedData")
    authenticated = content_type == OID_AUTH_ENVELOPED
    explicit = reader.enter(0xA0)
    envelope = reader.enter(0x30)
    reader.element(0x02)  # version: the structure below says all it means
    if reader.peek_tag() == 0xA0:
        reader.element()  # originatorInfo (certificates, CRLs): not needed to decrypt
    transport = select_recipient(parse_recipient_infos(reader.element(0x31)), public_key, cert, certs)
    encrypted = reader.enter(0x30)
    if _oid(reader) != OID_DATA:
        raise CmsFormatError("only id-data content is supported")
    try:
        algorithm = algos.EncryptionAlgorithm.load(reader.element(0x30))
        name = algorithm["algorithm"].native
        params = algorithm["parameters"]
    except (ValueError, TypeError):
        raise CmsFormatError("the content-encryption algorithm is malformed") from None
    if name not in CONTENT_ALGORITHMS:
        raise UnsupportedAlgorithm(f"CMS content encryption {name} is not supported")
    alg_id, mode = CONTENT_ALGORITHMS[name]
    if (mode == "gcm") != authenticated:
        raise CmsFormatError(f"{name} in {'AuthEnvelopedData' if authenticated else 'EnvelopedData'}")
    if reader.peek_tag() not in (0x80, 0xA0):
        raise CmsFormatError("the CMS message has no encrypted content (detached content is not supported)")
    blob = SimpleBlob(alg_id, transport.encrypted_key)
    if transport.oaep and transport.oaep_hash != "sha1":
        key = import_key(blob, True, oaep_hash=transport.oaep_hash)
    else:  # CRYPT_OAEP or PKCS#1 v1.5: any (blob, oaep) import will do, as before oaep_hash existed
        key = import_key(blob, transport.oaep)
    try:
        cipher: _Cbc | _Gcm = _Cbc(key, params) if mode == "cbc" else _Gcm(key, params)
        head = reader.header()
        for piece in reader.octets(head):
            for out in cipher.update(piece):
                if out:
                    write(out)
        reader.leave(encrypted)
        if authenticated:
            if reader.peek_tag() == 0xA1:
                raise CmsFormatError("AuthEnvelopedData with authenticated attributes is not supported")
            mac = core.OctetString.load(reader.element(0x04)).native
            assert isinstance(cipher, _Gcm)
            cipher.tag = mac
        if reader.peek_tag() in ((0xA2,) if authenticated else (0xA1,)):
            reader.element()  # unauthenticated / unprotected attributes
        reader.leave(envelope)
        reader.leave(explicit)
        reader.leave(info)
        if not reader.at_end_of_input():
            raise CmsFormatError("trailing data after the CMS message")
        try:
            out = cipher.finish()
        except DecryptionError:
            raise DecryptionError(CMS_DECRYPT_FAILED) from None
        if out:
            write(out)
    finally:
        key.wipe()
    return CmsInfo(authenticated, name, transport.oaep, transport.matched,
                   transport.oaep_hash if transport.oaep else None)
