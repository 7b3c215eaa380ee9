"""atheris harness: three-phase frame handling (tokencsp.threephase, docs/THREEPHASE.md).

    python tests/fuzz/fuzz_threephase.py [libFuzzer options] [corpus dirs]   (tests/fuzz/run.py runs it)

Byte 0 picks a fresh machine in one of five states (responder awaiting phase
1 or 3, initiator awaiting phase 2, either side open -- reached through the
real deterministic transcript), byte 1 holds flags (end of stream, close
first, echo records, past the deadline) and the split size, the rest is what
the peer sends.  TokenCSPError subclasses are the expected answers; the
machine must then be in ERROR for good.  A crash is any other exception, or
a record delivered that the peer never sent (fuzzsupport.drive_threephase).
"""

import contextlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]

try:
    import atheris
except ImportError:  # replayed from pytest, where atheris is optional
    atheris = None

with (atheris.instrument_imports(include=["tokencsp"]) if atheris and __name__ == "__main__"
      else contextlib.nullcontext()):
    import fuzzsupport

WORLD = fuzzsupport.threephase_world()


def _check(data: bytes) -> None:
    fuzzsupport.drive_threephase(data, WORLD)


TestOneInput = fuzzsupport.harness(_check)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
