"""``tokencsp replay init|status|prune [TARGET]``: look after a replay cache (docs/FLEET.md).

TARGET is what ``open --replay-db`` takes: a PostgreSQL connection string
(``postgresql://…``, ``service=NAME``) or an SQLite file; default
``$TOKENCSP_REPLAY_DB``.  ``init`` and ``status`` need PostgreSQL; ``prune``
works on both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..replay import ENV_REPLAY_DB, PostgresReplayCache, open_cache, parse_duration
from ..replay.factory import refuse_password_on_command_line
from ..replay.postgres import is_postgres_dsn
from ._common import Console, argument
from ._status import ExitStatus

__all__ = ["configure", "connection_target"]


def connection_target(option: str) -> Callable[[str], str]:
    """An argparse ``type=``: the string itself, refused (exit 2) when it carries a password."""
    def check(text: str) -> str:
        try:
            refuse_password_on_command_line(text, option)
        except ConfigError as exc:
            if "psycopg" in str(exc):  # cannot parse it here; using it will say what to install
                return text
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option}: ")) from None
        return text
    return check


def _target(args: argparse.Namespace) -> str:
    target = args.target or os.environ.get(ENV_REPLAY_DB)
    if not target:
        raise ConfigError(f"no replay cache named: give a postgresql:// URL or set {ENV_REPLAY_DB}")
    return target


def _postgres(args: argparse.Namespace, **kwargs: Any) -> PostgresReplayCache:
    target = _target(args)
    if not is_postgres_dsn(target):
        raise ConfigError(f"replay {args.replay_command} needs a PostgreSQL connection string "
                          "(postgresql://… or service=NAME); SQLite caches set themselves up")
    return PostgresReplayCache(target, **kwargs)


def cmd_init(args: argparse.Namespace, console: Console) -> ExitStatus:
    retention = args.retention
    with _postgres(args, retention=retention) as cache:
        if retention is not None:
            cache.raise_retention(retention)
        facts = cache.status()
    console.out(f"replay cache ready: schema version {facts['schema_version']}, "
                f"ids kept {_duration(facts['retention'])} past their timestamp")
    return ExitStatus.OK


def cmd_status(args: argparse.Namespace, console: Console) -> ExitStatus:
    with _postgres(args) as cache:
        facts = cache.status()
    if args.json:
        console.out(json.dumps(facts, indent=2))
        return ExitStatus.OK
    horizon = facts["horizon"]
    lines = {
        "schema version": facts["schema_version"],
        "ids stored": f"{facts['ids']} ({facts['prunable']} prunable now)",
        "oldest / newest timestamp": f"{_when(facts['oldest_timestamp'])} / {_when(facts['newest_timestamp'])}",
        "retention": _duration(facts["retention"]),
        "horizon (older timestamps refused)": "none yet" if horizon is None else _when(horizon),
        "senders": facts["senders"],
        "serial counters": facts["serial_counters"],
        "database clock - this host's": f"{-facts['clock_offset']:+.3f} s",
        "server": f"PostgreSQL {facts['server_version']}{' (standby!)' if facts['standby'] else ''}",
        "fsync / synchronous_commit": f"{facts['fsync']} / {facts['synchronous_commit']}",
        "synchronous_standby_names": facts["synchronous_standby_names"] or "(none: a failover may lose commits)",
    }
    for name, value in lines.items():
        console.out(f"{name}: {value}")
    return ExitStatus.OK


def cmd_prune(args: argparse.Namespace, console: Console) -> ExitStatus:
    with open_cache(_target(args)) as cache:
        postgres = isinstance(cache, PostgresReplayCache)
        removed = cache.prune(batch=args.batch) if postgres else cache.prune(time.time())  # type: ignore[call-arg]
    console.out(f"pruned {removed} expired ids")
    return ExitStatus.OK


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"


def configure(command: str, replay: argparse.ArgumentParser) -> None:
    actions = replay.add_subparsers(dest="replay_command", metavar="ACTION", required=True)
    target_help = f"postgresql://… URL or service=NAME (default: ${ENV_REPLAY_DB}); password from ~/.pgpass"
    init = actions.add_parser("init", help="create (or migrate) the schema of a PostgreSQL replay cache")
    init.add_argument("--retention", metavar="DURATION", type=argument(parse_duration),
                      help="keep ids at least this long past their timestamp (default 24h5m, the default "
                           "--max-age + --max-skew; only ever raised)")
    status = actions.add_parser("status", help="schema, ids stored, retention, clock offset, durability settings")
    status.add_argument("--json", action="store_true")
    prune = actions.add_parser("prune", help="delete ids no receiver can accept any more (batched)")
    prune.add_argument("--batch", type=int, default=10_000, metavar="N", help="ids per transaction (default 10000)")
    for parser, func in ((init, cmd_init), (status, cmd_status), (prune, cmd_prune)):
        parser.add_argument("target", nargs="?", metavar="TARGET", type=connection_target("TARGET"),
                            help=target_help if parser is not prune else target_help + ", or an SQLite file")
        parser.set_defaults(func=func)
