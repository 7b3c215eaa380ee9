"""Trust sets: names bound to RSA exchange public keys.

A trust set is how a party knows who its peers are: a mapping from a name to
the peer's public key, usually loaded from a directory of PUBLICKEYBLOB / PEM
/ DER files whose stems are the names.  Used by the three-phase exchange
(names) and by sealed messages (key fingerprints).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import ConfigError, UnknownPeer, UnsupportedAlgorithm
from .fileio import read_input
from .pubkeys import fingerprint, load_public_key

__all__ = ["MAX_NAME", "MIN_TRUSTED_BITS", "TrustSet", "check_name", "check_trusted_key"]

MAX_NAME = 255
# The floor of sealed messages (FORMAT.md S6) and of key generation, for every
# key a party trusts: a three-phase peer's key receives session key B.
MIN_TRUSTED_BITS = 2048


def check_name(name: str) -> str:
    """A party name: UTF-8, 1..255 bytes, no control characters."""
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME:
        raise ConfigError(f"a party name must be 1 to {MAX_NAME} bytes of UTF-8: {name!r}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise ConfigError(f"a party name must not contain control characters: {name!r}")
    return name


def check_trusted_key(key: rsa.RSAPublicKey, label: str) -> rsa.RSAPublicKey:
    """Refuse a key too weak to trust; ``label`` (a name or a file) goes into the one-line error."""
    if key.key_size < MIN_TRUSTED_BITS:
        raise ConfigError(f"{label}: a {key.key_size}-bit RSA key is too weak to trust "
                          f"(at least {MIN_TRUSTED_BITS} bits)")
    return key


class TrustSet(Mapping[str, rsa.RSAPublicKey]):
    """Names -> trusted RSA exchange public keys."""

    def __init__(self, keys: Mapping[str, rsa.RSAPublicKey] | Iterable[tuple[str, rsa.RSAPublicKey]] = ()) -> None:
        items = keys.items() if isinstance(keys, Mapping) else keys
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fps: dict[str, bytes] = {}
        for name, key in items:
            check_name(name)
            if not isinstance(key, rsa.RSAPublicKey):
                raise TypeError("trust set values must be RSA public keys")
            check_trusted_key(key, repr(name))
            if name in self._keys:
                raise ConfigError(f"two trusted keys are named {name!r}")
            self._keys[name], self._fps[name] = key, fingerprint(key)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustSet:
        """Key files (PUBLICKEYBLOB/PEM/DER; name = file stem) or directories of them."""
        files: list[Path] = []
        for path in map(Path, paths):
            if path.is_dir():
                files.extend(p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
            else:
                files.append(path)
        entries = []
        for path in files:
            try:
                key = load_public_key(read_input(str(path)))
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"{path}: {exc}") from None
            entries.append((path.stem, check_trusted_key(key, str(path))))
        return cls(entries)

    def __getitem__(self, name: str) -> rsa.RSAPublicKey:
        return self._keys[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def key_for(self, name: str) -> rsa.RSAPublicKey:
        try:
            return self._keys[name]
        except KeyError:
            raise UnknownPeer(f"peer {name!r} is not in the trust set") from None

    def fingerprint(self, name: str) -> bytes:
        self.key_for(name)
        return self._fps[name]

    def by_fingerprint(self) -> dict[bytes, rsa.RSAPublicKey]:
        """SHA-256 key id -> key, as sealed messages look senders up."""
        return {self._fps[name]: key for name, key in self._keys.items()}
