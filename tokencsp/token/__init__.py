"""The PKCS#11 boundary: the only module in tokencsp that imports ``pkcs11``.

Three things here are not what python-pkcs11 does by default, each for a
measured reason:

* the module is initialised with ``CKF_OS_LOCKING_OK``.  python-pkcs11 passes
  ``NULL`` to ``C_Initialize``, which tells SoftHSM the application is
  single-threaded; SoftHSM then turns its locks off and, since python-pkcs11
  releases the GIL, concurrent threads crash or read each other's key values;
* one ``lib`` object per module path lives for the whole process: a ``lib``
  that is garbage-collected calls ``C_Finalize`` and kills every session;
* ``C_Login`` is called through ctypes on an already open session, so that
  the token-wide ``CKR_USER_ALREADY_LOGGED_IN`` can be treated as success
  without python-pkcs11 leaking the session it opened for the login.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import struct
import tempfile
import threading
from collections.abc import Iterator

import pkcs11
import pkcs11.attributes
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, _pkcs11
from pkcs11 import exceptions as p11

from ..errors import (
    AmbiguousKeyError,
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    ModuleLoadError,
    PinError,
    TokenCSPError,
    TokenError,
    TokenNotFoundError,
    TokenOperationError,
)
from ..keyinfo import KeyInfo, KeyUsage, RsaPrivateParts

__all__ = ["KeyUsage", "KeyInfo", "RsaPrivateParts", "Token", "load_module", "open_token"]

CKF_OS_LOCKING_OK = 0x00000002
CKR_OK = 0x000
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKU_SO = 0
CKU_USER = 1
CKF_TOKEN_INITIALIZED = 0x400
_PIN_RVS = {
    0x0A0: "PIN incorrect",
    0x0A1: "PIN invalid",
    0x0A2: "PIN length out of range",
    0x0A3: "PIN expired",
    0x0A4: "PIN locked",
    0x102: "user PIN not initialised",
}

_CK_RV = ctypes.c_ulong
_CK_ULONG = ctypes.c_ulong


class _InitializeArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", _CK_ULONG),
        ("pReserved", ctypes.c_void_p),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


# CK_FUNCTION_LIST up to C_Login, in the order of the PKCS#11 header.
_FunctionList = type(
    "_FunctionList",
    (ctypes.Structure,),
    {
        "_fields_": [("version", _Version), ("C_Initialize", ctypes.CFUNCTYPE(_CK_RV, ctypes.c_void_p))]
        + [(f"_unused{i}", ctypes.c_void_p) for i in range(8)]
        + [("C_InitToken", ctypes.CFUNCTYPE(_CK_RV, _CK_ULONG, ctypes.c_char_p, _CK_ULONG, ctypes.c_char_p)),
           ("C_InitPIN", ctypes.CFUNCTYPE(_CK_RV, _CK_ULONG, ctypes.c_char_p, _CK_ULONG))]
        + [(f"_unused_{i}", ctypes.c_void_p) for i in range(7)]
        + [("C_Login", ctypes.CFUNCTYPE(_CK_RV, _CK_ULONG, _CK_ULONG, ctypes.c_char_p, _CK_ULONG))]
    },
)


def _function_list(so: str):
    dll = ctypes.CDLL(so)
    pointer = ctypes.POINTER(_FunctionList)()
    rv = dll.C_GetFunctionList(ctypes.byref(pointer))
    if rv != CKR_OK:
        raise ModuleLoadError(f"C_GetFunctionList failed in {so} (CKR 0x{rv:x})")
    return dll, pointer.contents


class _LockingLib(_pkcs11.lib):
    """python-pkcs11's ``lib`` initialised with CKF_OS_LOCKING_OK."""

    def initialize(self) -> None:
        # python-pkcs11's own initialized flag stays False: the module is
        # never finalised by it, which is what keeps sessions alive.
        self._dll, self._functions = _function_list(self.so)
        self._init_lock = threading.Lock()
        self.generation = 0
        rv = self._c_initialize()
        if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
            raise ModuleLoadError(f"C_Initialize failed for {self.so} (CKR 0x{rv:x})")

    def _c_initialize(self) -> int:
        args = _InitializeArgs(flags=CKF_OS_LOCKING_OK)
        return self._functions.C_Initialize(ctypes.byref(args))

    def recover(self) -> bool:
        """Initialise the module again if something else in the process finalised it.

        True when it had been finalised: every session and login of the process
        died with it, and the module will hand out the same session handles
        again, so each :class:`Token` opened before is stale (``generation``).
        """
        with self._init_lock:
            rv = self._c_initialize()
            if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
                return False
            if rv != CKR_OK:
                raise ModuleLoadError(f"C_Initialize failed for {self.so} (CKR 0x{rv:x})")
            self.generation += 1
            return True

    def login(self, session_handle: int, pin: str, user_type: int = CKU_USER) -> None:
        secret = ctypes.create_string_buffer(pin.encode("utf-8"))
        try:
            rv = self._functions.C_Login(session_handle, user_type, secret, len(secret.value))
        finally:
            ctypes.memset(secret, 0, len(secret))
        if rv in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
            return
        if rv in _PIN_RVS:
            raise PinError(f"login refused: {_PIN_RVS[rv]}")
        raise TokenOperationError(f"C_Login failed (CKR 0x{rv:x})")


