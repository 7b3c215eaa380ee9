"""What tokens differ in, probed per token and remembered: one place.

Each :data:`UNWRAP_TEMPLATES` entry names the token and the CKR that taught
it.  The template a token accepts is learned once per token (and mechanism
and key type) by unwrapping a blob this process made itself
(:func:`learn`), never by retrying an attacker's blob: a retry that depended
on *which* error a blob caused would turn template CKRs into a padding
oracle.  Every unwrapped object is checked (class, key type, value length,
value readable) whatever the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as p11
from pkcs11.types import Slot

from ..errors import TokenOperationError
from ..keyinfo import ImportPath
from . import trace
from .errors import (
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
)
from .templates import TRANSIENT_SECRET, Template

__all__ = [
    "CONTEXT_LOGIN_UNSUPPORTED", "KEY_TYPE_FALLBACKS", "TEMPLATE_CKRS", "UNWRAP_TEMPLATES",
    "Mechanisms", "UnwrapTemplate", "exchange_import_path", "probe_mechanisms",
]

CKF_DECRYPT = 0x00000200
CKF_UNWRAP = 0x00040000

# The CKRs by which a token refuses a *template* (not a blob): the only ones
# a learning probe moves on from.
TEMPLATE_CKRS = frozenset({
    CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT,
})


@dataclass(frozen=True)
class UnwrapTemplate:
    name: str
    attributes: Template
    value_len: bool  # add CKA_VALUE_LEN (the session key's length, when the caller knows it)
    taught_by: str


UNWRAP_TEMPLATES: tuple[UnwrapTemplate, ...] = (
    UnwrapTemplate(
        "readable", TRANSIENT_SECRET, value_len=False,
        taught_by="SoftHSM 2.6.1: CKA_VALUE_LEN in an unwrap template is CKR_ATTRIBUTE_READ_ONLY, and the "
                  "refused unwrap still leaves the object behind (measured)"),
    UnwrapTemplate(
        "token-defaults", {Attribute.TOKEN: False}, value_len=False,
        taught_by="opencryptoki 3.8.1 swtok: CKA_EXTRACTABLE/CKA_SENSITIVE in an unwrap template are "
                  "CKR_ATTRIBUTE_READ_ONLY; its defaults give EXTRACTABLE=T, SENSITIVE=F (measured).  It accepts "
                  "CKA_VALUE_LEN but then cuts or pads the value to it (32 bytes unwrapped with VALUE_LEN 16 gave "
                  "the first 16, measured), which hides a wrong-length blob: so no VALUE_LEN here"),
    UnwrapTemplate(
        "readable+len", TRANSIENT_SECRET, value_len=True,
        taught_by="Thales Luna, MyEID: CKA_VALUE_LEN required on unwrap (CKR_TEMPLATE_INCOMPLETE; "
                  "reported in issue 10, not tested here).  Only after every template without it"),
    UnwrapTemplate(
        "token-defaults+len", {Attribute.TOKEN: False}, value_len=True,
        taught_by="last resort: a token that refuses EXTRACTABLE/SENSITIVE and requires CKA_VALUE_LEN"),
)

# Key types a token cannot unwrap into, and the types that hold the same bytes
# (tokencsp reads the value to the host, so only the length matters there).
KEY_TYPE_FALLBACKS: Mapping[KeyType, tuple[KeyType, ...]] = {
    # opencryptoki 3.8.1 swtok: C_UnwrapKey into CKK_DES2 is CKR_WRAPPED_KEY_INVALID even for a
    # valid blob of our own (measured); CKK_DES3 and CKK_AES unwrap fine.
    KeyType.DES2: (KeyType.GENERIC_SECRET,),
}

# C_Login(CKU_CONTEXT_SPECIFIC) answers a token may give when it has no
# context-specific login (and so does not enforce CKA_ALWAYS_AUTHENTICATE):
# the operation goes on, and the token still refuses it if it disagrees.
CONTEXT_LOGIN_UNSUPPORTED: frozenset[int] = frozenset({
    0x103,  # CKR_USER_TYPE_INVALID: opencryptoki 3.8.1 swtok (measured)
})

def template_for(variant: UnwrapTemplate, value_len: int | None) -> dict[Attribute, object] | None:
    """The attributes to pass, or None when the variant needs a length the caller does not know."""
    if variant.value_len:
        if value_len is None:
            return None
        return {**variant.attributes, Attribute.VALUE_LEN: value_len}
    return dict(variant.attributes)


@dataclass(frozen=True)
class Mechanisms:
    """Which RSA mechanisms the token offers for unwrap and for decrypt (C_GetMechanismInfo flags)."""

    unwrap: frozenset[Mechanism]
    decrypt: frozenset[Mechanism]


RSA_MECHANISMS = (Mechanism.RSA_PKCS, Mechanism.RSA_PKCS_OAEP, Mechanism.RSA_X_509)


def exchange_import_path(mechanisms: Mechanisms, oaep_only: bool = False) -> ImportPath:
    """Which kind of exchange key to make on a token with these (probed) mechanisms.

    ``unwrap`` where the token unwraps with CKM_RSA_PKCS (or, for an OAEP-only
    key, CKM_RSA_PKCS_OAEP); else ``decrypt`` (a CKA_DECRYPT key, as cards
    make them) where it decrypts with one of the decrypt path's mechanisms;
    else none works and :class:`TokenOperationError` says so.
    """
    wanted = Mechanism.RSA_PKCS_OAEP if oaep_only else Mechanism.RSA_PKCS
    if wanted in mechanisms.unwrap:
        return ImportPath.UNWRAP
    usable = {Mechanism.RSA_PKCS_OAEP} if oaep_only else set(RSA_MECHANISMS)
    if usable & mechanisms.decrypt:
        return ImportPath.DECRYPT
    name = "CKM_RSA_PKCS_OAEP" if oaep_only else "CKM_RSA_PKCS"
    raise TokenOperationError(f"this token can neither unwrap with {name} nor decrypt with RSA "
                              "(C_GetMechanismInfo): it cannot hold an exchange key")


def probe_mechanisms(slot: Slot) -> Mechanisms:
    unwrap: set[Mechanism] = set()
    decrypt: set[Mechanism] = set()
    for mechanism in RSA_MECHANISMS:
        try:
            with trace.call("C_GetMechanismInfo", mechanism):
                flags = int(slot.get_mechanism_info(mechanism).flags)
        except p11.PKCS11Error:  # CKR_MECHANISM_INVALID: not offered at all
            continue
        if flags & CKF_UNWRAP:
            unwrap.add(mechanism)
        if flags & CKF_DECRYPT:
            decrypt.add(mechanism)
    return Mechanisms(frozenset(unwrap), frozenset(decrypt))
