"""The debug log of ``-v`` / ``TOKENCSP_DEBUG=1``: standard ``logging``, imported only when it is on.

``logging`` (and threading, traceback... under it) is not needed by a command
run without ``-v``, and start-up time counts (issue 13).  ``debug`` is a no-op
until ``enable`` ran.  Never log a PIN, key material or plaintext.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import logging

__all__ = ["debug", "disable", "enable", "enabled"]

_logger: logging.Logger | None = None
_handler: logging.Handler | None = None


def enable(stream: TextIO, prog: str) -> None:
    """The ``tokencsp`` loggers (the CLI's and the library's) at DEBUG on ``stream``."""
    global _logger, _handler
    import logging

    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(logging.Formatter(f"{prog}: debug: %(name)s: %(message)s"))
    root = logging.getLogger("tokencsp")
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG)
    _logger = logging.getLogger("tokencsp.cli")


def disable() -> None:
    global _logger, _handler
    if _handler is not None:
        import logging

        logging.getLogger("tokencsp").removeHandler(_handler)
    _logger = _handler = None


def enabled() -> bool:
    return _logger is not None


def debug(message: str, *args: object) -> None:
    if _logger is not None:
        _logger.debug(message, *args)
