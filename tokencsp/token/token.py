"""``Token``: an open, logged-in token and the operations tokencsp runs on it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.types import Object, PrivateKey, SecretKey, Session, SignMixin, UnwrapMixin

from ..blobs import AlgId
from ..errors import (
    AmbiguousKeyError,
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    TokenError,
    UnwrapRefused,
)
from ..keyinfo import KeyInfo, KeyUsage, RsaPrivateParts
from ._ctypes import LockingLib, session_handle
from .errors import classify_blob_failure, map_error
from .templates import (
    PRIVATE_PROTECTION,
    PSS_SHA256,
    TRANSIENT_SECRET,
    USAGE_TEMPLATES,
    AttributeMapper,
    int_bytes,
    oaep_params,
    secret_key_type,
)

__all__ = ["Token"]

# Handle-level failures that mean "look the key up again": it was deleted or
# re-created since this thread cached its handle.
_STALE_HANDLE = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.UnwrappingKeyHandleInvalid)


def _serial(token: pkcs11.Token) -> str:
    serial = token.serial
    return serial.decode() if isinstance(serial, bytes) else str(serial)


class Token:
    """An open, logged-in token: one login session plus one session per thread."""

    def __init__(self, lib: LockingLib, token: pkcs11.Token, pin: str) -> None:
        self._lib = lib
        self._generation = lib.generation
        self._token = token
        self._local = threading.local()
        self._sessions: list[Session] = []
        self._sessions_lock = threading.Lock()
        self._closed = False
        # The first session carries the login; PKCS#11 logs the token out when
        # the application's last session closes, so it stays open until close().
        self._anchor = self._open_session()
        try:
            self._lib.login(session_handle(self._anchor), pin)
        except BaseException:
            # A session left open keeps the process's next successful login
            # alive after its provider closes: a wrong PIN would then pass.
            self.close()
            raise
        self._local.session = self._anchor

    @property
    def label(self) -> str:
        return self._token.label

    @property
    def serial(self) -> str:
        return _serial(self._token)

    def _open_session(self) -> Session:
        try:
            session = self._token.open(rw=True, attribute_mapper=AttributeMapper())
        except p11.PKCS11Error as exc:
            raise map_error(exc, "opening a session") from None
        with self._sessions_lock:
            self._sessions.append(session)
        return session

    def _check_open(self) -> None:
        if self._closed:
            raise TokenError("the token has been closed")
        if self._lib.generation != self._generation:
            raise TokenError("the PKCS#11 module was finalised and initialised again: open the token again")

    def session(self) -> Session:
        """This thread's session, opened on first use."""
        self._check_open()
        session: Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._open_session()
            self._local.session = session
        return session

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        if self._lib.generation != self._generation:
            return  # the handles died with the module and may now name other sessions
        for session in reversed(sessions):
            with contextlib.suppress(p11.PKCS11Error):
                session.close()

    # -- lookups ---------------------------------------------------------

    def _find(self, object_class: ObjectClass, name: str | None = None, key_id: bytes | None = None) -> list[Object]:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
        if name is not None:
            attrs[Attribute.LABEL] = name
        if key_id is not None:
            attrs[Attribute.ID] = key_id
        try:
            return list(self.session().get_objects(attrs))
        except p11.PKCS11Error as exc:
            raise map_error(exc, "searching the token") from None

    def _private(self, name: str | None = None, key_id: bytes | None = None) -> PrivateKey:
        found = self._find(ObjectClass.PRIVATE_KEY, name, key_id)
        what = f"key {name!r}" if name is not None else f"key id {key_id.hex() if key_id else ''}"
        if not found:
            raise KeyNotFoundError(f"no private {what} on token {self.label!r}")
        if len(found) > 1:
            raise AmbiguousKeyError(
                f"{len(found)} private keys match {what} on token {self.label!r}; refusing to guess")
        key = found[0]
        assert isinstance(key, PrivateKey)  # python-pkcs11 builds the class from CKA_CLASS
        return key

    def key_id(self, name: str) -> bytes:
        """The CKA_ID of the private key labelled ``name``."""
        return bytes(self._private(name)[Attribute.ID])

    def key_info(self, name: str | None = None, key_id: bytes | None = None) -> KeyInfo:
        return self._info(self._private(name, key_id))

    def list_keys(self) -> list[KeyInfo]:
        keys = self._find(ObjectClass.PRIVATE_KEY)
        return sorted((self._info(key) for key in keys), key=lambda k: k.name)

    def _info(self, key: Object) -> KeyInfo:
        try:
            key_id = bytes(key[Attribute.ID])
            publics = self._find(ObjectClass.PUBLIC_KEY, key_id=key_id) if key_id else []
            unwrap, sign = bool(key[Attribute.UNWRAP]), bool(key[Attribute.SIGN])
            return KeyInfo(
                name=key[Attribute.LABEL],
                id=key_id,
                usage=KeyUsage.EXCHANGE if unwrap and not sign else KeyUsage.SIGNATURE if sign and not unwrap else None,
                bits=int.from_bytes(key[Attribute.MODULUS], "big").bit_length(),
                sensitive=bool(key[Attribute.SENSITIVE]),
                extractable=bool(key[Attribute.EXTRACTABLE]),
                always_sensitive=bool(key[Attribute.ALWAYS_SENSITIVE]),
                never_extractable=bool(key[Attribute.NEVER_EXTRACTABLE]),
                local=bool(key[Attribute.LOCAL]),
                can_unwrap=unwrap,
                can_decrypt=bool(key[Attribute.DECRYPT]),
                can_sign=sign,
                has_public=bool(publics),
                oaep_only=_allowed(key) == [Mechanism.RSA_PKCS_OAEP],
            )
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading key attributes") from None

    def public_numbers(self, key_id: bytes) -> tuple[int, int]:
        """(modulus, public exponent) of the key pair with this CKA_ID."""
        key = self._private(key_id=key_id)
        try:
            return int.from_bytes(key[Attribute.MODULUS], "big"), int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading the public key") from None

    # -- key containers --------------------------------------------------

    def _refuse_existing(self, name: str) -> None:
        if self._find(ObjectClass.PRIVATE_KEY, name) or self._find(ObjectClass.PUBLIC_KEY, name):
            raise KeyExistsError(f"a key named {name!r} already exists on token {self.label!r}")

    def generate_rsa(self, name: str, bits: int, usage: KeyUsage, oaep_only: bool = False) -> bytes:
        """Generate an RSA key pair on the token; returns its CKA_ID.

        ``oaep_only`` restricts the private key to CKM_RSA_PKCS_OAEP through
        CKA_ALLOWED_MECHANISMS: no PKCS#1 v1.5 oracle at all, at the price of
        refusing CryptoAPI peers that do not set CRYPT_OAEP.
        """
        self._refuse_existing(name)
        key_id = os.urandom(16)
        public_usage, private_usage = USAGE_TEMPLATES[usage]
        if oaep_only:
            private_usage = {**private_usage, Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP]}
        try:
            self.session().generate_keypair(
                KeyType.RSA,
                bits,
                id=key_id,
                label=name,
                store=True,
                mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False,
                                 Attribute.PUBLIC_EXPONENT: int_bytes(65537), **public_usage},
                private_template={**PRIVATE_PROTECTION, **private_usage},
            )
        except p11.PKCS11Error as exc:
            raise map_error(exc, f"generating {bits}-bit RSA key {name!r}") from None
        return key_id

    def import_rsa(self, name: str, parts: RsaPrivateParts, usage: KeyUsage, oaep_only: bool = False) -> bytes:
        """Put an existing RSA key on the token as a sensitive, non-extractable pair; returns its CKA_ID."""
        self._refuse_existing(name)
        key_id = hashlib.sha1(int_bytes(parts.n)).digest()
        if self._find(ObjectClass.PRIVATE_KEY, key_id=key_id):
            raise KeyExistsError(f"this RSA key is already on token {self.label!r}")
        public_usage, private_usage = USAGE_TEMPLATES[usage]
        if oaep_only:
            private_usage = {**private_usage, Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP]}
        common = {Attribute.KEY_TYPE: KeyType.RSA, Attribute.ID: key_id, Attribute.LABEL: name,
                  Attribute.MODULUS: int_bytes(parts.n), Attribute.PUBLIC_EXPONENT: int_bytes(parts.e)}
        session = self.session()
        created: list[Object] = []
        try:
            created.append(session.create_object({
                **common, **PRIVATE_PROTECTION, **private_usage,
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.PRIVATE_EXPONENT: int_bytes(parts.d),
                Attribute.PRIME_1: int_bytes(parts.p),
                Attribute.PRIME_2: int_bytes(parts.q),
                Attribute.EXPONENT_1: int_bytes(parts.dp),
                Attribute.EXPONENT_2: int_bytes(parts.dq),
                Attribute.COEFFICIENT: int_bytes(parts.qinv),
            }))
            created.append(session.create_object({
                **common, **public_usage,
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
            }))
        except p11.PKCS11Error as exc:
            for obj in created:
                _destroy_quietly(obj)
            raise map_error(exc, f"importing RSA key {name!r}") from None
        return key_id

    def delete(self, name: str) -> int:
        """Delete the private key labelled ``name`` and every public key with its CKA_ID."""
        private = self._private(name)
        key_id = bytes(private[Attribute.ID])
        publics = (self._find(ObjectClass.PUBLIC_KEY, key_id=key_id) if key_id else []) + self._find(
            ObjectClass.PUBLIC_KEY, name)
        victims: list[Object] = [private, *{obj.handle: obj for obj in publics}.values()]
        for obj in victims:
            try:
                obj.destroy()
            except p11.PKCS11Error as exc:
                raise map_error(exc, f"deleting key {name!r}") from None
        return len(victims)

    # -- the unwrap ------------------------------------------------------

    def _private_by_id(self, key_id: bytes) -> PrivateKey:
        self._check_open()  # cached handles bypass session()
        cache: dict[bytes, PrivateKey] | None = getattr(self._local, "keys", None)
        if cache is None:
            cache = self._local.keys = {}
        key = cache.get(key_id)
        if key is None:
            key = cache[key_id] = self._private(key_id=key_id)
        return key

    def _forget(self, key_id: bytes) -> None:
        cache: dict[bytes, PrivateKey] | None = getattr(self._local, "keys", None)
        if cache is not None:
            cache.pop(key_id, None)

    def unwrap_secret(self, key_id: bytes, wrapped: bytes, oaep: bool, alg_id: AlgId | None = None,
                      oaep_hash: str = "sha1", oaep_label: bytes | None = None,
                      fallback: bytes | None = None) -> bytes:
        """C_UnwrapKey into a transient session object, read its value, destroy it.

        ``alg_id`` is the CryptoAPI session key algorithm (its CKK_* comes
        from :mod:`.templates`); None unwraps a generic secret.

        Every failure of C_UnwrapKey that the blob can cause is
        :class:`~tokencsp.errors.UnwrapRefused` (one message, no CKR): the
        decision is :func:`.errors.classify_blob_failure`, which lists the
        token-*state* failures (session closed, logged out, removed, key
        gone) that keep their own types.  A missing key is
        :class:`KeyNotFoundError`.

        With ``fallback`` (implicit rejection) a refused blob does not raise:
        a transient object holding ``fallback`` is created, read and destroyed
        instead, so both paths make the same PKCS#11 calls and take about the
        same time (the object work is most of what a failure would skip).
        """
        if oaep:
            mechanism, param = Mechanism.RSA_PKCS_OAEP, oaep_params(oaep_hash, oaep_label)
        else:
            mechanism, param = Mechanism.RSA_PKCS, None
        key_type = secret_key_type(alg_id)
        secret: Object
        for attempt in (1, 2):
            private = self._private_by_id(key_id)
            if not isinstance(private, UnwrapMixin):  # python-pkcs11 gives keys without CKA_UNWRAP no unwrap_key()
                raise InvalidKeyError("this key cannot unwrap: it is not an exchange key")
            try:
                secret = private.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    key_type,
                    wrapped,
                    mechanism=mechanism,
                    mechanism_param=param,  # type: ignore[arg-type]  # python-pkcs11 takes the OAEP tuple too
                    capabilities=MechanismFlag(0),
                    template=dict(TRANSIENT_SECRET),
                )
                break
            except _STALE_HANDLE as exc:
                # The cached handle went stale (key deleted or re-created):
                # look it up once more, which raises KeyNotFoundError if gone.
                self._forget(key_id)
                if attempt == 2:
                    raise map_error(exc, "unwrapping") from None
            except p11.PKCS11Error as exc:
                refusal = classify_blob_failure(exc, "unwrapping")
                if fallback is None or not isinstance(refusal, UnwrapRefused):
                    raise refusal from None
                secret = self._create_transient(fallback, key_type)
                break
        try:
            # On the fallback path the object holds ``fallback`` itself: the
            # same read, the same value the caller would substitute.
            return bytes(secret[Attribute.VALUE])
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading the unwrapped key") from None
        finally:
            try:
                secret.destroy()
            except p11.PKCS11Error as exc:
                raise map_error(exc, "destroying the unwrapped key") from None

    def _create_transient(self, value: bytes, key_type: KeyType) -> SecretKey:
        try:
            secret = self.session().create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: key_type,
                Attribute.VALUE: value,
                **TRANSIENT_SECRET,
            })
        except p11.PKCS11Error as exc:
            raise map_error(exc, "creating a transient key") from None
        assert isinstance(secret, SecretKey)
        return secret

    def sign_pss_sha256(self, key_id: bytes, data: bytes) -> bytes:
        """RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature by the private key with this CKA_ID."""
        private = self._private_by_id(key_id)
        if not isinstance(private, SignMixin):  # python-pkcs11 gives keys without CKA_SIGN no sign()
            raise InvalidKeyError("this key cannot sign: it is not a signature key")
        try:
            return bytes(private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=PSS_SHA256))
        except (p11.ObjectHandleInvalid, p11.KeyHandleInvalid):
            self._forget(key_id)
            raise KeyNotFoundError("the signature key is no longer on the token") from None
        except p11.PKCS11Error as exc:
            raise map_error(exc, "signing") from None

    def count_objects(self) -> int:
        """Every object this application can see on the token (token and session objects)."""
        try:
            return sum(1 for _ in self.session().get_objects({}))
        except p11.PKCS11Error as exc:
            raise map_error(exc, "listing objects") from None

    def count_session_objects(self) -> int:
        """Objects visible to this application that are not token objects (for leak checks)."""
        try:
            return sum(1 for _ in self.session().get_objects({Attribute.TOKEN: False}))
        except p11.PKCS11Error as exc:
            raise map_error(exc, "listing session objects") from None


def _allowed(key: Object) -> list[int] | None:
    try:
        return list(key[Attribute.ALLOWED_MECHANISMS])
    except p11.PKCS11Error:  # tokens without CKA_ALLOWED_MECHANISMS allow everything
        return None


def _destroy_quietly(obj: Object) -> None:
    with contextlib.suppress(p11.PKCS11Error):
        obj.destroy()