_modules: dict[str, _LockingLib] = {}
_modules_lock = threading.Lock()


@contextlib.contextmanager
def _cross_process_lock(module: str) -> Iterator[None]:
    """Serialise C_Initialize, token enumeration and C_Login across processes.

    SoftHSM rewrites token.object on every login and reads it, without its
    lock, when a process initialises the module: four processes opening a
    token at once saw "no such token" and CKR_GENERAL_ERROR (measured).  An
    flock per module and SoftHSM configuration keeps tokencsp processes from
    tearing each other's reads; the critical section is a few milliseconds.
    """
    key = hashlib.sha256(f"{module}\0{os.environ.get('SOFTHSM2_CONF', '')}".encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"tokencsp-{os.getuid()}-{key}.lock")
    # Re-entrant within the process (flock on a second descriptor would wait
    # for ourselves); the RLock also serialises this process's threads.
    with _open_guard:
        if path in _open_locks_held:
            yield
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # no usable temp dir: go on unserialised rather than fail
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _open_locks_held.add(path)
            yield
        finally:
            _open_locks_held.discard(path)
            os.close(fd)  # releases the lock


_open_guard = threading.RLock()
_open_locks_held: set[str] = set()


def load_module(path: str) -> _LockingLib:
    """The process-wide ``lib`` for a module path, loaded and initialised once."""
    real = os.path.realpath(path)
    with _modules_lock:
        lib = _modules.get(real)
    if lib is not None:
        return lib
    # Lock order everywhere: the cross-process lock, then _modules_lock.
    with _cross_process_lock(real), _modules_lock:
        lib = _modules.get(real)
        if lib is None:
            if not os.path.isfile(real):
                raise ModuleLoadError(f"PKCS#11 module not found: {path}")
            try:
                lib = _LockingLib(real)
            except TokenCSPError:
                raise
            except p11.PKCS11Error as exc:
                raise ModuleLoadError(f"cannot load PKCS#11 module {path}: {exc or type(exc).__name__}") from None
            _modules[real] = lib
            # Never deallocated, not even at interpreter shutdown: python-pkcs11's
            # __dealloc__ would unload the module under any thread still using it
            # (and, at shutdown, fails noisily on the half-torn-down subclass).
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(lib))
        return lib


