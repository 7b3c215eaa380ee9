"""``tokencsp listen`` and ``tokencsp send``: the three-phase exchange (docs/THREEPHASE.md) as commands.

Errors are raised as TokenCSPError and printed as one line by ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConnectFailed, OutputError
from ..net import NetConfig, Receiver, SessionResult, send_files
from ..threephase import TrustSet, check_name
from ._common import Console, add_token_options, argument, deprecated, open_provider, positive
from ._result import add_result_options
from ._status import ExitStatus, UsageError

__all__ = ["configure", "parse_address"]

PROGRESS_MIN_BYTES = 16 << 20


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def _config(args: argparse.Namespace) -> NetConfig:
    sessions = getattr(args, "max_sessions", NetConfig.max_sessions)
    return NetConfig(phase_timeout=args.timeout, idle_timeout=max(args.timeout, 60.0), max_sessions=sessions)


def _own_name(args: argparse.Namespace, key_name: str | None = None) -> str | None:
    """--name, else the key's name; None while neither is known (a URI with id= only names the key)."""
    name = args.name or args.key or key_name
    return check_name(name) if name else None


def _session_fields(result: SessionResult, out_dir: str) -> dict[str, Any]:
    """A listen result object's fields: the peer, its address and the complete files kept (name, bytes)."""
    files = []
    for name in result.files:
        try:
            size: int | None = os.stat(os.path.join(out_dir, result.peer or "", name)).st_size
        except OSError:
            size = None
        files.append({"name": name, "bytes": size})
    return {"peer": result.peer, "address": result.address, "files": files,
            "bytes": sum(f["bytes"] or 0 for f in files)}


def _reporter(console: Console, out_dir: str) -> Callable[[SessionResult], None]:
    def report(result: SessionResult) -> None:
        who = result.peer or "unauthenticated peer"
        fields = _session_fields(result, out_dir)
        if result.error is None:
            console.results.ok(**fields)
        else:
            console.results.failed(result.error, **fields)
        if result.ok:
            console.say(f"received {len(result.files)} file(s) from {who} ({result.address}): "
                        f"{', '.join(result.files)}")
        else:
            console.say(f"session with {who} ({result.address}) failed: {result.error}"
                        + (f" (kept {len(result.files)} complete file(s))" if result.files else ""))
    return report


def _report_unauthenticated(report: Callable[[SessionResult], None]) -> Callable[[SessionResult], None]:
    def only_unauthenticated(result: SessionResult) -> None:
        if result.peer is None:
            report(result)
    return only_unauthenticated


def cmd_listen(args: argparse.Namespace, console: Console) -> ExitStatus:
    if not args.trust:
        raise UsageError("listen needs --trust PUBKEY_OR_DIR: the senders it accepts")
    trust = TrustSet.from_paths(args.trust)
    if not trust:
        raise ConfigError("no trusted peer keys were given")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise ConfigError(f"--out-dir {args.out_dir} is not a directory")
    name, config = _own_name(args), _config(args)
    with open_provider(args) as provider:
        key = provider.exchange_key(args.key)
        name = name or _own_name(args, key.name)
        assert name is not None  # the key's name, at the latest
        _make_out_dir(args.out_dir)  # only once the key is there: a failed start leaves nothing behind
        return asyncio.run(_listen(key, trust, name, args, config, console))


