"""The ``tokencsp`` command: a thin shell over the library.

The only place that prints or exits.  Every error is one line on stderr,
``tokencsp: error: ...``, and a non-zero exit; no traceback, no partial output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .. import blobs, errors
from ..fileio import atomic_output, open_input, read_input
from ..pubkeys import fingerprint, load_public_key
from ..session import ALG_NAMES, SessionKey, alg_from_name

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TOKEN = 3
EXIT_DECRYPT = 4
EXIT_FINDINGS = 5
EXIT_INTERRUPTED = 130

# Each refusal of a sealed message has its own status, so scripts can tell
# "replayed" from "tampered" without parsing text.
REFUSAL_EXIT_CODES = {
    "unauthenticated": 10, "truncated": 11, "not-for-this-key": 12, "malformed": 13,
    "replayed": 20, "too-old": 21, "from-future": 22, "serial-backwards": 23,
    "untrusted": 30, "bad-signature": 31, "unsigned": 32,
}
EXIT_PROTOCOL = 40
EXIT_PEER_AUTH = 41
EXIT_UNKNOWN_PEER = 42
EXIT_TIMEOUT = 43

EXIT_CODES_HELP = """\
exit status:
  0  success
  1  error (bad input file, unusable key, I/O failure, replay cache unusable)
  2  usage error
  3  token error (module, token, PIN, missing key)
  4  decryption failed (the session key blob or the ciphertext did not decrypt)
  5  key audit --strict found warnings
 10  open: message could not be authenticated (tampered, wrong key blob)
 11  open: message is truncated
 12  open: message is not addressed to this key
 13  open: not a sealed message (malformed header)
 20  open: replayed (already accepted once)
 21  open: too old (--max-age)
 22  open: timestamp too far in the future (--max-skew)
 23  open: sender serial number did not increase
 30  open: sender not in --trust
 31  open: sender signature does not verify
 32  open: unsigned message but --trust was given
 40  listen/send: protocol error
 41  listen/send: the peer failed to authenticate (wrong key, tampering, replay)
 42  listen/send: unknown peer
 43  listen/send: a phase timed out

