"""``tokencsp capi encrypt|decrypt``: CryptoAPI-compatible SIMPLEBLOB + CryptEncrypt files."""

from __future__ import annotations

import argparse
from typing import BinaryIO

from ..errors import DecryptionError
from ..legacy import LegacyAlg
from ..session import ALG_NAMES, SessionKey, alg_from_name
from ._common import (
    Console,
    add_token_options,
    input_stream,
    open_provider,
    output_stream,
    read_file,
    recipient_key,
    with_hint,
)
from ._result import Counting, add_result_options
from ._status import ExitStatus, UsageError

__all__ = ["configure"]

CHUNK = 1 << 20  # a multiple of every block size


def _stream(key: SessionKey, source: BinaryIO, sink: BinaryIO, encrypt: bool) -> None:
    """CryptEncrypt/CryptDecrypt in chunks: whole blocks non-final, the rest final."""
    step = key.encrypt if encrypt else key.decrypt
    pending = source.read(CHUNK)
    while True:
        following = source.read(CHUNK)
        if not following:
            sink.write(step(pending, final=True))
            return
        sink.write(step(pending, final=False))
        pending = following


def cmd_capi_encrypt(args: argparse.Namespace, console: Console) -> ExitStatus:
    console.refuse_binary_to_terminal(args.output)
    recipient = recipient_key(args.to, console)
    key = SessionKey.generate(alg_from_name(args.alg))
    blob = key.export_simpleblob(recipient, oaep=args.oaep)
    with output_stream(args.blob_out, console, mode=0o644) as blob_file, input_stream(args.input, console) as source, \
            output_stream(args.output, console) as sink:
        _stream(key, source, sink, encrypt=True)
        blob_file.write(blob)
    key.wipe()
    return ExitStatus.OK


def _decrypt_legacy(args: argparse.Namespace, console: Console, alg: LegacyAlg, encrypted: bytes) -> ExitStatus:
    from ..errors import InputError, UnsupportedAlgorithm
    from ..implicit import CAPI_DECRYPT_FAILED
    from ..legacy import KEY_LENGTHS, DeferredLegacyKey, LegacyKey

    if not args.allow_legacy:
        raise UnsupportedAlgorithm(f"{alg.name} is a legacy cipher: tokencsp only decrypts it, with --allow-legacy")
    try:
        salt = None if args.salt is None else bytes.fromhex(args.salt)
    except ValueError:
        raise InputError("--salt takes hex digits") from None
    # Refused before the token is asked: after it, a refusal that depended on the key's length would
    # tell an unwrapped key from a substitute.
    if salt and alg is LegacyAlg.CALG_DES:
        raise UsageError("DES keys take no salt (--salt is for RC2 and RC4)")
    if salt is not None and len(salt) > 128 - max(KEY_LENGTHS[alg]):
        raise UsageError(f"--salt is at most {128 - max(KEY_LENGTHS[alg])} bytes")
    with open_provider(args, agent=True) as provider:
        value = provider.exchange_key(args.key).unwrap_legacy_deferred(encrypted, args.oaep, KEY_LENGTHS[alg])
    key = DeferredLegacyKey(LegacyKey(alg, value, salt=salt, effective_bits=args.effective_bits), CAPI_DECRYPT_FAILED)
    with input_stream(args.input, console) as source, output_stream(args.output, console) as sink:
        counted = Counting(sink)
        _stream(key, source, counted, encrypt=False)  # type: ignore[arg-type]
    console.results.ok(alg=alg.name, bytes=counted.count)
    return ExitStatus.OK


def cmd_capi_decrypt(args: argparse.Namespace, console: Console) -> ExitStatus:
    from .. import blobs
    from ..legacy import legacy_simpleblob

    console.results.begin(file=args.input, blob=args.blob, output=args.output)
    data = read_file(args.blob, console)
    legacy = legacy_simpleblob(data)
    if legacy is not None:
        return _decrypt_legacy(args, console, *legacy)
    blob = blobs.SimpleBlob.from_bytes(data)  # a broken file fails before any PIN prompt
    with open_provider(args, agent=True) as provider:
        # Deferred: a bad blob fails at the final CryptDecrypt, as a bad ciphertext does (one message).
        key = provider.exchange_key(args.key).import_simpleblob_deferred(blob, oaep=args.oaep)
    try:
        with input_stream(args.input, console) as source, output_stream(args.output, console) as sink:
            counted = Counting(sink)
            _stream(key, source, counted, encrypt=False)  # type: ignore[arg-type]
    except DecryptionError as exc:
        # One message for a bad blob and a bad ciphertext; a SIMPLEBLOB does not say how it was padded,
        # and this hint depends only on the flag given, so it tells an attacker nothing.
        raise with_hint(exc, "leave out --oaep if the sender did not use CRYPT_OAEP" if args.oaep
                        else "add --oaep if the sender used CRYPT_OAEP") from None
    finally:
        key.wipe()
    console.results.ok(alg=blob.alg_id.name, bytes=counted.count)
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    capi = parser.add_subparsers(dest="capi_command", metavar="ACTION", required=True)
    enc = capi.add_parser("encrypt", help="sender: new session key, SIMPLEBLOB to PUBKEY, CryptEncrypt (no token)")
    enc.add_argument("--to", required=True, metavar="PUBKEY", help="recipient PUBLICKEYBLOB, PEM or DER file")
    enc.add_argument("--alg", choices=tuple(ALG_NAMES), default="aes256")
    enc.add_argument("--oaep", action="store_true", help="wrap with CRYPT_OAEP (OAEP SHA-1) instead of PKCS#1 v1.5")
    enc.add_argument("--blob-out", required=True, metavar="FILE", help="where to write the SIMPLEBLOB")
    enc.add_argument("-o", "--output", help="ciphertext file (default: stdout, but not a terminal)")
    enc.add_argument("input", nargs="?", help="plaintext file (default: stdin)")
    enc.set_defaults(func=cmd_capi_encrypt)

    dec = capi.add_parser("decrypt", help="receiver: import the SIMPLEBLOB on the token, CryptDecrypt on the host")
    dec.add_argument("--key", metavar="NAME", help="exchange key on the token (default: object= of --uri)")
    dec.add_argument("--blob", required=True, metavar="FILE", help="the SIMPLEBLOB")
    dec.add_argument("--oaep", action="store_true", help="the blob was wrapped with CRYPT_OAEP")
    dec.add_argument("--allow-legacy", action="store_true",
                     help="open RC4/RC2/DES SIMPLEBLOBs (CALG_RC4/RC2/DES) as rsaenh does; decrypt only, never made")
    dec.add_argument("--salt", metavar="HEX", help="legacy RC2/RC4 salt (KP_SALT; default: 11 zero bytes for a "
                                                   "40-bit key, none otherwise; '' for none)")
    dec.add_argument("--effective-bits", type=int, metavar="N",
                     help="legacy RC2 effective key length (KP_EFFECTIVE_KEYLEN; default: the key's length)")
    dec.add_argument("-o", "--output", help="plaintext file, written only if decryption succeeds "
                                            "(default: stdout, streamed; a failure at the end still exits non-zero)")
    dec.add_argument("input", nargs="?", help="ciphertext file (default: stdin)")
    dec.set_defaults(func=cmd_capi_decrypt)
    add_token_options(dec)
    add_result_options(dec, "capi decrypt", data_on_stdout=True)
