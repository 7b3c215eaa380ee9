"""``tokencsp seal``, ``tokencsp open`` and ``tokencsp inspect``: sealed messages (docs/FORMAT.md).

Errors are raised as TokenCSPError and printed by ``main`` as one line with
the refusal's own exit status.
"""

from __future__ import annotations

import argparse
import datetime
import os
from typing import Any, BinaryIO

from .. import envelope
from ..errors import ConfigError, EnvelopeFormatError, InvalidKeyError, OutputError
from ..fileio import writes_in_place
from ..pubkeys import fingerprint
from ..replay import ReplayPolicy, draw_serial, open_cache, parse_duration
from ..trust import TrustSet
from . import _log
from ._common import (
    Console,
    add_token_options,
    argument,
    input_stream,
    open_provider,
    output_stream,
    read_file,
    recipient_key,
)
from ._progress import ProgressReader
from ._result import add_result_options
from ._status import ExitStatus, UsageError, status_for
from .replay import connection_target

__all__ = ["configure", "describe"]

DEFAULT_MAX_AGE = "24h"
DEFAULT_MAX_SKEW = "5m"


def _recipients(args: argparse.Namespace, console: Console) -> list[Any]:
    """Every --to and every key in every --to-file, in the order given (the format sorts them)."""
    from ..pubkeys import load_recipients

    keys = [recipient_key(path, console, certificates=True) for path in args.to or ()]
    for path in args.to_file or ():
        try:
            keys += load_recipients(read_file(path, console))
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"{path}: {exc}") from None
    if not keys:
        raise UsageError("seal needs a recipient: --to PUBKEY_OR_CERT or --to-file RECIPIENTS")
    return keys


def cmd_seal(args: argparse.Namespace, console: Console) -> ExitStatus:
    console.refuse_binary_to_terminal(args.output)
    recipient = _recipients(args, console)
    if args.sign_with is None:
        return _seal(args, console, recipient, signer=None, serial=None)
    with open_provider(args, agent=True) as provider:
        signer = provider.key(args.sign_with)
        serial = draw_serial(fingerprint(signer.public_key()), args.serial_db)
        return _seal(args, console, recipient, signer, serial)


def _seal(args: argparse.Namespace, console: Console, recipient: Any, signer: Any,
          serial: int | None) -> ExitStatus:
    with input_stream(args.input, console) as raw, output_stream(args.output, console) as sink:
        source = ProgressReader.wrap(raw, "sealing", console, args.quiet)
        envelope.seal(source, sink, recipient, signer=signer, serial=serial, oaep=not args.pkcs1)  # type: ignore[arg-type]
    return ExitStatus.OK


def _opening_rules(args: argparse.Namespace) -> tuple[ReplayPolicy, TrustSet | None, dict[bytes, Any] | None]:
    """The replay policy, the --trust set and its keys by fingerprint."""
    policy = ReplayPolicy(max_age=args.max_age, max_skew=args.max_skew)
    trusted = TrustSet.from_paths(args.trust) if args.trust else None
    if trusted is not None and not trusted:
        raise ConfigError("--trust named no public key files")
    return policy, trusted, trusted.by_fingerprint() if trusted is not None else None


def cmd_open(args: argparse.Namespace, console: Console) -> ExitStatus:
    if args.out_dir is not None:
        return _open_batch(args, console)
    if len(args.input) > 1:
        raise UsageError("several sealed messages need --out-dir DIR (one output file each)")
    path = args.input[0] if args.input else None
    policy, trusted, trust = _opening_rules(args)
    _log.debug("replay cache %s", args.replay_db or "(default: TOKENCSP_REPLAY_DB or the state dir)")
    console.results.begin(file=path, output=args.output)
    with open_cache(args.replay_db) as cache, open_provider(args, agent=True) as provider:
        receiver = provider.exchange_key(args.key)
        with input_stream(path, console) as raw, output_stream(args.output, console) as sink:
            source = ProgressReader.wrap(raw, "opening", console, args.quiet)
            # A file is renamed into place only after open_message returns: record the message at the end.
            # (A signed format 2 message from a --trust sender is released at the end either way: the
            # library spools it until its trailer verified, docs/FORMAT.md 9.6 step 8a.)
            # A device or FIFO (-o /dev/null, a named pipe) is written in place: streamed, as stdout is.
            streamed = args.output in (None, "-") or writes_in_place(args.output)
            release = envelope.Release.STREAMING if streamed else envelope.Release.AT_END
            opened = envelope.open_message(source, sink, receiver, cache=cache, policy=policy,  # type: ignore[arg-type]
                                           trust=trust, release=release, allow_pkcs1=args.allow_pkcs1)
    _log.debug("accepted message %s: %d bytes, %s key transport", opened.header.message_id.hex(),
              opened.plaintext_length, "OAEP" if opened.header.oaep else "PKCS#1 v1.5")
    _report_sender(console, opened, trusted)
    console.results.ok(**_opened_fields(opened, trusted))
    return ExitStatus.OK


