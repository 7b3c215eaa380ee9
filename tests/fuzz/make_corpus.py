"""Write the fuzzers' seed corpora: tests/fuzz/corpus/<target>/.

    python tests/fuzz/make_corpus.py            # corpora from the existing fixtures.json
    python tests/fuzz/make_corpus.py --new-keys # new test keys and messages first

fixtures.json holds host-only *test* keys (never used for anything real), the
three-phase session keys A, B with their SIMPLEBLOBs, and a few genuine sealed
messages.  Everything in the corpora is derived from it deterministically, so
re-running this script reproduces the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import struct
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]  # fuzzsupport, and tokencsp from this checkout

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

import fuzzsupport as fs  # noqa: E402
from tokencsp import blobs  # noqa: E402
from tokencsp.blobs import AlgId  # noqa: E402
from tokencsp.envelope import seal  # noqa: E402
from tokencsp.session import SessionKey  # noqa: E402
from tokencsp.threephase import frame  # noqa: E402

# (plaintext, signed, oaep) -- chunk_size 64 keeps the messages small
MESSAGES = [
    (bytes(range(150)), False, True),   # three chunks, the last one short
    (b"\xa5" * 128, False, False),      # PKCS#1 v1.5 key blob, two full chunks
    (b"", False, True),                 # one empty chunk
    (b"signed payload " * 5, True, True),
]


# format 2 (docs/FORMAT.md section 9), to receiver and receiver2: (plaintext, signed)
MESSAGES_V2 = [
    (bytes(range(100)), False),         # two chunks, the last one short
    (b"two recipients, signed " * 4, True),  # with its trailer (FORMAT.md 9.5): re-made when that came
]


def v2_messages(fx: dict) -> list[dict]:
    """The format 2 fixture messages (appended to fx["messages"] by new_fixtures)."""
    receivers = [fs.load_key(fx["receiver_pem"]).public_key(), fs.load_key(fx["receiver2_pem"]).public_key()]
    signer = fs.load_key(fx["signer_pem"])
    out = []
    for i, (plaintext, signed) in enumerate(MESSAGES_V2):
        sink = io.BytesIO()
        seal(io.BytesIO(plaintext), sink, receivers, signer=fs.HostSigner(signer) if signed else None,
             serial=8 if signed else None, now=fs.NOW, chunk_size=64, message_id=bytes([0x20 + i]) * 16)
        out.append({"plaintext": plaintext.hex(), "sealed": sink.getvalue().hex()})
    return out


def new_fixtures() -> dict:
    def key(bits: int) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(65537, bits)

    receiver, signer = key(2048), key(2048)
    alice, bob = key(2048), key(2048)  # trust sets refuse keys below 2048 bits (tokencsp.trust)
    a, b = os.urandom(32), os.urandom(32)
    fx = {
        "comment": "host-only TEST keys for tests/fuzz; regenerate with make_corpus.py --new-keys",
        "receiver_pem": fs.pem(receiver),
        "receiver2_pem": fs.pem(key(2048)),  # the second recipient of the format 2 messages
        "signer_pem": fs.pem(signer),
        "threephase": {
            "alice_pem": fs.pem(alice), "bob_pem": fs.pem(bob), "A": a.hex(), "B": b.hex(),
            "blob_A": SessionKey.from_bytes(AlgId.CALG_AES_256, a).export_simpleblob(bob.public_key(), oaep=True).hex(),
            "blob_B": SessionKey.from_bytes(AlgId.CALG_AES_256, b).export_simpleblob(alice.public_key(), oaep=True).hex(),
        },
        "messages": [],
    }
    for i, (plaintext, signed, oaep) in enumerate(MESSAGES):
        sink = io.BytesIO()
        seal(io.BytesIO(plaintext), sink, receiver.public_key(), signer=fs.HostSigner(signer) if signed else None,
             serial=7 if signed else None, now=fs.NOW, oaep=oaep, chunk_size=64,
             message_id=bytes([i]) * 16)
        fx["messages"].append({"plaintext": plaintext.hex(), "sealed": sink.getvalue().hex()})
    fx["messages"] += v2_messages(fx)
    return fx


def _write(target: str, files: dict[str, bytes]) -> None:
    directory = fs.CORPUS / target
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, data in files.items():
        digest = hashlib.sha1(data).hexdigest()[:12]
        (directory / f"{name}-{digest}").write_bytes(data)


def blob_corpus(fx: dict) -> dict[str, bytes]:
    receiver = fs.load_key(fx["receiver_pem"])
    alice = fs.load_key(fx["threephase"]["alice_pem"])
    public = receiver.public_key()
    out = {
        "publickeyblob-2048": blobs.PublicKeyBlob.from_public_key(public).to_bytes(),
        "publickeyblob-sign-2048": blobs.PublicKeyBlob.from_public_key(alice.public_key(), AlgId.CALG_RSA_SIGN).to_bytes(),
        "privatekeyblob-2048": blobs.PrivateKeyBlob.from_private_key(alice).to_bytes(),
        "simpleblob-aes256-oaep": bytes.fromhex(fx["threephase"]["blob_A"]),
        # (a parser seed: the ciphertext of blob A relabelled, so the corpus stays deterministic)
        "simpleblob-3des": blobs.SimpleBlob(AlgId.CALG_3DES, blobs.SimpleBlob.from_bytes(
            bytes.fromhex(fx["threephase"]["blob_A"])).encrypted_key).to_bytes(),
        "pem-spki": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der-spki": alice.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo),
        "der-pkcs1": alice.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
    }
    # Not RSA: load_public_key must refuse these with its own errors (deterministic keys).
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    out["der-ec-p256"] = ec.derive_private_key(12345, ec.SECP256R1()).public_key().public_bytes(*spki)
    out["pem-ec-p384"] = ec.derive_private_key(12345, ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    out["der-ed25519"] = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes(*spki)
    for alg, size in blobs.SESSION_KEY_LENGTHS.items():
        out[f"plaintextkeyblob-{alg.name.lower()}"] = blobs.PlaintextKeyBlob(alg, bytes(range(size))).to_bytes()
    out["truncated-header"] = struct.pack("<BBH", 6, 2, 0)
    return out


def envelope_corpus(fx: dict) -> dict[str, bytes]:
    names = ["three-chunks", "pkcs1-two-chunks", "empty", "signed", "v2-two-recipients", "v2-signed"]
    out = {name: bytes.fromhex(m["sealed"]) for name, m in zip(names, fx["messages"], strict=True)}
    first = out["three-chunks"]
    out["prefix-only"] = first[: fs.Known.of(first, b"").prefix_len]
    out["header-only"] = first[:80]
    v2 = out["v2-two-recipients"]
    out["v2-prefix-only"] = v2[: fs.Known.of(v2, b"").prefix_len]
    out["v2-header-only"] = v2[:49]
    signed = out["v2-signed"]  # docs/FORMAT.md 9.5: the trailer is the last signature_length bytes
    out["v2-signed-no-trailer"] = signed[:-256]
    out["v2-signed-trailer-cut-by-1"] = signed[:-1]
    return out


def threephase_corpus() -> dict[str, bytes]:
    w = fs.threephase_world()
    abort = frame(bytes([0x7F, 2]))

    def case(scenario: int, control: int, *parts: bytes) -> bytes:
        return bytes([scenario, control]) + b"".join(parts)

    whole, eof, by_byte = 0xF0, 0xF1, 0x00
    return {
        "r1-phase1": case(0, whole, w.m1),
        "r1-phase1-bytewise": case(0, by_byte, w.m1),
        "r1-whole-session": case(0, eof | fs.F_ECHO, w.m1, w.m3, *w.init_records),
        "r1-abort": case(0, whole, abort),
        "r1-late": case(0, whole | fs.F_LATE, w.m1),
        "i2-phase2": case(1, whole, w.m2),
        "i2-whole-session": case(1, eof, w.m2, *w.resp_records),
        "i2-truncated-phase2": case(1, eof, w.m2[:-5]),
        "r3-phase3": case(2, whole, w.m3),
        "r3-phase3-in-pieces": case(2, 0x30, w.m3),
        "io-records": case(3, eof | fs.F_ECHO, *w.resp_records),
        "io-records-close-first": case(3, eof | fs.F_CLOSE_FIRST, *w.resp_records),
        "io-no-close": case(3, eof, *w.resp_records[:-1]),
        "ro-records": case(4, eof | fs.F_ECHO | fs.F_CLOSE_FIRST, *w.init_records),
        "ro-reordered": case(4, whole, w.init_records[1], w.init_records[0]),
        "ro-abort": case(4, whole, w.init_records[0], abort),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-keys", action="store_true", help="regenerate fixtures.json (keys and messages)")
    args = parser.parse_args()
    if args.new_keys or not fs.FIXTURES.exists():
        fs.FIXTURES.write_text(json.dumps(new_fixtures(), indent=1) + "\n")
        fs.fixtures.cache_clear()
    fx = fs.fixtures()
    corpora = {"blobs": blob_corpus(fx), "envelope": envelope_corpus(fx), "threephase": threephase_corpus()}
    for target, files in corpora.items():
        _write(target, files)
        print(f"{target}: {len(files)} seed inputs in {fs.CORPUS / target}")
    for target in fs.TARGETS:
        (fs.CRASHERS / target).mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    main()
