"""Recipient and sender public keys from files: PUBLICKEYBLOB, PEM or DER; recipients also from X.509.

Pure: bytes in, ``cryptography`` keys out.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm as _CryptographyUnsupported
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .blobs import BlobType, PublicKeyBlob
from .errors import BlobFormatError, InvalidKeyError, UnsupportedAlgorithm

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["load_public_key", "load_recipient", "load_recipients", "fingerprint"]


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from a PUBLICKEYBLOB, a PEM SubjectPublicKeyInfo/PKCS#1 key, or DER."""
    stripped = data.lstrip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(stripped)
        elif data[:1] == bytes([BlobType.PUBLICKEYBLOB]):
            return PublicKeyBlob.from_bytes(data).to_public_key()
        elif data[:1] == b"\x30":
            key = serialization.load_der_public_key(data)
        else:
            raise InvalidKeyError("not a public key: expected a PUBLICKEYBLOB, PEM or DER file")
    except (BlobFormatError, UnsupportedAlgorithm) as exc:
        raise InvalidKeyError(f"not a usable PUBLICKEYBLOB: {exc}") from None
    except _CryptographyUnsupported as exc:  # an SPKI of an unknown algorithm or curve (found by fuzzing)
        raise UnsupportedAlgorithm(f"unsupported public key: {exc}") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidKeyError):
            raise
        raise InvalidKeyError(f"not a usable public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm("only RSA public keys are supported")
    return key


def fingerprint(key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the key id used in tokencsp formats."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)
_RECIPIENT_PEM = (b"PUBLIC KEY", b"RSA PUBLIC KEY", b"CERTIFICATE")


def _certificate_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    from cryptography import x509

    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_encipherment:
        raise InvalidKeyError("the certificate's keyUsage does not allow keyEncipherment: its key cannot "
                              "receive a session key")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm("only RSA certificates are supported")
    return key


def load_recipient(data: bytes) -> rsa.RSAPublicKey:
    """A key to encrypt to: what :func:`load_public_key` reads, or an X.509 certificate (PEM or DER).

    Only the certificate's key and keyUsage are looked at: its validity and issuer are not checked
    (the caller chose the file).
    """
    # cryptography.x509 loads socket (and more): imported only for a certificate, so that open and
    # seal to a public key start fast (tests/test_fast_start.py)
    stripped = data.lstrip()
    try:
        if stripped.startswith(b"-----BEGIN CERTIFICATE-----"):
            from cryptography import x509

            return _certificate_key(x509.load_pem_x509_certificate(stripped))
        if data[:1] == b"\x30":
            try:
                return load_public_key(data)
            except InvalidKeyError:
                from cryptography import x509

                return _certificate_key(x509.load_der_x509_certificate(data))
    except ValueError as exc:
        if isinstance(exc, InvalidKeyError):
            raise
        raise InvalidKeyError(f"not a usable public key or certificate: {exc}") from None
    return load_public_key(data)


def load_recipients(data: bytes) -> list[rsa.RSAPublicKey]:
    """Every recipient in a PEM bundle: PUBLIC KEY, RSA PUBLIC KEY and CERTIFICATE blocks, in order.

    Text between the blocks (names, comments) is ignored; a file without one is an error.
    """
    blocks = [m for m in _PEM_BLOCK.finditer(data) if m.group(1) in _RECIPIENT_PEM]
    if not blocks:
        raise InvalidKeyError("no recipient in the file: expected PEM PUBLIC KEY or CERTIFICATE blocks")
    return [load_recipient(m.group(0)) for m in blocks]
