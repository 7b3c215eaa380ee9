"""tokencsp: CryptoAPI-style session-key exchange with the receiver's key on a PKCS#11 token.

Importing ``tokencsp`` does not load any PKCS#11 module; ``Provider.open``
does, once per process.
"""

from __future__ import annotations

from . import blobs, errors
from .blobs import AlgId
from .errors import TokenCSPError
from .provider import ExchangeKey, KeyInfo, KeyPair, KeyUsage, Provider
from .session import SessionKey

__all__ = [
    "AlgId",
    "ExchangeKey",
    "KeyInfo",
    "KeyPair",
    "KeyUsage",
    "Provider",
    "SessionKey",
    "TokenCSPError",
    "blobs",
    "errors",
]

__version__ = "0.1.0"
