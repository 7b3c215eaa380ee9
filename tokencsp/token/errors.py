"""The one CK_RV → tokencsp error map.

One table, :data:`_ROWS`, serves both kinds of failure this package sees: a
python-pkcs11 exception (looked up by its exact class) and a raw CK_RV from
the ctypes paths (looked up by value).  Codes not in the table become
:class:`~tokencsp.errors.TokenOperationError` naming the code.

Blob-caused failures are *not* decided here: :func:`classify_blob_failure`
keeps its own, explicit set of token-state codes and turns everything else
into :class:`~tokencsp.errors.UnwrapRefused`, so a row added to the table
can never make one bad blob distinguishable from another.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkcs11 import exceptions as p11

from ..errors import (
    KeyNotFoundError,
    PinError,
    TokenCSPError,
    TokenNotFoundError,
    TokenOperationError,
    UnwrapRefused,
)

__all__ = ["ATTRIBUTE_UNAVAILABLE", "BLOB_STATE_CKRS", "STALE_HANDLE", "ckr_of", "classify_blob_failure",
           "is_attribute_type_invalid", "map_error", "map_rv"]

CKR_OK = 0x000
CKR_SLOT_ID_INVALID = 0x003
CKR_GENERAL_ERROR = 0x005
CKR_ATTRIBUTE_READ_ONLY = 0x010
CKR_ATTRIBUTE_TYPE_INVALID = 0x012
CKR_ATTRIBUTE_VALUE_INVALID = 0x013
CKR_DEVICE_REMOVED = 0x032
CKR_KEY_HANDLE_INVALID = 0x060
CKR_OBJECT_HANDLE_INVALID = 0x082
CKR_PIN_INCORRECT = 0x0A0
CKR_PIN_INVALID = 0x0A1
CKR_PIN_LEN_RANGE = 0x0A2
CKR_PIN_EXPIRED = 0x0A3
CKR_PIN_LOCKED = 0x0A4
CKR_SESSION_CLOSED = 0x0B0
CKR_SESSION_COUNT = 0x0B1
CKR_SESSION_HANDLE_INVALID = 0x0B3
CKR_TEMPLATE_INCOMPLETE = 0x0D0
CKR_TEMPLATE_INCONSISTENT = 0x0D1
CKR_TOKEN_NOT_PRESENT = 0x0E0
CKR_TOKEN_NOT_RECOGNIZED = 0x0E1
CKR_UNWRAPPING_KEY_HANDLE_INVALID = 0x0F0
CKR_WRAPPING_KEY_HANDLE_INVALID = 0x113
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_USER_NOT_LOGGED_IN = 0x101
CKR_USER_PIN_NOT_INITIALIZED = 0x102
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191


@dataclass(frozen=True)
class _Row:
    ckr: int
    exception: type[p11.PKCS11Error] | None  # python-pkcs11's class for this code, if it has one
    error: type[TokenCSPError]
    text: str


_ROWS: tuple[_Row, ...] = (
    _Row(CKR_PIN_INCORRECT, p11.PinIncorrect, PinError, "PIN incorrect"),
    _Row(CKR_PIN_INVALID, p11.PinInvalid, PinError, "PIN invalid"),
    _Row(CKR_PIN_LEN_RANGE, p11.PinLenRange, PinError, "PIN length out of range"),
    _Row(CKR_PIN_EXPIRED, p11.PinExpired, PinError, "PIN expired"),
    _Row(CKR_PIN_LOCKED, p11.PinLocked, PinError, "PIN locked"),
    _Row(CKR_USER_PIN_NOT_INITIALIZED, p11.UserPinNotInitialized, PinError, "user PIN not initialised"),
    _Row(CKR_USER_NOT_LOGGED_IN, p11.UserNotLoggedIn, PinError, "not logged in"),
    _Row(CKR_TOKEN_NOT_PRESENT, p11.TokenNotPresent, TokenNotFoundError, "token not present"),
    _Row(CKR_DEVICE_REMOVED, p11.DeviceRemoved, TokenNotFoundError, "token not present (device removed)"),
    _Row(CKR_SLOT_ID_INVALID, p11.SlotIDInvalid, TokenNotFoundError, "token not present (slot id invalid)"),
    _Row(CKR_TOKEN_NOT_RECOGNIZED, p11.TokenNotRecognised, TokenNotFoundError, "token not recognised"),
    _Row(CKR_OBJECT_HANDLE_INVALID, p11.ObjectHandleInvalid, KeyNotFoundError,
         "the key is no longer on the token (object handle invalid)"),
    _Row(CKR_KEY_HANDLE_INVALID, p11.KeyHandleInvalid, KeyNotFoundError,
         "the key is no longer on the token (key handle invalid)"),
    _Row(CKR_UNWRAPPING_KEY_HANDLE_INVALID, p11.UnwrappingKeyHandleInvalid, KeyNotFoundError,
         "the key is no longer on the token (unwrapping key handle invalid)"),
    # opencryptoki 3.8.1 answers C_UnwrapKey with a deleted unwrapping key so (measured).
    _Row(CKR_WRAPPING_KEY_HANDLE_INVALID, p11.WrappingKeyHandleInvalid, KeyNotFoundError,
         "the key is no longer on the token (wrapping key handle invalid)"),
    _Row(CKR_SESSION_CLOSED, p11.SessionClosed, TokenOperationError, "the session was closed"),
    _Row(CKR_SESSION_HANDLE_INVALID, p11.SessionHandleInvalid, TokenOperationError, "the session handle is invalid"),
    _Row(CKR_SESSION_COUNT, p11.SessionCount, TokenOperationError, "the token has no free session"),
    # Template refusals: the quirks probe (tokencsp.token.quirks) moves on from these.
    _Row(CKR_ATTRIBUTE_READ_ONLY, p11.AttributeReadOnly, TokenOperationError, "attribute read-only"),
    _Row(CKR_ATTRIBUTE_TYPE_INVALID, p11.AttributeTypeInvalid, TokenOperationError, "attribute type invalid"),
    _Row(CKR_ATTRIBUTE_VALUE_INVALID, p11.AttributeValueInvalid, TokenOperationError, "attribute value invalid"),
    _Row(CKR_TEMPLATE_INCOMPLETE, p11.TemplateIncomplete, TokenOperationError, "template incomplete"),
    _Row(CKR_TEMPLATE_INCONSISTENT, p11.TemplateInconsistent, TokenOperationError, "template inconsistent"),
    # python-pkcs11 raises a bare PKCS11Error for this code, so only the ctypes paths see the row.
    _Row(CKR_CRYPTOKI_NOT_INITIALIZED, None, TokenOperationError, "the PKCS#11 module is not initialised"),
)

_BY_CKR = {row.ckr: row for row in _ROWS}
_BY_CLASS = {row.exception: row for row in _ROWS if row.exception is not None}


#: A cached object handle that went stale (the key deleted or re-created): the caller drops the
#: handle and may look the key up again; :func:`map_error` turns each into KeyNotFoundError.
STALE_HANDLE: tuple[type[p11.PKCS11Error], ...] = (
    p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.UnwrappingKeyHandleInvalid,
    p11.WrappingKeyHandleInvalid,  # opencryptoki 3.8.1's answer for a deleted unwrapping key
)

#: An attribute the token lacks or will not reveal: the caller uses the attribute's default.
ATTRIBUTE_UNAVAILABLE: tuple[type[p11.PKCS11Error], ...] = (p11.AttributeTypeInvalid, p11.AttributeSensitive)


def is_attribute_type_invalid(exc: p11.PKCS11Error) -> bool:
    """CKR_ATTRIBUTE_TYPE_INVALID: the token does not know an attribute of the template (e.g. ALLOWED_MECHANISMS)."""
    return isinstance(exc, p11.AttributeTypeInvalid)


def ckr_of(exc: p11.PKCS11Error) -> int | None:
    """The CK_RV behind a python-pkcs11 exception (exact class), or None when the table does not know it."""
    row = _BY_CLASS.get(type(exc))
    return row.ckr if row is not None else None


def map_error(exc: p11.PKCS11Error, context: str) -> TokenCSPError:
    """A python-pkcs11 exception as a tokencsp error."""
    row = _BY_CLASS.get(type(exc))
    if row is None:
        return TokenOperationError(f"{context}: {type(exc).__name__}")
    return row.error(f"{context}: {row.text}")


def map_rv(rv: int, context: str) -> TokenCSPError:
    """A raw CK_RV (from the ctypes paths) as a tokencsp error."""
    row = _BY_CKR.get(rv)
    if row is None:
        return TokenOperationError(f"{context} (CKR 0x{rv:x})")
    return row.error(f"{context}: {row.text}")


# What C_UnwrapKey / C_Decrypt may report about the *token* rather than the
# blob: session gone, logged out, device removed, key handle stale, module
# finalised.  The blob cannot cause these, so they keep their own type.
# Everything else -- bad padding, bad length, GeneralError, codes nobody has
# mapped yet -- is UnwrapRefused.  Deliberately a list of codes written out
# here, not derived from _ROWS.
BLOB_STATE_CKRS: frozenset[int] = frozenset({
    CKR_SESSION_CLOSED,
    CKR_SESSION_HANDLE_INVALID,
    CKR_USER_NOT_LOGGED_IN,
    CKR_DEVICE_REMOVED,
    CKR_TOKEN_NOT_PRESENT,
    CKR_KEY_HANDLE_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_HANDLE_INVALID,  # opencryptoki 3.8.1's answer for a deleted unwrapping key
    CKR_CRYPTOKI_NOT_INITIALIZED,
})


def classify_blob_failure(failure: p11.PKCS11Error | int, context: str) -> TokenCSPError:
    """A failed C_UnwrapKey/C_Decrypt of caller-supplied bytes: token state keeps its type, the rest is one error."""
    rv = failure if isinstance(failure, int) else ckr_of(failure)
    if rv is None or rv not in BLOB_STATE_CKRS:
        return UnwrapRefused()
    return map_rv(rv, context)
