"""Make a CMS message ``openssl cms -decrypt`` opens: EnvelopedData AES-256-CBC or AuthEnvelopedData AES-256-GCM.

One KeyTransRecipientInfo per recipient: named by issuer and serial when a certificate is given,
by subjectKeyIdentifier (RFC 5280 method 1, or the certificate's own) for a bare public key; the
content key wrapped with RSA PKCS#1 v1.5 (default, what every CMS reader takes) or RSAES-OAEP
(SHA-1 by default; SHA-256/384/512 with MGF1 over the same hash, as ``-keyopt rsa_oaep_md:sha256``).
The output is indefinite-length BER, as ``openssl cms -encrypt -stream`` writes it, so
content of any size streams through in constant memory.  Host only (no token: a sender needs
none).  Pure: bytes in through ``read``, out through ``write``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from ..errors import InvalidKeyError, UnsupportedAlgorithm
from .ber import CHUNK, Read
from .opening import OID_AUTH_ENVELOPED, OID_DATA, OID_ENVELOPED, GcmParameters
from .recipients import OAEP_HASHES, key_identifier

__all__ = ["Recipient", "seal_stream"]

Write = Callable[[bytes], object]

_EOC = b"\x00\x00"
_GCM_TAG = 16
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def _oaep_params(hash_name: str) -> algos.RSAESOAEPParams:
    # Every field explicit, as openssl writes them (RFC 4055 allows the SHA-1 defaults to be left out).
    return algos.RSAESOAEPParams({
        "hash_algorithm": {"algorithm": hash_name},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_name}},
        "p_source_algorithm": {"algorithm": "p_specified", "parameters": b""}})


@dataclass(frozen=True)
class Recipient:
    public_key: rsa.RSAPublicKey
    cert: x509.Certificate | None = None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> Recipient:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidKeyError("the recipient certificate's key is not RSA")
        return cls(key, cert)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


def _recipient_info(recipient: Recipient, content_key: bytes, oaep: str | None) -> asn1_cms.RecipientInfo:
    scheme = padding.OAEP(padding.MGF1(_HASHES[oaep]()), _HASHES[oaep](), None) if oaep else padding.PKCS1v15()
    encrypted = recipient.public_key.encrypt(content_key, scheme)
    if recipient.cert is not None:
        rid = asn1_cms.RecipientIdentifier(name="issuer_and_serial_number", value=asn1_cms.IssuerAndSerialNumber({
            "issuer": asn1_x509.Name.load(recipient.cert.issuer.public_bytes()),
            "serial_number": recipient.cert.serial_number}))
        version = "v0"
    else:
        rid = asn1_cms.RecipientIdentifier(name="subject_key_identifier", value=key_identifier(recipient.public_key))
        version = "v2"
    algorithm = (asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": _oaep_params(oaep)})
                 if oaep else asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15",
                                                                "parameters": core.Null()}))
    return asn1_cms.RecipientInfo(name="ktri", value=asn1_cms.KeyTransRecipientInfo({
        "version": version, "rid": rid, "key_encryption_algorithm": algorithm, "encrypted_key": encrypted}))


def seal_stream(read: Read, write: Write, recipients: Sequence[Recipient], *, gcm: bool = False,
                oaep: bool = False, oaep_hash: str = "sha1") -> None:
    """Encrypt everything ``read`` gives to ``recipients``, writing CMS BER to ``write`` as it goes.

    ``oaep``: RSAES-OAEP with ``oaep_hash`` (one of ``recipients.OAEP_HASHES``) and MGF1 over it.
    """
    if not recipients:
        raise InvalidKeyError("a CMS message needs at least one recipient")
    if oaep_hash not in OAEP_HASHES:
        raise UnsupportedAlgorithm(f"RSAES-OAEP with {oaep_hash!r} is not supported ({', '.join(OAEP_HASHES)})")
    content_key = bytearray(os.urandom(32))
    infos = [_recipient_info(r, bytes(content_key), oaep_hash if oaep else None) for r in recipients]
    if gcm:
        nonce = os.urandom(12)
        parameters: core.Asn1Value = GcmParameters({"aes_nonce": nonce, "aes_icvlen": _GCM_TAG})
        algorithm = b"\x30" + _length(len(_oid("2.16.840.1.101.3.4.1.46")) + len(parameters.dump())) + \
            _oid("2.16.840.1.101.3.4.1.46") + parameters.dump()
        aead = Cipher(algorithms.AES(bytes(content_key)), modes.GCM(nonce)).encryptor()
        encryptor: CipherContext = aead
        version = 0
    else:
        iv = os.urandom(16)
        algorithm = algos.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv}).dump()
        encryptor = Cipher(algorithms.AES(bytes(content_key)), modes.CBC(iv)).encryptor()
        version = 2 if any(r.cert is None for r in recipients) else 0
    content_key[:] = bytes(len(content_key))
    padder = None if gcm else sympadding.PKCS7(128).padder()

    def piece(data: bytes) -> None:
        if data:
            write(b"\x04" + _length(len(data)) + data)

    write(b"\x30\x80" + _oid(OID_AUTH_ENVELOPED if gcm else OID_ENVELOPED) + b"\xa0\x80\x30\x80")
    write(core.Integer(version).dump() + asn1_cms.RecipientInfos(infos).dump())
    write(b"\x30\x80" + _oid(OID_DATA) + algorithm + b"\xa0\x80")
    while data := read(CHUNK):
        piece(encryptor.update(padder.update(data) if padder else data))
    piece(encryptor.update(padder.finalize()) + encryptor.finalize() if padder else encryptor.finalize())
    write(_EOC + _EOC)  # the constructed [0] content, EncryptedContentInfo
    if gcm:
        write(core.OctetString(aead.tag).dump())
    write(_EOC + _EOC + _EOC)  # (Auth)EnvelopedData, [0] EXPLICIT, ContentInfo
