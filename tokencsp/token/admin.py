"""Finding, initialising and opening tokens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pkcs11
from pkcs11 import exceptions as p11

from ..config import TokenSelector
from ..errors import KeyExistsError, TokenError, TokenNotFoundError, TokenOperationError
from ..keyinfo import PinStatus
from ..pkcs11uri import token_uri
from . import trace
from ._ctypes import CKU_SO, LockingLib, session_handle
from .errors import map_error
from .lock import cross_process_lock
from .module import load_module
from .token import Token, _serial, pin_status

__all__ = ["TokenDescription", "describe_tokens", "init_token", "matching_tokens", "module_info",
           "open_token", "token_status"]

CKF_TOKEN_INITIALIZED = 0x400


@dataclass(frozen=True)
class TokenDescription:
    """What C_GetTokenInfo and C_GetSlotInfo say about one initialised token (``token list``)."""

    label: str
    serial: str
    manufacturer: str
    model: str
    slot_id: int
    slot_description: str
    slot_manufacturer: str

    @property
    def uri(self) -> str:
        """Its RFC 7512 URI, as p11tool writes it."""
        return token_uri(self.label, self.serial, self.manufacturer, self.model)


def _descriptions(lib: LockingLib) -> Iterator[tuple[TokenDescription, pkcs11.Token]]:
    try:
        for slot in lib.get_slots(token_present=True):
            token = slot.get_token()
            if not token.flags & CKF_TOKEN_INITIALIZED:
                continue
            yield TokenDescription(token.label, _serial(token), token.manufacturer_id, token.model, slot.slot_id,
                                   slot.slot_description, slot.manufacturer_id), token
    except p11.PKCS11Error as exc:
        raise map_error(exc, "listing tokens") from None


def describe_tokens(module: str) -> list[TokenDescription]:
    """Every initialised token the module shows."""
    return [description for description, _ in _descriptions(load_module(module))]


def init_token(module: str, label: str, so_pin: str, user_pin: str) -> str:
    """Initialise the first uninitialised token (SoftHSM's free slot) with ``label``; returns its serial.

    C_InitToken with the SO PIN, then C_InitPIN for the user PIN, both from
    memory: unlike ``softhsm2-util --init-token``, no PIN is ever on a
    command line.
    """
    raw_label = label.encode("utf-8")
    if not 0 < len(raw_label) <= 32:
        raise TokenError("a token label is 1 to 32 bytes")
    with cross_process_lock(os.path.realpath(module)):
        return _init_token(module, label, raw_label, so_pin, user_pin)


def _init_token(module: str, label: str, raw_label: bytes, so_pin: str, user_pin: str) -> str:
    if any(existing.label == label for existing in describe_tokens(module)):
        raise KeyExistsError(f"a token labelled {label!r} already exists")
    lib = load_module(module)
    try:
        free = next((slot for slot in lib.get_slots(token_present=True)
                     if not slot.get_token().flags & CKF_TOKEN_INITIALIZED), None)
    except p11.PKCS11Error as exc:
        raise map_error(exc, "listing slots") from None
    if free is None:
        raise TokenNotFoundError(f"no uninitialised token in {module}")
    lib.init_token(free.slot_id, so_pin, raw_label)
    try:
        session = free.get_token().open(rw=True)
    except p11.PKCS11Error as exc:
        raise map_error(exc, "opening the new token") from None
    try:
        lib.login(session_handle(session), so_pin, CKU_SO)
        lib.init_pin(session_handle(session), user_pin)
    finally:
        session.close()
    return _serial(free.get_token())


def module_info(module: str) -> dict[str, str]:
    """What C_GetInfo says about the module (loading and initialising it): manufacturer, description, versions."""
    lib = load_module(module)
    try:
        library, cryptoki = lib.library_version, lib.cryptoki_version
        return {"manufacturer": str(lib.manufacturer_id).strip(), "description": str(lib.library_description).strip(),
                "library_version": f"{library[0]}.{library[1]}", "cryptoki_version": f"{cryptoki[0]}.{cryptoki[1]}"}
    except p11.PKCS11Error as exc:
        raise map_error(exc, "reading the module's information") from None


def _selector(label: str | None, serial: str | None, match: TokenSelector | None) -> TokenSelector:
    if match is None:
        return TokenSelector(token_label=label, token_serial=serial)
    if label is not None or serial is not None:
        raise TypeError("give either label/serial or match, not both")
    return match


def token_status(module: str, label: str | None = None, serial: str | None = None, *,
                 match: TokenSelector | None = None) -> PinStatus:
    """The PIN flags of one token, without logging in: for a prompt that says which token and how many tries.

    Like :func:`open_token`, it initialises the module again (once) if
    something else in the process finalised it.
    """
    selector = _selector(label, serial, match)
    lib = load_module(module)
    generation = lib.generation
    with cross_process_lock(os.path.realpath(module)):
        try:
            return _status(lib, module, selector)
        except TokenOperationError:
            if not lib.recover() and lib.generation == generation:
                raise
        return _status(lib, module, selector)


def _status(lib: LockingLib, module: str, selector: TokenSelector) -> PinStatus:
    token = _find_token(lib, module, selector)
    try:
        return pin_status(token)
    except p11.PKCS11Error as exc:
        raise map_error(exc, "reading the token flags") from None


def open_token(module: str, pin: str | None, label: str | None = None, serial: str | None = None, *,
               match: TokenSelector | None = None) -> Token:
    """Load the module, find the token by label and/or serial (or every token and library
    attribute of ``match``, an RFC 7512 selection), log in.

    ``pin`` None: the token's protected authentication path (PIN pad), or no
    login where the token needs none; else :class:`PinError`.

    If something else in the process finalised the module (C_Finalize behind
    the back of this one ``lib``), it is initialised again and the open is
    retried once; tokens opened before stay unusable.
    """
    selector = _selector(label, serial, match)
    lib = load_module(module)
    generation = lib.generation
    with cross_process_lock(os.path.realpath(module)):
        try:
            return Token(lib, _find_token(lib, module, selector), pin)
        except TokenOperationError:
            if not lib.recover() and lib.generation == generation:
                raise
        return Token(lib, _find_token(lib, module, selector), pin)


# (RFC 7512 attribute, TokenSelector field, TokenDescription field)
_TOKEN_ATTRIBUTES = (
    ("token", "token_label", "label"), ("serial", "token_serial", "serial"),
    ("manufacturer", "token_manufacturer", "manufacturer"), ("model", "token_model", "model"),
    ("slot-id", "slot_id", "slot_id"), ("slot-description", "slot_description", "slot_description"),
    ("slot-manufacturer", "slot_manufacturer", "slot_manufacturer"),
)


def _check_library(lib: LockingLib, module: str, selector: TokenSelector) -> None:
    """library-manufacturer/-description/-version must be this module's (C_GetInfo)."""
    found = {"library-manufacturer": lib.manufacturer_id, "library-description": lib.library_description,
             "library-version": tuple(lib.library_version)}
    wanted = {"library-manufacturer": selector.library_manufacturer,
              "library-description": selector.library_description,
              "library-version": selector.library_version}
    for name, value in wanted.items():
        if value is not None and value != found[name]:
            have = ".".join(map(str, found[name])) if isinstance(found[name], tuple) else repr(found[name])
            want = ".".join(map(str, value)) if isinstance(value, tuple) else repr(value)
            raise TokenNotFoundError(f"{name}={want} does not match module {module} (its {name} is {have})")


def _wanted(selector: TokenSelector) -> list[tuple[str, object, str]]:
    return [(name, value, attr) for name, field_name, attr in _TOKEN_ATTRIBUTES
            if (value := getattr(selector, field_name)) is not None]


def _matching(lib: LockingLib, module: str, selector: TokenSelector) -> list[tuple[TokenDescription, pkcs11.Token]]:
    _check_library(lib, module, selector)
    wanted = _wanted(selector)
    return [(description, token) for description, token in _descriptions(lib)
            if all(getattr(description, attr) == value for _, value, attr in wanted)]


def matching_tokens(module: str, selector: TokenSelector) -> list[TokenDescription]:
    """The initialised tokens that every token, slot and library attribute of ``selector`` matches."""
    return [description for description, _ in _matching(load_module(module), module, selector)]


def _find_token(lib: LockingLib, module: str, selector: TokenSelector) -> pkcs11.Token:
    wanted = _wanted(selector)
    if not any(name in ("token", "serial", "slot-id", "slot-description") for name, _, _ in wanted):
        raise TokenNotFoundError("no token named: give a label (--token), a serial or a URI with token=, "
                                 "serial=, slot-id= or slot-description=")
    matches = [token for _, token in _matching(lib, module, selector)]
    what = " and ".join(f"{'label' if name == 'token' else name} {value!r}" for name, value, _ in wanted)
    if not matches:
        raise TokenNotFoundError(f"no token with {what} in {module}")
    if len(matches) > 1:
        raise TokenNotFoundError(f"{len(matches)} tokens match {what}; select by serial or slot-id")
    token = matches[0]
    trace.note("token %r, serial %s, in slot %s of %s: the only initialised token with %s", token.label,
               _serial(token), token.slot.slot_id, module, what)
    return token
