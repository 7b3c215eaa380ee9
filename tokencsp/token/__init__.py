"""The PKCS#11 boundary: the only package in tokencsp that imports ``pkcs11``.

* :mod:`._ctypes` -- the calls made through ctypes (C_Initialize with
  CKF_OS_LOCKING_OK, C_Login, C_InitToken/C_InitPIN, C_Decrypt);
* :mod:`.errors` -- the one CK_RV → exception map, and the classifier that
  makes every blob-caused failure :class:`~tokencsp.errors.UnwrapRefused`;
* :mod:`.templates` -- key templates and mechanisms as named policy;
* :mod:`.quirks` -- what tokens differ in (mechanism flags, unwrap
  templates), probed per token, each entry naming the token and CKR that
  taught it;
* :mod:`.pool` -- the bounded session pool (``TOKENCSP_MAX_SESSIONS``);
* :mod:`.lock` -- the cross-process lock, in a private directory;
* :mod:`.module` -- one initialised module per path for the process;
* :mod:`.token` -- :class:`Token`, an open, logged-in token;
* :mod:`.admin` -- listing, initialising and opening tokens;
* :mod:`._deferred` -- keeps python-pkcs11's unused ``pkcs11.util`` encoders
  (and asn1crypto) from loading at start-up.
"""

from __future__ import annotations

from ..keyinfo import DecryptMechanism, ImportPath, KeyInfo, KeyUsage, PinStatus, RsaPrivateParts
from . import _deferred  # noqa: F401 -- before any pkcs11 import: its unused encoders stay unloaded
from ._ctypes import function_list as _function_list
from .admin import (
    TokenDescription,
    describe_tokens,
    init_token,
    matching_tokens,
    module_info,
    open_token,
    token_status,
)
from .errors import map_error
from .module import load_module
from .token import Token

__all__ = [
    "DecryptMechanism", "ImportPath", "KeyInfo", "KeyUsage", "PinStatus", "RsaPrivateParts", "Token",
    "TokenDescription", "_function_list", "describe_tokens", "init_token", "load_module", "map_error",
    "matching_tokens", "module_info", "open_token", "token_status",
]
