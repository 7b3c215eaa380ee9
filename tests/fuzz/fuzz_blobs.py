"""atheris harness: CryptoAPI key BLOB parsing (tokencsp.blobs) and public-key loading (tokencsp.pubkeys).

    python tests/fuzz/fuzz_blobs.py [libFuzzer options] [corpus dirs]   (tests/fuzz/run.py runs it)

BlobFormatError / UnsupportedAlgorithm (InvalidKeyError for load_public_key)
are the expected answers to bad bytes; whatever parses must re-serialise to
the same bytes.  Any other exception is a crash.
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


def _check(data: bytes) -> None:
    fuzzsupport.check_blob(data)
    fuzzsupport.check_public_key(data)


TestOneInput = fuzzsupport.harness(_check)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
