"""What every command shares: the console (injected streams), inputs/outputs, the token.

Commands write only through :class:`Console`; nothing in ``tokencsp.cli``
touches ``sys.stdout``/``sys.stderr`` directly, so ``main(argv, stdout=...,
stderr=...)`` captures everything a command says.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, TextIO, TypeVar

from ..errors import ConfigError, OutputError, TokenCSPError
from ..fileio import atomic_output, open_input
from . import _log
from ._result import Results

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from ..config import TokenSelector
    from ..provider import Provider

__all__ = ["PROG", "Console", "add_token_options", "argument", "deprecated", "deprecation", "hint_of", "input_stream",
           "open_provider", "output_stream", "read_file", "recipient_key", "with_hint"]

PROG = "tokencsp"



class Console:
    """The streams of one ``main`` call; the one place that formats ``tokencsp: error:``/``hint:`` lines."""

    def __init__(self, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.results = Results()  # main replaces it when --json/--status-fd ask for result objects

    def out(self, text: str = "") -> None:
        """One line of a command's result on stdout."""
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        """A plain line on stderr (counts, confirmations), not prefixed."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def say(self, text: str) -> None:
        """``tokencsp: TEXT`` on stderr: what happened, for a person watching."""
        self.note(f"{PROG}: {text}")

    def error(self, text: str) -> None:
        self.note(f"{PROG}: error: {text}")

    def hint(self, text: str) -> None:
        self.note(f"{PROG}: hint: {text}")

    def warn(self, text: str) -> None:
        self.note(f"{PROG}: warning: {text}")

    def progress(self, text: str, *, done: bool) -> None:
        """A progress line redrawn in place (terminals only; see :meth:`stderr_is_terminal`)."""
        self.stderr.write("\r" + text + ("\n" if done else ""))
        self.stderr.flush()

    def stderr_is_terminal(self) -> bool:
        isatty = getattr(self.stderr, "isatty", None)
        return bool(isatty and isatty())

    def refuse_binary_to_terminal(self, path: str | None) -> None:
        """Binary output for stdout (``path`` None or "-") is refused when stdout is a terminal."""
        isatty = getattr(self.stdout, "isatty", None)
        if _is_std(path) and isatty and isatty():
            from ._status import UsageError

            raise UsageError("refusing to write binary data to a terminal: use -o FILE or redirect stdout")

    def binary_stdout(self) -> BinaryIO:
        self.stdout.flush()
        buffer = getattr(self.stdout, "buffer", None)
        if buffer is None:
            raise OutputError("standard output takes no binary data here; use -o FILE")
        return buffer  # type: ignore[no-any-return]

    def binary_stdin(self) -> BinaryIO:
        buffer = getattr(self.stdin, "buffer", None)
        if buffer is None:
            raise OutputError("standard input gives no binary data here; name an input file")
        return buffer  # type: ignore[no-any-return]


E = TypeVar("E", bound=BaseException)


def with_hint(exc: E, hint: str) -> E:
    """``exc`` carrying a ``tokencsp: hint:`` line that ``main`` prints after the error line."""
    exc.tokencsp_hint = hint  # type: ignore[attr-defined]
    return exc


def hint_of(exc: BaseException) -> str | None:
    hint = getattr(exc, "tokencsp_hint", None)
    return hint if isinstance(hint, str) else None


def deprecation(namespace: argparse.Namespace, text: str) -> None:
    """Note that an old spelling was used; ``main`` prints one ``tokencsp: warning:`` line for it."""
    notes: list[str] = getattr(namespace, "deprecated_options", None) or []
    if text not in notes:
        notes.append(text)
    namespace.deprecated_options = notes


def deprecated(new: str, *, append: bool = False) -> type[argparse.Action]:
    """An argparse action for an old option spelling kept for one release: it stores like ``new`` and
    notes a deprecation (README "Option names")."""
    class Alias(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                     option_string: str | None = None) -> None:
            deprecation(namespace, f"{option_string} is deprecated and goes in the next release: use {new}")
            if append:
                setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
            else:
                setattr(namespace, self.dest, values)
    return Alias


def _is_std(path: str | None) -> bool:
    return path in (None, "-")


@contextlib.contextmanager
def output_stream(path: str | None, console: Console, mode: int = 0o600) -> Iterator[BinaryIO]:
    """``path`` written atomically (fileio.atomic_output), or the console's stdout for None/"-".

    A ``path`` that is not a regular file (``/dev/null``, a FIFO) is written in place, like stdout.
    """
    if _is_std(path):
        sink = console.binary_stdout()
        yield sink
        sink.flush()
        return
    with atomic_output(path, mode=mode, devices_in_place=True) as sink:
        yield sink


@contextlib.contextmanager
def input_stream(path: str | None, console: Console) -> Iterator[BinaryIO]:
    """``path`` opened for reading, or the console's stdin for None/"-"."""
    if _is_std(path):
        yield console.binary_stdin()
        return
    with open_input(path) as source:
        yield source


