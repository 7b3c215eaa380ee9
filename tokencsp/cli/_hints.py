"""``tokencsp: hint:`` lines: the next step after an error, where one is known (issue 15 point 4).

``hint_for`` is called by ``main`` only after a command failed, so its imports
and the token reads it may do (the labels that exist, the PIN flags) cost
nothing on success.  A hint never holds a PIN, key material or plaintext, and
nothing an attacker controls decides it beyond what the error line already says.
"""

from __future__ import annotations

import argparse
import os

from .. import errors

__all__ = ["INSTALL_SOFTHSM", "hint_for"]

INSTALL_SOFTHSM = ("install SoftHSM2 (Debian/Ubuntu: sudo apt-get install softhsm2; Fedora: sudo dnf install "
                   "softhsm), or point --module / TOKENCSP_MODULE at your token's PKCS#11 library")


def hint_for(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The hint for ``exc`` from a command run with ``args``, or None."""
    try:
        if isinstance(exc, errors.ModuleLoadError):
            return _module_hint(exc)
        if isinstance(exc, errors.TokenNotFoundError):
            return _token_hint(exc, args)
        if isinstance(exc, errors.PinError):
            return _pin_hint(exc, args)
        if isinstance(exc, errors.KeyNotFoundError):
            return _key_hint(exc, args)
        if isinstance(exc, errors.ReplayedMessage):
            return _replay_hint(args)
        if isinstance(exc, errors.SpoolLimitExceeded):
            return ("open with -o FILE: a private file, published once the trailer verified, needs no spool "
                    "(or raise TOKENCSP_SPOOL_MAX, in bytes)")
    except errors.TokenCSPError:
        return None  # the hint's own look-up failed: the error line stands alone
    return None


def _module_hint(exc: errors.ModuleLoadError) -> str | None:
    text = str(exc)
    if "SoftHSM2 not found" in text or "not found:" in text:
        return INSTALL_SOFTHSM
    return None


def _selection(args: argparse.Namespace) -> dict[str, str | None]:
    return {"module": getattr(args, "module", None), "serial": getattr(args, "serial", None),
            "uri": getattr(args, "uri", None)}


def _token_hint(exc: errors.TokenNotFoundError, args: argparse.Namespace) -> str | None:
    from ..config import resolve_selector
    from ..provider import list_tokens

    if "no token with" not in str(exc) and "no token named" not in str(exc):
        return None
    module = resolve_selector(module=getattr(args, "module", None), uri=getattr(args, "uri", None),
                              module_name=getattr(args, "module_name", None)).module
    labels = sorted(label for label, _ in list_tokens(module))
    if not labels:
        return "the module has no initialised token: make one with 'tokencsp token init --label LABEL'"
    return "tokens there: " + ", ".join(repr(label) for label in labels) + " (select one with --token LABEL)"


def _pin_hint(exc: errors.PinError, args: argparse.Namespace) -> str | None:
    from ..provider import pin_status

    text = str(exc)
    if "PIN incorrect" not in text and "PIN locked" not in text:
        return None
    status = pin_status(getattr(args, "module", None), getattr(args, "token", None),
                        serial=getattr(args, "serial", None), uri=getattr(args, "uri", None),
                        module_name=getattr(args, "module_name", None))
    if status.locked:
        return f"the user PIN of token {status.label!r} is locked: its security officer must set a new one"
    if status.final_try:
        return f"token {status.label!r} says one more wrong PIN locks it (CKF_USER_PIN_FINAL_TRY)"
    source = "--pin-file" if getattr(args, "pin_file", None) else "TOKENCSP_PIN" if os.environ.get(
        "TOKENCSP_PIN") else "the PIN source"
    counted = " a wrong PIN was entered before (CKF_USER_PIN_COUNT_LOW);" if status.count_low else ""
    return f"token {status.label!r} says{counted} no final try yet; check {source}"


def _key_hint(exc: errors.KeyNotFoundError, args: argparse.Namespace) -> str | None:
    where = f" --token {args.token}" if getattr(args, "token", None) else ""
    if "not an exchange key" in str(exc):
        return (f"'tokencsp key list{where}' shows each key's USAGE: name an exchange key (one that can unwrap, or "
                "decrypt: keys with CKA_DECRYPT but not CKA_UNWRAP take the decrypt path by themselves)")
    if "no private key" in str(exc):
        return f"'tokencsp key list{where}' shows the keys on the token"
    return None


def _replay_hint(args: argparse.Namespace) -> str:
    from ..replay import ENV_REPLAY_DB, default_state_dir
    from ..replay.postgres import dsn_has_password, is_postgres_dsn

    target = getattr(args, "replay_db", None)
    origin = "--replay-db"
    if target is None:
        target, origin = os.environ.get(ENV_REPLAY_DB) or None, ENV_REPLAY_DB
    if target is None:
        target, origin = str(default_state_dir() / "replay.sqlite3"), "the default"
    if is_postgres_dsn(str(target)):
        shown = "PostgreSQL (password not shown)" if dsn_has_password(str(target)) else f"PostgreSQL {target}"
    else:
        shown = f"SQLite {os.path.abspath(target)}"
    return (f"its message id is recorded in the replay cache {shown} ({origin}): each message is accepted once; "
            "a resend must be sealed anew")
