"""One debug line per PKCS#11 call (``-v`` / ``TOKENCSP_DEBUG=1``): function, mechanism, CKR, duration.

Zero cost when off: the CLI imports ``logging`` only when the debug log is on
(cli/_log.py), so :func:`call` first looks whether ``logging`` was imported at
all and hands out one shared no-op context otherwise.  A library caller turns
the lines on with ``logging.getLogger("tokencsp.token").setLevel(DEBUG)``.

Never logs an argument or a result: no PIN, key value, blob or plaintext —
the function, the mechanism's name, the CKR's name and the time only.  A
caller's blob refused by C_UnwrapKey/C_Decrypt is logged as ``refused``
whatever the token said (errors.classify_blob_failure's rule: one outcome).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from pkcs11 import exceptions as p11

from . import errors as _errors
from .errors import BLOB_STATE_CKRS, ckr_of

__all__ = ["LOGGER", "Call", "call", "note"]

LOGGER = "tokencsp.token"


class Call:
    """What the block tells the line: ``rv`` for calls that return a CK_RV instead of raising."""

    rv: int | None = None


_NO_CALL = Call()  # shared by every call while the log is off: setting rv on it is harmless
_OFF = contextlib.nullcontext(_NO_CALL)


def _logger() -> Any:
    logging = sys.modules.get("logging")
    if logging is None:
        return None
    logger = logging.getLogger(LOGGER)
    return logger if logger.isEnabledFor(logging.DEBUG) else None


def call(function: str, mechanism: object = None, *, blob: bool = False) -> contextlib.AbstractContextManager[Call]:
    """``with call("C_UnwrapKey", mechanism, blob=True): ...``: one debug line when the block ends or raises."""
    logger = _logger()
    if logger is None:
        return _OFF
    return _traced(logger, function, mechanism, blob)


@contextlib.contextmanager
def _traced(logger: Any, function: str, mechanism: object, blob: bool) -> Iterator[Call]:
    record = Call()
    mech = f" {_mechanism_name(mechanism)}" if mechanism is not None else ""
    started = time.perf_counter()
    outcome: str | None = None
    try:
        yield record
    except p11.PKCS11Error as exc:
        outcome = _outcome(ckr_of(exc), type(exc).__name__, blob)
        raise
    except BaseException as exc:
        outcome = f"failed ({type(exc).__name__})"
        raise
    finally:
        if outcome is None:
            outcome = "CKR_OK" if record.rv in (None, 0) else _outcome(record.rv, None, blob)
        logger.debug("%s%s: %s in %.2f ms", function, mech, outcome, (time.perf_counter() - started) * 1000)


def _outcome(rv: int | None, exception: str | None, blob: bool) -> str:
    if blob and (rv is None or rv not in BLOB_STATE_CKRS):
        return "refused"
    if rv is not None and rv in _CKR_NAMES:
        return _CKR_NAMES[rv]
    text = f"CKR 0x{rv:x}" if rv is not None else "CKR ?"
    return f"{text} ({exception})" if exception else text


_CKR_NAMES = {value: name for name, value in vars(_errors).items()
              if name.startswith("CKR_") and isinstance(value, int)}


def note(message: str, *args: object) -> None:
    """A token-layer decision on the debug log: the slot chosen and why, a quirk applied."""
    logger = _logger()
    if logger is not None:
        logger.debug(message, *args)


def _mechanism_name(mechanism: object) -> str:
    name = getattr(mechanism, "name", None)
    return f"CKM_{name}" if isinstance(name, str) else str(mechanism)
