"""tokencsp: CryptoAPI-style session-key exchange with the receiver's key on a PKCS#11 token.

Importing ``tokencsp`` does not load any PKCS#11 module; ``Provider.open``
does, once per process.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from . import errors
from .errors import TokenCSPError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from . import blobs
    from .blobs import AlgId
    from .envelope import Header, Header2, Opened
    from .provider import ExchangeKey, KeyInfo, KeyPair, KeyUsage, Provider
    from .replay import MemoryReplayCache, ReplayCache, ReplayPolicy, SQLiteReplayCache
    from .replay.postgres import PostgresReplayCache
    from .session import SessionKey

# Loaded on first use, so that ``import tokencsp`` costs almost nothing and a
# command that needs no token (``tokencsp seal``, ``--version``) never imports
# python-pkcs11.  name: (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "blobs": ("blobs", None), "AlgId": ("blobs", "AlgId"), "SessionKey": ("session", "SessionKey"),
    **{name: ("envelope", name) for name in ("Header", "Opened")},
    **{name: ("provider", name) for name in ("ExchangeKey", "KeyInfo", "KeyPair", "KeyUsage", "Provider")},
    **{name: ("replay", name) for name in ("MemoryReplayCache", "ReplayCache", "ReplayPolicy", "SQLiteReplayCache")},
    "PostgresReplayCache": ("replay.postgres", "PostgresReplayCache"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AlgId",
    "ExchangeKey",
    "Header",
    "KeyInfo",
    "KeyPair",
    "KeyUsage",
    "MemoryReplayCache",
    "Opened",
    "PostgresReplayCache",
    "Provider",
    "ReplayCache",
    "ReplayPolicy",
    "SQLiteReplayCache",
    "SessionKey",
    "TokenCSPError",
    "blobs",
    "errors",
    "open",
    "seal",
]

__version__ = "0.1.0"


def seal(data: bytes | BinaryIO, recipient: rsa.RSAPublicKey | bytes | Sequence[rsa.RSAPublicKey | bytes], *,
         sink: BinaryIO | None = None, **options: Any) -> bytes | Header | Header2:
    """Seal ``data`` (bytes, or a binary reader with ``sink``) to ``recipient`` (docs/FORMAT.md).

    ``recipient`` is a ``cryptography`` RSA public key or PUBLICKEYBLOB/PEM/DER
    bytes, or a list of them: one recipient gets a version 1 message, two to 16
    a version 2 message that each recipient opens with its own key (section 9).
    ``options`` are those of :func:`tokencsp.envelope.seal` (``signer``,
    ``serial``, ``oaep``...).  Returns the sealed bytes, or the header when
    writing to ``sink``.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    from . import envelope
    from .pubkeys import load_public_key

    def key_of(item: rsa.RSAPublicKey | bytes) -> rsa.RSAPublicKey:
        return item if isinstance(item, rsa.RSAPublicKey) else load_public_key(bytes(item))

    single = isinstance(recipient, (rsa.RSAPublicKey, bytes, bytearray, memoryview))
    keys = [key_of(recipient)] if single else [key_of(item) for item in recipient]  # type: ignore[arg-type, union-attr]
    if isinstance(data, (bytes, bytearray, memoryview)):
        out = io.BytesIO()
        envelope.seal(io.BytesIO(bytes(data)), out, keys, **options)
        return out.getvalue()
    if sink is None:
        raise TypeError("sealing a stream needs sink=")
    return envelope.seal(data, sink, keys, **options)


def open(data: bytes | BinaryIO, receiver: ExchangeKey, *, cache: ReplayCache, sink: BinaryIO | None = None,
         **options: Any) -> bytes | Opened:
    """Open a sealed message with ``receiver`` (an :class:`ExchangeKey` on the token).

    ``cache`` is the replay cache (e.g. ``SQLiteReplayCache()``); ``options`` are
    those of :func:`tokencsp.envelope.open_message` (``policy``, ``trust``,
    ``clock``, ``allow_pkcs1``, ``release``...).  Returns the plaintext for bytes
    input (recorded in the cache only once the whole message authenticated);
    with a reader and ``sink``, streams into ``sink`` and returns :class:`Opened`.
    """
    from . import envelope

    if isinstance(data, (bytes, bytearray, memoryview)):
        return envelope.open_bytes(bytes(data), receiver, cache=cache, **options)  # released at the end
    if sink is None:
        raise TypeError("opening a stream needs sink=")
    return envelope.open_message(data, sink, receiver, cache=cache, **options)