def map_error(exc: p11.PKCS11Error, context: str) -> TokenCSPError:
    """The one place where a PKCS#11 failure becomes a tokencsp error."""
    name = type(exc).__name__
    if isinstance(exc, (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked, p11.PinExpired,
                        p11.UserPinNotInitialized, p11.UserNotLoggedIn)):
        return PinError(f"{context}: {name}")
    if isinstance(exc, (p11.TokenNotPresent, p11.DeviceRemoved, p11.SlotIDInvalid, p11.TokenNotRecognised)):
        return TokenNotFoundError(f"{context}: token not present ({name})")
    if isinstance(exc, (p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.UnwrappingKeyHandleInvalid)):
        return KeyNotFoundError(f"{context}: the key is no longer on the token ({name})")
    return TokenOperationError(f"{context}: {name}")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


# Capabilities by usage, as (public, private) templates.  An exchange key
# only wraps/unwraps (ENCRYPT on the public half is what peers use to build
# SIMPLEBLOBs on other tokens); a signature key only signs.
_USAGE_TEMPLATES = {
    KeyUsage.EXCHANGE: (
        {Attribute.WRAP: True, Attribute.ENCRYPT: True, Attribute.VERIFY: False},
        {Attribute.UNWRAP: True, Attribute.DECRYPT: False, Attribute.SIGN: False},
    ),
    KeyUsage.SIGNATURE: (
        {Attribute.WRAP: False, Attribute.ENCRYPT: False, Attribute.VERIFY: True},
        {Attribute.UNWRAP: False, Attribute.DECRYPT: False, Attribute.SIGN: True},
    ),
}

