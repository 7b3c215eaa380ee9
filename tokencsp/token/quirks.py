"""What tokens differ in, probed per token and remembered: one table.

Each :data:`UNWRAP_TEMPLATES` entry names the token and the CKR that taught
it.  The template a token accepts is learned once per token (and mechanism
and key type) by unwrapping a blob this process made itself
(:func:`learn`), never by retrying an attacker's blob: a retry that depended
on *which* error a blob caused would turn template CKRs into a padding
oracle.  Every unwrapped object is checked (class, key type, value length,
value readable) whatever the template.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkcs11 import Attribute, Mechanism
from pkcs11 import exceptions as p11
from pkcs11.types import Slot

from .errors import (
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
)
from .templates import TRANSIENT_SECRET, Template

__all__ = ["TEMPLATE_CKRS", "UNWRAP_TEMPLATES", "Mechanisms", "UnwrapTemplate", "probe_mechanisms"]

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
        taught_by="SoftHSM 2.6.1: CKA_VALUE_LEN in an unwrap template is CKR_ATTRIBUTE_READ_ONLY "
                  "(measured; it reports VALUE_LEN 0 afterwards)"),
    UnwrapTemplate(
        "token-defaults+len", {Attribute.TOKEN: False}, value_len=True,
        taught_by="opencryptoki 3.8.1 swtok: CKA_EXTRACTABLE/CKA_SENSITIVE in an unwrap template are "
                  "CKR_ATTRIBUTE_READ_ONLY (the key comes out EXTRACTABLE=T, SENSITIVE=F anyway); "
                  "CKA_VALUE_LEN is accepted"),
    UnwrapTemplate(
        "readable+len", TRANSIENT_SECRET, value_len=True,
        taught_by="Thales Luna, MyEID: CKA_VALUE_LEN required on unwrap (CKR_TEMPLATE_INCOMPLETE; "
                  "reported in issue 10, not tested here)"),
    UnwrapTemplate(
        "token-defaults", {Attribute.TOKEN: False}, value_len=False,
        taught_by="last resort for tokens that refuse every attribute above; the value must still "
                  "read back (SoftHSM 2.6.1 makes such a key SENSITIVE: refused by the check)"),
)


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


def probe_mechanisms(slot: Slot) -> Mechanisms:
    unwrap: set[Mechanism] = set()
    decrypt: set[Mechanism] = set()
    for mechanism in RSA_MECHANISMS:
        try:
            flags = int(slot.get_mechanism_info(mechanism).flags)
        except p11.PKCS11Error:  # CKR_MECHANISM_INVALID: not offered at all
            continue
        if flags & CKF_UNWRAP:
            unwrap.add(mechanism)
        if flags & CKF_DECRYPT:
            decrypt.add(mechanism)
    return Mechanisms(frozenset(unwrap), frozenset(decrypt))
