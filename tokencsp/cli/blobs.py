"""``tokencsp blob inspect``: public facts about a CryptoAPI key BLOB file."""

from __future__ import annotations

import argparse
import json
from typing import Any

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


def cmd_blob_inspect(args: argparse.Namespace, console: Console) -> ExitStatus:
    from .. import blobs

    facts = describe_blob(blobs.parse(read_file(args.file, console)))
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
