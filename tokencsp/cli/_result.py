"""Machine-readable results: ``--json`` / ``--status-fd N``, one JSON object per message or file.

The one place that builds and writes result objects (docs/JSON.md, schema in
docs/result.schema.json).  A command says what it learnt with :meth:`Results.ok`
(or :meth:`Results.begin` first, for what a failure should still carry);
``main`` turns an error into the failure object with :meth:`Results.failed`.
Without ``--json``/``--status-fd`` every call is a no-op.  Fields are only ever
added: readers ignore the ones they do not know.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, BinaryIO, TextIO

from ..errors import TokenCSPError
from ._status import ExitStatus, UsageError, status_for

__all__ = ["SCHEMA", "Counting", "Results", "add_result_options", "reason_for"]

SCHEMA = 1  # the value of every object's "schema"; raised only when a field changes meaning


def add_result_options(parser: argparse.ArgumentParser, command: str, *, data_on_stdout: bool) -> None:
    """``--json`` and ``--status-fd N`` on a command; ``data_on_stdout``: its output (plaintext, a key)
    goes to stdout unless ``-o`` is given, so ``--json`` without ``--status-fd`` needs ``-o``."""
    group = parser.add_argument_group("machine-readable results (docs/JSON.md)")
    group.add_argument("--json", dest="result_json", action="store_true",
                       help="one JSON object per " + ("message or file" if data_on_stdout else "result")
                            + " on stdout" + (" (needs -o FILE, or use --status-fd)" if data_on_stdout else ""))
    group.add_argument("--status-fd", dest="status_fd", metavar="N", type=_fd,
                       help="write the JSON objects to file descriptor N instead (e.g. 3 with 3>status.jsonl)")
    parser.set_defaults(result_command=command, result_data_on_stdout=data_on_stdout)


def _fd(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a file descriptor number, got {text!r}")
    return int(text)


def reason_for(exc: BaseException) -> str:
    """A refusal's reason code: a sealed message's own ``reason`` (errors.MessageRejected), else the
    exit status's name (``token``, ``decrypt``, ``peer-auth``, ...)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    return status_for(exc).name.lower().replace("_", "-")


class Results:
    """Where one command run's result objects go (nowhere unless asked for)."""

    def __init__(self, command: str | None = None, stream: TextIO | None = None, *, on_stdout: bool = False) -> None:
        self.command = command
        self._stream = stream
        self.on_stdout = on_stdout  # a command's text output then stays off stdout
        self._context: dict[str, Any] = {}
        self._reported: BaseException | None = None
        self.written = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> Results:
        """The sink ``args`` ask for; a UsageError when ``--json`` would mix with data on stdout."""
        command = getattr(args, "result_command", None)
        fd = getattr(args, "status_fd", None)
        if command is None or (fd is None and not args.result_json):
            return cls()
        data_on_stdout = (args.result_data_on_stdout and getattr(args, "output", None) in (None, "-")
                          and getattr(args, "out_dir", None) is None)
        if fd is None or fd == 1:
            if data_on_stdout:
                raise UsageError(f"--json{' --status-fd 1' if fd == 1 else ''} would mix the results with the "
                                 "data on stdout: give -o FILE, or --status-fd N for the results")
            return cls(command, stdout, on_stdout=True)
        if fd == 2:
            return cls(command, stderr)
        try:
            os.fstat(fd)
            stream = os.fdopen(fd, "w", encoding="utf-8", closefd=False)
        except OSError:
            raise UsageError(f"--status-fd {fd}: not an open file descriptor") from None
        return cls(command, stream)

    @property
    def active(self) -> bool:
        return self._stream is not None

    def begin(self, **fields: Any) -> None:
        """What the next object carries whether it succeeds or fails (the input file, ...)."""
        self._context = dict(fields)

    def ok(self, **fields: Any) -> None:
        self._write(ExitStatus.OK, None, fields)

    def failed(self, exc: BaseException, hint: str | None = None, **fields: Any) -> None:
        """The failure object for ``exc``, once: an error a command already reported is not repeated."""
        if exc is self._reported:
            return
        self._reported = exc
        self._write(status_for(exc), exc, {**fields, **({"hint": hint} if hint else {})})

    def _write(self, status: ExitStatus, exc: BaseException | None, fields: dict[str, Any]) -> None:
        if self._stream is None:
            return
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "command": self.command,
            "status": "ok" if exc is None else "error",
            "exit_status": int(status),
            "reason": None if exc is None else reason_for(exc),
            "error": None if exc is None else _message(exc),
            **self._context,
            **fields,
        }
        self._context = {}
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()
        self.written += 1


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) if isinstance(exc, TokenCSPError) else type(exc).__name__


class Counting:
    """A binary sink that counts what passes through it (a result's ``bytes``)."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()
