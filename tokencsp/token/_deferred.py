"""python-pkcs11's package ``__init__`` imports ``pkcs11.util.{dh,dsa,ec,rsa,x509}``, and with them
asn1crypto (and socket, textwrap): a quarter of ``tokencsp open``'s start-up (docs/PERFORMANCE.md),
for encoders tokencsp never calls.  Each of those modules is put in ``sys.modules`` as a stand-in
that loads the real module into itself on its first attribute access, before ``pkcs11`` is imported.

importlib's LazyLoader cannot do this: the import system reads ``__spec__`` of a module it finds
in ``sys.modules``, which would load a lazy module at once.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import types
from typing import Any

__all__ = ["defer_pkcs11_util"]

_UNUSED = ("dh", "dsa", "ec", "rsa", "x509")
_load_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """A module whose code runs when something first reads an attribute it does not have yet."""

    def __getattr__(self, name: str) -> Any:
        with _load_lock:
            spec = self.__spec__
            if not self.__dict__.get("_tokencsp_loaded"):
                self.__dict__["_tokencsp_loaded"] = True
                assert spec is not None and spec.loader is not None
                spec.loader.exec_module(self)
        if name in self.__dict__:
            return self.__dict__[name]
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


def defer_pkcs11_util() -> None:
    """Install the stand-ins; a no-op once ``pkcs11`` is imported or when its layout is not the known one."""
    if "pkcs11" in sys.modules:
        return
    package = importlib.machinery.PathFinder.find_spec("pkcs11")
    if package is None or not package.submodule_search_locations:
        return
    util = importlib.machinery.PathFinder.find_spec("pkcs11.util", list(package.submodule_search_locations))
    if util is None or not util.submodule_search_locations:
        return
    for name in _UNUSED:
        full = f"pkcs11.util.{name}"
        spec = importlib.machinery.PathFinder.find_spec(full, list(util.submodule_search_locations))
        if spec is None or spec.loader is None or full in sys.modules:
            continue
        module = _Deferred(full)
        module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
        module.__package__ = "pkcs11.util"
        sys.modules[full] = module
    import pkcs11.util

    for name in _UNUSED:  # ``pkcs11.util.rsa`` as an attribute too, as a normal import binds it
        if f"pkcs11.util.{name}" in sys.modules:
            setattr(pkcs11.util, name, sys.modules[f"pkcs11.util.{name}"])


defer_pkcs11_util()  # on import: tokencsp/token/__init__.py imports this module before anything else