_PRIVATE_PROTECTION = {
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
_TRANSIENT_SECRET = {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False}

_OAEP_HASHES = {
    "sha1": (Mechanism.SHA_1, pkcs11.MGF.SHA1),
    "sha224": (Mechanism.SHA224, pkcs11.MGF.SHA224),
    "sha256": (Mechanism.SHA256, pkcs11.MGF.SHA256),
    "sha384": (Mechanism.SHA384, pkcs11.MGF.SHA384),
    "sha512": (Mechanism.SHA512, pkcs11.MGF.SHA512),
}


def _oaep_params(hash_name: str, label: bytes | None) -> tuple:
    """CK_RSA_PKCS_OAEP_PARAMS with MGF1 over the same hash (CRYPT_OAEP is SHA-1, no label)."""
    try:
        mechanism, mgf = _OAEP_HASHES[hash_name]
    except KeyError:
        raise InvalidKeyError(f"unknown OAEP hash {hash_name!r}") from None
    return (mechanism, mgf, label or None)

_PSS_SHA256 = (Mechanism.SHA256, pkcs11.MGF.SHA256, 32)

SECRET_KEY_TYPES = {"aes": KeyType.AES, "des3": KeyType.DES3, "des2": KeyType.DES2, "generic": KeyType.GENERIC_SECRET}


class _AttributeMapper(pkcs11.attributes.AttributeMapper):
    """python-pkcs11's mapper plus CKA_ALLOWED_MECHANISMS (a CK_MECHANISM_TYPE array)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_handler(Attribute.ALLOWED_MECHANISMS, _pack_mechanisms, _unpack_mechanisms)


def _pack_mechanisms(values) -> bytes:
    return struct.pack(f"@{len(values)}L", *values)


def _unpack_mechanisms(data: bytes) -> list[int]:
    return list(struct.unpack(f"@{len(data) // struct.calcsize('@L')}L", data))


class Token:
    """An open, logged-in token: one login session plus one session per thread."""

    def __init__(self, lib: _LockingLib, token: pkcs11.Token, pin: str) -> None:
        self._lib = lib
        self._generation = lib.generation
        self._token = token
        self._local = threading.local()
        self._sessions: list[pkcs11.Session] = []
        self._sessions_lock = threading.Lock()
        self._closed = False
        # The first session carries the login; PKCS#11 logs the token out when
        # the application's last session closes, so it stays open until close().
        self._anchor = self._open_session()
        try:
            self._lib.login(self._anchor.handle, pin)
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
        return self._token.serial.decode() if isinstance(self._token.serial, bytes) else str(self._token.serial)

    def _open_session(self) -> pkcs11.Session:
        try:
            session = self._token.open(rw=True, attribute_mapper=_AttributeMapper())
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

    def session(self) -> pkcs11.Session:
        """This thread's session, opened on first use."""
        self._check_open()
        session = getattr(self._local, "session", None)
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
            try:
                session.close()
            except p11.PKCS11Error:
                pass

    # -- lookups ---------------------------------------------------------

    def _find(self, object_class: ObjectClass, name: str | None = None, key_id: bytes | None = None) -> list:
        attrs: dict = {Attribute.CLASS: object_class}
        if name is not None:
            attrs[Attribute.LABEL] = name
        if key_id is not None:
            attrs[Attribute.ID] = key_id
        try:
            return list(self.session().get_objects(attrs))
        except p11.PKCS11Error as exc:
            raise map_error(exc, "searching the token") from None

    def _private(self, name: str | None = None, key_id: bytes | None = None):
        found = self._find(ObjectClass.PRIVATE_KEY, name, key_id)
        what = f"key {name!r}" if name is not None else f"key id {key_id.hex() if key_id else ''}"
        if not found:
            raise KeyNotFoundError(f"no private {what} on token {self.label!r}")
        if len(found) > 1:
            raise AmbiguousKeyError(
                f"{len(found)} private keys match {what} on token {self.label!r}; refusing to guess")
        return found[0]

    def key_id(self, name: str) -> bytes:
        """The CKA_ID of the private key labelled ``name``."""
        return bytes(self._private(name)[Attribute.ID])

    def key_info(self, name: str | None = None, key_id: bytes | None = None) -> KeyInfo:
        return self._info(self._private(name, key_id))

    def list_keys(self) -> list[KeyInfo]:
        return sorted((self._info(key) for key in self._find(ObjectClass.PRIVATE_KEY)), key=lambda k: k.name)

    def _info(self, key) -> KeyInfo:
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
        public_usage, private_usage = _USAGE_TEMPLATES[usage]
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
                                 Attribute.PUBLIC_EXPONENT: _int_bytes(65537), **public_usage},
                private_template={**_PRIVATE_PROTECTION, **private_usage},
            )
        except p11.PKCS11Error as exc:
            raise map_error(exc, f"generating {bits}-bit RSA key {name!r}") from None
        return key_id

    def import_rsa(self, name: str, parts: RsaPrivateParts, usage: KeyUsage, oaep_only: bool = False) -> bytes:
        """Put an existing RSA key on the token as a sensitive, non-extractable pair; returns its CKA_ID."""
        self._refuse_existing(name)
        key_id = hashlib.sha1(_int_bytes(parts.n)).digest()
        if self._find(ObjectClass.PRIVATE_KEY, key_id=key_id):
            raise KeyExistsError(f"this RSA key is already on token {self.label!r}")
        public_usage, private_usage = _USAGE_TEMPLATES[usage]
        if oaep_only:
            private_usage = {**private_usage, Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP]}
        common = {Attribute.KEY_TYPE: KeyType.RSA, Attribute.ID: key_id, Attribute.LABEL: name,
                  Attribute.MODULUS: _int_bytes(parts.n), Attribute.PUBLIC_EXPONENT: _int_bytes(parts.e)}
        session = self.session()
        created = []
        try:
            created.append(session.create_object({
                **common, **_PRIVATE_PROTECTION, **private_usage,
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.PRIVATE_EXPONENT: _int_bytes(parts.d),
                Attribute.PRIME_1: _int_bytes(parts.p),
                Attribute.PRIME_2: _int_bytes(parts.q),
                Attribute.EXPONENT_1: _int_bytes(parts.dp),
                Attribute.EXPONENT_2: _int_bytes(parts.dq),
                Attribute.COEFFICIENT: _int_bytes(parts.qinv),
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
        victims = [private] + list({obj.handle: obj for obj in publics}.values())
        for obj in victims:
            try:
                obj.destroy()
            except p11.PKCS11Error as exc:
                raise map_error(exc, f"deleting key {name!r}") from None
        return len(victims)

    # -- the unwrap ------------------------------------------------------

    def _private_by_id(self, key_id: bytes):
        self._check_open()  # cached handles bypass session()
        cache = getattr(self._local, "keys", None)
        if cache is None:
            cache = self._local.keys = {}
        key = cache.get(key_id)
        if key is None:
            key = cache[key_id] = self._private(key_id=key_id)
        return key

    def unwrap_secret(self, key_id: bytes, wrapped: bytes, oaep: bool, secret_type: str,
                      oaep_hash: str = "sha1", oaep_label: bytes | None = None,
                      fallback: bytes | None = None) -> bytes:
        """C_UnwrapKey into a transient session object, read its value, destroy it.

        A missing key is :class:`KeyNotFoundError`; every failure of the
        unwrap itself is mapped by :func:`map_error`.  Callers that must not
        reveal *why* an unwrap failed turn those into their own error.

        With ``fallback`` (implicit rejection) a failed unwrap does not raise:
        a transient object holding ``fallback`` is created, read and destroyed
        instead, so both paths make the same PKCS#11 calls and take about the
        same time (the object work is most of what a failure would skip).
        """
        if oaep:
            mechanism, param = Mechanism.RSA_PKCS_OAEP, _oaep_params(oaep_hash, oaep_label)
        else:
            mechanism, param = Mechanism.RSA_PKCS, None
        for attempt in (1, 2):
            private = self._private_by_id(key_id)
            try:
                secret = private.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    SECRET_KEY_TYPES[secret_type],
                    wrapped,
                    mechanism=mechanism,
                    mechanism_param=param,
                    capabilities=MechanismFlag(0),
                    template=_TRANSIENT_SECRET,
                )
                break
            except (p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.UnwrappingKeyHandleInvalid) as exc:
                # The cached handle went stale (key deleted or re-created):
                # look it up once more, which raises KeyNotFoundError if gone.
                self._local.keys.pop(key_id, None)
                if attempt == 2:
                    raise map_error(exc, "unwrapping") from None
            except p11.PKCS11Error as exc:
                if fallback is None:
                    raise map_error(exc, "unwrapping") from None
                secret = self._create_transient(fallback, secret_type)
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

    def _create_transient(self, value: bytes, secret_type: str):
        try:
            return self.session().create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: SECRET_KEY_TYPES[secret_type],
                Attribute.VALUE: value,
                **_TRANSIENT_SECRET,
            })
        except p11.PKCS11Error as exc:
            raise map_error(exc, "creating a transient key") from None

    def sign_pss_sha256(self, key_id: bytes, data: bytes) -> bytes:
        """RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature by the private key with this CKA_ID."""
        private = self._private_by_id(key_id)
        if not hasattr(private, "sign"):  # python-pkcs11 gives keys without CKA_SIGN no sign()
            raise InvalidKeyError("this key cannot sign: it is not a signature key")
        try:
            return bytes(private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=_PSS_SHA256))
        except (p11.ObjectHandleInvalid, p11.KeyHandleInvalid):
            self._local.keys.pop(key_id, None)
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


