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
                 "exit status 4; no output file", "card-style key opened the SIMPLEBLOB through the decrypt path",
                 "generate_card_style_key(token, \"demo-card\")", "tokencsp capi decrypt --key demo-card",
                 "exit status 20 (replayed)",
                 "openssl cms -encrypt output opened on the token",
                 "2 files delivered byte-identical", "demo complete"):
        assert step in out, step


SPY = '''
import atexit, json, os, sys

def _record():
    if sys.argv and sys.argv[0].endswith(os.path.join("tokencsp", "__main__.py")):
        with open(os.environ["DEMO_SPY_LOG"], "a") as log:
            log.write(json.dumps(sys.argv[1:]) + "\\n")

atexit.register(_record)
'''


def test_demo_shows_exactly_the_commands_it_runs(softhsm_kit, tmp_path):
    """Every tokencsp process the demo starts is a '$ tokencsp ...' line of its output, and the other way
    round; a re-run deletes the earlier demo keys in plain sight."""
    import json
    import shlex

    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    env = {**os.environ, "TOKENCSP_TOKEN": "tokencsp-test-a", "TOKENCSP_PEER_TOKEN": "tokencsp-test-b",
           "TOKENCSP_REPLAY_DB": str(tmp_path / "replay.sqlite3"), "DEMO_SPY_LOG": str(tmp_path / "ran.jsonl"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(spy), os.environ.get("PYTHONPATH")]))}
    for _ in range(2):  # the second run finds the first run's keys
        (tmp_path / "ran.jsonl").write_text("")
        result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "demo.py")], capture_output=True,
                                env=env, timeout=300)
        out = result.stdout.decode()
        assert result.returncode == 0, out + result.stderr.decode()
    shown = sorted(line[len("$ tokencsp "):].removesuffix(" &") for line in out.splitlines()
                   if line.startswith("$ tokencsp "))
    ran = sorted(shlex.join(json.loads(line)) for line in (tmp_path / "ran.jsonl").read_text().splitlines())
    assert ran and shown == ran
    assert "key delete --yes demo-exchange" in shown