def _make_out_dir(path: str) -> None:
    """Create a missing --out-dir (and its parents), private to this user like the files received into it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--out-dir {path} is not a directory") from None
    except OSError as exc:
        raise OutputError(f"cannot create --out-dir {path}: {exc.strerror}") from None


async def _listen(key: Any, trust: TrustSet, name: str, args: argparse.Namespace, config: NetConfig,
                  console: Console) -> ExitStatus:
    # With --once only an authenticated session ends the listener; the others are reported as they fail.
    report = _reporter(console, args.out_dir)
    receiver = Receiver(key, trust, args.out_dir, name=name, config=config, once=args.once,
                        on_session=_report_unauthenticated(report) if args.once else report)
    async with receiver:
        try:
            host, port = await receiver.start(args.host, args.port)
        except OSError as exc:  # address in use, unknown host (gaierror), not an address of this machine
            raise ConnectFailed(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        console.say(f"listening on {host}:{port} as {name!r} for {', '.join(sorted(trust))}")
        if not args.once:
            await asyncio.Event().wait()  # until interrupted
        result = await receiver.wait_authenticated()
    fields = _session_fields(result, args.out_dir)
    if result.error is not None:
        console.results.failed(result.error, **fields)
        raise result.error
    console.results.ok(**fields)
    console.say(f"received {len(result.files)} file(s) from {result.peer}: {', '.join(result.files)}")
    return ExitStatus.OK


def progress_printer(console: Console) -> Callable[[str, int, int], None] | None:
    """Per-file progress for big files, only when stderr is a terminal."""
    if not console.stderr_is_terminal():
        return None

    def show(name: str, sent: int, total: int) -> None:
        if total >= PROGRESS_MIN_BYTES:
            console.progress(f"{name}: {sent * 100 // total:3d}% of {total} bytes", done=sent == total)
    return show


def _send_target(args: argparse.Namespace, console: Console) -> tuple[str, tuple[str, int]]:
    """``--to PUBKEY --connect HOST:PORT``; the old ``--peer PUBKEY --to HOST:PORT`` works for one more
    release, with a warning (README "Option names")."""
    to, connect = args.to, args.connect
    if args.old_peer is not None:
        if connect is None and to is not None and not os.path.exists(to):
            try:
                connect = parse_address(to)
            except ConfigError as exc:
                raise UsageError(str(exc)) from None
        elif to is not None:
            raise UsageError("send: give --to PUBKEY (or the deprecated --peer), not both")
        console.warn("send --peer PUBKEY --to HOST:PORT is deprecated and goes in the next release: "
                     "use --to PUBKEY --connect HOST:PORT")
        to = args.old_peer
    if to is None:
        raise UsageError("send needs --to PUBKEY: the receiver's public key file")
    if connect is None:
        raise UsageError("send needs --connect HOST:PORT: where the receiver listens")
    return to, connect


def cmd_send(args: argparse.Namespace, console: Console) -> ExitStatus:
    to, (host, port) = _send_target(args, console)
    trust = TrustSet.from_paths([to])
    if len(trust) != 1:
        raise ConfigError("--to must be one public key file")
    (peer_name,) = trust
    name, config = _own_name(args), _config(args)
    for path in args.files:
        if not Path(path).is_file():
            raise ConfigError(f"{path} is not a regular file")
    sizes = {os.path.basename(path): os.stat(path).st_size for path in args.files}
    console.results.begin(peer=peer_name, address=f"{host}:{port}", files=[
        {"name": base, "bytes": size, "confirmed": False} for base, size in sizes.items()])
    with open_provider(args) as provider:
        key = provider.exchange_key(args.key)
        name = name or _own_name(args, key.name)
        sent = asyncio.run(send_files(key, trust, peer_name, host, port, args.files, name=name, config=config,
                                      progress=progress_printer(console)))
    console.results.ok(files=[{"name": base, "bytes": sizes[base], "confirmed": True} for base in sent],
                       bytes=sum(sizes[base] for base in sent))
    console.say(f"{peer_name} confirmed {len(sent)} file(s)")
    return ExitStatus.OK


def _configure_listen(listen: argparse.ArgumentParser) -> None:
    listen.add_argument("--key", metavar="NAME",
                        help="this party's exchange key on the token (default: object= of --uri)")
    listen.add_argument("--name", help="this party's name (default: the key name)")
    listen.add_argument("--trust", action="append", metavar="PUBKEY_OR_DIR",
                        help="a trusted sender's public key file (name = file stem) or a directory of them; "
                             "repeatable (required)")
    listen.add_argument("--peer", dest="trust", action=deprecated("--trust", append=True), metavar="PUBKEY",
                        help="deprecated spelling of --trust (goes in the next release)")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    listen.add_argument("--port", required=True, type=_port,
                        help="TCP port (0: any free port, shown in the 'listening on' line)")
    listen.add_argument("--out-dir", required=True, metavar="DIR",
                        help="received files are written to DIR/PEER/, one directory per authenticated sender "
                             "(DIR is created, mode 0700, if missing)")
    listen.add_argument("--once", action="store_true",
                        help="exit after one authenticated session (connections that fail before authenticating "
                             "do not count); the exit code tells success")
    listen.add_argument("--max-sessions", type=positive(int, 1, exclusive=False), default=NetConfig.max_sessions,
                        metavar="N",
                        help=f"sessions served at once; more connections are closed unserved "
                             f"(default {NetConfig.max_sessions})")
    listen.add_argument("--timeout", type=positive(float), default=30.0, metavar="SECONDS",
                        help="deadline per phase (30)")
    listen.set_defaults(func=cmd_listen)
    add_result_options(listen, "listen", data_on_stdout=False)
    add_token_options(listen)


def _configure_send(send: argparse.ArgumentParser) -> None:
    send.add_argument("--key", metavar="NAME",
                      help="this party's exchange key on the token (default: object= of --uri)")
    send.add_argument("--name", help="this party's name (default: the key name)")
    send.add_argument("--to", metavar="PUBKEY", help="the receiver's public key file (name = file stem; required)")
    send.add_argument("--connect", metavar="HOST:PORT", type=argument(parse_address),
                      help="where the receiver listens (required)")
    send.add_argument("--peer", dest="old_peer", metavar="PUBKEY",
                      help="deprecated: --peer PUBKEY --to HOST:PORT is now --to PUBKEY --connect HOST:PORT "
                           "(the old spelling goes in the next release)")
    send.add_argument("--timeout", type=positive(float), default=30.0, metavar="SECONDS",
                      help="deadline per phase (30)")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.set_defaults(func=cmd_send)
    add_result_options(send, "send", data_on_stdout=False)
    add_token_options(send)


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    {"listen": _configure_listen, "send": _configure_send}[command](parser)