def _open_batch(args: argparse.Namespace, console: Console) -> ExitStatus:
    """``open --out-dir DIR FILE...``: one line per message; the exit status is the first failure's."""
    from ..batch import open_many, output_paths

    if args.output is not None:
        raise UsageError("--out-dir and -o/--output exclude each other")
    if not args.input:
        raise UsageError("--out-dir needs the sealed message files to open")
    try:  # refused before the token is opened
        output_paths(args.input, args.out_dir)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not os.path.isdir(args.out_dir):
        raise OutputError(f"--out-dir {args.out_dir} is not a directory")
    policy, trusted, trust = _opening_rules(args)
    first_failure = ExitStatus.OK
    opened_count = 0
    with open_cache(args.replay_db) as cache, open_provider(args, agent=True) as provider:
        receiver = provider.exchange_key(args.key)
        for outcome in open_many(args.input, args.out_dir, receiver, cache=cache, policy=policy,
                                 trust=trust, allow_pkcs1=args.allow_pkcs1):
            if outcome.opened is not None:
                opened_count += 1
                if not args.quiet:
                    console.say(f"{outcome.source} -> {outcome.output}: {_sender(outcome.opened, trusted)}")
                console.results.ok(file=outcome.source, output=outcome.output,
                                   **_opened_fields(outcome.opened, trusted))
                continue
            assert outcome.error is not None
            console.results.failed(outcome.error, file=outcome.source, output=outcome.output)
            status = status_for(outcome.error)
            console.error(f"{outcome.source}: {outcome.error} (exit {int(status)})")
            if first_failure is ExitStatus.OK:
                first_failure = status
    console.say(f"opened {opened_count} of {len(args.input)} messages into {args.out_dir}")
    return first_failure


def _verified_name(opened: envelope.Opened, trusted: TrustSet | None) -> str | None:
    """FORMAT.md O8: the sender is named only when a trust set verified it."""
    if opened.sender_verified and trusted is not None:
        return next(n for n in trusted if trusted.fingerprint(n) == opened.verified_sender)
    return None


def _sender(opened: envelope.Opened, trusted: TrustSet | None) -> str:
    """FORMAT.md O8: without a trust set the sender is reported as unverified, never named."""
    name = _verified_name(opened, trusted)
    if name is not None:
        return f"from {name} (signature verified), serial {opened.header.serial}"
    return opened.sender_line()


def _report_sender(console: Console, opened: envelope.Opened, trusted: TrustSet | None) -> None:
    console.say(_sender(opened, trusted))


def _opened_fields(opened: envelope.Opened, trusted: TrustSet | None) -> dict[str, Any]:
    """An opened message's result fields (docs/JSON.md)."""
    header = opened.header
    return {"sender": _verified_name(opened, trusted), "signature_verified": opened.sender_verified,
            "sender_key_id": _hex(header.sender_id), "serial": header.serial,
            "message_id": header.message_id.hex(), "timestamp": _iso(header.timestamp),
            "bytes": opened.plaintext_length, "recipient_key_id": opened.recipient_id.hex(),
            "recipients": len(opened.recipients)}


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _iso(timestamp: float) -> str:
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(pre: envelope.Preamble | envelope.Preamble2) -> dict[str, Any]:
    header = pre.header
    entries = [{"key_id": key_id.hex(), "key_blob_bytes": len(blob)} for key_id, blob in _entries(pre)]
    one = entries[0] if isinstance(pre, envelope.Preamble) else {"key_id": None, "key_blob_bytes": None}
    return {
        "version": header.version,
        "suite": header.suite,
        "recipient_key_id": one["key_id"],  # format 1's one recipient; null in format 2: see "recipients"
        "recipients": entries,
        "sender_key_id": _hex(header.sender_id),
        "signed": header.signed,
        # format 1 signs the prefix; a signed format 2 message also signs every byte in its trailer
        # (docs/FORMAT.md 9.5): what a verified open would prove, not checked here
        "signature_covers": None if not header.signed else ("message" if header.version == 2 else "prefix"),
        "message_id": header.message_id.hex(),
        "timestamp": _iso(header.timestamp),
        "serial": header.serial,
        "chunk_size": header.chunk_size,
        "key_transport": "SIMPLEBLOB, " + ("CRYPT_OAEP (OAEP SHA-1)" if header.oaep else "PKCS#1 v1.5"),
        "key_blob_bytes": one["key_blob_bytes"],
        **({"key_commitment": pre.commitment.hex()} if isinstance(pre, envelope.Preamble2) else {}),
    }


def _entries(pre: envelope.Preamble | envelope.Preamble2) -> list[tuple[bytes, bytes]]:
    if isinstance(pre, envelope.Preamble2):
        return [(entry.recipient_id, entry.key_blob) for entry in pre.entries]
    return [(pre.header.recipient_id, pre.key_blob)]


