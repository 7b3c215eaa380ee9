"""The parser and ``main``: the only place that turns errors into exit statuses.

Every error is one line on stderr, ``tokencsp: error: ...``, and a non-zero
exit; no traceback, no partial output.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .. import __version__, errors
from . import _log
from ._common import PROG, Console, add_token_options, hint_of
from ._result import Results
from ._status import ExitStatus, UsageError, epilog, status_for

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

ENV_DEBUG = "TOKENCSP_DEBUG"

__all__ = ["COMMANDS", "Parser", "build_parser", "main"]

TOKEN_HELP = """
token selection: --module/TOKENCSP_MODULE (default: SoftHSM2; p11-kit-proxy: every module p11-kit
knows), --module-name (a module registered with p11-kit), --token/TOKENCSP_TOKEN (label), --serial,
or --uri/TOKENCSP_URI (RFC 7512, e.g. "pkcs11:token=dev;id=%01?pin-source=file:/run/pin"; every
attribute is used or refused by name, and one that contradicts an option is refused).
PIN: TOKENCSP_PIN, --pin-file (mode 0600), the URI's pin-source, pin-value in TOKENCSP_URI only,
or a prompt on a terminal. PINs are never accepted on the command line.
"""

# command: (module in tokencsp.cli that defines it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "key": ("keys", "key containers on the token"),
    "token": ("tokens", "tokens in the PKCS#11 module"),
    "blob": ("blobs", "CryptoAPI key BLOB files"),
    "capi": ("capi", "CryptoAPI-compatible SIMPLEBLOB + CryptEncrypt files"),
    "seal": ("seal", "seal a message to a recipient's key (replay-proof format, docs/FORMAT.md)"),
    "open": ("seal", "open a sealed message with a key on the token"),
    "inspect": ("seal", "show a sealed message's header without decrypting it"),
    "listen": ("exchange", "receive files over the three-phase exchange (docs/THREEPHASE.md)"),
    "send": ("exchange", "send files over the three-phase exchange (docs/THREEPHASE.md)"),
    "cms": ("cms", "CMS / S-MIME EnvelopedData (openssl cms) with the key on the token (docs/CMS.md)"),
    "replay": ("replay", "set up, inspect and prune a replay cache (docs/FLEET.md)"),
    "doctor": ("doctor", "check module, token, login, mechanisms, clock, replay cache: one line each"),
    "agent": ("agent", "hold the token login for other tokencsp commands; agent status/stop (docs/AGENT.md)"),
    "completion": ("completion", "print a bash or zsh completion script generated from this parser"),
}


class _ParserDone(Exception):
    """argparse wanted to exit (help, version, usage error): main returns ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse writing to the console's streams and returning instead of calling sys.exit.

    No abbreviated options (``--ke`` is not ``--key``), an unknown option is an
    error in the command that got it (never a file name), and a near miss gets
    a "did you mean" hint.
    """

    def __init__(self, *args: Any, console: Console, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.console = console
        self._hint: str | None = None

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", functools.partial(Parser, console=self.console))
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            options = [extra for extra in extras if extra.startswith("-") and extra != "-"]
            if options:
                self._suggest(options[0].partition("=")[0], list(self._option_string_actions))
                self.error(f"unknown option {options[0]}")
            self.error(f"unexpected argument {extras[0]!r}")
        return parsed, extras

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            self._suggest(str(value), [str(choice) for choice in action.choices])
        super()._check_value(action, value)

    def _suggest(self, wrong: str, candidates: list[str]) -> None:
        import difflib  # only for a usage error: not on every start

        close = difflib.get_close_matches(wrong, candidates, n=1)
        self._hint = f"did you mean {close[0]!r}?" if close else None

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            if file is None or file is sys.stdout:
                file = self.console.stdout
            elif file is sys.stderr:
                file = self.console.stderr
            file.write(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.console.stderr.write(message)
        raise _ParserDone(status)

    def error(self, message: str) -> NoReturn:
        """A usage error: one line naming where the usage is (and a hint for a near miss), exit 2."""
        self.console.error(f"{message} (see '{self.prog} --help')")
        if self._hint:
            self.console.hint(self._hint)
        raise _ParserDone(ExitStatus.USAGE)


class _LazyCommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose options (and imports) are loaded only when the command is chosen.

    ``tokencsp --version`` or ``tokencsp seal`` then never import python-pkcs11,
    the three-phase stack or the replay cache.
    """

    def load(self, name: str) -> None:
        loaded: set[str] = self.__dict__.setdefault("_tokencsp_loaded", set())
        if name not in loaded:
            module = importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")
            module.configure(name, self._name_parser_map[name])
            loaded.add(name)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values and values[0] in self._name_parser_map:
            self.load(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser(console: Console | None = None, *, load_all: bool = False) -> Parser:
    """The whole parser; a command's own options are added when it is chosen (or all, with ``load_all``)."""
    console = console or Console(sys.stdout, sys.stderr, sys.stdin)
    parser = Parser(
        prog=PROG,
        description="CryptoAPI-compatible session-key exchange with the receiver's key on a PKCS#11 token.",
        epilog=epilog() + TOKEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        console=console,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help=f"debug log on stderr (also {ENV_DEBUG}=1): module, token, key, files, timings; "
                             "never PINs, keys or plaintext")
    # Token options are accepted before or after the subcommand.
    add_token_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, action=_LazyCommands)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text)
    if load_all:
        for name in COMMANDS:
            commands.load(name)
    return parser