def _allowed(key) -> list[int] | None:
    try:
        return list(key[Attribute.ALLOWED_MECHANISMS])
    except p11.PKCS11Error:  # tokens without CKA_ALLOWED_MECHANISMS allow everything
        return None


def _destroy_quietly(obj) -> None:
    try:
        obj.destroy()
    except p11.PKCS11Error:
        pass


def iter_tokens(module: str) -> Iterator[tuple[str, str]]:
    """(label, serial) of each initialised token."""
    lib = load_module(module)
    try:
        for slot in lib.get_slots(token_present=True):
            token = slot.get_token()
            if not token.flags & CKF_TOKEN_INITIALIZED:
                continue
            serial = token.serial.decode() if isinstance(token.serial, bytes) else str(token.serial)
            yield token.label, serial
    except p11.PKCS11Error as exc:
        raise map_error(exc, "listing tokens") from None


def init_token(module: str, label: str, so_pin: str, user_pin: str) -> str:
    """Initialise the first uninitialised token (SoftHSM's free slot) with ``label``; returns its serial.

    C_InitToken with the SO PIN, then C_InitPIN for the user PIN, both from
    memory: unlike ``softhsm2-util --init-token``, no PIN is ever on a
    command line.
    """
    raw_label = label.encode("utf-8")
    if not 0 < len(raw_label) <= 32:
        raise TokenError("a token label is 1 to 32 bytes")
    with _cross_process_lock(os.path.realpath(module)):
        return _init_token(module, label, raw_label, so_pin, user_pin)


