"""``tokencsp completion bash|zsh``: shell completion generated from the command's own parser.

The script is a table of what the parser accepts (subcommands, options, the options that take a
value and their choices) and one small completion function, so it cannot drift from ``--help``.
The zsh script is native (``#compdef tokencsp``, a ``_tokencsp`` function built on ``_describe``
and ``_files``, with each command's and option's help as its description); it works sourced after
``compinit`` or saved as ``_tokencsp`` in a directory of ``$fpath``.  ``tools/manpage.py`` reads the parser
through :func:`walk` too; the command gets the parser from ``main`` (``args.root_parser``), as
command modules never import ``main``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

from ._common import PROG, Console
from ._status import ExitStatus

__all__ = ["Command", "bash_script", "configure", "walk", "zsh_script"]


@dataclass
class Command:
    """One parser of the tree: ``path`` is the words after ``tokencsp`` that reach it."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str = ""
    subcommands: list[Command] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # options that take no value
    valued: dict[str, list[str]] = field(default_factory=dict)  # option -> its choices ([] = any value)
    positional_choices: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)  # option -> the first sentence of its help


def _visible(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])")


def _summary(text: str, limit: int = 72) -> str:
    """The first sentence of a help text, on one line and at most ``limit`` characters."""
    text = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0].removesuffix(".")
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Command:
    """The command tree under ``parser`` (build it with ``build_parser(load_all=True)``)."""
    command = Command(path, parser, help)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            load = getattr(action, "load", None)  # main's lazily configured commands
            for name in action.choices:
                if load is not None:
                    load(name)
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                command.subcommands.append(walk(sub, (*path, name), helps.get(name, "")))
        elif action.option_strings:
            if not _visible(action):
                continue
            summary = _summary(formatter._expand_help(action)) if action.help else ""
            command.descriptions.update(dict.fromkeys(action.option_strings, summary))
            if action.nargs == 0:
                command.flags.extend(action.option_strings)
            else:
                choices = [str(choice) for choice in action.choices] if action.choices else []
                command.valued.update(dict.fromkeys(action.option_strings, choices))
        elif action.choices and not command.positional_choices:
            command.positional_choices = [str(choice) for choice in action.choices]
    return command


def _all(command: Command) -> list[Command]:
    return [command, *(c for sub in command.subcommands for c in _all(sub))]


def _case(entries: list[tuple[str, str]], keep_empty: bool = False, indent: str = "        ") -> str:
    return "".join(f'{indent}"{key}") echo "{value}" ;;\n' for key, value in entries if value or keep_empty)


def bash_script(root: Command, prog: str = "tokencsp") -> str:
    """A bash completion script for ``prog`` (``source <(tokencsp completion bash)``)."""
    commands = _all(root)
    words = [(" ".join(c.path), " ".join([s.path[-1] for s in c.subcommands] or c.positional_choices))
             for c in commands]
    options = [(" ".join(c.path), " ".join([*c.flags, *c.valued])) for c in commands]
    values = [(f"{' '.join(c.path)}|{option}", " ".join(choices))
              for c in commands for option, choices in c.valued.items()]
    fn = f"_{prog}_complete"
    return f"""\
# {prog} completion, generated from its parser by '{prog} completion bash'.
# Use:  source <({prog} completion bash)   (or save it in ~/.local/share/bash-completion/completions/{prog})

# The words after the command path: its subcommands, or a positional's choices.
{fn}_words() {{
    case "$1" in
{_case(words)}    esac
}}

{fn}_options() {{
    case "$1" in
{_case(options)}    esac
}}

# Succeeds for an option that takes a value and prints its choices (none printed: any value, a file).
{fn}_value() {{
    case "$1|$2" in
{_case(values, keep_empty=True)}        *) return 1 ;;
    esac
}}

{fn}_match() {{
    local candidate
    COMPREPLY=()
    for candidate in $1; do
        [[ $candidate == "$2"* ]] && COMPREPLY+=("$candidate")
    done
}}

{fn}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev="" cmdpath="" word i skip=0 found
    ((COMP_CWORD > 0)) && prev=${{COMP_WORDS[COMP_CWORD-1]}}
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if ((skip)); then skip=0; continue; fi
        case $word in
            --*=*) ;;
            -*) {fn}_value "$cmdpath" "$word" >/dev/null && skip=1 ;;
            *) case " $({fn}_words "$cmdpath") " in
                   *" $word "*) cmdpath=${{cmdpath:+$cmdpath }}$word ;;
               esac ;;
        esac
    done
    if [[ $prev == -* ]] && found=$({fn}_value "$cmdpath" "$prev"); then
        if [[ -n $found ]]; then {fn}_match "$found" "$cur"; else COMPREPLY=($(compgen -f -- "$cur")); fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        {fn}_match "$({fn}_options "$cmdpath")" "$cur"
        return 0
    fi
    found=$({fn}_words "$cmdpath")
    if [[ -n $found ]]; then {fn}_match "$found" "$cur"; else COMPREPLY=($(compgen -f -- "$cur")); fi
    return 0
}}

complete -o default -F {fn} {prog}
"""


