"""Write tokencsp(1), a man page generated from the command's argparse parser (``make man``).

Every command and option comes from ``build_parser(load_all=True)`` (through the completion
module's walk), the exit statuses from ``ExitStatus``: the page says what ``--help`` says.
``make man`` writes the checked-in ``man/tokencsp.1``, which the wheel installs as
``share/man/man1/tokencsp.1`` (pyproject's data-files); tests/test_packaging.py fails when the
checked-in page is not what this script writes.  Check it with ``man -l man/tokencsp.1``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokencsp import __version__
from tokencsp.cli._common import PROG
from tokencsp.cli._status import ExitStatus
from tokencsp.cli.completion import Command, walk
from tokencsp.cli.main import TOKEN_HELP, build_parser

SEE_ALSO = ("openssl-cms(1)", "p11tool(1)", "softhsm2-util(1)")


def escape(text: str) -> str:
    """Roff text: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)  # groff reads Latin-1
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def paragraphs(text: str) -> str:
    return "\n.PP\n".join(escape(" ".join(p.split())) for p in text.strip().split("\n\n") if p.strip())


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]


def options(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    items = []
    for action in _actions(parser):
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        items.append(f".TP\n\\fB{escape(invocation)}\\fR\n{escape(' '.join(help_text.split()))}")
    return "\n".join(items)


def usage(parser: argparse.ArgumentParser) -> str:
    prog, _, rest = " ".join(parser.format_usage().removeprefix("usage:").split()).partition(" ")
    return f".B {escape(prog)}\n{escape(rest)}"


def command_section(command: Command) -> str:
    name = " ".join((PROG, *command.path))
    parts = [f'.SS "{escape(name)}"', usage(command.parser)]
    if command.help:
        parts.append(".PP\n" + escape(command.help))
    if command.parser.description:
        parts.append(".PP\n" + paragraphs(command.parser.description))
    body = options(command.parser)
    if body:
        parts.append(body)
    return "\n".join(parts)


def _leaves(command: Command) -> list[Command]:
    if not command.subcommands:
        return [command]
    return [leaf for sub in command.subcommands for leaf in _leaves(sub)]


def manpage() -> str:
    parser = build_parser(load_all=True)
    root = walk(parser)
    commands = "\n".join(f".TP\n\\fB{escape(sub.path[0])}\\fR\n{escape(sub.help)}" for sub in root.subcommands)
    statuses = "\n".join(f".TP\n\\fB{int(s)}\\fR\n{escape(s.description)}" for s in ExitStatus)
    sections = [
        f'.TH TOKENCSP 1 "" "{PROG} {__version__}" "User Commands"\n.nh\n.ad l',
        f".SH NAME\n{PROG} \\- {escape(parser.description or '')}",
        f".SH SYNOPSIS\n{usage(parser)}",
        f".SH COMMANDS\n{commands}",
        f".SH OPTIONS\n{options(parser)}",
        ".SH COMMAND REFERENCE\n" + "\n".join(command_section(c) for c in _leaves(root)),
        f".SH ENVIRONMENT\n{paragraphs(TOKEN_HELP)}",
        f".SH EXIT STATUS\n{statuses}",
        ".SH SEE ALSO\n" + ", ".join(f"\\fB{escape(p.split('(')[0])}\\fR({p.split('(')[1]}" for p in SEE_ALSO)
        + "; README.md and docs/ in the source distribution",
    ]
    return "\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cli.add_argument("-o", "--output", default="-", help="where to write the page (default: stdout)")
    args = cli.parse_args(argv)
    page = manpage()
    if args.output == "-":
        sys.stdout.write(page)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
