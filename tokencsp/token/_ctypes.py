"""The few PKCS#11 calls tokencsp makes through ctypes instead of python-pkcs11.

* ``C_Initialize`` with ``CKF_OS_LOCKING_OK``: python-pkcs11 passes ``NULL``,
  which tells SoftHSM the application is single-threaded; SoftHSM then turns
  its locks off and, since python-pkcs11 releases the GIL, concurrent threads
  crash or read each other's key values (measured);
* ``C_Login`` on an already open session, so that the token-wide
  ``CKR_USER_ALREADY_LOGGED_IN`` counts as success without python-pkcs11
  leaking the session it would open for the login; a NULL PIN for tokens
  with a protected authentication path; ``CKU_CONTEXT_SPECIFIC`` for keys
  with ``CKA_ALWAYS_AUTHENTICATE``;
* ``C_InitToken``/``C_InitPIN`` with PINs from memory;
* ``C_DecryptInit``/``C_Decrypt`` and ``C_SignInit``/``C_Sign``, so that a
  context-specific login can sit between the two, as PKCS#11 requires.
"""

from __future__ import annotations

import ctypes
import os
import threading

from pkcs11 import _pkcs11
from pkcs11 import mechanisms as _ckm
from pkcs11.types import Session

from ..errors import ModuleLoadError
from . import trace
from .errors import CKR_CRYPTOKI_ALREADY_INITIALIZED, CKR_OK, CKR_USER_ALREADY_LOGGED_IN, map_rv

__all__ = [
    "CKU_CONTEXT_SPECIFIC", "CKU_SO", "CKU_USER", "FunctionList", "LockingLib", "function_list", "session_handle",
]

CKF_OS_LOCKING_OK = 0x00000002
CKU_SO = 0
CKU_USER = 1
CKU_CONTEXT_SPECIFIC = 2
CKZ_DATA_SPECIFIED = 0x00000001

_CK_RV = ctypes.c_ulong
_CK_ULONG = ctypes.c_ulong
_CK_ULONG_PTR = ctypes.POINTER(ctypes.c_ulong)


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


