"""The ``tokencsp`` command: a thin shell over the library.

``main`` (tokencsp.cli.main) parses and dispatches; one module per command
group (keys, tokens, blobs, capi, seal, exchange) does the work; _common holds
the console, inputs/outputs and the token opener they share.
"""

from __future__ import annotations

from ._status import ExitStatus
from .main import main

__all__ = ["ExitStatus", "main"]
