"""atheris harness: opening sealed messages (tokencsp.envelope, docs/FORMAT.md).

    python tests/fuzz/fuzz_envelope.py [libFuzzer options] [corpus dirs]   (tests/fuzz/run.py runs it)

The input is a whole sealed message, opened with a fixed host-only receiver
key (fixtures.json) and a fresh in-memory replay cache -- a format 2 message
(several recipients) also with the second receiver's key; signed messages are
checked against the fixed signer.  MessageRejected subclasses are the
expected answers.  A crash is any other exception, a message that opens
without being byte-for-byte a genuine one, or plaintext in the sink that did
not come from authenticated, unmodified chunks (fuzzsupport.check_open).
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

WORLD = fuzzsupport.envelope_world()


def _check(data: bytes) -> None:
    trust = fuzzsupport.envelope_trust_for(data, WORLD.trust)
    fuzzsupport.check_open(data, WORLD.receiver, WORLD.known, trust=trust)
    if data[8:9] == b"\x02":  # format 2: the second recipient opens it with its own entry too
        fuzzsupport.check_open(data, WORLD.receiver2, WORLD.known, trust=trust)


TestOneInput = fuzzsupport.harness(_check)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