class Mechanism(ctypes.Structure):
    """CK_MECHANISM."""

    _fields_ = [("mechanism", _CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", _CK_ULONG)]


class PssParams(ctypes.Structure):
    """CK_RSA_PKCS_PSS_PARAMS."""

    _fields_ = [("hashAlg", _CK_ULONG), ("mgf", _CK_ULONG), ("sLen", _CK_ULONG)]


class OaepParams(ctypes.Structure):
    """CK_RSA_PKCS_OAEP_PARAMS."""

    _fields_ = [("hashAlg", _CK_ULONG), ("mgf", _CK_ULONG), ("source", _CK_ULONG),
                ("pSourceData", ctypes.c_void_p), ("ulSourceDataLen", _CK_ULONG)]


def _fn(*args: object) -> object:
    return ctypes.CFUNCTYPE(_CK_RV, *args)  # type: ignore[arg-type]


_VOID = ctypes.c_void_p
# CK_FUNCTION_LIST in the order of pkcs11f.h, up to C_Decrypt (the rest is never read).
_FIELDS: list[tuple[str, object]] = [
    ("version", _Version),
    ("C_Initialize", _fn(_VOID)),
    ("C_Finalize", _fn(_VOID)),
    ("C_GetInfo", _VOID),
    ("C_GetFunctionList", _VOID),
    ("C_GetSlotList", _VOID),
    ("C_GetSlotInfo", _VOID),
    ("C_GetTokenInfo", _VOID),
    ("C_GetMechanismList", _VOID),
    ("C_GetMechanismInfo", _VOID),
    ("C_InitToken", _fn(_CK_ULONG, ctypes.c_char_p, _CK_ULONG, ctypes.c_char_p)),
    ("C_InitPIN", _fn(_CK_ULONG, ctypes.c_char_p, _CK_ULONG)),
    ("C_SetPIN", _VOID),
    ("C_OpenSession", _VOID),
    ("C_CloseSession", _VOID),
    ("C_CloseAllSessions", _VOID),
    ("C_GetSessionInfo", _VOID),
    ("C_GetOperationState", _VOID),
    ("C_SetOperationState", _VOID),
    ("C_Login", _fn(_CK_ULONG, _CK_ULONG, ctypes.c_char_p, _CK_ULONG)),
    ("C_Logout", _VOID),
    ("C_CreateObject", _VOID),
    ("C_CopyObject", _VOID),
    ("C_DestroyObject", _VOID),
    ("C_GetObjectSize", _VOID),
    ("C_GetAttributeValue", _VOID),
    ("C_SetAttributeValue", _VOID),
    ("C_FindObjectsInit", _VOID),
    ("C_FindObjects", _VOID),
    ("C_FindObjectsFinal", _VOID),
    ("C_EncryptInit", _VOID),
    ("C_Encrypt", _VOID),
    ("C_EncryptUpdate", _VOID),
    ("C_EncryptFinal", _VOID),
    ("C_DecryptInit", _fn(_CK_ULONG, ctypes.POINTER(Mechanism), _CK_ULONG)),
    ("C_Decrypt", _fn(_CK_ULONG, ctypes.c_char_p, _CK_ULONG, ctypes.c_char_p, _CK_ULONG_PTR)),
    ("C_DecryptUpdate", _VOID),
    ("C_DecryptFinal", _VOID),
    ("C_DigestInit", _VOID),
    ("C_Digest", _VOID),
    ("C_DigestUpdate", _VOID),
    ("C_DigestKey", _VOID),
    ("C_DigestFinal", _VOID),
    ("C_SignInit", _fn(_CK_ULONG, ctypes.POINTER(Mechanism), _CK_ULONG)),
    ("C_Sign", _fn(_CK_ULONG, ctypes.c_char_p, _CK_ULONG, ctypes.c_char_p, _CK_ULONG_PTR)),
]


class FunctionList(ctypes.Structure):
    _fields_ = _FIELDS  # type: ignore[assignment]


def session_handle(session: Session) -> int:
    """The CK_SESSION_HANDLE of a python-pkcs11 session (its Cython class has it; its stubs do not)."""
    handle = getattr(session, "handle")  # noqa: B009
    assert isinstance(handle, int)
    return handle


def function_list(so: str) -> tuple[ctypes.CDLL, FunctionList]:
    """The module's CK_FUNCTION_LIST (the dll is returned too: it must outlive the list)."""
    dll = ctypes.CDLL(so)
    pointer = ctypes.POINTER(FunctionList)()
    rv = dll.C_GetFunctionList(ctypes.byref(pointer))
    if rv != CKR_OK:
        raise ModuleLoadError(f"C_GetFunctionList failed in {so} (CKR 0x{rv:x})")
    return dll, pointer.contents


def _shared_function_list(lib: _pkcs11.lib) -> FunctionList | None:
    """The CK_FUNCTION_LIST python-pkcs11 itself calls through, or None when its layout is not the known one.

    p11-kit-proxy.so hands out a new, independent proxy with each
    C_GetFunctionList call (p11-kit proxy.c, get_interface_inlock): sessions
    opened through python-pkcs11's list are unknown to another list's
    C_Login.  So the ctypes calls go through python-pkcs11's own list, read
    from its ``HasFuncList.funclist`` field, the first after PyObject_HEAD
    (python-pkcs11 0.10; checked by the object size and the list's version).
    """
    pointer = ctypes.sizeof(ctypes.c_void_p)
    if _pkcs11.HasFuncList.__basicsize__ != object.__basicsize__ + 3 * pointer:  # type: ignore[attr-defined]
        return None
    address = ctypes.c_void_p.from_address(id(lib) + object.__basicsize__).value
    if not address:
        return None
    functions = FunctionList.from_address(address)
    if functions.version.major not in (2, 3):
        return None
    return functions


class LockingLib(_pkcs11.lib):
    """python-pkcs11's ``lib`` initialised with CKF_OS_LOCKING_OK, plus the ctypes calls above."""

    _dll: ctypes.CDLL
    _functions: FunctionList
    _init_lock: threading.Lock
    generation: int
    pid: int

    def initialize(self) -> None:
        # python-pkcs11's own initialized flag stays False: the module is
        # never finalised by it, which is what keeps sessions alive.
        shared = _shared_function_list(self)
        if shared is None:
            self._dll, self._functions = function_list(self.so)
        else:
            self._functions = shared
        self._init_lock = threading.Lock()
        self.generation = 0
        self.pid = os.getpid()
        with trace.call("C_Initialize (CKF_OS_LOCKING_OK)") as initialized:
            rv = self._c_initialize()
            initialized.rv = CKR_OK if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED else rv
        if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
            raise ModuleLoadError(f"C_Initialize failed for {self.so} (CKR 0x{rv:x})")

    def _c_initialize(self) -> int:
        args = _InitializeArgs(flags=CKF_OS_LOCKING_OK)
        return int(self._functions.C_Initialize(ctypes.byref(args)))

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

    def after_fork(self) -> None:
        """In a forked child: C_Initialize again, as PKCS#11 requires, before any other call.

        The parent's sessions and logins are not the child's: each
        :class:`~tokencsp.token.Token` opens and logs in again on its own.
        SoftHSM does not notice the fork (CKR_CRYPTOKI_ALREADY_INITIALIZED);
        opencryptoki and hardware modules refuse a child that skips this.
        """
        if self.pid == os.getpid():
            return
        self._init_lock = threading.Lock()  # the parent's may have been held by a thread at fork time
        with self._init_lock:
            rv = self._c_initialize()
            if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
                raise ModuleLoadError(f"C_Initialize failed for {self.so} in a forked child (CKR 0x{rv:x})")
            self.pid = os.getpid()

    def login(self, session_handle: int, pin: str | None, user_type: int = CKU_USER,
              tolerated: frozenset[int] = frozenset()) -> None:
        """C_Login; ``pin=None`` logs in through the token's protected authentication path (PIN pad).

        ``tolerated``: further CK_RVs that count as done (a token quirk,
        see :data:`tokencsp.token.quirks.CONTEXT_LOGIN_UNSUPPORTED`).
        """
        with trace.call(f"C_Login ({_USER_TYPES.get(user_type, user_type)}"
                        f"{', PIN pad' if pin is None else ''})") as logged:
            if pin is None:
                rv = int(self._functions.C_Login(session_handle, user_type, None, 0))
            else:
                secret = ctypes.create_string_buffer(pin.encode("utf-8"))
                try:
                    rv = int(self._functions.C_Login(session_handle, user_type, secret, len(secret.value)))
                finally:
                    ctypes.memset(secret, 0, len(secret))
            logged.rv = CKR_OK if rv == CKR_USER_ALREADY_LOGGED_IN else rv
        if rv in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN) or rv in tolerated:
            return
        raise map_rv(rv, "login refused")

    def init_token(self, slot_id: int, so_pin: str, raw_label: bytes) -> None:
        secret = ctypes.create_string_buffer(so_pin.encode("utf-8"))
        try:
            rv = int(self._functions.C_InitToken(slot_id, secret, len(secret.value), raw_label.ljust(32)))
        finally:
            ctypes.memset(secret, 0, len(secret))
        if rv != CKR_OK:
            raise map_rv(rv, "C_InitToken failed")

    def init_pin(self, session_handle: int, user_pin: str) -> None:
        secret = ctypes.create_string_buffer(user_pin.encode("utf-8"))
        try:
            rv = int(self._functions.C_InitPIN(session_handle, secret, len(secret.value)))
        finally:
            ctypes.memset(secret, 0, len(secret))
        if rv != CKR_OK:
            raise map_rv(rv, "C_InitPIN refused the user PIN")

    def decrypt(self, session_handle: int, key_handle: int, mechanism: int, oaep: OaepParams | None,
                data: bytes, out_len: int, *, context_login: bool = False, pin: str | None = None,
                tolerated: frozenset[int] = frozenset()) -> tuple[int, bytes]:
        """C_DecryptInit (+ context-specific login) + C_Decrypt; (CK_RV, plaintext).

        The CK_RV is returned, not raised: the caller decides which failures
        are the blob's (see :func:`tokencsp.token.errors.classify_blob_failure`).
        ``context_login`` (keys with CKA_ALWAYS_AUTHENTICATE) logs in as
        CKU_CONTEXT_SPECIFIC between the two calls, with ``pin`` (None: the
        protected authentication path).
        """
        mech = Mechanism(mechanism, None, 0)
        if oaep is not None:
            mech.pParameter = ctypes.cast(ctypes.pointer(oaep), ctypes.c_void_p)
            mech.ulParameterLen = ctypes.sizeof(oaep)
        with trace.call("C_DecryptInit", _mechanism_name(mechanism)) as init:
            rv = init.rv = int(self._functions.C_DecryptInit(session_handle, ctypes.byref(mech), key_handle))
        if rv != CKR_OK:
            return rv, b""
        if context_login:
            # A refused login leaves the decrypt operation active: the caller
            # must not reuse this session (the pool closes it).
            self.login(session_handle, pin, CKU_CONTEXT_SPECIFIC, tolerated)
        out = ctypes.create_string_buffer(out_len)
        length = _CK_ULONG(out_len)
        with trace.call("C_Decrypt", _mechanism_name(mechanism), blob=True) as decrypted:
            rv = decrypted.rv = int(self._functions.C_Decrypt(session_handle, data, len(data), out,
                                                              ctypes.byref(length)))
        try:
            return rv, out.raw[:length.value] if rv == CKR_OK else b""
        finally:
            ctypes.memset(out, 0, out_len)

    def sign(self, session_handle: int, key_handle: int, mechanism: int, pss: PssParams, data: bytes,
             out_len: int, *, pin: str | None, tolerated: frozenset[int] = frozenset()) -> bytes:
        """C_SignInit + CKU_CONTEXT_SPECIFIC login + C_Sign: a signature by a CKA_ALWAYS_AUTHENTICATE key.

        Raises the mapped CK_RV (no blob is involved: a signature's failure
        is the token's, never an oracle).  A refused login leaves the sign
        operation active: the caller must not reuse this session.
        """
        mech = Mechanism(mechanism, ctypes.cast(ctypes.pointer(pss), ctypes.c_void_p), ctypes.sizeof(pss))
        with trace.call("C_SignInit", _mechanism_name(mechanism)) as init:
            rv = init.rv = int(self._functions.C_SignInit(session_handle, ctypes.byref(mech), key_handle))
        if rv != CKR_OK:
            raise map_rv(rv, "signing")
        self.login(session_handle, pin, CKU_CONTEXT_SPECIFIC, tolerated)
        out = ctypes.create_string_buffer(out_len)
        length = _CK_ULONG(out_len)
        with trace.call("C_Sign", _mechanism_name(mechanism)) as signed:
            rv = signed.rv = int(self._functions.C_Sign(session_handle, data, len(data), out, ctypes.byref(length)))
        if rv != CKR_OK:
            raise map_rv(rv, "signing")
        return out.raw[:length.value]


_USER_TYPES = {CKU_USER: "CKU_USER", CKU_SO: "CKU_SO", CKU_CONTEXT_SPECIFIC: "CKU_CONTEXT_SPECIFIC"}


def _mechanism_name(mechanism: int) -> str:
    try:
        return f"CKM_{_ckm.Mechanism(mechanism).name}"
    except ValueError:
        return f"CKM 0x{mechanism:x}"