def _init_token(module: str, label: str, raw_label: bytes, so_pin: str, user_pin: str) -> str:
    if any(existing == label for existing, _ in iter_tokens(module)):
        raise KeyExistsError(f"a token labelled {label!r} already exists")
    lib = load_module(module)
    try:
        free = next((slot for slot in lib.get_slots(token_present=True)
                     if not slot.get_token().flags & CKF_TOKEN_INITIALIZED), None)
    except p11.PKCS11Error as exc:
        raise map_error(exc, "listing slots") from None
    if free is None:
        raise TokenNotFoundError(f"no uninitialised token in {module}")
    so_secret = ctypes.create_string_buffer(so_pin.encode("utf-8"))
    user_secret = ctypes.create_string_buffer(user_pin.encode("utf-8"))
    try:
        rv = lib._functions.C_InitToken(free.slot_id, so_secret, len(so_secret.value), raw_label.ljust(32))
        if rv != CKR_OK:
            raise TokenOperationError(f"C_InitToken failed (CKR 0x{rv:x})")
        try:
            session = free.get_token().open(rw=True)
        except p11.PKCS11Error as exc:
            raise map_error(exc, "opening the new token") from None
        try:
            lib.login(session.handle, so_pin, CKU_SO)
            rv = lib._functions.C_InitPIN(session.handle, user_secret, len(user_secret.value))
            if rv != CKR_OK:
                raise PinError(f"C_InitPIN refused the user PIN (CKR 0x{rv:x})")
        finally:
            session.close()
        token = free.get_token()
    finally:
        ctypes.memset(so_secret, 0, len(so_secret))
        ctypes.memset(user_secret, 0, len(user_secret))
    return token.serial.decode() if isinstance(token.serial, bytes) else str(token.serial)


def open_token(module: str, pin: str, label: str | None = None, serial: str | None = None) -> Token:
    """Load the module, find the token by label and/or serial, log in.

    If something else in the process finalised the module (C_Finalize behind
    the back of this one ``lib``), it is initialised again and the open is
    retried once; tokens opened before stay unusable.
    """
    lib = load_module(module)
    generation = lib.generation
    with _cross_process_lock(os.path.realpath(module)):
        try:
            return _open_token(lib, module, pin, label, serial)
        except TokenOperationError:
            if not lib.recover() and lib.generation == generation:
                raise
        return _open_token(lib, module, pin, label, serial)


def _open_token(lib: _LockingLib, module: str, pin: str, label: str | None, serial: str | None) -> Token:
    if label is None and serial is None:
        raise TokenNotFoundError("no token named: give a label (--token) or a serial")
    matches = [(lbl, ser) for lbl, ser in iter_tokens(module)
               if (label is None or lbl == label) and (serial is None or ser == serial)]
    wanted = " and ".join(filter(None, (label and f"label {label!r}", serial and f"serial {serial!r}")))
    if not matches:
        raise TokenNotFoundError(f"no token with {wanted} in {module}")
    if len(matches) > 1:
        raise TokenNotFoundError(f"{len(matches)} tokens match {wanted}; select by serial")
    try:
        token = lib.get_token(token_label=matches[0][0], token_serial=matches[0][1].encode())
    except p11.PKCS11Error as exc:
        raise map_error(exc, "opening the token") from None
    return Token(lib, token, pin)
