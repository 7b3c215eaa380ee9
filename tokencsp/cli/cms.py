"""``tokencsp cms decrypt``: CMS EnvelopedData/AuthEnvelopedData (openssl cms, S/MIME) with the key on the token."""

from __future__ import annotations

import argparse

from ._common import Console, add_token_options, input_stream, open_provider, output_stream, read_file
from ._status import ExitStatus

__all__ = ["configure"]

DECRYPT_HELP = """\
Opens CMS made by 'openssl cms -encrypt' (DER, PEM or S/MIME; -stream too): EnvelopedData with
AES-128/192/256-CBC or 3DES-CBC, AuthEnvelopedData with AES-GCM; key transport RSA PKCS#1 v1.5 or
RSAES-OAEP (SHA-1). The encrypted key is unwrapped on the token under implicit rejection: a key
that does not unwrap fails exactly like corrupted content (exit 4, one message).

WARNING: CBC EnvelopedData has NO INTEGRITY. Anyone can alter it undetected except for the last
block's padding; to stdout, unauthenticated plaintext streams out before the end is checked. Use
AuthEnvelopedData (openssl cms -encrypt -aes-256-gcm) where you can. With -o the file appears only
after the whole message decrypted (and, for GCM, authenticated). See docs/CMS.md.
"""


def cmd_cms_decrypt(args: argparse.Namespace, console: Console) -> ExitStatus:
    from cryptography import x509

    from ..cms import open_stream
    from ..errors import InputError

    cert = None
    if args.cert:
        data = read_file(args.cert, console)
        try:
            pem = b"-----BEGIN" in data
            cert = x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data)
        except ValueError:
            raise InputError(f"{args.cert}: not a certificate (PEM or DER)") from None
    with open_provider(args) as provider:
        key = provider.exchange_key(args.key)
        with input_stream(args.input, console) as source, output_stream(args.output, console) as sink:
            open_stream(source.read, sink.write, public_key=key.public_key(),
                        import_key=key.import_simpleblob_deferred, cert=cert)
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    cms = parser.add_subparsers(dest="cms_command", metavar="ACTION", required=True)
    dec = cms.add_parser("decrypt", help="open a CMS/S-MIME message with an exchange key on the token",
                         description=DECRYPT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    dec.add_argument("--key", metavar="NAME", help="exchange key on the token (default: object= of --uri)")
    dec.add_argument("--cert", metavar="FILE",
                     help="the key's certificate (PEM/DER): matches a recipient named by issuer and serial "
                          "(needed when the message has several recipients; subjectKeyIdentifier needs none)")
    dec.add_argument("-o", "--output", help="plaintext file, created only after the whole message decrypted "
                                            "(default: stdout, streamed; a failure at the end still exits non-zero)")
    dec.add_argument("input", nargs="?", help="CMS file: DER/BER, PEM or S/MIME (default: stdin)")
    dec.set_defaults(func=cmd_cms_decrypt)
    add_token_options(dec)
