"""What tokencsp knows about a key container on a token: plain data, no PKCS#11."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["DecryptMechanism", "ImportPath", "KeyInfo", "KeyUsage", "PinStatus", "RsaPrivateParts", "check_key_name"]


class KeyUsage(str, Enum):  # noqa: UP042 -- a StrEnum would change what str() and format() print
    EXCHANGE = "exchange"
    SIGNATURE = "signature"


class ImportPath(str, Enum):  # noqa: UP042 -- like KeyUsage
    """How a session key reaches the host through this key (``key list``)."""

    UNWRAP = "unwrap"  # C_UnwrapKey into a transient object, then read (SoftHSM, opencryptoki, HSMs)
    DECRYPT = "decrypt"  # C_Decrypt of the RSA block (cards: CKA_DECRYPT without CKA_UNWRAP)


class DecryptMechanism(str, Enum):  # noqa: UP042 -- like KeyUsage
    """The C_Decrypt mechanisms of the decrypt path, in order of preference."""

    RSA_X_509 = "rsa-x-509"  # raw RSA: the host decodes the padding, the token never judges it
    RSA_PKCS_OAEP = "rsa-pkcs-oaep"
    RSA_PKCS = "rsa-pkcs"


@dataclass(frozen=True)
class PinStatus:
    """What the token's flags say about its user PIN, read without logging in (for the prompt)."""

    label: str
    protected_path: bool  # CKF_PROTECTED_AUTHENTICATION_PATH: a PIN pad; log in with no PIN
    count_low: bool  # CKF_USER_PIN_COUNT_LOW: a wrong PIN was entered since the last success
    final_try: bool  # CKF_USER_PIN_FINAL_TRY: one more wrong PIN locks it
    locked: bool  # CKF_USER_PIN_LOCKED
    login_required: bool  # CKF_LOGIN_REQUIRED


@dataclass(frozen=True)
class KeyInfo:
    """What the token says about one key container (a private key and its public half)."""

    name: str
    id: bytes
    usage: KeyUsage | None
    bits: int
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    local: bool
    can_unwrap: bool
    can_decrypt: bool
    can_sign: bool
    has_public: bool
    oaep_only: bool = False
    import_path: ImportPath | None = None
    #: What the decrypt path may use with this key on this token, best first.
    decrypt_mechanisms: tuple[DecryptMechanism, ...] = ()
    #: CKA_ALWAYS_AUTHENTICATE: each private operation needs a context-specific login.
    always_authenticate: bool = False
    #: The private key's RFC 7512 URI: its token's, then id, object and type=private.
    uri: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id.hex(),
            "usage": self.usage.value if self.usage else None,
            "bits": self.bits,
            "sensitive": self.sensitive,
            "extractable": self.extractable,
            "always_sensitive": self.always_sensitive,
            "never_extractable": self.never_extractable,
            "local": self.local,
            "unwrap": self.can_unwrap,
            "decrypt": self.can_decrypt,
            "sign": self.can_sign,
            "has_public": self.has_public,
            "oaep_only": self.oaep_only,
            "import_path": self.import_path.value if self.import_path else None,
            "decrypt_mechanisms": [m.value for m in self.decrypt_mechanisms],
            "always_authenticate": self.always_authenticate,
            "uri": self.uri,
        }

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> KeyInfo:
        """The KeyInfo whose :meth:`as_dict` is ``item`` (``uri`` may be missing: agents before it had none).

        A missing field or one of the wrong type or value is a ``ValueError`` naming it.
        """
        try:
            return cls(
                name=item["name"], id=bytes.fromhex(item["id"]),
                usage=KeyUsage(item["usage"]) if item["usage"] else None, bits=int(item["bits"]),
                sensitive=item["sensitive"], extractable=item["extractable"],
                always_sensitive=item["always_sensitive"], never_extractable=item["never_extractable"],
                local=item["local"], can_unwrap=item["unwrap"], can_decrypt=item["decrypt"], can_sign=item["sign"],
                has_public=item["has_public"], oaep_only=item["oaep_only"],
                import_path=ImportPath(item["import_path"]) if item["import_path"] else None,
                decrypt_mechanisms=tuple(DecryptMechanism(m) for m in item["decrypt_mechanisms"]),
                always_authenticate=item["always_authenticate"], uri=item.get("uri", ""))
        except KeyError as exc:
            raise ValueError(f"no field {exc}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True, repr=False)
class RsaPrivateParts:
    """An RSA private key with its CRT parts: the one shape the library passes around.

    PRIVATEKEYBLOBs convert with ``PrivateKeyBlob.parts``/``from_parts``,
    ``cryptography`` keys with :meth:`from_private_key`/:meth:`to_private_key`.
    """

    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int

    def __repr__(self) -> str:  # never print private components
        return f"RsaPrivateParts(bits={self.n.bit_length()})"

    @classmethod
    def from_private_key(cls, key: rsa.RSAPrivateKey) -> RsaPrivateParts:
        nums = key.private_numbers()
        pub = nums.public_numbers
        return cls(pub.n, pub.e, nums.d, nums.p, nums.q, nums.dmp1, nums.dmq1, nums.iqmp)

    def to_private_key(self) -> rsa.RSAPrivateKey:
        public = rsa.RSAPublicNumbers(self.e, self.n)
        return rsa.RSAPrivateNumbers(self.p, self.q, self.d, self.dp, self.dq, self.qinv, public).private_key()

    def problem(self) -> str | None:
        """Why the parts do not form one RSA key, or None."""
        n, e, p, q, d = self.n, self.e, self.p, self.q, self.d
        if p * q != n:
            return "prime1 * prime2 != modulus"
        if self.dp != d % (p - 1) or self.dq != d % (q - 1):
            return "exponent1/exponent2 do not match privateExponent"
        if (self.qinv * q) % p != 1:
            return "coefficient is not prime2^-1 mod prime1"
        lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        if (e * d) % lam != 1:
            return "privateExponent is not the inverse of the public exponent"
        return None


def check_key_name(name: str) -> str:
    """A name for a new key container (CKA_LABEL): not empty, no ``/``, no control characters, no blanks at
    either end.  ``/`` would make it unusable where key names become file names and URI path parts (a
    three-phase party is named after its key, a trusted peer after its key file); an empty label selects
    nothing.  Keys made by other tools are found by whatever label they have: only new names are checked."""
    from .errors import ConfigError

    if not name:
        raise ConfigError("a key name cannot be empty")
    if "/" in name:
        raise ConfigError(f"a key name cannot contain '/': {name!r}")
    if name != name.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ConfigError(f"a key name cannot have control characters or blanks at either end: {name!r}")
    if len(name.encode("utf-8")) > 255:
        raise ConfigError("a key name is at most 255 bytes")
    return name
