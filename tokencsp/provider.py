"""The receiver's side of CryptoAPI key exchange, with the private key on a token.

``Provider`` is to tokencsp what a CSP handle with a key container is to
CryptoAPI: it owns the token login and hands out key pairs by name.
Importing a SIMPLEBLOB is ``C_UnwrapKey`` on the token; everything after that
runs on the host in :class:`~tokencsp.session.SessionKey`.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import config
from .blobs import MAX_RSA_BITS, SESSION_KEY_LENGTHS, AlgId, PrivateKeyBlob, PublicKeyBlob, SimpleBlob
from .calibration import CalibrationCache
from .errors import (
    AmbiguousKeyError,
    ConfigError,
    InvalidKeyError,
    KeyNotFoundError,
    SelectionConflict,
    SessionKeyImportError,
    UnsupportedAlgorithm,
    UnwrapRefused,
)
from .implicit import DeferredSessionKey, ImplicitRejection
from .keyinfo import DecryptMechanism, ImportPath, KeyInfo, KeyUsage, PinStatus, RsaPrivateParts, check_key_name
from .rsadecode import decode_oaep, decode_pkcs1_v15
from .session import SessionKey
from .token import (
    Token,
    TokenDescription,
    describe_tokens,
    init_token,
    matching_tokens,
    module_info,
    open_token,
    token_status,
)

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["ExchangeKey", "KeyInfo", "KeyPair", "KeyUsage", "Provider", "describe_all_tokens", "describe_module",
           "empty_token", "initialize_token",
           "list_tokens", "pin_status"]

SUPPORTED_BITS = (2048, 3072, 4096)
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
LEGACY_BITS = (1024,)
_OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# Whether a token did RSAES-OAEP with a hash other than SHA-1 for a blob of our own, per
# (module, token serial, import path, hash): asked once per process (ExchangeKey.oaep_route).
_oaep_capability: dict[tuple[str, str, str, str], bool] = {}
_oaep_capability_lock = threading.Lock()


def _simple_blob(blob: bytes | SimpleBlob) -> SimpleBlob:
    return blob if isinstance(blob, SimpleBlob) else SimpleBlob.from_bytes(blob)


def _check_bits(bits: int, legacy: bool, importing: bool = False) -> None:
    if bits in SUPPORTED_BITS or (legacy and bits in LEGACY_BITS):
        return
    # An existing key of an unusual size (1536, 8192...) can be brought over
    # under the legacy flag; we never generate one.
    if importing and legacy and 1024 <= bits <= MAX_RSA_BITS:
        return
    if bits in LEGACY_BITS:
        raise UnsupportedAlgorithm(f"{bits}-bit RSA is legacy only: pass legacy=True (--legacy) to allow it")
    raise UnsupportedAlgorithm(f"RSA key size {bits} unsupported; use one of {', '.join(map(str, SUPPORTED_BITS))}")


def _oaep_only(usage: KeyUsage, requested: bool) -> bool:
    if requested and usage is not KeyUsage.EXCHANGE:
        raise InvalidKeyError("--oaep-only applies to exchange keys")
    return requested


class KeyPair:
    """A key container on the token: a non-extractable private key and its public half."""

    def __init__(self, token: Token, name: str, key_id: bytes) -> None:
        self._token = token
        self.name = name
        self.key_id = key_id
        self._public: rsa.RSAPublicKey | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, id={self.key_id.hex()})"

    def info(self) -> KeyInfo:
        return self._token.key_info(key_id=self.key_id)

    def public_key(self) -> rsa.RSAPublicKey:
        # A CKA_ID names one key for good (generated ids are random, imported
        # ones hash the modulus), so the token is asked once per object.
        if self._public is None:
            modulus, exponent = self._token.public_numbers(self.key_id)
            self._public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        return self._public

    def public_blob(self) -> bytes:
        """The public key as a CryptoAPI PUBLICKEYBLOB."""
        alg = AlgId.CALG_RSA_KEYX if self.info().usage is not KeyUsage.SIGNATURE else AlgId.CALG_RSA_SIGN
        return PublicKeyBlob.from_public_key(self.public_key(), alg).to_bytes()

    def sign(self, data: bytes) -> bytes:
        """RSA-PSS/SHA-256 (32-byte salt) signature made on the token; needs a signature key."""
        return self._token.sign_pss_sha256(self.key_id, data)

    def certificates(self) -> list[x509.Certificate]:
        """The X.509 certificates stored with this key (same CKA_ID), as ``store_certificate`` leaves them."""
        from cryptography import x509

        found = []
        for der in self._token.certificates(self.key_id):
            try:
                found.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue  # another tool's object that is no certificate cannot name this key
        return [cert for cert in found if cert.public_key() == self.public_key()]

    def certificate(self) -> x509.Certificate | None:
        """The one certificate stored with this key, or None; several are refused rather than guessed."""
        certs = self.certificates()
        if len(certs) > 1:
            raise AmbiguousKeyError(f"key {self.name!r} has {len(certs)} certificates on the token; refusing to guess")
        return certs[0] if certs else None

    def store_certificate(self, cert: x509.Certificate, *, replace: bool = False) -> int:
        """Store a certificate for this key on the token (CKO_CERTIFICATE, same CKA_ID, label = key name).

        Refused (nothing stored) when its public key is not this key's, and when the key already has a
        certificate unless ``replace``; returns how many old ones were replaced.
        """
        from .certs import certificate_object  # asn1crypto: loaded only here, not on every open

        if cert.public_key() != self.public_key():
            raise InvalidKeyError(f"the certificate is not for key {self.name!r}: its public key is another")
        return self._token.store_certificate(self.key_id, self.name, certificate_object(cert), replace=replace)

    def public_pem(self) -> bytes:
        return self.public_key().public_bytes(serialization.Encoding.PEM, _SPKI)

    def public_der(self) -> bytes:
        return self.public_key().public_bytes(serialization.Encoding.DER, _SPKI)


class ExchangeKey(KeyPair):
    """A key-exchange pair (AT_KEYEXCHANGE): its private half unwraps or, on cards, decrypts.

    The import path is chosen from the key and the token (``KeyInfo.import_path``):
    ``unwrap`` (C_UnwrapKey into a transient object) where the key can unwrap,
    else ``decrypt`` -- raw RSA (CKM_RSA_X_509) with the padding decoded on the
    host (:mod:`tokencsp.rsadecode`) where the token offers it, so the token
    never judges the padding, else C_Decrypt with CKM_RSA_PKCS / _OAEP.  Every
    path has the same uniform failure and the same deadline.
    """

    def __init__(self, token: Token, name: str, key_id: bytes, info: KeyInfo | None = None) -> None:
        """``info``: what the lookup that found this key read (``Provider.exchange_key``), so the
        import path is not read from the token a second time; None reads it at the first import."""
        super().__init__(token, name, key_id)
        self._rejection: ImplicitRejection | None = None
        self._rejection_lock = threading.Lock()
        self._found = info
        self._facts: tuple[ImportPath, tuple[DecryptMechanism, ...]] | None = None

    @property
    def rejection(self) -> ImplicitRejection:
        """This key's implicit-rejection state: substitute secret, deadline padder, calibration (tokencsp.implicit)."""
        # One per key object, made once: two secrets would give one bad blob two substitutes.
        with self._rejection_lock:
            if self._rejection is None:
                self._rejection = ImplicitRejection(self.public_key(), cache=CalibrationCache.default(),
                                                    where=(self._token.module_path, self._token.serial))
            return self._rejection

    @property
    def concurrent_imports(self) -> int:
        """Imports that can run side by side without waiting for a session: the token's session pool
        (``TOKENCSP_MAX_SESSIONS``).  A batch (tokencsp.batch) keeps at most this many in flight:
        one that waited for a session would count the wait into its padded time and overrun."""
        return self._token.max_sessions

    def warm_sessions(self, count: int) -> int:
        """Open ``count`` of the token's pool sessions (at most the pool) with this key found in each,
        outside any padded time: a batch calls it before its imports run side by side."""
        return self._token.warm_sessions(self.key_id, count)

    @property
    def import_path(self) -> ImportPath:
        """``unwrap`` or ``decrypt``: how this key's session keys reach the host."""
        return self._import_facts()[0]

    def _import_facts(self) -> tuple[ImportPath, tuple[DecryptMechanism, ...]]:
        # Attributes of one CKA_ID and the token's mechanism list: asked once per object.
        if self._facts is None:
            info = self._found if self._found is not None else self.info()
            if info.import_path is None:
                raise InvalidKeyError(f"key {self.name!r} can neither unwrap nor decrypt")
            self._facts = (info.import_path, tuple(info.decrypt_mechanisms))
        return self._facts

    def import_simpleblob(self, blob: bytes | SimpleBlob, oaep: bool = False, *, oaep_hash: str = "sha1") -> SessionKey:
        """CryptImportKey of a SIMPLEBLOB: the token unwraps (or decrypts), the host gets a SessionKey.

        Malformed blob *structure* is a :class:`BlobFormatError`.  Everything
        that depends on the secret -- padding, recipient, key length, whatever
        the token says about the blob -- is one :class:`SessionKeyImportError`,
        raised at the same deadline as a success returns.  The answer itself
        (imported or not) is still an answer: for blobs a stranger can send,
        use :meth:`import_simpleblob_deferred` (CryptoAPI payloads) or
        :meth:`import_simpleblob_implicit` (authenticated payloads).

        ``oaep_hash`` (OAEP only; MGF1 over the same hash, empty label) is
        CRYPT_OAEP's SHA-1 by default; another hash takes the route
        :meth:`oaep_route` decides, or is refused by it before the blob is used.
        """
        simple = _simple_blob(blob)
        self._route(oaep, oaep_hash)  # a refusal or a capability probe: before the padded import, on public facts
        return self.rejection.run(lambda: self._import_explicit(simple, oaep, oaep_hash), self._import_or_substitute,
                                  "explicit")

    def _import_explicit(self, simple: SimpleBlob, oaep: bool, oaep_hash: str) -> SessionKey:
        ok, key = self._recover(simple, oaep, self.rejection.substitute(simple), oaep_hash)
        if not ok:
            raise SessionKeyImportError() from None
        return SessionKey.from_bytes(simple.alg_id, key)

    def import_simpleblob_implicit(self, blob: bytes | SimpleBlob, oaep: bool = False, *,
                                   oaep_hash: str = "sha1") -> SessionKey:
        """Like :meth:`import_simpleblob`, but never fails on the secret: implicit rejection.

        When the unwrap fails or yields the wrong length, the result is a key
        derived from a per-key secret and the blob (HMAC-SHA256), as OpenSSL
        3.2 does for PKCS#1 v1.5: the same bad blob always gives the same
        wrong key, so the failure surfaces only where the payload fails to
        authenticate -- one error, at one place, whatever the token did.
        Only for authenticated payloads (the sealed-message format); a
        CryptoAPI CBC payload has nothing to catch the wrong key (use
        :meth:`import_simpleblob_deferred` there).

        Every call also returns at the same moment after it started -- a
        deadline calibrated from this key's own probe imports (both outcomes,
        both paddings) and the floor cached in the state directory, never from
        live traffic -- because the token itself takes longer to succeed than
        to fail (tokencsp.deadline, tokencsp.implicit; docs/SECURITY.md).
        ``oaep_hash`` as for :meth:`import_simpleblob`.
        """
        simple = _simple_blob(blob)
        self._route(oaep, oaep_hash)
        return self.rejection.run(lambda: self._import_or_substitute(simple, oaep, oaep_hash),
                                  self._import_or_substitute)

    def import_simpleblob_deferred(self, blob: bytes | SimpleBlob, oaep: bool = False, *,
                                   oaep_hash: str = "sha1") -> DeferredSessionKey:
        """CryptImportKey for CryptoAPI payloads, with the failure deferred to the final CryptDecrypt.

        The import is the implicit one (same token calls, same deadline); the
        key returned is the blob's substitute when the blob was bad, and it
        decrypts like any other key: garbage where the CBC padding happens to
        be valid, else the one :class:`DecryptionError` a wrong CBC padding
        gives.  So a bad blob is indistinguishable from a good blob carrying
        a key the ciphertext was not made with.  What remains is the CBC
        padding oracle of CryptDecrypt's unauthenticated format itself
        (docs/SECURITY.md).  ``oaep_hash`` as for :meth:`import_simpleblob`
        (CMS RSAES-OAEP with SHA-256: tokencsp.cms).
        """
        simple = _simple_blob(blob)
        self._route(oaep, oaep_hash)
        return self.rejection.run(lambda: self._import_deferred(simple, oaep, oaep_hash), self._import_or_substitute,
                                  "deferred")

    def _import_deferred(self, simple: SimpleBlob, oaep: bool, oaep_hash: str) -> DeferredSessionKey:
        _, key = self._recover(simple, oaep, self.rejection.substitute(simple), oaep_hash)
        return DeferredSessionKey(simple.alg_id, key)

    def unwrap_legacy_deferred(self, encrypted_key: bytes, oaep: bool, lengths: frozenset[int]) -> bytes:
        """The key of a legacy (RC4/RC2/DES, tokencsp.legacy) SIMPLEBLOB as a generic secret.

        Same token calls and deadline as :meth:`import_simpleblob_deferred`: a refused blob, or a
        value of none of ``lengths``, gives this blob's substitute of the longest of ``lengths``
        (16 bytes for RC2/RC4, 8 for DES), which the caller uses like any key
        (``legacy.DeferredLegacyKey``).
        """
        stand_in = SimpleBlob(AlgId.CALG_AES_128, encrypted_key)  # names the blob for the substitute only

        def unwrap() -> bytes:
            substitute = self.rejection.substitute(stand_in, max(lengths))
            value = self._token.unwrap_secret(self.key_id, encrypted_key, oaep, None, fallback=substitute)
            good = len(value) in lengths and not hmac.compare_digest(value, substitute)
            return value if good else substitute
        return self.rejection.run(unwrap, self._import_or_substitute, "legacy")

    def _import_or_substitute(self, simple: SimpleBlob, oaep: bool, oaep_hash: str = "sha1") -> SessionKey:
        """The implicit import without its deadline (``tools/timing_audit.py --no-deadline`` times it)."""
        _, key = self._recover(simple, oaep, self.rejection.substitute(simple), oaep_hash)
        return SessionKey.from_bytes(simple.alg_id, key)

    def oaep_route(self, oaep_hash: str = "sha1") -> str:
        """How this key recovers an RSAES-OAEP key with ``oaep_hash`` (MGF1 over it, empty label).

        ``unwrap`` (C_UnwrapKey with CKM_RSA_PKCS_OAEP), ``raw`` (C_Decrypt
        with CKM_RSA_X_509, OAEP decoded on the host: tokencsp.rsadecode) or
        ``decrypt`` (C_Decrypt with CKM_RSA_PKCS_OAEP).  SHA-1 (CRYPT_OAEP)
        takes the key's import path as ever.  Another hash takes the token's
        OAEP where the token did that hash for a blob of our own (a probe,
        once per token, import path and hash in this process), else raw RSA
        where the key allows it, else it is refused with
        :class:`UnsupportedAlgorithm` (SoftHSM 2.6 unwrap keys: its OAEP is
        SHA-1 only).  Only public facts decide -- the hash the message names,
        the key's attributes, what the token did with our own blob -- and the
        decision is made before a caller's blob is used, so a refusal says
        nothing about any blob.
        """
        return self._route(True, oaep_hash)

    def _route(self, oaep: bool, oaep_hash: str) -> str:
        path, mechanisms = self._import_facts()
        raw = DecryptMechanism.RSA_X_509 in mechanisms
        if not oaep or oaep_hash == "sha1":
            return "unwrap" if path is ImportPath.UNWRAP else "raw" if raw else "decrypt"
        if oaep_hash not in _OAEP_HASHES:
            raise UnsupportedAlgorithm(f"RSAES-OAEP with {oaep_hash!r} is not supported")
        if path is ImportPath.UNWRAP and self._token_does_oaep(path, oaep_hash):
            return "unwrap"
        if raw:
            return "raw"
        if path is ImportPath.DECRYPT and DecryptMechanism.RSA_PKCS_OAEP in mechanisms \
                and self._token_does_oaep(path, oaep_hash):
            return "decrypt"
        shown = oaep_hash.upper().replace("SHA", "SHA-", 1)
        how = "C_UnwrapKey" if path is ImportPath.UNWRAP else "C_Decrypt"
        raise UnsupportedAlgorithm(f"this token cannot do RSAES-OAEP with {shown}: token {self._token.label!r} "
                                   f"refused {how} with CKM_RSA_PKCS_OAEP/{shown} for a blob of our own, and key "
                                   f"{self.name!r} cannot decrypt raw RSA (CKM_RSA_X_509) to decode it on the host")

    def _token_does_oaep(self, path: ImportPath, oaep_hash: str) -> bool:
        where = (self._token.module_path, self._token.serial, path.value, oaep_hash)
        with _oaep_capability_lock:
            known = _oaep_capability.get(where)
        if known is None:
            known = self.supports_oaep(oaep_hash)
            with _oaep_capability_lock:
                _oaep_capability[where] = known
        return known

    def _recover(self, simple: SimpleBlob, oaep: bool, substitute: bytes,
                 oaep_hash: str = "sha1") -> tuple[bool, bytes]:
        """(True, the session key) for a good blob, (False, ``substitute``) for any bad one; never raises on it.

        Each path makes the same token calls whatever the blob holds; only
        the token's own state (closed, logged out, key gone) raises.  The
        route is :meth:`_route`'s, decided (and cached) before the blob is used.
        """
        length = SESSION_KEY_LENGTHS[simple.alg_id]
        _, mechanisms = self._import_facts()
        route = self._route(oaep, oaep_hash)
        ciphertext = simple.encrypted_key
        if route == "unwrap":
            value = self._token.unwrap_secret(self.key_id, ciphertext, oaep, simple.alg_id, oaep_hash,
                                              fallback=substitute)
        elif route == "raw":
            try:
                block = self._token.decrypt_raw(self.key_id, ciphertext, DecryptMechanism.RSA_X_509)
            except UnwrapRefused:  # c >= n or a wrong length: decoded like any bad block, the same host work
                block = bytes((self.public_key().key_size + 7) // 8)
            ok, key = decode_oaep(block, length, substitute, oaep_hash) if oaep else \
                decode_pkcs1_v15(block, length, substitute)
            return ok == 1, key
        else:
            mechanism = DecryptMechanism.RSA_PKCS_OAEP if oaep else DecryptMechanism.RSA_PKCS
            try:
                if mechanism not in mechanisms:  # the padding the header names is not offered: public, no secret
                    raise UnwrapRefused()
                value = self._token.decrypt_raw(self.key_id, ciphertext, mechanism, oaep_hash=oaep_hash)
            except UnwrapRefused:
                value = substitute
        # A refused unwrap or decrypt hands back the substitute itself; compare without an early exit.
        ok = len(value) == length and not hmac.compare_digest(value, substitute)
        return ok, value if ok else substitute

    def unwrap_raw(self, ciphertext: bytes, oaep: bool = False, alg_id: AlgId | None = None, *,
                   oaep_hash: str = "sha1", oaep_label: bytes = b"") -> bytes:
        """Recover an RSA-wrapped value (PKCS#1 byte order) on the token and return it, unpadded in time.

        For interop and vector tests; same single failure as
        :meth:`import_simpleblob`.  ``oaep_hash``/``oaep_label`` reach other
        OAEP variants where the token implements them (SoftHSM 2.6: SHA-1,
        no label only; see :meth:`supports_oaep`).  A decrypt-path key uses
        C_Decrypt with CKM_RSA_PKCS / _OAEP (raw RSA alone cannot tell the
        message's length).
        """
        path, mechanisms = self._import_facts()
        try:
            if path is ImportPath.UNWRAP:
                return self._token.unwrap_secret(self.key_id, ciphertext, oaep, alg_id, oaep_hash, oaep_label)
            mechanism = DecryptMechanism.RSA_PKCS_OAEP if oaep else DecryptMechanism.RSA_PKCS
            if mechanism not in mechanisms:
                raise UnwrapRefused()
            value = self._token.decrypt_raw(self.key_id, ciphertext, mechanism, oaep_hash=oaep_hash,
                                            oaep_label=oaep_label)
            if alg_id is not None and len(value) != SESSION_KEY_LENGTHS[alg_id]:
                raise UnwrapRefused()
            return value
        except UnwrapRefused:
            # The token layer says which failures are the blob's; the token's
            # own state (closed, logged out, removed, key gone) keeps its type.
            raise SessionKeyImportError() from None

    def supports_oaep(self, hash_name: str = "sha1", label: bytes = b"") -> bool:
        """Capability probe: does the token unwrap OAEP with this hash (MGF1 alike) and label?"""
        algorithm = _OAEP_HASHES[hash_name]()
        probe = os.urandom(16)
        wrapped = self.public_key().encrypt(probe, padding.OAEP(padding.MGF1(algorithm), algorithm, label or None))
        try:
            return self.unwrap_raw(wrapped, oaep=True, oaep_hash=hash_name, oaep_label=label) == probe
        except SessionKeyImportError:
            return False


class Provider:
    """An open, logged-in token.  Use as a context manager.

    When it was opened with a PKCS#11 URI that names an object (``object=``,
    ``id=``, ``type=``), that is the key its methods use: a name given to a
    method must agree with it (else :class:`SelectionConflict`), and a method
    given no name takes the URI's key.
    """

    def __init__(self, token: Token, selection: config.TokenSelector | None = None) -> None:
        self._token = token
        self._objects = selection if selection is not None and selection.names_object else None

    @classmethod
    def open(
        cls,
        module: str | None = None,
        token: str | None = None,
        pin: str | Callable[[], str] | None = None,
        *,
        serial: str | None = None,
        uri: str | None = None,
        pin_file: str | os.PathLike[str] | None = None,
        interactive: bool | None = None,
        module_name: str | None = None,
    ) -> Provider:
        """Open the token named by arguments, an RFC 7512 URI or TOKENCSP_* variables, and log in.

        ``module_name`` is a module registered with p11-kit (``softhsm2``).
        The token's flags are read first (no login): a token with a PIN pad
        (CKF_PROTECTED_AUTHENTICATION_PATH) and no PIN given logs in through
        the pad; a prompt names the token and what its flags say about the
        tries left (:func:`tokencsp.config.resolve_login_pin`).
        """
        selector = config.resolve_selector(module=module, token=token, serial=serial, uri=uri,
                                           module_name=module_name)
        return cls.open_selected(selector, pin, pin_file=pin_file, interactive=interactive)

    @classmethod
    def open_selected(
        cls,
        selector: config.TokenSelector,
        pin: str | Callable[[], str] | None = None,
        *,
        pin_file: str | os.PathLike[str] | None = None,
        interactive: bool | None = None,
    ) -> Provider:
        """:meth:`open` for a selector already made by :func:`tokencsp.config.resolve_selector`."""
        module_path = config.find_module(selector.module)
        status = token_status(module_path, match=selector)
        secret = config.resolve_login_pin(pin, pin_file, selector, status, interactive=interactive)
        return cls(open_token(module_path, secret, match=selector), selector)

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._token.close()

    @property
    def token_label(self) -> str:
        return self._token.label

    @property
    def token_serial(self) -> str:
        return self._token.serial

    @property
    def mechanisms(self) -> dict[str, list[str]]:
        """The RSA mechanisms the token offers for each import path: ``unwrap`` (C_UnwrapKey) and ``decrypt``
        (C_Decrypt, card keys), by PKCS#11 name."""
        return self._token.mechanism_names

    @property
    def token_uri(self) -> str:
        """The token's RFC 7512 URI (model, manufacturer, serial, token), as p11tool writes it."""
        return self._token.uri

    # -- which key: a name, the URI's object/id/type, or both in agreement --

    def _select(self, name: str | None, *, public: bool = False) -> KeyInfo:
        label, key_id = name, None
        wanted = self._objects
        if wanted is not None:
            if name is not None and wanted.object_label is not None and name != wanted.object_label:
                raise SelectionConflict(f"key {name!r} contradicts object={wanted.object_label!r} of the PKCS#11 URI")
            if wanted.object_type == "public" and not public:
                raise SelectionConflict("the PKCS#11 URI names a public key (type=public), and this needs the "
                                        "private key: use type=private")
            label = name if name is not None else wanted.object_label
            key_id = wanted.object_id
        if label is None and key_id is None:
            raise ConfigError("no key named: give a key name or a PKCS#11 URI with object= or id=")
        try:
            return self._token.key_info(label, key_id)
        except KeyNotFoundError:
            if label is None or key_id is None:
                raise
            try:
                other = self._token.key_info(label)
            except KeyNotFoundError:
                pass
            else:
                raise SelectionConflict(f"key {label!r} has id {other.id.hex()}, not the PKCS#11 URI's "
                                        f"id {key_id.hex()}") from None
            raise

    def _check_new(self, name: str) -> None:
        wanted = self._objects
        if wanted is None:
            return
        if wanted.object_label is not None and wanted.object_label != name:
            raise SelectionConflict(f"key {name!r} contradicts object={wanted.object_label!r} of the PKCS#11 URI")
        if wanted.object_id is not None:
            raise SelectionConflict("id= in the PKCS#11 URI cannot name a new key (tokencsp chooses its CKA_ID): "
                                    "drop id= from the URI")
        if wanted.object_type == "public":
            raise SelectionConflict("the PKCS#11 URI names a public key (type=public): a new key is a key pair")

    # -- key containers --------------------------------------------------

    def generate_key(self, name: str, bits: int = 2048, usage: KeyUsage | str = KeyUsage.EXCHANGE,
                     *, legacy: bool = False, oaep_only: bool = False) -> KeyPair:
        """A new RSA pair on the token.  ``oaep_only`` (exchange keys) allows only
        CKM_RSA_PKCS_OAEP: no PKCS#1 v1.5 padding oracle, no non-OAEP CryptoAPI peers."""
        usage = KeyUsage(usage)
        check_key_name(name)
        _check_bits(bits, legacy)
        self._check_new(name)
        key_id = self._token.generate_rsa(name, bits, usage, oaep_only=_oaep_only(usage, oaep_only))
        return self._wrap(name, key_id, usage)

    def generate_exchange_key(self, name: str, bits: int = 2048, *, legacy: bool = False,
                              oaep_only: bool = False) -> ExchangeKey:
        pair = self.generate_key(name, bits, KeyUsage.EXCHANGE, legacy=legacy, oaep_only=oaep_only)
        return cast(ExchangeKey, pair)

    def generate_signature_key(self, name: str, bits: int = 2048, *, legacy: bool = False) -> KeyPair:
        return self.generate_key(name, bits, KeyUsage.SIGNATURE, legacy=legacy)

    def key(self, name: str | None = None, *, public: bool = False) -> KeyPair:
        """Any key container by name or the URI's key (an :class:`ExchangeKey` when it can unwrap or decrypt).

        ``public``: only its public half will be used, so a URI with
        ``type=public`` (as p11tool prints for the public object) selects it too.
        """
        info = self._select(name, public=public)
        if info.import_path is not None:
            return ExchangeKey(self._token, info.name, info.id, info)
        return KeyPair(self._token, info.name, info.id)

    def exchange_key(self, name: str | None = None) -> ExchangeKey:
        """An exchange key by name or the URI's key: one that unwraps, or a card-style key that only decrypts."""
        info = self._select(name)
        if info.import_path is None:
            raise KeyNotFoundError(f"key {info.name!r} is not an exchange key (it can neither unwrap nor decrypt)")
        return ExchangeKey(self._token, info.name, info.id, info)

    def list_keys(self) -> list[KeyInfo]:
        """Every private key on the token, or those the URI's object=/id= name."""
        keys = self._token.list_keys()
        wanted = self._objects
        if wanted is None:
            return keys
        return [k for k in keys if (wanted.object_label is None or k.name == wanted.object_label)
                and (wanted.object_id is None or k.id == wanted.object_id)]

    def delete_key(self, name: str | None = None) -> int:
        """Delete a key container; returns how many objects were destroyed."""
        return self._token.delete(self._select(name).name)

    def import_private_blob(self, name: str, data: bytes, *, legacy: bool = False,
                            oaep_only: bool = False) -> KeyPair:
        """Move a CryptoAPI PRIVATEKEYBLOB onto the token (usage from its ALG_ID)."""
        blob = PrivateKeyBlob.from_bytes(data)
        usage = KeyUsage.SIGNATURE if blob.alg_id is AlgId.CALG_RSA_SIGN else KeyUsage.EXCHANGE
        return self.import_private_key(name, blob.to_private_key(), usage, legacy=legacy, oaep_only=oaep_only)

    def import_pem(self, name: str, data: bytes, password: bytes | None = None,
                   usage: KeyUsage | str = KeyUsage.EXCHANGE, *, legacy: bool = False,
                   oaep_only: bool = False) -> KeyPair:
        """Move a PEM private key (PKCS#8 or PKCS#1) onto the token."""
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as exc:
            raise InvalidKeyError(f"not a usable PEM private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UnsupportedAlgorithm("only RSA private keys can be imported")
        return self.import_private_key(name, key, usage, legacy=legacy, oaep_only=oaep_only)

    def import_private_key(self, name: str, key: rsa.RSAPrivateKey, usage: KeyUsage | str = KeyUsage.EXCHANGE,
                           *, legacy: bool = False, oaep_only: bool = False) -> KeyPair:
        usage = KeyUsage(usage)
        check_key_name(name)
        _check_bits(key.key_size, legacy, importing=True)
        self._check_new(name)
        parts = RsaPrivateParts.from_private_key(key)
        key_id = self._token.import_rsa(name, parts, usage, oaep_only=_oaep_only(usage, oaep_only))
        return self._wrap(name, key_id, usage)

    def _wrap(self, name: str, key_id: bytes, usage: KeyUsage) -> KeyPair:
        cls = ExchangeKey if usage is KeyUsage.EXCHANGE else KeyPair
        return cls(self._token, name, key_id)

    def object_count(self) -> int:
        """Every object visible on the token: the same before and after any import."""
        return self._token.count_objects()

    def session_object_count(self) -> int:
        """Session (non-token) objects this application can see: 0 after every import."""
        return self._token.count_session_objects()


def list_tokens(module: str | None = None) -> list[tuple[str, str]]:
    """(label, serial) of every initialised token the module shows."""
    return [(t.label, t.serial) for t in describe_tokens(config.find_module(module))]


def describe_all_tokens(module: str | None = None, selector: config.TokenSelector | None = None
                        ) -> list[TokenDescription]:
    """The initialised tokens the module shows (those ``selector`` matches): label, serial, manufacturer,
    model, slot, RFC 7512 URI."""
    path = config.find_module(module if selector is None else selector.module)
    return describe_tokens(path) if selector is None else matching_tokens(path, selector)


def describe_module(module: str | None = None) -> dict[str, str]:
    """Load the module (``module``, TOKENCSP_MODULE or SoftHSM2) and say what it is: ``path``, ``manufacturer``,
    ``description``, ``library_version``, ``cryptoki_version``."""
    path = config.find_module(module)
    return {"path": path, **module_info(path)}


def pin_status(module: str | None = None, token: str | None = None, *, serial: str | None = None,
               uri: str | None = None, module_name: str | None = None) -> PinStatus:
    """The user-PIN flags of the token the arguments name (CKF_USER_PIN_COUNT_LOW, FINAL_TRY, LOCKED), read
    without logging in: after a wrong PIN, what the token says about the tries left."""
    selector = config.resolve_selector(module=module, token=token, serial=serial, uri=uri, module_name=module_name)
    return token_status(config.find_module(selector.module), match=selector)


def empty_token(label: str, *, pin: str, module: str | None = None) -> int:
    """Destroy every object the user can see on the token ``label``; returns how many.

    For throwaway test tokens only (``tokencsp.testing.OpencryptokiKit``, the pytest plugin's
    ``pkcs11_token`` on opencryptoki): it does not ask, and keys destroyed are gone.
    """
    token = open_token(config.find_module(module), pin, label)
    try:
        return token.destroy_all_objects()
    finally:
        token.close()


def initialize_token(label: str, *, so_pin: str, pin: str, module: str | None = None) -> str:
    """Initialise a fresh token (SoftHSM: the free slot) with ``label``, SO PIN and user PIN; returns its serial.

    For SoftHSM set-ups and CI: the PINs go to the module from memory, never
    through a command line.
    """
    if len(so_pin) < 4 or len(pin) < 4:
        raise ConfigError("PINs must be at least 4 characters")
    return init_token(config.find_module(module), label, so_pin, pin)
