"""Keys made the way card tooling makes them, for tests and the demo (issue 10).

YubiKey PIV (ykcs11, OpenSC), OpenPGP cards and many HSM profiles give a key
exchange key CKA_DECRYPT and not CKA_UNWRAP, under their own label and id,
with none of tokencsp's attributes.  :func:`generate_card_style_key` makes
exactly such a pair on a (SoftHSM) token, so the decrypt path is tested with
what it will meet, not with a tokencsp key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as p11

from ..keyinfo import DecryptMechanism
from .errors import map_error
from .templates import Template, int_bytes
from .token import Token

__all__ = ["CARD_STYLE_PRIVATE", "CARD_STYLE_PUBLIC", "generate_card_style_key"]

# As PIV/OpenSC key generation sets them: decrypt and (for the public half) encrypt only.
CARD_STYLE_PRIVATE: Template = {
    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
    Attribute.DECRYPT: True, Attribute.UNWRAP: False, Attribute.SIGN: False, Attribute.DERIVE: False,
}
CARD_STYLE_PUBLIC: Template = {
    Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.ENCRYPT: True, Attribute.WRAP: False,
    Attribute.VERIFY: False, Attribute.PUBLIC_EXPONENT: int_bytes(65537),
}


_CKM = {DecryptMechanism.RSA_X_509: Mechanism.RSA_X_509, DecryptMechanism.RSA_PKCS: Mechanism.RSA_PKCS,
        DecryptMechanism.RSA_PKCS_OAEP: Mechanism.RSA_PKCS_OAEP}


def generate_card_style_key(token: Token, label: str, bits: int = 2048, key_id: bytes | None = None,
                            allowed: Sequence[DecryptMechanism] | None = None) -> bytes:
    """A DECRYPT-only RSA pair labelled ``label`` with a foreign-looking CKA_ID; returns the id.

    ``allowed`` sets CKA_ALLOWED_MECHANISMS on the private key (e.g. no raw
    RSA, as some HSM profiles have it).
    """
    key_id = os.urandom(4) if key_id is None else key_id  # card ids are short (PIV: 01..04)
    private = dict(CARD_STYLE_PRIVATE)
    if allowed is not None:
        private[Attribute.ALLOWED_MECHANISMS] = [_CKM[DecryptMechanism(m)] for m in allowed]
    with token._lease() as lease:
        try:
            lease.session.generate_keypair(KeyType.RSA, bits, id=key_id, label=label, store=True,
                                           mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                                           public_template=CARD_STYLE_PUBLIC, private_template=private)
        except p11.PKCS11Error as exc:
            raise map_error(exc, f"generating card-style key {label!r}") from None
    return key_id