def _default_key_from_uri(args: argparse.Namespace) -> None:
    """``--key`` may be left out when the PKCS#11 URI names the key (``object=`` or ``id=``);
    given, it must agree with the URI's ``object=`` (else exit 2)."""
    if not hasattr(args, "key"):
        return
    from ..config import resolve_selector

    selector = resolve_selector(uri=args.uri, key=args.key)
    if args.key is None:
        args.key = selector.object_label
        if args.key is None and selector.object_id is None:
            raise UsageError("no key named: give --key NAME or a --uri with object=NAME or id=")


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """Run one ``tokencsp`` command; everything it prints goes to ``stdout``/``stderr`` (default: sys's)."""
    console = Console(stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin)
    parser = build_parser(console)
    try:
        args = parser.parse_args(argv)
    except _ParserDone as done:
        return done.status
    args.root_parser = parser  # for a command that describes the command line itself (completion)
    if args.verbose or os.environ.get(ENV_DEBUG, "") not in ("", "0"):
        _log.enable(console.stderr, PROG)
    for note in getattr(args, "deprecated_options", None) or []:
        console.warn(note)
    try:
        console.results = Results.from_args(args, console.stdout, console.stderr)
        _default_key_from_uri(args)
        _log.debug("command %s", " ".join(_command_path(args)))
        started = time.monotonic()
        status = int(args.func(args, console))
        _log.debug("done in %.1f ms, exit %d", (time.monotonic() - started) * 1000, status)
        return status
    except errors.TokenCSPError as exc:
        _log.debug("refused: %s (%s)", type(exc).__name__, int(status_for(exc)))
        console.error(str(exc))
        hint = hint_of(exc) or _hint_for(exc, args)
        if hint:
            console.hint(hint)
        console.results.failed(exc, hint)
        return int(status_for(exc))
    except KeyboardInterrupt as exc:
        console.error("interrupted")
        console.results.failed(exc)
        return int(status_for(exc))
    except BrokenPipeError:
        return int(ExitStatus.ERROR)
    finally:
        _log.disable()


def _hint_for(exc: BaseException, args: argparse.Namespace) -> str | None:
    from ._hints import hint_for

    return hint_for(exc, args)


def _command_path(args: argparse.Namespace) -> list[str]:
    names = [args.command]
    for attr in ("key_command", "token_command", "blob_command", "capi_command", "replay_command", "agent_command"):
        if getattr(args, attr, None):
            names.append(getattr(args, attr))
    return names