def read_file(path: str | None, console: Console) -> bytes:
    from ..errors import InputError

    with input_stream(path, console) as source:
        try:
            return source.read()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None


T = TypeVar("T")


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a library parser: its ConfigError becomes a usage error (exit 2)."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def positive(kind: Callable[[str], T], least: float = 0, exclusive: bool = True) -> Callable[[str], T]:
    """``type=`` for a number above (or at least) ``least``."""
    def convert(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < least or (exclusive and value == least):  # type: ignore[operator]
            bound = f"above {least:g}" if exclusive else f"at least {least:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return convert


def uri_option(text: str) -> str:
    """``--uri``: a well-formed RFC 7512 URI without ``pin-value`` (argv is readable by every local user)."""
    from .. import pkcs11uri

    try:
        parsed = pkcs11uri.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if parsed.pin_value is not None:
        raise argparse.ArgumentTypeError(
            "pin-value is refused on the command line (every local user can read it in /proc/PID/cmdline): "
            "use pin-source=file:PATH, set TOKENCSP_PIN, or put the URI in TOKENCSP_URI")
    return text


def recipient_key(path: str, console: Console, *, certificates: bool = False) -> RSAPublicKey:
    """The public key in ``path`` to encrypt to (``certificates``: an X.509 certificate too); a signature
    key's PUBLICKEYBLOB (CALG_RSA_SIGN) is refused, since its private half on the token can never unwrap."""
    return recipient_key_from(read_file(path, console), path, certificates=certificates)


def recipient_key_from(data: bytes, path: str, *, certificates: bool = False) -> RSAPublicKey:
    """:func:`recipient_key` of ``data`` already read from ``path`` (which names it in the error)."""
    from ..blobs import AlgId, BlobType, PublicKeyBlob
    from ..errors import BlobFormatError, InvalidKeyError
    from ..pubkeys import load_public_key, load_recipient

    if data[:1] == bytes([BlobType.PUBLICKEYBLOB]):
        try:
            alg_id = PublicKeyBlob.from_bytes(data).alg_id
        except BlobFormatError:
            alg_id = None  # load_public_key says what is wrong with it
        if alg_id == AlgId.CALG_RSA_SIGN:
            raise InvalidKeyError(f"{path} is a signature key (CALG_RSA_SIGN PUBLICKEYBLOB), which cannot "
                                  "unwrap a session key: use the recipient's exchange key (CALG_RSA_KEYX)")
    return load_recipient(data) if certificates else load_public_key(data)


def add_token_options(parser: argparse.ArgumentParser, *, suppress: bool = True) -> None:
    """The token-selection options; on subcommands with SUPPRESSed defaults so that an
    option given before the subcommand is not overwritten by the subcommand's unset one."""
    default = argparse.SUPPRESS if suppress else None
    token = parser.add_argument_group("token selection")
    token.add_argument("--module", default=default,
                       help="PKCS#11 module path, or p11-kit-proxy (env TOKENCSP_MODULE; default: SoftHSM2)")
    token.add_argument("--module-name", default=default, metavar="NAME",
                       help="a module registered with p11-kit, e.g. softhsm2 (see 'p11-kit list-modules')")
    token.add_argument("--token", default=default, help="token label (env TOKENCSP_TOKEN)")
    token.add_argument("--serial", default=default, help="token serial number")
    token.add_argument("--uri", default=default, type=uri_option,
                       help="RFC 7512 PKCS#11 URI (env TOKENCSP_URI); pin-value only in TOKENCSP_URI")
    token.add_argument("--pin-file", default=default,
                       help="file whose first line is the user PIN (else TOKENCSP_PIN or a prompt)")


def open_provider(args: argparse.Namespace, *, agent: bool = False) -> Provider:
    """The token named by the global options; only commands that need the token load the module.

    With ``agent``: the running ``tokencsp agent`` when one answers for this token and
    TOKENCSP_AGENT is not ``off`` (docs/AGENT.md); else the token itself.  The options are
    resolved into a selector once (twice with ``--module-name`` and an agent to ask: see below).
    """
    from ..config import find_module

    module_name = getattr(args, "module_name", None)
    selector = None
    if agent and _agent_wanted():
        # The agent check has never taken --module-name (the URI's module-name= it does): without it here.
        selector = _selector(args)
        remote = _agent_provider(args, selector)
        if remote is not None:
            return remote
    if selector is None or module_name is not None:
        selector = _selector(args, module_name)
    from ..provider import Provider

    if _log.enabled():
        try:
            module = find_module(selector.module)
        except TokenCSPError as exc:
            module = f"? ({exc})"
        _log.debug("module %s; token label %r, serial %r, key object %r; PIN from %s", module,
                  selector.token_label, selector.token_serial, selector.object_label,
                  _pin_source(args.pin_file, selector.pin_value is not None, selector.pin_source))
    started = time.monotonic()
    provider = Provider.open_selected(selector, pin_file=args.pin_file)
    _log.debug("token %r (serial %s) open and logged in after %.1f ms", provider.token_label,
              provider.token_serial, (time.monotonic() - started) * 1000)
    return provider


def _selector(args: argparse.Namespace, module_name: str | None = None) -> TokenSelector:
    from ..config import resolve_selector

    return resolve_selector(module=args.module, token=args.token, serial=args.serial, uri=args.uri,
                            module_name=module_name)


def _agent_wanted() -> bool:
    import os

    if os.environ.get("TOKENCSP_AGENT", "").lower() == "off":
        _log.debug("agent: TOKENCSP_AGENT=off, opening the token directly")
        return False
    return True


def _agent_provider(args: argparse.Namespace, selector: TokenSelector) -> Provider | None:
    """An AgentProvider (typed as the Provider it stands in for), or None to open the token directly."""
    from .. import agentclient
    from ..config import find_module, resolve_pin

    module = find_module(selector.module) if selector.module else None
    try:
        remote = agentclient.connect(selector, module, lambda: resolve_pin(None, args.pin_file, selector))
    except agentclient.AgentUnavailable as exc:
        _log.debug("agent: not used (%s); opening the token directly", exc)
        return None
    _log.debug("agent at %s serves token %r (serial %s)", remote.path, remote.token_label, remote.token_serial)
    return remote  # type: ignore[return-value]


def _pin_source(pin_file: str | None, uri_pin: bool, uri_source: str | None) -> str:
    """Where the PIN will come from (config.resolve_pin's order), never the PIN."""
    import os

    from ..config import ENV_PIN

    if pin_file:
        return f"--pin-file {pin_file}"
    if uri_pin:
        return "the pin-value of TOKENCSP_URI"
    if uri_source:
        return f"the URI's pin-source {uri_source}"
    if os.environ.get(ENV_PIN):
        return ENV_PIN
    return "a prompt on the terminal"
