"""``tokencsp token ...``: the tokens a PKCS#11 module shows."""

from __future__ import annotations

import argparse
import json
import os

from ._common import Console, add_token_options
from ._status import ExitStatus

__all__ = ["configure"]


def cmd_token_list(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..config import ENV_TOKEN, find_module, resolve_selector
    from ..provider import describe_all_tokens

    selector = resolve_selector(module=args.module, token=args.token, serial=args.serial, uri=args.uri,
                                module_name=args.module_name,
                                environ={k: v for k, v in os.environ.items() if k != ENV_TOKEN})
    tokens = describe_all_tokens(selector=selector)
    if args.json:
        console.out(json.dumps([{"label": t.label, "serial": t.serial, "manufacturer": t.manufacturer,
                                 "model": t.model, "slot_id": t.slot_id, "uri": t.uri} for t in tokens], indent=2))
        return ExitStatus.OK
    if not tokens:
        console.note(f"no initialised token in {find_module(selector.module)}")
        return ExitStatus.OK
    console.out("TOKEN\tSERIAL\tSLOT\tURI")
    for t in tokens:
        console.out(f"{t.label}\t{t.serial}\t{t.slot_id}\t{t.uri}")
    return ExitStatus.OK


def cmd_token_init(args: argparse.Namespace, console: Console) -> ExitStatus:
    from ..config import resolve_pin, resolve_selector, resolve_so_pin
    from ..provider import initialize_token

    module = resolve_selector(module=args.module, module_name=args.module_name, environ={}).module or args.module
    so_pin = resolve_so_pin(args.so_pin_file)
    pin = resolve_pin(pin_file=args.pin_file, prompt="New user PIN: ")
    serial = initialize_token(args.label, so_pin=so_pin, pin=pin, module=module)
    console.note(f"initialised token {args.label!r}, serial {serial}")
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    token_cmd = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tlist = token_cmd.add_parser("list", help="label, serial, slot and RFC 7512 URI of every initialised token")
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