def _zq(text: str) -> str:
    """``text`` as one zsh single-quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _described(name: str, description: str) -> str:
    """One ``_describe`` entry: ``name:description``, the colons in the name escaped."""
    name = name.replace(":", "\\:")
    return _zq(f"{name}:{description}" if description else name)


def _zcase(entries: list[tuple[str, list[str]]], fallback: str) -> str:
    lines = "".join(f"        ({_zq(key)}) reply=({' '.join(values)}) ;;\n" for key, values in entries if values)
    return f"{lines}        (*) {fallback} ;;\n"


def zsh_script(root: Command, prog: str = "tokencsp") -> str:
    """A native zsh completion script (``#compdef``) for ``prog``."""
    commands = _all(root)
    words = [(" ".join(c.path), [_described(s.path[-1], s.help) for s in c.subcommands]
              or [_zq(choice) for choice in c.positional_choices]) for c in commands]
    options = [(" ".join(c.path), [_described(o, c.descriptions.get(o, "")) for o in [*c.flags, *c.valued]])
               for c in commands]
    values = [(f"{' '.join(c.path)}|{option}", [_zq(choice) for choice in choices] or ["__any__"])
              for c in commands for option, choices in c.valued.items()]
    fn = f"_{prog}"
    return f"""\
#compdef {prog}
# {prog} completion for zsh, generated from its parser by '{prog} completion zsh'.
# Use: source <({prog} completion zsh) in ~/.zshrc after compinit, or save the output as
# {fn} in a directory of $fpath (before compinit runs).

# name:description of the words after the command path $1: its subcommands, or a positional's choices.
{fn}_words() {{
    case $1 in
{_zcase(words, "reply=()")}    esac
}}

{fn}_options() {{
    case $1 in
{_zcase(options, "reply=()")}    esac
}}

# Succeeds for an option that takes a value, its choices in reply (none: any value, a file).
{fn}_value() {{
    case "$1|$2" in
{_zcase(values, "return 1")}    esac
    [[ $reply == __any__ ]] && reply=()
    return 0
}}

{fn}() {{
    local cmdpath='' word prev cur
    local -i i skip=0
    local -a reply described  # _describe takes its entries from an array of another name
    for (( i = 2; i < CURRENT; i++ )); do
        word=${{words[i]}}
        if (( skip )); then skip=0; continue; fi
        case $word in
            (--*=*) ;;
            (-*) {fn}_value "$cmdpath" "$word" && skip=1 ;;
            (*) {fn}_words "$cmdpath"
                (( ${{reply[(I)${{(b)word}}(|:*)]}} )) && cmdpath=${{cmdpath:+$cmdpath }}$word ;;
        esac
    done
    prev=${{words[CURRENT-1]}} cur=${{words[CURRENT]}}
    if [[ $prev == -* ]] && {fn}_value "$cmdpath" "$prev"; then
        if (( $#reply )); then compadd -a reply; else _files; fi
        return
    fi
    if [[ $cur == -* ]]; then
        {fn}_options "$cmdpath"
        described=("${{reply[@]}}")
        _describe -t options option described
        return
    fi
    {fn}_words "$cmdpath"
    described=("${{reply[@]}}")
    if (( $#described )); then _describe -t commands command described; else _files; fi
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    {fn} "$@"
else
    compdef {fn} {prog}
fi
"""


def cmd_completion(args: argparse.Namespace, console: Console) -> ExitStatus:
    root = walk(args.root_parser)
    console.out((bash_script if args.shell == "bash" else zsh_script)(root, PROG).rstrip("\n"))
    return ExitStatus.OK


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.description = ("Prints a completion script generated from tokencsp's parser. "
                          "bash: source <(tokencsp completion bash), or save it as "
                          "~/.local/share/bash-completion/completions/tokencsp. "
                          "zsh (native, #compdef): source <(tokencsp completion zsh) in ~/.zshrc, after "
                          "compinit, or save it as _tokencsp in a directory of $fpath.")
    parser.add_argument("shell", choices=("bash", "zsh"))
    parser.set_defaults(func=cmd_completion)
