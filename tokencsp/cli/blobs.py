"""``tokencsp blob inspect``: public facts about a CryptoAPI key BLOB file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import BlobFormatError
from ._common import Console, read_file
from ._status import ExitStatus

__all__ = ["configure", "describe_blob"]


def describe_blob(blob: Any) -> dict[str, Any]:
    """Public facts about a BLOB; never key material."""
    from .. import blobs
    from ..pubkeys import fingerprint

    if isinstance(blob, blobs.PublicKeyBlob):
        return {"type": "PUBLICKEYBLOB", "alg_id": blob.alg_id.name, "bits": blob.bitlen,
                "public_exponent": blob.public_exponent,
                "sha256": fingerprint(blob.to_public_key()).hex()}
    if isinstance(blob, blobs.PrivateKeyBlob):
        return {"type": "PRIVATEKEYBLOB", "alg_id": blob.alg_id.name, "bits": blob.bitlen,
                "public_exponent": blob.public_exponent,
                "sha256": fingerprint(blob.public_blob().to_public_key()).hex()}
    if isinstance(blob, blobs.SimpleBlob):
        return {"type": "SIMPLEBLOB", "alg_id": blob.alg_id.name, "wrap_alg_id": blob.wrap_alg_id.name,
                "recipient_bits": len(blob.encrypted_key) * 8}
    return {"type": "PLAINTEXTKEYBLOB", "alg_id": blob.alg_id.name, "key_bytes": len(blob.key)}


def _looks_like(data: bytes) -> str | None:
    """What a file that is not a BLOB seems to be, when that is plain from its first bytes."""
    from ..envelope import MAGIC

    head = data.lstrip()[:64]
    if head.startswith(b"-----BEGIN"):
        kind = head[len(b"-----BEGIN "):].split(b"-----")[0].decode("ascii", "replace")
        return f"is a PEM file ({kind}); key import --pem reads private keys, seal/capi --to public ones"
    if data.startswith(MAGIC):
        return "is a tokencsp sealed message; use tokencsp inspect"
    if data[:1] == b"\x30":
        return "looks like DER (ASN.1); seal/capi --to read DER public keys"
    return None


def _describe_legacy(data: bytes) -> dict[str, Any] | None:
    """A SIMPLEBLOB for RC4, RC2 or DES (which blobs.parse does not know), or None."""
    from ..legacy import legacy_facts, legacy_simpleblob

    legacy = legacy_simpleblob(data)
    if legacy is None:
        return None
    alg, encrypted = legacy
    return {"type": "SIMPLEBLOB", "alg_id": alg.name, "wrap_alg_id": "CALG_RSA_KEYX",
            "recipient_bits": len(encrypted) * 8, **legacy_facts(alg)}


def cmd_blob_inspect(args: argparse.Namespace, console: Console) -> ExitStatus:
    from .. import blobs

    data = read_file(args.file, console)
    try:
        facts = _describe_legacy(data) or describe_blob(blobs.parse(data))
    except BlobFormatError:
        looks_like = _looks_like(data)
        if looks_like is None:
            raise
        raise BlobFormatError(f"not a CryptoAPI key BLOB: {args.file} {looks_like}") from None
    if args.json:
        console.out(json.dumps(facts, indent=2))
    else:
        for name, value in facts.items():
            console.out(f"{name}: {value}")
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    blob = parser.add_subparsers(dest="blob_command", metavar="ACTION", required=True)
    inspect = blob.add_parser("inspect", help="show a key BLOB's header fields (never key material)")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_blob_inspect)
