"""``tokencsp token ...``: the tokens a PKCS#11 module shows."""

from __future__ import annotations

import argparse
import json

from ._common import Console, add_token_options
from ._status import ExitStatus

__all__ = ["configure"]


def cmd_token_list(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..config import find_module
    from ..provider import list_tokens

    tokens = list_tokens(args.module)
    if args.json:
        console.out(json.dumps([{"label": label, "serial": serial} for label, serial in tokens], indent=2))
        return ExitStatus.OK
    if not tokens:
        console.note(f"no initialised token in {find_module(args.module)}")
    for label, serial in tokens:
        console.out(f"{label}\tserial={serial}")
    return ExitStatus.OK


def cmd_token_init(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..config import resolve_pin, resolve_so_pin
    from ..provider import initialize_token

    so_pin = resolve_so_pin(args.so_pin_file)
    pin = resolve_pin(pin_file=args.pin_file, prompt="New user PIN: ")
    serial = initialize_token(args.label, so_pin=so_pin, pin=pin, module=args.module)
    console.note(f"initialised token {args.label!r}, serial {serial}")
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    token_cmd = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tlist = token_cmd.add_parser("list", help="label and serial of every initialised token")
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_token_list)
    tinit = token_cmd.add_parser(
        "init",
        help="initialise a fresh token (SoftHSM: the free slot); SO PIN from TOKENCSP_SO_PIN, --so-pin-file or "
             "a prompt, user PIN from TOKENCSP_PIN, --pin-file or a prompt")
    tinit.add_argument("--label", required=True, help="the new token's label (1 to 32 bytes)")
    tinit.add_argument("--so-pin-file", help="file whose first line is the SO PIN")
    tinit.set_defaults(func=cmd_token_init)
    for sub in (tlist, tinit):
        add_token_options(sub)
