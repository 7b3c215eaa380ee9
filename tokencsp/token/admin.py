"""Finding, initialising and opening tokens."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pkcs11
from pkcs11 import exceptions as p11

from ..errors import KeyExistsError, TokenError, TokenNotFoundError, TokenOperationError
from ..keyinfo import PinStatus
from . import trace
from ._ctypes import CKU_SO, LockingLib, session_handle
from .errors import map_error
from .lock import cross_process_lock
from .module import load_module
from .token import Token, _serial, pin_status

__all__ = ["init_token", "iter_tokens", "open_token"]

CKF_TOKEN_INITIALIZED = 0x400


def iter_tokens(module: str) -> Iterator[tuple[str, str]]:
    """(label, serial) of each initialised token."""
    lib = load_module(module)
    try:
        for slot in lib.get_slots(token_present=True):
            token = slot.get_token()
            if not token.flags & CKF_TOKEN_INITIALIZED:
                continue
            yield token.label, _serial(token)
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
    with cross_process_lock(os.path.realpath(module)):
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


def token_status(module: str, label: str | None = None, serial: str | None = None) -> PinStatus:
    """The PIN flags of one token, without logging in: for a prompt that says which token and how many tries."""
    lib = load_module(module)
    with cross_process_lock(os.path.realpath(module)):
        token = _find_token(lib, module, label, serial)
        try:
            return pin_status(token)
        except p11.PKCS11Error as exc:
            raise map_error(exc, "reading the token flags") from None


def open_token(module: str, pin: str | None, label: str | None = None, serial: str | None = None) -> Token:
    """Load the module, find the token by label and/or serial, log in.

    ``pin`` None: the token's protected authentication path (PIN pad), or no
    login where the token needs none; else :class:`PinError`.

    If something else in the process finalised the module (C_Finalize behind
    the back of this one ``lib``), it is initialised again and the open is
    retried once; tokens opened before stay unusable.
    """
    lib = load_module(module)
    generation = lib.generation
    with cross_process_lock(os.path.realpath(module)):
        try:
            return _open_token(lib, module, pin, label, serial)
        except TokenOperationError:
            if not lib.recover() and lib.generation == generation:
                raise
        return _open_token(lib, module, pin, label, serial)


def _open_token(lib: LockingLib, module: str, pin: str | None, label: str | None, serial: str | None) -> Token:
    return Token(lib, _find_token(lib, module, label, serial), pin)


def _find_token(lib: LockingLib, module: str, label: str | None, serial: str | None) -> pkcs11.Token:
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
        token: pkcs11.Token = lib.get_token(token_label=matches[0][0], token_serial=matches[0][1].encode())
    except p11.PKCS11Error as exc:
        raise map_error(exc, "opening the token") from None
    trace.note("token %r, serial %s, in slot %s of %s: the only initialised token with %s", token.label,
               matches[0][1], token.slot.slot_id, module, wanted)
    return token