token selection: --module/TOKENCSP_MODULE (default: SoftHSM2), --token/TOKENCSP_TOKEN
(label), --serial, or --uri/TOKENCSP_URI (RFC 7512, e.g. "pkcs11:token=dev?pin-source=file:/run/pin").
PIN: TOKENCSP_PIN, --pin-file, the URI's pin-source/pin-value, or a prompt on a terminal.
PINs are never accepted as command-line options.
"""

CHUNK = 1 << 20  # a multiple of every block size


def _provider(args: argparse.Namespace):
    """The token named by the global options; only commands that need the token load the module."""
    from ..provider import Provider

    return Provider.open(module=args.module, token=args.token, serial=args.serial, uri=args.uri,
                         pin_file=args.pin_file)


# -- key ----------------------------------------------------------------------

def cmd_key_generate(args: argparse.Namespace) -> int:
    with _provider(args) as provider:
        pair = provider.generate_key(args.name, args.bits, args.usage, legacy=args.legacy, oaep_only=args.oaep_only)
        _print_info(pair.info())
    return EXIT_OK


def cmd_key_list(args: argparse.Namespace) -> int:
    with _provider(args) as provider:
        infos = provider.list_keys()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return EXIT_OK
    if not infos:
        print("no keys on this token", file=sys.stderr)
    for info in infos:
        _print_info(info)
    return EXIT_OK


def _print_info(info) -> None:
    flags = [name for name, on in (
        ("sensitive", info.sensitive), ("never-extractable", info.never_extractable),
        ("local", info.local), ("oaep-only", info.oaep_only), ("EXTRACTABLE", info.extractable)) if on]
    usage = info.usage.value if info.usage else "mixed"
    print(f"{info.name}\t{usage}\tRSA-{info.bits}\tid={info.id.hex()}\t{','.join(flags)}")


def cmd_key_export(args: argparse.Namespace) -> int:
    with _provider(args) as provider:
        pair = provider.key(args.name)
        data = {"msblob": pair.public_blob, "pem": pair.public_pem, "der": pair.public_der}[args.format]()
    with atomic_output(args.output, mode=0o644) as out:
        out.write(data)
    return EXIT_OK


def cmd_key_import(args: argparse.Namespace) -> int:
    data = read_input(args.private_blob or args.pem)
    with _provider(args) as provider:
        if args.private_blob:
            pair = provider.import_private_blob(args.name, data, legacy=args.legacy, oaep_only=args.oaep_only)
        else:
            pair = provider.import_pem(args.name, data, usage=args.usage, legacy=args.legacy,
                                       oaep_only=args.oaep_only)
        _print_info(pair.info())
    return EXIT_OK


def cmd_key_audit(args: argparse.Namespace) -> int:
    from ..keyaudit import WARN, audit_key

    with _provider(args) as provider:
        infos = provider.list_keys()
    report = [(info, audit_key(info)) for info in infos]
    if args.json:
        print(json.dumps([{**info.as_dict(), "findings": [{"level": f.level, "message": f.message} for f in found]}
                          for info, found in report], indent=2))
    else:
        for info, found in report:
            _print_info(info)
            for finding in found:
                print(f"  {finding.level}: {finding.message}")
    warnings = sum(f.level == WARN for _, found in report for f in found)
    print(f"{len(infos)} keys, {warnings} warnings", file=sys.stderr)
    return EXIT_FINDINGS if warnings and args.strict else EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    from ..provider import list_tokens

    tokens = list_tokens(args.module)
    if args.json:
        print(json.dumps([{"label": label, "serial": serial} for label, serial in tokens], indent=2))
    for label, serial in tokens if not args.json else ():
        print(f"{label}\tserial={serial}")
    return EXIT_OK


def cmd_token_init(args: argparse.Namespace) -> int:
    from ..config import resolve_pin, resolve_so_pin
    from ..provider import initialize_token

    so_pin = resolve_so_pin(args.so_pin_file)
    pin = resolve_pin(pin_file=args.pin_file, prompt="New user PIN: ")
    serial = initialize_token(args.label, so_pin=so_pin, pin=pin, module=args.module)
    print(f"initialised token {args.label!r}, serial {serial}", file=sys.stderr)
    return EXIT_OK


def cmd_key_delete(args: argparse.Namespace) -> int:
    with _provider(args) as provider:
        count = provider.delete_key(args.name)
    print(f"deleted {args.name} ({count} objects)", file=sys.stderr)
    return EXIT_OK


# -- blob ---------------------------------------------------------------------

def describe_blob(blob: blobs.KeyBlob) -> dict:
    """Public facts about a BLOB; never key material."""
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


def cmd_blob_inspect(args: argparse.Namespace) -> int:
    facts = describe_blob(blobs.parse(read_input(args.file)))
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for name, value in facts.items():
            print(f"{name}: {value}")
    return EXIT_OK


# -- capi ---------------------------------------------------------------------

def _stream(key: SessionKey, source, sink, encrypt: bool) -> None:
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


def cmd_capi_encrypt(args: argparse.Namespace) -> int:
    recipient = load_public_key(read_input(args.to))
    key = SessionKey.generate(alg_from_name(args.alg))
    blob = key.export_simpleblob(recipient, oaep=args.oaep)
    with atomic_output(args.blob_out, mode=0o644) as blob_file, open_input(args.input) as source, \
            atomic_output(args.output) as sink:
        _stream(key, source, sink, encrypt=True)
        blob_file.write(blob)
    key.wipe()
    return EXIT_OK


def cmd_capi_decrypt(args: argparse.Namespace) -> int:
    blob = blobs.SimpleBlob.from_bytes(read_input(args.blob))  # a broken file fails before any PIN prompt
    with _provider(args) as provider:
        # Deferred: a bad blob fails at the final CryptDecrypt, as a bad ciphertext does (one message).
        key = provider.exchange_key(args.key).import_simpleblob_deferred(blob, oaep=args.oaep)
    try:
        with open_input(args.input) as source, atomic_output(args.output) as sink:
            _stream(key, source, sink, encrypt=False)
    finally:
        key.wipe()
    return EXIT_OK


# -- parser -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokencsp",
        description="CryptoAPI-compatible session-key exchange with the receiver's key on a PKCS#11 token.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    _add_token_options(parser)
    parser.set_defaults(module=None, token=None, serial=None, uri=None, pin_file=None)
    # Token options are accepted before or after the subcommand; SUPPRESS keeps
    # a subcommand's unset option from overwriting the global one.
    token_options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _add_token_options(token_options)
    parents = [token_options]
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    key = commands.add_parser("key", help="key containers on the token").add_subparsers(
        dest="key_command", metavar="ACTION", required=True)
    generate = key.add_parser("generate", help="generate an RSA key pair on the token", parents=parents)
    generate.add_argument("name")
    generate.add_argument("--bits", type=int, default=2048, help="2048 (default), 3072 or 4096")
    generate.add_argument("--usage", choices=("exchange", "signature"), default="exchange")
    generate.add_argument("--legacy", action="store_true", help="allow 1024-bit keys (CryptoAPI legacy)")
    generate.add_argument("--oaep-only", action="store_true",
                          help="allow only OAEP unwraps (CKA_ALLOWED_MECHANISMS); refuses non-CRYPT_OAEP peers")
    generate.set_defaults(func=cmd_key_generate)

    listing = key.add_parser("list", help="list key containers and their security attributes", parents=parents)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_key_list)

    export = key.add_parser("export", help="export a public key", parents=parents)
    export.add_argument("name")
    export.add_argument("--format", choices=("msblob", "pem", "der"), default="msblob",
                        help="msblob = CryptoAPI PUBLICKEYBLOB (default)")
    export.add_argument("-o", "--output", help="output file (default: stdout)")
    export.set_defaults(func=cmd_key_export)

    imp = key.add_parser("import", help="move an existing private key onto the token (non-extractable)",
                         parents=parents)
    imp.add_argument("name")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--private-blob", metavar="FILE", help="CryptoAPI PRIVATEKEYBLOB (usage from its ALG_ID)")
    source.add_argument("--pem", metavar="FILE", help="unencrypted PEM private key (PKCS#8 or PKCS#1)")
    imp.add_argument("--usage", choices=("exchange", "signature"), default="exchange", help="for --pem")
    imp.add_argument("--legacy", action="store_true", help="allow 1024-bit and unusual key sizes")
    imp.add_argument("--oaep-only", action="store_true", help="allow only OAEP unwraps (exchange keys)")
    imp.set_defaults(func=cmd_key_import)

    audit = key.add_parser("audit", help="security attributes of every key, with warnings", parents=parents)
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--strict", action="store_true", help="exit 5 when any warning is found")
    audit.set_defaults(func=cmd_key_audit)

    delete = key.add_parser("delete", help="delete a key container (private and public halves)", parents=parents)
    delete.add_argument("name")
    delete.set_defaults(func=cmd_key_delete)

    token_cmd = commands.add_parser("token", help="tokens in the PKCS#11 module").add_subparsers(
        dest="token_command", metavar="ACTION", required=True)
    tlist = token_cmd.add_parser("list", help="label and serial of every initialised token", parents=parents)
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_token_list)
    tinit = token_cmd.add_parser(
        "init", parents=parents,
        help="initialise a fresh token (SoftHSM: the free slot); SO PIN from TOKENCSP_SO_PIN, --so-pin-file or "
             "a prompt, user PIN from TOKENCSP_PIN, --pin-file or a prompt")
    tinit.add_argument("--label", required=True, help="the new token's label (1 to 32 bytes)")
    tinit.add_argument("--so-pin-file", help="file whose first line is the SO PIN")
    tinit.set_defaults(func=cmd_token_init)

    blob = commands.add_parser("blob", help="CryptoAPI key BLOB files").add_subparsers(
        dest="blob_command", metavar="ACTION", required=True)
    inspect = blob.add_parser("inspect", help="show a key BLOB's header fields (never key material)")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_blob_inspect)

    capi = commands.add_parser("capi", help="CryptoAPI-compatible SIMPLEBLOB + CryptEncrypt files").add_subparsers(
        dest="capi_command", metavar="ACTION", required=True)
    enc = capi.add_parser("encrypt", help="sender: new session key, SIMPLEBLOB to PUBKEY, CryptEncrypt (no token)")
    enc.add_argument("--to", required=True, metavar="PUBKEY", help="recipient PUBLICKEYBLOB, PEM or DER file")
    enc.add_argument("--alg", choices=tuple(ALG_NAMES), default="aes256")
    enc.add_argument("--oaep", action="store_true", help="wrap with CRYPT_OAEP (OAEP SHA-1) instead of PKCS#1 v1.5")
    enc.add_argument("--blob-out", required=True, metavar="FILE", help="where to write the SIMPLEBLOB")
    enc.add_argument("-o", "--output", help="ciphertext file (default: stdout)")
    enc.add_argument("input", nargs="?", help="plaintext file (default: stdin)")
    enc.set_defaults(func=cmd_capi_encrypt)

    dec = capi.add_parser("decrypt", help="receiver: import the SIMPLEBLOB on the token, CryptDecrypt on the host",
                          parents=parents)
    dec.add_argument("--key", metavar="NAME", help="exchange key on the token (default: object= of --uri)")
    dec.add_argument("--blob", required=True, metavar="FILE", help="the SIMPLEBLOB")
    dec.add_argument("--oaep", action="store_true", help="the blob was wrapped with CRYPT_OAEP")
    dec.add_argument("-o", "--output", help="plaintext file, written only if decryption succeeds "
                                            "(default: stdout, streamed; a failure at the end still exits non-zero)")
    dec.add_argument("input", nargs="?", help="ciphertext file (default: stdin)")
    dec.set_defaults(func=cmd_capi_decrypt)

    from . import exchange as cli_exchange
    from . import replay as cli_replay
    from . import seal as cli_seal

    cli_seal.add_commands(commands, parents)
    cli_exchange.add_commands(commands, parents)
    cli_replay.add_commands(commands, parents)
    return parser


def _add_token_options(parser: argparse.ArgumentParser) -> None:
    token = parser.add_argument_group("token selection")
    token.add_argument("--module", help="PKCS#11 module path (env TOKENCSP_MODULE; default: SoftHSM2)")
    token.add_argument("--token", help="token label (env TOKENCSP_TOKEN)")
    token.add_argument("--serial", help="token serial number")
    token.add_argument("--uri", help="RFC 7512 PKCS#11 URI (env TOKENCSP_URI)")
    token.add_argument("--pin-file", help="file whose first line is the user PIN (else TOKENCSP_PIN or a prompt)")


def _exit_code(exc: errors.TokenCSPError) -> int:
    if isinstance(exc, errors.MessageRejected):
        return REFUSAL_EXIT_CODES.get(exc.reason, EXIT_ERROR)
    if isinstance(exc, errors.ProtocolError):
        for kind, code in ((errors.PeerAuthenticationFailed, EXIT_PEER_AUTH), (errors.UnknownPeer, EXIT_UNKNOWN_PEER),
                           (errors.PhaseTimeout, EXIT_TIMEOUT)):
            if isinstance(exc, kind):
                return code
        return EXIT_PROTOCOL
    if isinstance(exc, errors.DecryptionError):
        return EXIT_DECRYPT
    if isinstance(exc, errors.TokenError):
        return EXIT_TOKEN
    return EXIT_ERROR


def _default_key_from_uri(args: argparse.Namespace) -> None:
    """``--key`` may be left out when the PKCS#11 URI names the object (``object=``)."""
    if getattr(args, "key", False) is not None:
        return
    from ..config import resolve_selector

    args.key = resolve_selector(uri=args.uri).object_label
    if not args.key:
        raise errors.ConfigError("no key named: give --key NAME or a --uri with object=NAME")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _default_key_from_uri(args)
        return args.func(args)
    except errors.TokenCSPError as exc:
        print(f"tokencsp: error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("tokencsp: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
