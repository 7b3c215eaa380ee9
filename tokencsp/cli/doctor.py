"""``tokencsp doctor``: is this machine ready? One line per check, exit 6 when one fails.

Checks, in order: the PKCS#11 module loads, the token is there, login works,
the RSA mechanisms each import path needs are offered, the clock is plausible,
the replay cache opens, the agent.  A check that depends on a failed one is
``skipped``.  The PIN comes from the usual sources and is never printed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import TokenCSPError
from ._common import Console, add_token_options
from ._status import ExitStatus

if TYPE_CHECKING:
    from ..provider import Provider

__all__ = ["CLOCK_FLOOR", "configure"]

# Before this the system clock is unset (a board without RTC boots in 1970): every sealed message would
# look as if it came from the future.
CLOCK_FLOOR = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

OK, FAIL, SKIP = "ok", "FAIL", "skipped"


class _Report:
    def __init__(self, console: Console, args: argparse.Namespace) -> None:
        self.console = console
        self.args = args
        self.failed = False

    def line(self, check: str, outcome: str, detail: str) -> None:
        self.failed |= outcome == FAIL
        self.console.out(f"{check}: {outcome}: {detail}")

    def run(self, check: str, probe: Callable[[], str]) -> bool:
        try:
            detail = probe()
        except TokenCSPError as exc:
            from ._hints import hint_for

            hint = hint_for(exc, self.args)
            self.line(check, FAIL, str(exc) + (f" (hint: {hint})" if hint else ""))
            return False
        self.line(check, OK, detail)
        return True


def cmd_doctor(args: argparse.Namespace, console: Console) -> ExitStatus:
    report = _Report(console, args)
    provider: list[Provider] = []
    if not report.run("module", lambda: _module(args)):
        report.line("token", SKIP, "needs the module")
        report.line("login", SKIP, "needs the token")
        report.line("mechanisms", SKIP, "needs a login")
    elif not report.run("token", lambda: _token(args)):
        report.line("login", SKIP, "needs the token")
        report.line("mechanisms", SKIP, "needs a login")
    elif not report.run("login", lambda: _login(args, provider)):
        report.line("mechanisms", SKIP, "needs a login")
    else:
        with provider[0]:
            report.run("mechanisms", lambda: _mechanisms(provider[0]))
    report.run("clock", _clock)
    report.run("replay cache", lambda: _replay_cache(args))
    report.run("agent", _agent)
    return ExitStatus.DOCTOR if report.failed else ExitStatus.OK


def _agent() -> str:
    """Whether a `tokencsp agent` answers where the commands would look for one (docs/AGENT.md)."""
    import os

    from .. import agentclient

    if os.environ.get(agentclient.ENV_AGENT, "").lower() == "off":
        return "off (TOKENCSP_AGENT=off: every command opens the token itself)"
    path = agentclient.socket_path()
    try:
        status = agentclient.status_of(path)
    except agentclient.AgentUnavailable as exc:
        return f"not running ({exc}); every command opens the token itself"
    login = "logged in" if status.get("logged_in") else "not logged in"
    return f"running at {path} (pid {status.get('pid')}, token {status.get('token')!r}, {login})"


def _module(args: argparse.Namespace) -> str:
    from ..config import resolve_selector
    from ..provider import describe_module

    info = describe_module(resolve_selector(module=args.module, uri=args.uri).module)
    return (f"{info['path']} ({info['manufacturer']}, {info['description']}, library {info['library_version']}, "
            f"Cryptoki {info['cryptoki_version']})")


def _token(args: argparse.Namespace) -> str:
    from ..config import resolve_selector
    from ..errors import TokenNotFoundError
    from ..provider import list_tokens

    selector = resolve_selector(module=args.module, token=args.token, serial=args.serial, uri=args.uri)
    tokens = list_tokens(selector.module)
    matches = [(label, serial) for label, serial in tokens
               if selector.token_label in (None, label) and selector.token_serial in (None, serial)]
    if selector.token_label is None and selector.token_serial is None:
        raise TokenNotFoundError("no token named: give a label (--token) or a serial")
    if len(matches) != 1:
        wanted = selector.token_label if selector.token_label is not None else f"serial {selector.token_serial}"
        raise TokenNotFoundError(f"no token with label {wanted!r}" if not matches
                                 else f"{len(matches)} tokens match {wanted!r}; select by serial")
    label, serial = matches[0]
    return f"{label!r}, serial {serial} ({len(tokens)} initialised token(s) in the module)"


def _login(args: argparse.Namespace, opened: list[Provider]) -> str:
    from ._common import open_provider

    started = time.monotonic()
    provider = open_provider(args)
    opened.append(provider)
    return f"logged in to {provider.token_label!r} in {(time.monotonic() - started) * 1000:.0f} ms"


def _mechanisms(provider: Provider) -> str:
    from ..errors import TokenError

    offered = provider.mechanisms
    unwrap, decrypt = offered["unwrap"], offered["decrypt"]
    paths = []
    if "CKM_RSA_PKCS" in unwrap:
        paths.append("SIMPLEBLOB PKCS#1 v1.5 (unwrap)")
    if "CKM_RSA_PKCS_OAEP" in unwrap:
        paths.append("CRYPT_OAEP (unwrap)")
    if decrypt:
        paths.append("card keys (decrypt: " + ", ".join(decrypt) + ")")
    if not unwrap and not decrypt:
        raise TokenError("the token offers no RSA mechanism to unwrap or decrypt with: no session key can be imported")
    return "; ".join(paths)


def _clock() -> str:
    now = datetime.datetime.now(datetime.UTC)
    shown = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    if now < CLOCK_FLOOR:
        raise TokenCSPError(f"the system clock says {shown}: it is not set, so every sealed message would be "
                            "refused as from the future (set it, e.g. with NTP)")
    return f"{shown} (sealed messages are refused past --max-age, or --max-skew ahead of it)"


def _replay_cache(args: argparse.Namespace) -> str:
    from ..replay import ENV_REPLAY_DB, default_state_dir, open_cache
    from ..replay.postgres import dsn_has_password, is_postgres_dsn

    target = args.replay_db or os.environ.get(ENV_REPLAY_DB) or None
    if target is not None and is_postgres_dsn(target):
        where = "PostgreSQL " + ("(password not shown)" if dsn_has_password(target) else target)
    else:
        where = f"SQLite {os.path.abspath(target) if target else default_state_dir() / 'replay.sqlite3'}"
    with open_cache(target):
        pass
    return f"{where} opens for reading and writing"


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    from .replay import connection_target

    parser.description = ("One line per check: module, token, login, mechanisms, clock, replay cache, agent; "
                          f"exit {int(ExitStatus.DOCTOR)} when one fails.")
    parser.add_argument("--replay-db", metavar="PATH_OR_URL", type=connection_target("--replay-db"),
                        help="the replay cache to check (default: $TOKENCSP_REPLAY_DB, else the state dir's)")
    parser.set_defaults(func=cmd_doctor)
    add_token_options(parser)
