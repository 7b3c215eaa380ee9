"""``tokencsp agent [--socket PATH] [--ttl DURATION] [--daemon]``, ``agent status``, ``agent stop`` (docs/AGENT.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal

from ..errors import AgentError
from ..replay import parse_duration
from ._common import Console, add_token_options, argument
from ._status import ExitStatus

__all__ = ["configure"]


def cmd_agent(args: argparse.Namespace, console: Console) -> ExitStatus:
    from .. import agentclient
    from ..agent import Agent, AgentServer, serve
    from ..config import find_module, resolve_pin, resolve_selector
    from ..provider import Provider

    path = agentclient.socket_path(args.socket)
    AgentServer.check(path)  # before the PIN is asked for
    selector = resolve_selector(module=args.module, token=args.token, serial=args.serial, uri=args.uri)
    module = find_module(selector.module)
    # The first PIN is read here, before any fork, from the usual places (a prompt on this terminal).
    # Held only until the first login: after --ttl the PIN comes from a command (docs/AGENT.md).
    first_pin = [resolve_pin(None, args.pin_file, selector)]

    def opener(pin: str | None) -> Provider:
        if pin is None:
            if not first_pin:
                raise AgentError("the agent has no PIN: a command sends it after --ttl")
            pin = first_pin.pop()
        return Provider.open(module=args.module, token=args.token, serial=args.serial, uri=args.uri, pin=pin)

    def log(line: str) -> None:
        console.say(f"agent: {line}")

    agent = Agent(opener, ttl=args.ttl, module=module, log=log)
    if args.daemon:
        return _daemon(agent, path, console)
    agent.login(None)
    server = AgentServer(path, agent)
    signal.signal(signal.SIGTERM, _interrupt)  # systemd's stop: log out and remove the socket as Ctrl-C does
    try:
        serve(server, ready=lambda: console.say(f"agent listening on {path} (pid {os.getpid()}); "
                                                f"TOKENCSP_AGENT_SOCK={path}"))
    except KeyboardInterrupt:
        console.say("agent: interrupted, stopping")
    return ExitStatus.OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _daemon(agent: object, path: str, console: Console) -> ExitStatus:
    """Fork; the child logs in, serves and detaches; the parent returns once the socket answers."""
    from .. import agentclient
    from ..agent import Agent, AgentServer, serve

    assert isinstance(agent, Agent)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no token was opened before the fork
        os.close(read_end)
        os.setsid()
        status = 1
        try:
            agent.login(None)
            server = AgentServer(path, agent)
            signal.signal(signal.SIGTERM, _interrupt)
            devnull = os.open(os.devnull, os.O_RDWR)

            def ready() -> None:
                os.write(write_end, f"{os.getpid()}\n".encode())
                os.close(write_end)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
            with contextlib.suppress(KeyboardInterrupt):
                serve(server, ready)
            status = 0
        except BaseException as exc:  # noqa: BLE001 -- the parent prints it
            message = str(exc) if str(exc) else type(exc).__name__
            with contextlib.suppress(BaseException):
                os.write(write_end, f"error {message}\n".encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.readline().decode(errors="replace").strip()
    if not answer or answer.startswith("error"):
        os.waitpid(pid, 0)
        raise AgentError(f"the agent did not start: {answer[6:] or 'it exited'}")
    agentclient.status_of(path)
    console.say(f"agent listening on {path} (pid {answer}); TOKENCSP_AGENT_SOCK={path}")
    return ExitStatus.OK


def cmd_agent_status(args: argparse.Namespace, console: Console) -> ExitStatus:
    from .. import agentclient

    path = agentclient.socket_path(args.socket)
    try:
        status = agentclient.status_of(path)
    except agentclient.AgentUnavailable as exc:
        raise AgentError(f"no agent answers at {path} ({exc})") from None
    console.out(json.dumps(status, indent=2))
    return ExitStatus.OK


def cmd_agent_stop(args: argparse.Namespace, console: Console) -> ExitStatus:
    from .. import agentclient

    path = agentclient.socket_path(args.socket)
    try:
        pid = agentclient.stop(path)
    except agentclient.AgentUnavailable as exc:
        raise AgentError(f"no agent answers at {path} ({exc})") from None
    import time

    deadline = time.monotonic() + 10  # it logs out and removes its socket after answering
    while os.path.lexists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    console.say(f"agent (pid {pid}) at {path} stopped")
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    socket_help = ("the agent's socket (default: $TOKENCSP_AGENT_SOCK, else $XDG_RUNTIME_DIR/tokencsp/agent.sock, "
                   "else /tmp/tokencsp-UID/agent.sock; its directory must be 0700 and ours)")
    parser.add_argument("--socket", metavar="PATH", help=socket_help)
    parser.add_argument("--ttl", metavar="DURATION", type=argument(parse_duration),
                        help="log out DURATION after each login (e.g. 8h); the next command sends the PIN, "
                             "prompting once (default: stay logged in until stopped)")
    parser.add_argument("--daemon", action="store_true",
                        help="run in the background; returns once the socket answers (default: foreground)")
    parser.set_defaults(func=cmd_agent)
    add_token_options(parser)
    actions = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=False)
    status = actions.add_parser("status", help="what the running agent serves and how many requests it answered")
    status.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=socket_help)
    status.set_defaults(func=cmd_agent_status)
    stop = actions.add_parser("stop", help="stop the running agent (it logs out and removes its socket)")
    stop.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=socket_help)
    stop.set_defaults(func=cmd_agent_stop)
