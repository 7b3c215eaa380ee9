"""The suite's own rules, enforced by conftest: token tests are marked and get tokens only when
selected, and under CI=true a skipped token test or a missing Wycheproof folder fails the run.

Each case runs pytest in a child process on a throwaway directory holding a copy of
tests/conftest.py and one small test file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

PURE_AND_TOKEN = """
import pytest

def test_pure():
    assert 1 + 1 == 2

def test_token(softhsm_kit):
    assert softhsm_kit.token_labels()
"""


def run_pytest(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(source)
    base = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "--rootdir",
                           str(tmp_path), str(tmp_path), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)


def test_missing_vectors_fail_the_run_only_under_ci(tmp_path: Path) -> None:
    source = "def test_vectors(vectors_dir):\n    assert vectors_dir.is_dir()\n"
    missing = {"TOKENCSP_VECTORS": str(tmp_path / "no-such-folder")}
    local = run_pytest(tmp_path, source, env=missing)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in local.stdout and "would fail the run" in local.stdout, local.stdout
    ci = run_pytest(tmp_path, source, env={**missing, "CI": "true"})
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "these fail the run (CI=true)" in ci.stdout and "test_case.py::test_vectors" in ci.stdout, ci.stdout
    # Vectors present: green under CI as well.
    (tmp_path / "vectors").mkdir()
    found = run_pytest(tmp_path, source, env={"TOKENCSP_VECTORS": str(tmp_path / "vectors"), "CI": "true"})
    assert found.returncode == 0 and "1 passed" in found.stdout, found.stdout + found.stderr


@pytest.mark.softhsm  # the child builds tokens of its own
@pytest.mark.softhsm_only(reason="the child pytest builds SoftHSM tokens of its own (opencryptoki's two slots are "
                          "the parent's); the rule it checks is the same conftest code on every backend")
def test_skipped_token_test_fails_the_run_under_ci(tmp_path: Path) -> None:
    source = ("import pytest\n\ndef test_token(softhsm_kit):\n    pytest.skip('pretend the token lacks something')\n\n"
              "@pytest.mark.xfail(strict=True)\ndef test_expected(softhsm_kit):\n    raise AssertionError\n\n"
              "def test_pure():\n    pytest.skip('not a token test')\n")
    ci = run_pytest(tmp_path, source, env={"CI": "true"})
    assert ci.returncode == 1, ci.stdout + ci.stderr
    section = ci.stdout.split("these fail the run (CI=true)", 1)[1]
    assert "test_case.py::test_token: [softhsm] pretend the token lacks something" in section, ci.stdout
    # An xfail and a skip outside the token/vector tests are not what the rule is about.
    assert "test_expected" not in section and "test_pure" not in section, ci.stdout
    local = run_pytest(tmp_path, source)
    assert local.returncode == 0, local.stdout + local.stderr


def test_pure_tests_run_without_softhsm(tmp_path: Path) -> None:
    no_softhsm = {"PATH": str(Path(sys.executable).parent)}  # the venv's bin: no softhsm2-util
    assert shutil.which("softhsm2-util", path=no_softhsm["PATH"]) is None
    pure = run_pytest(tmp_path, PURE_AND_TOKEN, "-m", "not softhsm", env=no_softhsm)
    assert pure.returncode == 0, pure.stdout + pure.stderr
    assert "1 passed, 1 deselected" in pure.stdout, pure.stdout
    # Selected token tests without SoftHSM: the run fails, it does not skip.
    everything = run_pytest(tmp_path, PURE_AND_TOKEN, env=no_softhsm)
    assert everything.returncode == 1, everything.stdout + everything.stderr
    assert "cannot create the SoftHSM test tokens: softhsm2-util not found" in everything.stdout + everything.stderr
    assert "passed" not in everything.stdout and "skipped" not in everything.stdout, everything.stdout
