"""``Token``: an open, logged-in token and the operations tokencsp runs on it."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import Attribute, CertificateType, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.types import Object, PrivateKey, SecretKey, Session, SignMixin, UnwrapMixin

from ..blobs import SESSION_KEY_LENGTHS, AlgId
from ..errors import (
    AmbiguousKeyError,
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    PinError,
    TokenError,
    TokenOperationError,
    UnwrapRefused,
)
from ..keyinfo import DecryptMechanism, ImportPath, KeyInfo, KeyUsage, PinStatus, RsaPrivateParts
from ..pkcs11uri import key_uri, token_uri
from . import trace
from ._ctypes import CKZ_DATA_SPECIFIED, LockingLib, OaepParams, PssParams, session_handle
from .errors import (
    ATTRIBUTE_UNAVAILABLE,
    CKR_KEY_HANDLE_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OK,
    STALE_HANDLE,
    ckr_of,
    classify_blob_failure,
    is_attribute_type_invalid,
    map_error,
)
from .pool import Lease, SessionPool, max_sessions
from .quirks import (
    CONTEXT_LOGIN_UNSUPPORTED,
    KEY_TYPE_FALLBACKS,
    TEMPLATE_CKRS,
    UNWRAP_TEMPLATES,
    Mechanisms,
    UnwrapTemplate,
    exchange_import_path,
    probe_mechanisms,
    template_for,
)
from .templates import (
    DECRYPT_EXCHANGE,
    PRIVATE_PROTECTION,
    PSS_SHA256,
    TRANSIENT_SECRET,
    USAGE_TEMPLATES,
    AttributeMapper,
    int_bytes,
    oaep_params,
    secret_key_type,
)

if TYPE_CHECKING:
    from ..certs import CertificateObject  # certs loads asn1crypto: kept off the open path (test_fast_start)

__all__ = ["Token", "pin_status"]

CKF_LOGIN_REQUIRED = 0x00000004
CKF_PROTECTED_AUTHENTICATION_PATH = 0x00000100
CKF_USER_PIN_COUNT_LOW = 0x00010000
CKF_USER_PIN_FINAL_TRY = 0x00020000
CKF_USER_PIN_LOCKED = 0x00040000

# Handle-level failures that mean "look the key up again": it was deleted or
# re-created since this session cached its handle.

_DECRYPT_MECHANISMS: dict[DecryptMechanism, Mechanism] = {
    DecryptMechanism.RSA_X_509: Mechanism.RSA_X_509,
    DecryptMechanism.RSA_PKCS_OAEP: Mechanism.RSA_PKCS_OAEP,
    DecryptMechanism.RSA_PKCS: Mechanism.RSA_PKCS,
}
_HOST_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# Learned (unwrap template, key type to unwrap into), per (module, token serial, mechanism, OAEP hash,
# key type asked for, length known).
_learned: dict[tuple[str, str, int, str, int, bool], tuple[UnwrapTemplate, KeyType]] = {}
_learned_lock = threading.Lock()


def _serial(token: pkcs11.Token) -> str:
    serial = token.serial
    return serial.decode() if isinstance(serial, bytes) else str(serial)


def pin_status(token: pkcs11.Token) -> PinStatus:
    """The PIN-related token flags, read fresh (python-pkcs11 caches a Token's flags)."""
    fresh = token.slot.get_token()
    flags = int(fresh.flags)
    return PinStatus(
        label=fresh.label,
        protected_path=bool(flags & CKF_PROTECTED_AUTHENTICATION_PATH),
        count_low=bool(flags & CKF_USER_PIN_COUNT_LOW),
        final_try=bool(flags & CKF_USER_PIN_FINAL_TRY),
        locked=bool(flags & CKF_USER_PIN_LOCKED),
        login_required=bool(flags & CKF_LOGIN_REQUIRED),
    )


class Token:
    """An open, logged-in token with a bounded pool of sessions (``TOKENCSP_MAX_SESSIONS``, default 8).

    ``pin`` None logs in through the token's protected authentication path
    (a PIN pad).  The PIN is kept for the Token's life: keys with
    CKA_ALWAYS_AUTHENTICATE need it before each private operation, and a
    forked child logs in again with it.
    """

    def __init__(self, lib: LockingLib, token: pkcs11.Token, pin: str | None) -> None:
        self._lib = lib
        self._token = token
        self._generation = lib.generation
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        self._closed = False
        self._facts: dict[bytes, tuple[int, bool]] = {}  # key id -> (modulus bytes, always authenticate)
        status = pin_status(token)
        if pin is None and status.login_required and not status.protected_path:
            raise PinError(f"token {token.label!r} needs a PIN")
        self._pin = pin
        self._login_required = status.login_required or pin is not None
        try:
            self.mechanisms: Mechanisms = probe_mechanisms(token.slot)
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading the token's mechanisms") from None
        self._pool = SessionPool(self._open_session, max_sessions())
        self._start()

    def _start(self) -> None:
        # The first session carries the login; PKCS#11 logs the token out when
        # the application's last session closes, and the pool never closes it.
        first = self._pool.first()
        try:
            if self._login_required:
                self._lib.login(session_handle(first.session), self._pin)
        except BaseException:
            # A session left open keeps the process's next successful login
            # alive after its provider closes: a wrong PIN would then pass.
            self.close()
            raise

    @property
    def label(self) -> str:
        return self._token.label

    @property
    def serial(self) -> str:
        return _serial(self._token)

    @property
    def module_path(self) -> str:
        """The PKCS#11 module this token was opened through, symlinks resolved."""
        return os.path.realpath(self._lib.so)

    @property
    def uri(self) -> str:
        """The token's RFC 7512 URI (model, manufacturer, serial, token), as p11tool writes it."""
        return token_uri(self._token.label, self.serial, self._token.manufacturer_id, self._token.model)

    @property
    def pin_status(self) -> PinStatus:
        """CKF_USER_PIN_COUNT_LOW / FINAL_TRY / LOCKED and the PIN pad flag, as the token says now."""
        try:
            return pin_status(self._token)
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading the token flags") from None

    @property
    def mechanism_names(self) -> dict[str, list[str]]:
        """The RSA mechanisms offered for each import path, by name (``unwrap``, ``decrypt``): for ``doctor``."""
        return {"unwrap": sorted(f"CKM_{m.name}" for m in self.mechanisms.unwrap),
                "decrypt": sorted(f"CKM_{m.name}" for m in self.mechanisms.decrypt)}

    @property
    def max_sessions(self) -> int:
        return self._pool.limit

    @property
    def peak_sessions(self) -> int:
        """The most sessions leased at once so far (what the pool bounds)."""
        return self._pool.peak

    def _open_session(self) -> Session:
        try:
            with trace.call("C_OpenSession"):
                return self._token.open(rw=True, attribute_mapper=AttributeMapper())
        except p11.PKCS11Error as exc:
            raise map_error(exc, "opening a session") from None

    def _check_open(self) -> None:
        if self._closed:
            raise TokenError("the token has been closed")
        if self._pid != os.getpid():
            self._after_fork()
        if self._lib.generation != self._generation:
            raise TokenError("the PKCS#11 module was finalised and initialised again: open the token again")

    def _after_fork(self) -> None:
        """A forked child: initialise the module, forget (never use, never close) the parent's sessions, log in."""
        with self._fork_lock:
            if self._pid == os.getpid():
                return
            self._lib.after_fork()
            self._pool.drain()
            self._pool = SessionPool(self._open_session, self._pool.limit)
            self._pid = os.getpid()
            self._start()

    @contextlib.contextmanager
    def _lease(self) -> Iterator[Lease]:
        self._check_open()
        with self._pool.lease() as lease:
            yield lease

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sessions = self._pool.drain()
        if self._lib.generation != self._generation or self._pid != os.getpid():
            return  # the handles died with the module (or are the parent's) and may name other sessions
        for session in sessions:
            with contextlib.suppress(p11.PKCS11Error):
                session.close()

    # -- lookups ---------------------------------------------------------

    @staticmethod
    def _find(lease: Lease, object_class: ObjectClass, name: str | None = None,
              key_id: bytes | None = None) -> list[Object]:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
        if name is not None:
            attrs[Attribute.LABEL] = name
        if key_id is not None:
            attrs[Attribute.ID] = key_id
        try:
            with trace.call("C_FindObjects"):
                return list(lease.session.get_objects(attrs))
        except p11.PKCS11Error as exc:
            raise map_error(exc, "searching the token") from None

    def _private(self, lease: Lease, name: str | None = None, key_id: bytes | None = None) -> PrivateKey:
        found = self._find(lease, ObjectClass.PRIVATE_KEY, name, key_id)
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
        with self._lease() as lease:
            return bytes(self._private(lease, name)[Attribute.ID])

    def key_info(self, name: str | None = None, key_id: bytes | None = None) -> KeyInfo:
        """A private key by label or CKA_ID: keys made by other tools (any label, any id) are found too."""
        with self._lease() as lease:
            return self._info(lease, self._private(lease, name, key_id))

    def list_keys(self) -> list[KeyInfo]:
        with self._lease() as lease:
            keys = self._find(lease, ObjectClass.PRIVATE_KEY)
            return sorted((self._info(lease, key) for key in keys), key=lambda k: k.name)

    def _info(self, lease: Lease, key: Object) -> KeyInfo:
        try:
            key_id = bytes(key[Attribute.ID])
            publics = self._find(lease, ObjectClass.PUBLIC_KEY, key_id=key_id) if key_id else []
            unwrap, decrypt, sign = bool(key[Attribute.UNWRAP]), bool(key[Attribute.DECRYPT]), bool(key[Attribute.SIGN])
            allowed = _allowed(key)
            always = _flag(key, Attribute.ALWAYS_AUTHENTICATE)
            path, mechanisms = self._import_path(unwrap, decrypt, always, allowed)
            exchange = unwrap or decrypt
            return KeyInfo(
                name=key[Attribute.LABEL],
                id=key_id,
                usage=KeyUsage.EXCHANGE if exchange and not sign else KeyUsage.SIGNATURE if sign and not exchange
                else None,
                bits=int.from_bytes(key[Attribute.MODULUS], "big").bit_length(),
                sensitive=bool(key[Attribute.SENSITIVE]),
                extractable=bool(key[Attribute.EXTRACTABLE]),
                always_sensitive=bool(key[Attribute.ALWAYS_SENSITIVE]),
                never_extractable=bool(key[Attribute.NEVER_EXTRACTABLE]),
                local=bool(key[Attribute.LOCAL]),
                can_unwrap=unwrap,
                can_decrypt=decrypt,
                can_sign=sign,
                has_public=bool(publics),
                oaep_only=allowed == [Mechanism.RSA_PKCS_OAEP],
                import_path=path,
                decrypt_mechanisms=mechanisms,
                always_authenticate=always,
                uri=key_uri(self.uri, key_id, key[Attribute.LABEL]),
            )
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading key attributes") from None

    def _import_path(self, unwrap: bool, decrypt: bool, always: bool,
                     allowed: list[int] | None) -> tuple[ImportPath | None, tuple[DecryptMechanism, ...]]:
        """Unwrap where the key and the token's mechanisms allow it, else decrypt (raw RSA preferred)."""
        def permitted(mechanism: Mechanism) -> bool:
            return allowed is None or mechanism in allowed

        can_unwrap = unwrap and any(m in self.mechanisms.unwrap and permitted(m)
                                    for m in (Mechanism.RSA_PKCS, Mechanism.RSA_PKCS_OAEP))
        decrypts = tuple(dm for dm, m in _DECRYPT_MECHANISMS.items()
                         if decrypt and m in self.mechanisms.decrypt and permitted(m))
        # CKA_ALWAYS_AUTHENTICATE needs a context-specific login between
        # C_DecryptInit and C_Decrypt; C_UnwrapKey has no place for one
        # (SoftHSM 2.6.1 refuses such an unwrap with CKR_GENERAL_ERROR).
        if can_unwrap and not (always and decrypts):
            return ImportPath.UNWRAP, decrypts
        return (ImportPath.DECRYPT if decrypts else None), decrypts

    def public_numbers(self, key_id: bytes) -> tuple[int, int]:
        """(modulus, public exponent) of the key pair with this CKA_ID."""
        with self._lease() as lease:
            return self._public_numbers(lease, key_id, self._private(lease, key_id=key_id))

    def _public_numbers(self, lease: Lease, key_id: bytes, private: PrivateKey) -> tuple[int, int]:
        try:
            modulus = int.from_bytes(private[Attribute.MODULUS], "big")
            try:
                exponent = int.from_bytes(private[Attribute.PUBLIC_EXPONENT], "big")
            except ATTRIBUTE_UNAVAILABLE:
                # Some card profiles keep the exponent on the public object only.
                publics = self._find(lease, ObjectClass.PUBLIC_KEY, key_id=key_id)
                if not publics:
                    raise KeyNotFoundError("the key's public exponent is not on the token") from None
                exponent = int.from_bytes(publics[0][Attribute.PUBLIC_EXPONENT], "big")
            return modulus, exponent
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading the public key") from None

    # -- key containers --------------------------------------------------

    def _refuse_existing(self, lease: Lease, name: str) -> None:
        if self._find(lease, ObjectClass.PRIVATE_KEY, name) or self._find(lease, ObjectClass.PUBLIC_KEY, name):
            raise KeyExistsError(f"a key named {name!r} already exists on token {self.label!r}")

    def generate_rsa(self, name: str, bits: int, usage: KeyUsage, oaep_only: bool = False,
                     import_path: ImportPath | None = None) -> bytes:
        """Generate an RSA key pair on the token; returns its CKA_ID.

        ``oaep_only`` restricts the private key to CKM_RSA_PKCS_OAEP through
        CKA_ALLOWED_MECHANISMS: no PKCS#1 v1.5 oracle at all, at the price of
        refusing CryptoAPI peers that do not set CRYPT_OAEP.

        An exchange key unwraps where the token's probed mechanisms allow it,
        else it is a decrypt key (CKA_DECRYPT, no CKA_UNWRAP: the decrypt
        path), as :func:`.quirks.exchange_import_path` decides; ``import_path``
        overrides the decision (tests make decrypt keys on SoftHSM with it).
        """
        key_id = os.urandom(16)
        public_usage, private_usage = USAGE_TEMPLATES[usage]
        if usage is KeyUsage.EXCHANGE:
            path = import_path or exchange_import_path(self.mechanisms, oaep_only)
            if path is ImportPath.DECRYPT:
                public_usage, private_usage = DECRYPT_EXCHANGE
        if oaep_only:
            private_usage = {**private_usage, Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP]}
        with self._lease() as lease:
            self._refuse_existing(lease, name)
            try:
                with trace.call("C_GenerateKeyPair", Mechanism.RSA_PKCS_KEY_PAIR_GEN):
                    lease.session.generate_keypair(
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
                if oaep_only and is_attribute_type_invalid(exc):
                    raise _no_allowed_mechanisms(self.label) from None
                raise map_error(exc, f"generating {bits}-bit RSA key {name!r}") from None
        return key_id

    def import_rsa(self, name: str, parts: RsaPrivateParts, usage: KeyUsage, oaep_only: bool = False) -> bytes:
        """Put an existing RSA key on the token as a sensitive, non-extractable pair; returns its CKA_ID."""
        key_id = hashlib.sha1(int_bytes(parts.n)).digest()
        public_usage, private_usage = USAGE_TEMPLATES[usage]
        if usage is KeyUsage.EXCHANGE and exchange_import_path(self.mechanisms, oaep_only) is ImportPath.DECRYPT:
            public_usage, private_usage = DECRYPT_EXCHANGE
        if oaep_only:
            private_usage = {**private_usage, Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP]}
        common = {Attribute.KEY_TYPE: KeyType.RSA, Attribute.ID: key_id, Attribute.LABEL: name,
                  Attribute.MODULUS: int_bytes(parts.n), Attribute.PUBLIC_EXPONENT: int_bytes(parts.e)}
        with self._lease() as lease:
            self._refuse_existing(lease, name)
            if self._find(lease, ObjectClass.PRIVATE_KEY, key_id=key_id):
                raise KeyExistsError(f"this RSA key is already on token {self.label!r}")
            created: list[Object] = []
            try:
                with trace.call("C_CreateObject (private key)"):
                    private_object = lease.session.create_object({
                        **common, **PRIVATE_PROTECTION, **private_usage,
                        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        Attribute.PRIVATE_EXPONENT: int_bytes(parts.d),
                        Attribute.PRIME_1: int_bytes(parts.p),
                        Attribute.PRIME_2: int_bytes(parts.q),
                        Attribute.EXPONENT_1: int_bytes(parts.dp),
                        Attribute.EXPONENT_2: int_bytes(parts.dq),
                        Attribute.COEFFICIENT: int_bytes(parts.qinv),
                    })
                created.append(private_object)
                with trace.call("C_CreateObject (public key)"):
                    created.append(lease.session.create_object({
                        **common, **public_usage,
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: False,
                    }))
            except p11.PKCS11Error as exc:
                for obj in created:
                    _destroy_quietly(obj)
                if oaep_only and is_attribute_type_invalid(exc):
                    raise _no_allowed_mechanisms(self.label) from None
                raise map_error(exc, f"importing RSA key {name!r}") from None
        return key_id

    def delete(self, name: str) -> int:
        """Delete the private key labelled ``name`` and every public key and certificate with its CKA_ID."""
        with self._lease() as lease:
            private = self._private(lease, name)
            key_id = bytes(private[Attribute.ID])
            companions = [obj for cls in (ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE)
                          for obj in (self._find(lease, cls, key_id=key_id) if key_id else []) + self._find(
                              lease, cls, name)]
            victims: list[Object] = [private, *{obj.handle: obj for obj in companions}.values()]
            for obj in victims:
                try:
                    with trace.call("C_DestroyObject"):
                        obj.destroy()
                except p11.PKCS11Error as exc:
                    raise map_error(exc, f"deleting key {name!r}") from None
            self._facts.pop(key_id, None)
        return len(victims)

    # -- certificates ----------------------------------------------------

    def certificates(self, key_id: bytes) -> list[bytes]:
        """The DER of every X.509 certificate object with this CKA_ID (CKA_VALUE)."""
        if not key_id:
            return []
        with self._lease() as lease:
            try:
                return [bytes(obj[Attribute.VALUE]) for obj in self._find(lease, ObjectClass.CERTIFICATE, key_id=key_id)
                        if obj[Attribute.CERTIFICATE_TYPE] == CertificateType.X_509]
            except p11.PKCS11Error as exc:
                raise map_error(exc, "reading a certificate") from None

    def store_certificate(self, key_id: bytes, label: str, cert: CertificateObject, *, replace: bool = False) -> int:
        """Store ``cert`` as a CKO_CERTIFICATE next to the key with this CKA_ID; returns how many it replaced.

        The new object is created before an old one is destroyed: a failure leaves the old one.
        """
        with self._lease() as lease:
            self._private(lease, key_id=key_id)  # the key must still be there
            old = self._find(lease, ObjectClass.CERTIFICATE, key_id=key_id)
            if old and not replace:
                raise KeyExistsError(f"key {label!r} already has a certificate on token {self.label!r} "
                                     "(--replace replaces it)")
            try:
                lease.session.create_object({
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: label,
                    Attribute.ID: key_id,
                    Attribute.SUBJECT: cert.subject,
                    Attribute.ISSUER: cert.issuer,
                    Attribute.SERIAL_NUMBER: cert.serial_number,
                    Attribute.VALUE: cert.value,
                })
            except p11.PKCS11Error as exc:
                raise map_error(exc, f"storing the certificate of key {label!r}") from None
            for obj in old:
                try:
                    obj.destroy()
                except p11.PKCS11Error as exc:
                    raise map_error(exc, f"deleting the old certificate of key {label!r}") from None
        return len(old)

    # -- the unwrap ------------------------------------------------------

    def warm_sessions(self, key_id: bytes, count: int) -> int:
        """Open up to ``count`` pool sessions (at most the pool's limit) and find key ``key_id`` in each.

        For a batch (tokencsp.batch), before its first imports run side by side: a session opened,
        or a key looked up, inside an import's padded time is work the calibration probes did not
        pay, and would make that import overrun.  Returns how many sessions are open and warm.
        """
        count = max(1, min(count, self._pool.limit))
        self._check_open()
        with contextlib.ExitStack() as stack:
            for _ in range(count):
                self._private_by_id(stack.enter_context(self._pool.lease()), key_id)
        return count

    def _private_by_id(self, lease: Lease, key_id: bytes) -> PrivateKey:
        key = lease.keys.get(key_id)
        if key is None:
            key = lease.keys[key_id] = self._private(lease, key_id=key_id)
        return key

    def unwrap_secret(self, key_id: bytes, wrapped: bytes, oaep: bool, alg_id: AlgId | None = None,
                      oaep_hash: str = "sha1", oaep_label: bytes | None = None,
                      fallback: bytes | None = None) -> bytes:
        """C_UnwrapKey into a transient session object, check and read it, destroy it.

        ``alg_id`` is the CryptoAPI session key algorithm (its CKK_* and
        length come from :mod:`.templates`); None unwraps a generic secret.
        The template is the one this token was found to accept
        (:mod:`.quirks`, learned once with a blob of our own).

        Every failure of C_UnwrapKey that the blob can cause is
        :class:`~tokencsp.errors.UnwrapRefused` (one message, no CKR): the
        decision is :func:`.errors.classify_blob_failure`, which lists the
        token-*state* failures (session closed, logged out, removed, key
        gone) that keep their own types; so is a value of the wrong length
        for ``alg_id`` (without ``fallback``).  A missing key is
        :class:`KeyNotFoundError`.

        With ``fallback`` (implicit rejection) a refused blob does not raise:
        a transient object holding ``fallback`` is created, checked, read and
        destroyed instead, so both paths make the same PKCS#11 calls and take
        about the same time (the object work is most of what a failure would
        skip).
        """
        if oaep:
            mechanism, param = Mechanism.RSA_PKCS_OAEP, oaep_params(oaep_hash, oaep_label)
        else:
            mechanism, param = Mechanism.RSA_PKCS, None
        key_type = secret_key_type(alg_id)
        length = SESSION_KEY_LENGTHS[alg_id] if alg_id is not None else None
        secret: Object
        with self._lease() as lease:
            for attempt in (1, 2):
                private = self._private_by_id(lease, key_id)
                if not isinstance(private, UnwrapMixin):  # python-pkcs11 gives keys without CKA_UNWRAP no unwrap_key()
                    raise InvalidKeyError("this key cannot unwrap: use the decrypt path (Token.decrypt_raw)")
                variant, unwrap_type = self._unwrap_template(key_id, mechanism, param, oaep_hash, oaep_label,
                                                             key_type, length)
                template = template_for(variant, length)
                assert template is not None
                try:
                    with trace.call("C_UnwrapKey", mechanism, blob=True):
                        secret = private.unwrap_key(
                            ObjectClass.SECRET_KEY, unwrap_type, wrapped,
                            mechanism=mechanism,
                            mechanism_param=param,  # type: ignore[arg-type]  # python-pkcs11 takes the OAEP tuple
                            capabilities=MechanismFlag(0),
                            template=template,
                        )
                    break
                except STALE_HANDLE as exc:
                    # The cached handle went stale (key deleted or re-created):
                    # look it up once more, which raises KeyNotFoundError if gone.
                    lease.keys.pop(key_id, None)
                    if attempt == 2:
                        raise map_error(exc, "unwrapping") from None
                except p11.PKCS11Error as exc:
                    refusal = classify_blob_failure(exc, "unwrapping")
                    if fallback is None or not isinstance(refusal, UnwrapRefused):
                        raise refusal from None
                    secret = self._create_transient(lease, fallback, unwrap_type)
                    break
            # On the fallback path the object holds ``fallback`` itself: the
            # same checks, the same read, the value the caller would substitute.
            value = _checked_value(secret, unwrap_type)
        if fallback is None and length is not None and len(value) != length:
            raise UnwrapRefused()
        return value

    def _unwrap_template(self, key_id: bytes, mechanism: Mechanism, param: object, oaep_hash: str,
                         oaep_label: bytes | None, key_type: KeyType,
                         length: int | None) -> tuple[UnwrapTemplate, KeyType]:
        key = (self._lib.so, self.serial, int(mechanism), oaep_hash if param is not None else "",
               int(key_type), length is not None)
        known = _learned.get(key)  # a dict read is atomic: the lock only serialises learning
        if known is not None:
            return known
        with _learned_lock:
            known = _learned.get(key)
            if known is not None:
                return known
            # In a session of its own, closed afterwards: a token that refuses a
            # template may still leave the object behind (SoftHSM 2.6.1 does, for
            # CKA_VALUE_LEN), and closing the session destroys its objects.
            probe = Lease(self._open_session())
            try:
                own = self._private(probe, key_id=key_id)
                if not isinstance(own, UnwrapMixin):
                    raise InvalidKeyError("this key cannot unwrap: use the decrypt path (Token.decrypt_raw)")
                learned = self._learn_template(probe, key_id, own, mechanism, param, oaep_hash, oaep_label,
                                               key_type, length)
            finally:
                with contextlib.suppress(p11.PKCS11Error):
                    probe.session.close()
            if learned is None:  # nothing learned (the probe failed for another reason): again next time
                return UNWRAP_TEMPLATES[0], key_type
            trace.note("token %r, CKM_%s: unwrap template %r, key type %s, learned with a probe blob of our own "
                       "(quirk: %s)", self.label, mechanism.name, learned[0].name, learned[1].name,
                       learned[0].taught_by)
            _learned[key] = learned
            return learned

    def _learn_template(self, lease: Lease, key_id: bytes, private: UnwrapMixin, mechanism: Mechanism,
                        param: object, oaep_hash: str, oaep_label: bytes | None, key_type: KeyType,
                        length: int | None) -> tuple[UnwrapTemplate, KeyType] | None:
        """The first template of :data:`UNWRAP_TEMPLATES` (and key type, with
        :data:`KEY_TYPE_FALLBACKS`) the token accepts for a blob we made ourselves.

        Only template CKRs move on to the next template; another failure moves
        on to the next key type, and ends the probe with nothing learned when
        none is left.  Never run on a caller's blob.
        """
        modulus, exponent = self._public_numbers(lease, key_id, private)  # type: ignore[arg-type]
        public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        modulus_bytes = (public.key_size + 7) // 8
        room = modulus_bytes - 11 if param is None else modulus_bytes - 2 * _HOST_HASHES[oaep_hash]().digest_size - 2
        size = length if length is not None else min(32, room)
        if size < 1 or size > room:
            return None  # no blob of ours fits this key and padding: nothing to learn from
        for unwrap_type in (key_type, *KEY_TYPE_FALLBACKS.get(key_type, ())):
            for variant in UNWRAP_TEMPLATES:
                template = template_for(variant, length)
                if template is None:
                    continue
                probe = os.urandom(size)
                if param is None:
                    blob = public.encrypt(probe, padding.PKCS1v15())
                else:
                    algorithm = _HOST_HASHES[oaep_hash]()
                    blob = public.encrypt(probe, padding.OAEP(padding.MGF1(algorithm), algorithm, oaep_label or None))
                try:
                    with trace.call(f"C_UnwrapKey (template probe {variant.name!r})", mechanism):
                        secret = private.unwrap_key(ObjectClass.SECRET_KEY, unwrap_type, blob, mechanism=mechanism,
                                                    mechanism_param=param,  # type: ignore[arg-type]
                                                    capabilities=MechanismFlag(0), template=template)
                except p11.PKCS11Error as exc:
                    if ckr_of(exc) in TEMPLATE_CKRS:
                        continue
                    break  # not the template: this key type, then
                try:
                    value = _checked_value(secret, unwrap_type)
                except (TokenOperationError, KeyNotFoundError, p11.PKCS11Error):
                    continue  # e.g. unreadable (SENSITIVE by the token's default)
                if value == probe:
                    return variant, unwrap_type
        return None

    def _create_transient(self, lease: Lease, value: bytes, key_type: KeyType) -> SecretKey:
        try:
            with trace.call("C_CreateObject (transient secret)"):
                secret = lease.session.create_object({
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: key_type,
                    Attribute.VALUE: value,
                    **TRANSIENT_SECRET,
                })
        except p11.PKCS11Error as exc:
            raise map_error(exc, "creating a transient key") from None
        assert isinstance(secret, SecretKey)
        return secret

    # -- the decrypt path --------------------------------------------------

    def decrypt_raw(self, key_id: bytes, ciphertext: bytes, mechanism: DecryptMechanism, *,
                    oaep_hash: str = "sha1", oaep_label: bytes | None = None) -> bytes:
        """C_Decrypt of one RSA block by the private key with this CKA_ID: the import path of card keys.

        For keys with CKA_DECRYPT and not CKA_UNWRAP (YubiKey PIV, OpenSC
        cards, OpenPGP cards, many HSM profiles; ``KeyInfo.import_path`` is
        ``decrypt``, ``KeyInfo.decrypt_mechanisms`` lists what the key and
        token allow, best first):

        * ``RSA_X_509`` (preferred): raw RSA; returns the whole
          modulus-length block (leading zeros kept).  The token never judges
          the padding: the caller decodes PKCS#1 v1.5 or OAEP on the host,
          under implicit rejection.
        * ``RSA_PKCS`` / ``RSA_PKCS_OAEP`` (``oaep_hash``, MGF1 alike,
          ``oaep_label``): the token removes the padding; returns the message.

        Every failure the ciphertext can cause (bad padding, c >= n, wrong
        length, a general error) is :class:`~tokencsp.errors.UnwrapRefused`
        with one message; the token's state (session closed, logged out,
        removed, key gone) keeps its own type, as for
        :meth:`unwrap_secret`.  Keys with CKA_ALWAYS_AUTHENTICATE get a
        context-specific login (the Token's PIN, or the PIN pad) between
        C_DecryptInit and C_Decrypt.
        """
        ck_mechanism = _DECRYPT_MECHANISMS[DecryptMechanism(mechanism)]
        label_buffer: bytes | None = None
        oaep: OaepParams | None = None
        if ck_mechanism is Mechanism.RSA_PKCS_OAEP:
            hash_mechanism, mgf, label_buffer = oaep_params(oaep_hash, oaep_label)
            oaep = OaepParams(int(hash_mechanism), int(mgf), CKZ_DATA_SPECIFIED, None, 0)
            if label_buffer:
                oaep.pSourceData = _c_buffer_address(label_buffer)
                oaep.ulSourceDataLen = len(label_buffer)
        with self._lease() as lease:
            for attempt in (1, 2):
                private = self._private_by_id(lease, key_id)
                modulus_bytes, always = self._key_facts(lease, key_id, private)
                handle = private.handle
                assert handle is not None
                try:
                    rv, out = self._lib.decrypt(session_handle(lease.session), handle, int(ck_mechanism), oaep,
                                                ciphertext, modulus_bytes, context_login=always, pin=self._pin,
                                                tolerated=CONTEXT_LOGIN_UNSUPPORTED)
                except BaseException:
                    lease.broken = True  # the context-specific login failed with the operation still active
                    raise
                if rv in (CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID) and attempt == 1:
                    lease.keys.pop(key_id, None)
                    self._facts.pop(key_id, None)
                    continue
                if rv != CKR_OK:
                    raise classify_blob_failure(rv, "decrypting") from None
                break
        if ck_mechanism is Mechanism.RSA_X_509:
            return out.rjust(modulus_bytes, b"\0")
        return out

    def _key_facts(self, lease: Lease, key_id: bytes, private: PrivateKey) -> tuple[int, bool]:
        facts = self._facts.get(key_id)
        if facts is None:
            try:
                modulus_bytes = (int.from_bytes(private[Attribute.MODULUS], "big").bit_length() + 7) // 8
            except p11.PKCS11Error as exc:
                raise map_error(exc, "reading the key's modulus") from None
            facts = self._facts[key_id] = (modulus_bytes, _flag(private, Attribute.ALWAYS_AUTHENTICATE))
        return facts

    def sign_pss_sha256(self, key_id: bytes, data: bytes) -> bytes:
        """RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature by the private key with this CKA_ID.

        A key with CKA_ALWAYS_AUTHENTICATE (PIV slot 9c) gets a
        context-specific login between C_SignInit and C_Sign, every time.
        """
        with self._lease() as lease:
            private = self._private_by_id(lease, key_id)
            if not isinstance(private, SignMixin):  # python-pkcs11 gives keys without CKA_SIGN no sign()
                raise InvalidKeyError("this key cannot sign: it is not a signature key")
            try:
                modulus_bytes, always = self._key_facts(lease, key_id, private)
                if always:
                    return self._sign_with_context_login(lease, private, modulus_bytes, data)
                with trace.call("C_Sign", Mechanism.SHA256_RSA_PKCS_PSS):
                    return bytes(private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                                              mechanism_param=PSS_SHA256))
            except p11.PKCS11Error as exc:
                if isinstance(exc, STALE_HANDLE):  # the key was deleted or re-created: drop the handle
                    lease.keys.pop(key_id, None)
                    self._facts.pop(key_id, None)
                raise map_error(exc, "signing with the signature key") from None

    def _sign_with_context_login(self, lease: Lease, private: PrivateKey, modulus_bytes: int, data: bytes) -> bytes:
        hash_mechanism, mgf, salt = PSS_SHA256
        handle = private.handle
        assert handle is not None
        try:
            return self._lib.sign(session_handle(lease.session), handle, int(Mechanism.SHA256_RSA_PKCS_PSS),
                                  PssParams(int(hash_mechanism), int(mgf), salt), data, modulus_bytes, pin=self._pin,
                                  tolerated=CONTEXT_LOGIN_UNSUPPORTED)
        except BaseException:
            lease.broken = True  # the operation may still be active on this session
            raise

    def destroy_all_objects(self) -> int:
        """Destroy every object this application can see (``provider.empty_token``, for test tokens)."""
        with self._lease() as lease:
            try:
                with trace.call("C_FindObjects"):
                    objects = list(lease.session.get_objects({}))
                for obj in objects:
                    with trace.call("C_DestroyObject"):
                        obj.destroy()
            except p11.PKCS11Error as exc:
                raise map_error(exc, "emptying the token") from None
            self._facts.clear()
        return len(objects)

    def count_objects(self) -> int:
        """Every object this application can see on the token (token and session objects)."""
        with self._lease() as lease:
            try:
                return sum(1 for _ in lease.session.get_objects({}))
            except p11.PKCS11Error as exc:
                raise map_error(exc, "listing objects") from None

    def count_session_objects(self) -> int:
        """Objects visible to this application that are not token objects (for leak checks)."""
        with self._lease() as lease:
            try:
                return sum(1 for _ in lease.session.get_objects({Attribute.TOKEN: False}))
            except p11.PKCS11Error as exc:
                raise map_error(exc, "listing session objects") from None


