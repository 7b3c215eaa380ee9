"""`make demo`'s script runs end to end (on the suite's two test tokens instead of the dev tokens)."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT


def test_demo_runs_end_to_end(softhsm_kit, tmp_path):
    env = {**os.environ, "TOKENCSP_TOKEN": "tokencsp-test-a", "TOKENCSP_PEER_TOKEN": "tokencsp-test-b",
           "TOKENCSP_REPLAY_DB": str(tmp_path / "replay.sqlite3")}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "demo.py")], capture_output=True, env=env, timeout=300)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    for step in ("PUBLICKEYBLOB: 06 02 00 00 00 a4 00 00 52 53 41 31", "plaintext recovered",
                 "exit status 4; no output file", "exit status 20 (replayed)",
                 "openssl cms -encrypt output opened on the token",
                 "2 files delivered byte-identical", "demo complete"):
        assert step in out, step
