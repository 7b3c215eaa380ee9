"""``tokencsp cms decrypt``: CMS EnvelopedData/AuthEnvelopedData (openssl cms, S/MIME) with the key on the token."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import (
    Console,
    add_token_options,
    input_stream,
    open_provider,
    output_stream,
    read_file,
    recipient_key_from,
    with_hint,
)
from ._result import Counting, add_result_options
from ._status import ExitStatus

if TYPE_CHECKING:
    from ..blobs import SimpleBlob
    from ..cms.sealing import Recipient
    from ..session import SessionKey

__all__ = ["configure"]

DECRYPT_HELP = """\
Opens CMS made by 'openssl cms -encrypt' (DER, PEM or S/MIME; -stream too): EnvelopedData with
AES-128/192/256-CBC or 3DES-CBC, AuthEnvelopedData with AES-GCM; key transport RSA PKCS#1 v1.5 or
RSAES-OAEP with SHA-1, or SHA-256/384/512 (MGF1 over the same hash, no label) where the token does
that OAEP (opencryptoki) or the key decrypts raw RSA (then OAEP is decoded on the host); else such
a message is refused with one line (exit 1) before the key is used (SoftHSM 2.6: SHA-1 only). The
encrypted key is unwrapped on the token under implicit rejection: a key that does not unwrap fails
exactly like corrupted content (exit 4, one message).

WARNING: CBC EnvelopedData has NO INTEGRITY. Anyone can alter it undetected except for the last
block's padding; to stdout, unauthenticated plaintext streams out before the end is checked. Use
AuthEnvelopedData (openssl cms -encrypt -aes-256-gcm) where you can. With -o the file appears only
after the whole message decrypted (and, for GCM, authenticated). See docs/CMS.md.
"""


def cmd_cms_decrypt(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..certs import load_certificate
    from ..cms import open_stream
    from ..errors import InputError, InvalidKeyError, UnsupportedAlgorithm

    console.results.begin(file=args.input, output=args.output)
    cert = None
    if args.cert:
        try:
            cert = load_certificate(read_file(args.cert, console), args.cert)
        except InvalidKeyError as exc:
            raise InputError(str(exc)) from None
    with open_provider(args) as provider:
        key = provider.exchange_key(args.key)
        stored = key.certificates()  # stored with key import-cert: recipients named by issuer and serial
        with input_stream(args.input, console) as source, output_stream(args.output, console) as sink:
            counted = Counting(sink)

            def import_key(blob: SimpleBlob, oaep: bool = False, *, oaep_hash: str = "sha1") -> SessionKey:
                try:
                    return key.import_simpleblob_deferred(blob, oaep, oaep_hash=oaep_hash)
                except UnsupportedAlgorithm as exc:  # an OAEP hash the token cannot do: said before the key is used
                    raise with_hint(exc, OAEP_HINT) from None

            info = open_stream(source.read, counted.write, public_key=key.public_key(), import_key=import_key,
                               cert=cert, certs=stored)
    console.results.ok(authenticated=info.authenticated, algorithm=info.algorithm, oaep=info.oaep,
                       oaep_hash=info.oaep_hash, bytes=counted.count)
    return ExitStatus.OK


OAEP_HINT = ("ask the sender for RSAES-OAEP with SHA-1 (openssl cms -encrypt -keyopt rsa_padding_mode:oaep) or "
             "PKCS#1 v1.5, or keep the key on a token that does OAEP with this hash (opencryptoki does)")

ENCRYPT_HELP = """\
Encrypts to one or more recipients for 'openssl cms -decrypt' (or any CMS/S-MIME reader): a new
AES-256 key, wrapped to each --to with RSA PKCS#1 v1.5 (--oaep: RSAES-OAEP SHA-1; --oaep-hash
sha256: RSAES-OAEP SHA-256 with MGF1-SHA-256, which 'cms decrypt' opens only where the recipient's
token does that OAEP or its key decrypts raw RSA: not a SoftHSM 2.6 key that unwraps). Default
EnvelopedData AES-256-CBC, which has NO INTEGRITY (see 'cms decrypt --help'); --gcm makes
AuthEnvelopedData AES-256-GCM, which readers authenticate. The output is BER (DER-compatible
readers: openssl cms -decrypt -inform DER), streamed in constant memory. No token is needed.
"""


def _recipient(path: str, console: Console) -> Recipient:
    """A certificate (named by issuer and serial) or else a public key (by subjectKeyIdentifier), read once."""
    from ..certs import load_certificate
    from ..cms.sealing import Recipient
    from ..errors import InvalidKeyError

    data = read_file(path, console)
    try:
        cert = load_certificate(data, path)
    except InvalidKeyError:  # not a certificate: a public key, which refuses a signature key's PUBLICKEYBLOB
        return Recipient(recipient_key_from(data, path))
    return Recipient.from_certificate(cert)


def cmd_cms_encrypt(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..cms.sealing import seal_stream

    recipients = [_recipient(path, console) for path in args.to]
    with input_stream(args.input, console) as source, output_stream(args.output, console, mode=0o644) as sink:
        seal_stream(source.read, sink.write, recipients, gcm=args.gcm, oaep=args.oaep or args.oaep_hash is not None,
                    oaep_hash=args.oaep_hash or "sha1")
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    cms = parser.add_subparsers(dest="cms_command", metavar="ACTION", required=True)
    enc = cms.add_parser("encrypt", help="encrypt to certificates or public keys as CMS (openssl cms -decrypt opens)",
                         description=ENCRYPT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    enc.add_argument("--to", required=True, action="append", metavar="CERT_OR_PUBKEY",
                     help="recipient certificate (PEM/DER: named by issuer and serial) or RSA public key "
                          "(PEM, DER or PUBLICKEYBLOB: named by subjectKeyIdentifier); repeat for more")
    enc.add_argument("--gcm", action="store_true", help="AuthEnvelopedData AES-256-GCM (authenticated)")
    enc.add_argument("--oaep", action="store_true", help="wrap the key with RSAES-OAEP SHA-1 instead of PKCS#1 v1.5")
    enc.add_argument("--oaep-hash", choices=("sha1", "sha256", "sha384", "sha512"), metavar="HASH",
                     help="RSAES-OAEP with this hash and MGF1 over it (sha1, sha256, sha384, sha512); implies --oaep")
    enc.add_argument("-o", "--output", help="output file (default: stdout)")
    enc.add_argument("input", nargs="?", help="plaintext file (default: stdin)")
    enc.set_defaults(func=cmd_cms_encrypt)

    dec = cms.add_parser("decrypt", help="open a CMS/S-MIME message with an exchange key on the token",
                         description=DECRYPT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    dec.add_argument("--key", metavar="NAME", help="exchange key on the token (default: object= of --uri)")
    dec.add_argument("--cert", metavar="FILE",
                     help="the key's certificate (PEM/DER): matches a recipient named by issuer and serial "
                          "(needed when the message has several recipients, unless the certificate is stored "
                          "with the key: key import-cert; subjectKeyIdentifier needs none)")
    dec.add_argument("-o", "--output", help="plaintext file, created only after the whole message decrypted "
                                            "(default: stdout, streamed; a failure at the end still exits non-zero)")
    dec.add_argument("input", nargs="?", help="CMS file: DER/BER, PEM or S/MIME (default: stdin)")
    dec.set_defaults(func=cmd_cms_decrypt)
    add_token_options(dec)
    add_result_options(dec, "cms decrypt", data_on_stdout=True)