def _no_allowed_mechanisms(label: str) -> TokenOperationError:
    # opencryptoki 3.8.1: CKA_ALLOWED_MECHANISMS is CKR_ATTRIBUTE_TYPE_INVALID (measured).  Without it
    # nothing on the token keeps the key from PKCS#1 v1.5, so no key is made rather than a weaker one.
    return TokenOperationError(f"token {label!r} cannot restrict a key to OAEP (it has no CKA_ALLOWED_MECHANISMS): "
                               "--oaep-only is not available on it")


def _checked_value(secret: Object, key_type: KeyType) -> bytes:
    """Read the transient object's value, then destroy it; it must be the secret key we asked for."""
    try:
        with trace.call("C_GetAttributeValue (CLASS, KEY_TYPE, VALUE of the transient key)"):
            found = secret.get_attributes([Attribute.CLASS, Attribute.KEY_TYPE, Attribute.VALUE])
        if found[Attribute.CLASS] != ObjectClass.SECRET_KEY or found[Attribute.KEY_TYPE] != key_type:
            raise TokenOperationError("the token returned an object of another class or key type than asked for")
        return bytes(found[Attribute.VALUE])
    except p11.PKCS11Error as exc:
        raise map_error(exc, "reading the unwrapped key") from None
    finally:
        try:
            with trace.call("C_DestroyObject (transient key)"):
                secret.destroy()
        except p11.PKCS11Error as exc:
            raise map_error(exc, "destroying the unwrapped key") from None


def _c_buffer_address(data: bytes) -> int:
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _flag(key: Object, attribute: Attribute) -> bool:
    try:
        return bool(key[attribute])
    except ATTRIBUTE_UNAVAILABLE:  # tokens without the attribute: its default
        return False


def _allowed(key: Object) -> list[int] | None:
    """CKA_ALLOWED_MECHANISMS, or None for "no restriction" (absent, or empty as SoftHSM reports it)."""
    try:
        allowed = list(key[Attribute.ALLOWED_MECHANISMS])
    except p11.PKCS11Error:  # tokens without CKA_ALLOWED_MECHANISMS allow everything
        return None
    return allowed or None


def _destroy_quietly(obj: Object) -> None:
    with contextlib.suppress(p11.PKCS11Error):
        obj.destroy()
