"""Recipient and sender public keys from files: PUBLICKEYBLOB, PEM or DER.

Pure: bytes in, ``cryptography`` keys out.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm as _CryptographyUnsupported
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .blobs import BlobType, PublicKeyBlob
from .errors import BlobFormatError, InvalidKeyError, UnsupportedAlgorithm

__all__ = ["load_public_key", "fingerprint"]


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
