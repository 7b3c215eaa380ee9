"""Key templates and mechanisms: tokencsp's PKCS#11 policy, stated once.

Every attribute set tokencsp hands a token is a named constant here, so a
reviewer reads the policy in one screen and a token quirk (docs/TOKENS.md)
changes one entry, not a call site.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pkcs11
import pkcs11.attributes
from pkcs11 import Attribute, KeyType, Mechanism

from ..blobs import AlgId
from ..errors import InvalidKeyError
from ..keyinfo import KeyUsage

__all__ = [
    "DECRYPT_EXCHANGE",
    "OAEP_HASHES",
    "PRIVATE_PROTECTION",
    "PSS_SHA256",
    "TRANSIENT_SECRET",
    "USAGE_TEMPLATES",
    "AttributeMapper",
    "Template",
    "oaep_params",
    "secret_key_type",
]

Template = Mapping[Attribute, Any]

# Capabilities by usage, as (public, private) templates.  An exchange key
# only wraps/unwraps (ENCRYPT on the public half is what peers use to build
# SIMPLEBLOBs on other tokens); a signature key only signs.
USAGE_TEMPLATES: Mapping[KeyUsage, tuple[Template, Template]] = {
    KeyUsage.EXCHANGE: (
        {Attribute.WRAP: True, Attribute.ENCRYPT: True, Attribute.VERIFY: False},
        {Attribute.UNWRAP: True, Attribute.DECRYPT: False, Attribute.SIGN: False},
    ),
    KeyUsage.SIGNATURE: (
        {Attribute.WRAP: False, Attribute.ENCRYPT: False, Attribute.VERIFY: True},
        {Attribute.UNWRAP: False, Attribute.DECRYPT: False, Attribute.SIGN: True},
    ),
}

# An exchange key for a token that cannot unwrap (no CKF_UNWRAP for the RSA mechanisms): the
# decrypt path, as card tooling makes such keys (quirks.exchange_import_path decides).
DECRYPT_EXCHANGE: tuple[Template, Template] = (
    {Attribute.WRAP: False, Attribute.ENCRYPT: True, Attribute.VERIFY: False},
    {Attribute.UNWRAP: False, Attribute.DECRYPT: True, Attribute.SIGN: False},
)

PRIVATE_PROTECTION: Template = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: False,
    Attribute.DERIVE: False,
}

# The unwrapped session key must be readable (we do bulk crypto on the host)
# and must not outlive the session.  VALUE_LEN stays out: SoftHSM refuses it
# on unwrap and reports 0 afterwards.
TRANSIENT_SECRET: Template = {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False}

# Which PKCS#11 key type receives each CryptoAPI session key algorithm on
# unwrap; None (a raw unwrap for vectors and probes) is a generic secret.
_SECRET_KEY_TYPES: Mapping[AlgId | None, KeyType] = {
    AlgId.CALG_AES_128: KeyType.AES,
    AlgId.CALG_AES_192: KeyType.AES,
    AlgId.CALG_AES_256: KeyType.AES,
    AlgId.CALG_3DES: KeyType.DES3,
    AlgId.CALG_3DES_112: KeyType.DES2,
    None: KeyType.GENERIC_SECRET,
}


def secret_key_type(alg_id: AlgId | None) -> KeyType:
    """The CKK_* for a session key ALG_ID (None: CKK_GENERIC_SECRET)."""
    try:
        return _SECRET_KEY_TYPES[alg_id]
    except KeyError:
        raise InvalidKeyError(f"{alg_id!r} is not a session key algorithm") from None


OAEP_HASHES: Mapping[str, tuple[Mechanism, pkcs11.MGF]] = {
    "sha1": (Mechanism.SHA_1, pkcs11.MGF.SHA1),
    "sha224": (Mechanism.SHA224, pkcs11.MGF.SHA224),
    "sha256": (Mechanism.SHA256, pkcs11.MGF.SHA256),
    "sha384": (Mechanism.SHA384, pkcs11.MGF.SHA384),
    "sha512": (Mechanism.SHA512, pkcs11.MGF.SHA512),
}


def oaep_params(hash_name: str, label: bytes | None) -> tuple[Mechanism, pkcs11.MGF, bytes | None]:
    """CK_RSA_PKCS_OAEP_PARAMS with MGF1 over the same hash (CRYPT_OAEP is SHA-1, no label)."""
    try:
        mechanism, mgf = OAEP_HASHES[hash_name]
    except KeyError:
        raise InvalidKeyError(f"unknown OAEP hash {hash_name!r}") from None
    return (mechanism, mgf, label or None)


PSS_SHA256: tuple[Mechanism, pkcs11.MGF, int] = (Mechanism.SHA256, pkcs11.MGF.SHA256, 32)


class AttributeMapper(pkcs11.attributes.AttributeMapper):
    """python-pkcs11's mapper plus CKA_ALLOWED_MECHANISMS (a CK_MECHANISM_TYPE array)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_handler(Attribute.ALLOWED_MECHANISMS, _pack_mechanisms, _unpack_mechanisms)


def _pack_mechanisms(values: Sequence[int]) -> bytes:
    return struct.pack(f"@{len(values)}L", *values)


def _unpack_mechanisms(data: bytes) -> list[int]:
    return list(struct.unpack(f"@{len(data) // struct.calcsize('@L')}L", data))


def int_bytes(value: int) -> bytes:
    """A non-negative integer as the big-endian CK_BYTE array PKCS#11 expects."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
