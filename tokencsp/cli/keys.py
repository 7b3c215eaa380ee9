"""``tokencsp key ...``: key containers on the token."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..keyinfo import check_key_name
from ..pubkeys import fingerprint
from ._common import Console, add_token_options, argument, open_provider, output_stream, read_file, with_hint
from ._result import add_result_options
from ._status import ExitStatus, UsageError

if TYPE_CHECKING:
    from ..keyinfo import KeyInfo
    from ..provider import KeyPair, Provider

__all__ = ["configure"]


def cmd_key_generate(args: argparse.Namespace, console: Console) -> ExitStatus:
    console.results.begin(name=args.name)
    with open_provider(args) as provider:
        pair = provider.generate_key(args.name, args.bits, args.usage, legacy=args.legacy, oaep_only=args.oaep_only)
        info = pair.info()
        _say_if_decrypt_key(console, provider, info)
    if not console.results.on_stdout:
        print_info(console, info)
    console.results.ok(key=info.as_dict())
    return ExitStatus.OK


def _say_if_decrypt_key(console: Console, provider: Provider, info: KeyInfo) -> None:
    from ..keyinfo import ImportPath

    if info.import_path is ImportPath.DECRYPT:
        console.say(f"token {provider.token_label!r} cannot unwrap (no CKF_UNWRAP for RSA): {info.name!r} is a "
                    "decrypt key (CKA_DECRYPT, import path decrypt), as smart cards make them")


def cmd_key_list(args: argparse.Namespace, console: Console) -> ExitStatus:
    with open_provider(args, agent=True) as provider:
        infos = provider.list_keys()
        token = _token_line(provider)
    if args.json:
        console.out(json.dumps([info.as_dict() for info in infos], indent=2))
        return ExitStatus.OK
    console.out(token)
    if not infos:
        console.note("no keys on this token")
        return ExitStatus.OK
    console.out(HEADER)
    for info in infos:
        print_info(console, info)
    return ExitStatus.OK


HEADER = "NAME\tUSAGE\tKEY\tIMPORT\tID\tATTRIBUTES\tURI"


def _token_line(provider: Provider) -> str:
    uri = getattr(provider, "token_uri", None)  # a running agent does not say it
    return f"token {provider.token_label!r}, serial {provider.token_serial}" + (f", {uri}" if uri else "")


def print_info(console: Console, info: KeyInfo) -> None:
    """One key: IMPORT is how its session keys reach the host (unwrap, decrypt; - for a signature key)."""
    flags = [name for name, on in (
        ("sensitive", info.sensitive), ("never-extractable", info.never_extractable),
        ("local", info.local), ("oaep-only", info.oaep_only), ("always-authenticate", info.always_authenticate),
        ("EXTRACTABLE", info.extractable)) if on]
    usage = info.usage.value if info.usage else "mixed"
    path = info.import_path.value if info.import_path else "-"
    console.out(f"{info.name}\t{usage}\tRSA-{info.bits}\t{path}\tid={info.id.hex()}\t{','.join(flags)}"
                f"\t{info.uri}")


def _cert_der(args: argparse.Namespace) -> bool:
    """--format cert: DER when asked with --der or by an output file named *.der, else PEM."""
    return bool(args.der or (args.output and args.output.lower().endswith(".der")))


def cmd_key_export(args: argparse.Namespace, console: Console) -> ExitStatus:
    if args.der and args.format != "cert":
        raise UsageError("--der applies to --format cert (the public key in DER is --format der)")
    if args.format not in ("pem", "cert") or (args.format == "cert" and _cert_der(args)):
        console.refuse_binary_to_terminal(args.output)
    console.results.begin(name=args.name, format=args.format, output=args.output)
    with open_provider(args, agent=True) as provider:
        pair = provider.key(args.name, public=True)  # type=public in the URI selects the key here
        if args.format == "cert":
            data = _stored_certificate(pair, _cert_der(args))
        else:
            data = {"msblob": pair.public_blob, "pem": pair.public_pem, "der": pair.public_der}[args.format]()
        key_id = fingerprint(pair.public_key()).hex()
    with output_stream(args.output, console, mode=0o644) as out:
        out.write(data)
    console.results.ok(key_id=key_id, bytes=len(data))
    return ExitStatus.OK


def _stored_certificate(pair: KeyPair, der: bool) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from ..errors import KeyNotFoundError

    cert = pair.certificate()
    if cert is None:
        raise with_hint(KeyNotFoundError(f"key {pair.name!r} has no certificate on the token"),
                        f"make one with 'tokencsp key cert {pair.name} --signer SIGNKEY' and store it, or a "
                        f"CA-issued one, with 'tokencsp key import-cert {pair.name} CERT'")
    return cert.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


def cmd_key_import_cert(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..certs import load_certificate

    cert = load_certificate(read_file(args.cert, console), args.cert)
    with open_provider(args) as provider:
        replaced = provider.key(args.name).store_certificate(cert, replace=args.replace)
    what = "replaced the certificate of" if replaced else "stored a certificate for"
    console.note(f"{what} {args.name}: subject {cert.subject.rfc4514_string()}, "
                 f"issuer {cert.issuer.rfc4514_string()}, serial {cert.serial_number:x}")
    return ExitStatus.OK


def cmd_key_import(args: argparse.Namespace, console: Console) -> ExitStatus:
    data = read_file(args.private_blob or args.pem, console)
    with open_provider(args) as provider:
        if args.private_blob:
            pair = provider.import_private_blob(args.name, data, legacy=args.legacy, oaep_only=args.oaep_only)
        else:
            pair = provider.import_pem(args.name, data, usage=args.usage, legacy=args.legacy,
                                       oaep_only=args.oaep_only)
        info = pair.info()
        print_info(console, info)
        _say_if_decrypt_key(console, provider, info)
    return ExitStatus.OK


def cmd_key_audit(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..keyaudit import WARN, audit_key

    with open_provider(args) as provider:
        infos = provider.list_keys()
        token = _token_line(provider)
    report = [(info, audit_key(info)) for info in infos]
    if args.json:
        console.out(json.dumps([{**info.as_dict(), "findings": [{"level": f.level, "message": f.message}
                                                                 for f in found]}
                                for info, found in report], indent=2))
    else:
        console.out(token)
        if report:
            console.out(HEADER)
        for info, found in report:
            print_info(console, info)
            for finding in found:
                console.out(f"  {finding.level}: {finding.message}")
    warnings = sum(f.level == WARN for _, found in report for f in found)
    console.note(f"{len(infos)} keys, {warnings} warnings")
    return ExitStatus.FINDINGS if warnings and args.strict else ExitStatus.OK


def cmd_key_cert(args: argparse.Namespace, console: Console) -> ExitStatus:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ..certs import CertificateRequest, build_certificate, parse_name
    from ..errors import InputError

    subject = parse_name(args.subject or f"CN={args.name}")
    issuer_cert = None
    if args.issuer_cert:
        try:
            issuer_cert = x509.load_pem_x509_certificate(read_file(args.issuer_cert, console))
        except ValueError:
            raise InputError(f"{args.issuer_cert}: not a PEM certificate") from None
    with open_provider(args) as provider:
        pair = provider.key(args.name)
        signer = provider.key(args.signer)
        self_signed = args.name == args.signer
        issuer = subject if self_signed else (issuer_cert.subject if issuer_cert else parse_name(f"CN={args.signer}"))
        if issuer_cert is not None and issuer_cert.public_key() != signer.public_key():
            raise InputError(f"{args.issuer_cert} is not the certificate of key {args.signer!r}")
        request = CertificateRequest(pair.public_key(), subject, issuer=issuer, issuer_key=signer.public_key(),
                                     days=args.days, now=datetime.datetime.now(datetime.UTC),
                                     ca=self_signed, encipherment=pair.info().can_unwrap)
        cert = build_certificate(request, signer.sign)
    with output_stream(args.output, console, mode=0o644) as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    return ExitStatus.OK


def cmd_key_delete(args: argparse.Namespace, console: Console) -> ExitStatus:
    """Deleting a key is forever: on a terminal it asks, elsewhere (scripts, CI) it needs --yes."""
    if not args.yes and not _stdin_is_terminal(console):
        raise UsageError(f"deleting key {args.name!r} cannot be undone: give --yes (stdin is not a terminal to ask on)")
    with open_provider(args) as provider:
        info = provider.key(args.name).info()  # a missing key fails here, before the question
        if not args.yes:
            console.stderr.write(f"delete key {info.name!r} (RSA-{info.bits}, id {info.id.hex()}) from token "
                                 f"{provider.token_label!r}, private and public halves? [y/N] ")
            console.stderr.flush()
            if console.stdin.readline().strip().lower() not in ("y", "yes"):
                console.note("nothing deleted")
                return ExitStatus.ERROR
        count = provider.delete_key(info.name)
    console.note(f"deleted {info.name} ({count} objects)")
    return ExitStatus.OK


def _name_arguments(parser: argparse.ArgumentParser, *, new: bool) -> None:
    """The key container: positional NAME, or ``--key NAME`` as every other command spells it."""
    check = argument(check_key_name) if new else str
    parser.add_argument("name", nargs="?", metavar="NAME", type=check, help="the key container")
    parser.add_argument("--key", dest="key_name", metavar="NAME", type=check, help="the same as NAME")


def _named(command: Callable[[argparse.Namespace, Console], ExitStatus]
           ) -> Callable[[argparse.Namespace, Console], ExitStatus]:
    """``command`` with ``args.name`` from NAME or ``--key`` (exactly one of them)."""
    def run(args: argparse.Namespace, console: Console) -> ExitStatus:
        if args.name is not None and args.key_name is not None and args.name != args.key_name:
            raise UsageError(f"two key names: {args.name!r} and --key {args.key_name!r}")
        args.name = args.name if args.name is not None else args.key_name
        if args.name is None and not _uri_names_key(args):
            raise UsageError(f"no key named: give NAME or --key NAME (see 'tokencsp key {args.key_command} --help')")
        return command(args, console)
    return run


def _uri_names_key(args: argparse.Namespace) -> bool:
    """The --uri (or TOKENCSP_URI) names the key with object= or id=: NAME may be left out."""
    from ..config import resolve_selector

    return resolve_selector(uri=getattr(args, "uri", None)).names_object


def _stdin_is_terminal(console: Console) -> bool:
    isatty = getattr(console.stdin, "isatty", None)
    return bool(isatty and isatty())


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    key = parser.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    generate = key.add_parser("generate", help="generate an RSA key pair on the token")
    _name_arguments(generate, new=True)
    generate.add_argument("--bits", type=int, default=2048, help="2048 (default), 3072 or 4096")
    generate.add_argument("--usage", choices=("exchange", "signature"), default="exchange")
    generate.add_argument("--legacy", action="store_true", help="allow 1024-bit keys (CryptoAPI legacy)")
    generate.add_argument("--oaep-only", action="store_true",
                          help="allow only OAEP unwraps (CKA_ALLOWED_MECHANISMS); refuses non-CRYPT_OAEP peers")
    generate.set_defaults(func=_named(cmd_key_generate))
    add_result_options(generate, "key generate", data_on_stdout=False)

    listing = key.add_parser("list", help="list key containers and their security attributes")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_key_list)

    export = key.add_parser("export", help="export a public key, or the certificate stored with the key")
    _name_arguments(export, new=False)
    export.add_argument("--format", choices=("msblob", "pem", "der", "cert"), default="msblob",
                        help="msblob = CryptoAPI PUBLICKEYBLOB (default), pem/der = the public key (SPKI), "
                             "cert = the X.509 certificate stored with the key (PEM; see key import-cert)")
    export.add_argument("--der", action="store_true",
                        help="with --format cert: DER instead of PEM (also chosen by an -o file named *.der)")
    export.add_argument("-o", "--output", help="output file (default: stdout, but not a terminal unless the "
                                               "output is PEM)")
    export.set_defaults(func=_named(cmd_key_export))
    add_result_options(export, "key export", data_on_stdout=True)

    imp = key.add_parser("import", help="move an existing private key onto the token (non-extractable)")
    _name_arguments(imp, new=True)
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--private-blob", metavar="FILE", help="CryptoAPI PRIVATEKEYBLOB (usage from its ALG_ID)")
    source.add_argument("--pem", metavar="FILE", help="unencrypted PEM private key (PKCS#8 or PKCS#1)")
    imp.add_argument("--usage", choices=("exchange", "signature"), default="exchange", help="for --pem")
    imp.add_argument("--legacy", action="store_true", help="allow 1024-bit and unusual key sizes")
    imp.add_argument("--oaep-only", action="store_true", help="allow only OAEP unwraps (exchange keys)")
    imp.set_defaults(func=_named(cmd_key_import))

    audit = key.add_parser("audit", help="security attributes of every key, with warnings")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--strict", action="store_true", help="exit 5 when any warning is found")
    audit.set_defaults(func=cmd_key_audit)

    cert = key.add_parser("cert", help="an X.509 certificate (PEM) for a key, signed on the token by --signer",
                          description="An X.509 certificate for key NAME, signed on the token by the signature key "
                                      "SIGNKEY (RSA-PSS, SHA-256). An exchange key gets keyUsage keyEncipherment "
                                      "(for 'openssl cms -encrypt -recip'); NAME equal to SIGNKEY makes a "
                                      "self-signed CA certificate (keyCertSign) to verify the others with. "
                                      "See docs/CMS.md.")
    _name_arguments(cert, new=False)
    cert.add_argument("--signer", required=True, metavar="SIGNKEY", help="signature key on the token that signs")
    cert.add_argument("--subject", help='subject DN, RFC 4514 (default: "CN=NAME")')
    cert.add_argument("--issuer-cert", metavar="FILE",
                      help="the signer's certificate (PEM): its subject becomes the issuer (default: CN=SIGNKEY, "
                           "as 'key cert SIGNKEY --signer SIGNKEY' names it)")
    cert.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    cert.add_argument("-o", "--output", help="output file (default: stdout)")
    cert.set_defaults(func=_named(cmd_key_cert))

    import_cert = key.add_parser(
        "import-cert", help="store a (CA-issued) X.509 certificate on the token next to its key",
        description="Stores CERT (PEM or DER) on the token as a certificate object with the key's CKA_ID, "
                    "after checking that its public key is key NAME's; nothing is stored otherwise. "
                    "'cms decrypt' then finds recipients named by its issuer and serial number without "
                    "--cert, and 'key export NAME --format cert' gives it back. 'key delete' removes it.")
    _name_arguments(import_cert, new=False)
    import_cert.add_argument("cert", metavar="CERT", help="the certificate file (PEM or DER)")
    import_cert.add_argument("--replace", action="store_true",
                             help="replace the certificate already stored for the key (default: refuse)")
    import_cert.set_defaults(func=_named(cmd_key_import_cert))

    delete = key.add_parser("delete", help="delete a key container (private and public halves, its certificate); "
                                           "asks on a terminal, needs --yes elsewhere")
    delete.add_argument("--yes", action="store_true", help="delete without asking (needed when stdin is not a "
                                                           "terminal: scripts, CI)")
    _name_arguments(delete, new=False)
    delete.set_defaults(func=_named(cmd_key_delete))

    for sub in (generate, listing, export, imp, audit, cert, import_cert, delete):
        add_token_options(sub)