class _FirstBytes:
    """A reader that keeps what it read first, to tell "not a sealed message" from a broken one."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.first = b""

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if len(self.first) < len(envelope.MAGIC):
            self.first += data[:len(envelope.MAGIC) - len(self.first)]
        return data


def cmd_inspect(args: argparse.Namespace, console: Console) -> ExitStatus:
    console.results.begin(file=args.file)
    with input_stream(args.file, console) as raw:
        source = _FirstBytes(raw)
        try:
            facts = describe(envelope.read_header(source))
        except EnvelopeFormatError:
            if source.first != envelope.MAGIC:
                raise EnvelopeFormatError("not a tokencsp sealed message (no TCSPSEAL magic)") from None
            raise
    console.results.ok(**facts)
    if not console.results.on_stdout:
        for name, value in facts.items():
            console.out(f"{name}: {'-' if value is None else value}")
        console.out("(nothing above is verified until the message is opened)")
    return ExitStatus.OK


def _configure_seal(seal: argparse.ArgumentParser) -> None:
    seal.add_argument("--to", action="append", metavar="PUBKEY_OR_CERT",
                      help="recipient exchange key: PUBLICKEYBLOB, PEM or DER public key, or X.509 certificate "
                           "(PEM/DER; its keyUsage must allow keyEncipherment, validity is not checked); repeat "
                           "for more recipients (up to 16: a primary and a backup token, a team)")
    seal.add_argument("--to-file", action="append", metavar="RECIPIENTS",
                      help="a file of recipients: PEM PUBLIC KEY / CERTIFICATE blocks, text between them ignored; "
                           "with --to or repeated, all are recipients. Two or more recipients make a format 2 "
                           "message (docs/FORMAT.md section 9), which each opens with its own key; the same key "
                           "twice is refused")
    seal.add_argument("--sign-with", metavar="NAME", help="sign with this signature key on your token")
    seal.add_argument("--pkcs1", action="store_true", help="wrap the session key with PKCS#1 v1.5 instead of OAEP")
    seal.add_argument("--serial-db", metavar="URL", type=connection_target("--serial-db"),
                      help="draw --sign-with serial numbers from this PostgreSQL database, shared by all senders "
                           "of the key (default: $TOKENCSP_SERIAL_DB, else a counter file in the state dir)")
    seal.add_argument("-o", "--output", help="output file (default: stdout, but not a terminal)")
    seal.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    seal.add_argument("input", nargs="?", help="plaintext file (default: stdin)")
    seal.set_defaults(func=cmd_seal)
    add_token_options(seal)


def _configure_open(opener: argparse.ArgumentParser) -> None:
    opener.add_argument("--key", metavar="NAME", help="your exchange key on the token (default: object= of --uri)")
    opener.add_argument("--trust", action="append", metavar="PUBKEY_OR_DIR",
                        help="trusted sender public key file or directory; when given, a valid signature is required")
    opener.add_argument("--allow-pkcs1", action="store_true",
                        help="accept a message whose session key travels with PKCS#1 v1.5 (seal --pkcs1); refused "
                             "by default (exit 16): on a key that also serves OAEP messages and three-phase, v1.5 "
                             "unwrapping is only as safe as its timing padding (docs/SECURITY.md)")
    opener.add_argument("--replay-db", metavar="PATH_OR_URL", type=connection_target("--replay-db"),
                        help="replay cache: an SQLite file, or postgresql://... / service=NAME for one shared by "
                             "a fleet, password from ~/.pgpass (default: $TOKENCSP_REPLAY_DB, else "
                             "$XDG_STATE_HOME/tokencsp/replay.sqlite3, else ~/.local/state/tokencsp/replay.sqlite3)")
    opener.add_argument("--max-age", default=DEFAULT_MAX_AGE, metavar="DURATION", type=argument(parse_duration),
                        help=f"oldest timestamp accepted (default {DEFAULT_MAX_AGE}; e.g. 90s, 15m, 7d)")
    opener.add_argument("--max-skew", default=DEFAULT_MAX_SKEW, metavar="DURATION", type=argument(parse_duration),
                        help=f"how far in the future a timestamp may be (default {DEFAULT_MAX_SKEW})")
    opener.add_argument("-o", "--output",
                        help="plaintext file, renamed into place only when the whole message authenticated "
                             "(default: stdout, each chunk after it authenticates; a signed format 2 message "
                             "with --trust: all of it once its trailer signature verified, held meanwhile in a spool "
                             "of at most $TOKENCSP_SPOOL_MAX bytes, default 64 MiB)")
    opener.add_argument("--out-dir", metavar="DIR",
                        help="open every FILE given into DIR/<its name without a final .tcsp>, each linked into "
                             "place only once it authenticated and was recorded; an existing file is never "
                             "overwritten, two FILEs with one output name are refused; a message that fails gets "
                             "one line with its exit status and the others go on; the exit status is the first "
                             "failure's (0 when all opened)")
    opener.add_argument("-q", "--quiet", action="store_true", help="no progress line (with --out-dir: no line per "
                                                                   "opened message)")
    opener.add_argument("input", nargs="*", metavar="FILE",
                        help="sealed message (default: stdin); several only with --out-dir")
    opener.set_defaults(func=cmd_open)
    add_result_options(opener, "open", data_on_stdout=True)
    add_token_options(opener)


def _configure_inspect(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument("file")
    add_result_options(inspect, "inspect", data_on_stdout=False)
    inspect.set_defaults(func=cmd_inspect)


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    {"seal": _configure_seal, "open": _configure_open, "inspect": _configure_inspect}[command](parser)
