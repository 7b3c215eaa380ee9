"""Fast start of the commands that do reach the token (docs/PERFORMANCE.md, profile findings).

``tokencsp open`` needs python-pkcs11, but not the encoders its package ``__init__`` imports
(``pkcs11.util.*``, and asn1crypto with them): tokencsp/token/_deferred.py keeps those unloaded
until something reads them.  No timing is asserted: only which modules a real open loads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import tokencsp

pytestmark = pytest.mark.softhsm

_PROBE = """
import runpy, sys
sys.argv = ["tokencsp"] + sys.argv[1:]
try:
    runpy.run_module("tokencsp", run_name="__main__")
except SystemExit as done:
    code = done.code
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("asn1crypto", "difflib", "socket", "tokencsp")),
      file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def fast_key(softhsm_kit):
    tokencsp("key", "generate", "fast-kx")
    yield "fast-kx"
    tokencsp("key", "delete", "--yes", "fast-kx", check=False)


def test_open_on_the_token_loads_no_asn1crypto(fast_key, tmp_path):
    pub, plain, sealed, out = (tmp_path / name for name in ("kx.pub", "plain", "m.tcsp", "out"))
    tokencsp("key", "export", fast_key, "-o", str(pub))
    plain.write_bytes(b"fast start")
    tokencsp("seal", "--to", str(pub), "-o", str(sealed), str(plain))
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "TOKENCSP_REPLAY_DB": str(tmp_path / "replay.sqlite3")}
    result = subprocess.run([sys.executable, "-c", _PROBE, "open", "-q", "--key", fast_key, "-o", str(out),
                             str(sealed)], capture_output=True, env={**os.environ, **env}, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert out.read_bytes() == b"fast start"
    loaded = err[err.index("LOADED"):]
    assert "'tokencsp.token'" in loaded  # it did reach the token
    for module in ("asn1crypto", "difflib", "socket"):
        assert f"'{module}" not in loaded, loaded


def test_the_deferred_encoders_load_when_used():
    code = ("import sys, tokencsp.token\n"
            "assert 'asn1crypto' not in sys.modules\n"
            "import pkcs11\n"
            "from pkcs11.util.rsa import encode_rsa_public_key\n"
            "from pkcs11.util import x509\n"
            "assert 'asn1crypto' in sys.modules and callable(encode_rsa_public_key)\n"
            "assert callable(pkcs11.util.x509.decode_x509_public_key) and x509 is pkcs11.util.x509\n"
            "assert callable(pkcs11.util.ec.encode_ec_public_key)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
