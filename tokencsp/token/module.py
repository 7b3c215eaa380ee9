"""One initialised PKCS#11 module per path, for the life of the process.

A python-pkcs11 ``lib`` that is garbage-collected calls ``C_Finalize`` and
kills every session of the process, so each module's ``lib`` is kept alive
from its first load on.
"""

from __future__ import annotations

import ctypes
import os
import threading

from pkcs11 import exceptions as p11

from ..errors import ModuleLoadError, TokenCSPError
from ._ctypes import LockingLib
from .lock import cross_process_lock

__all__ = ["load_module"]

_modules: dict[str, LockingLib] = {}
_modules_lock = threading.Lock()


def load_module(path: str) -> LockingLib:
    """The process-wide ``lib`` for a module path, loaded and initialised once."""
    real = os.path.realpath(path)
    with _modules_lock:
        lib = _modules.get(real)
    if lib is not None:
        lib.after_fork()  # a no-op unless this is a forked child
        return lib
    # Lock order everywhere: the cross-process lock, then _modules_lock.
    with cross_process_lock(real), _modules_lock:
        lib = _modules.get(real)
        if lib is None:
            if not os.path.isfile(real):
                raise ModuleLoadError(f"PKCS#11 module not found: {path}")
            try:
                lib = LockingLib(real)
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
