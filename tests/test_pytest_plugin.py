"""The ``tokencsp`` pytest plugin as a downstream project sees it: a directory with two test files
and no conftest, run by pytest in a child process (the plugin comes from the pytest11 entry point).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT

SOFTHSM_ONLY = pytest.mark.softhsm_only(reason="the child run makes SoftHSM tokens (a fresh SoftHSM token per test)")

PKCS11_DIRECT = '''
import pkcs11
from pkcs11 import Attribute, ObjectClass


def _session(softhsm_token):
    lib = pkcs11.lib(softhsm_token.module)
    token = lib.get_token(token_label=softhsm_token.label)
    return token.open(user_pin=softhsm_token.pin, rw=True)


def test_first_leaves_an_object_behind(softhsm_token):
    with _session(softhsm_token) as session:
        assert list(session.get_objects()) == []
        session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                               Attribute.LABEL: "left-behind", Attribute.VALUE: b"x"})
        assert len(list(session.get_objects({Attribute.LABEL: "left-behind"}))) == 1


def test_second_finds_an_empty_token(softhsm_token):
    with _session(softhsm_token) as session:
        assert list(session.get_objects()) == []


def test_token_facts(softhsm_token):
    env = softhsm_token.env
    assert env["PKCS11_MODULE"] == softhsm_token.module and env["PKCS11_TOKEN_LABEL"] == softhsm_token.label
    assert env["PKCS11_TOKEN_PIN"] == softhsm_token.pin and env["TOKENCSP_PIN"] == softhsm_token.pin
    assert softhsm_token.uri.startswith("pkcs11:token=" + softhsm_token.label)
    assert "pin" not in softhsm_token.uri and softhsm_token.pin not in repr(softhsm_token)
'''

# The same on either backend (--tokencsp-token): pkcs11_token is empty at the start of every test.
PKCS11_ANY = '''
import pkcs11
from pkcs11 import Attribute, ObjectClass


def _session(pkcs11_token):
    token = pkcs11.lib(pkcs11_token.module).get_token(token_label=pkcs11_token.label)
    return token.open(user_pin=pkcs11_token.pin, rw=True)


def test_any_first_leaves_an_object_behind(pkcs11_token):
    with _session(pkcs11_token) as session:
        assert list(session.get_objects()) == []
        session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                               Attribute.LABEL: "left-behind", Attribute.VALUE: b"x"})


def test_any_second_finds_an_empty_token(pkcs11_token):
    with _session(pkcs11_token) as session:
        assert list(session.get_objects()) == []


def test_any_token_facts(pkcs11_token):
    env = pkcs11_token.env
    assert env["PKCS11_MODULE"] == pkcs11_token.module and env["PKCS11_TOKEN_LABEL"] == pkcs11_token.label
    assert env["TOKENCSP_PIN"] == pkcs11_token.pin and pkcs11_token.pin not in repr(pkcs11_token)
    assert pkcs11_token.uri.startswith("pkcs11:token=")
'''

PROVIDER = '''
from tokencsp import SessionKey


def test_provider_round_trip(tokencsp_provider, exchange_key):
    session_key = SessionKey.generate("aes256")
    blob = session_key.export_simpleblob(exchange_key.public_key())
    assert exchange_key.import_simpleblob(blob).key == session_key.key
    assert [k.name for k in tokencsp_provider.list_keys()] == ["exchange-key"]


def test_each_provider_has_its_own_token(tokencsp_provider):
    assert tokencsp_provider.list_keys() == []


def test_pure():
    assert SessionKey.generate("aes256").key
'''


def run_downstream(project: Path, *args: str, env: dict[str, str] | None = None,
                   python: str | Path = sys.executable) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("TOKENCSP_", "PKCS11_")) and k not in {"SOFTHSM2_CONF", "CI", "PYTHONPATH",
                                                                      "VIRTUAL_ENV"}}
    return subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir",
                           str(project), str(project), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=project, timeout=600, stdin=subprocess.DEVNULL)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_pkcs11_direct.py").write_text(PKCS11_DIRECT)
    (tmp_path / "test_provider.py").write_text(PROVIDER)
    (tmp_path / "test_pkcs11_any.py").write_text(PKCS11_ANY)
    return tmp_path


@SOFTHSM_ONLY
@pytest.mark.softhsm  # the child makes tokens of its own
def test_downstream_project_without_conftest(project: Path) -> None:
    assert not (project / "conftest.py").exists()
    result = run_downstream(project, "-p", "no:randomly")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout, result.stdout


@pytest.mark.opencryptoki_only(reason="the child run is on opencryptoki: run-in-namespace.sh's store")
@pytest.mark.softhsm
def test_downstream_project_on_opencryptoki(project: Path) -> None:
    """``--tokencsp-token=opencryptoki``: pkcs11_token (and tokencsp_provider/exchange_key on it) run and find
    an empty token each time; softhsm_token skips."""
    sandbox = {k: os.environ[k] for k in ("TOKENCSP_OCK_SANDBOX", "TOKENCSP_OCK_MODULE")}
    result = run_downstream(project, "-p", "no:randomly", "-rs", "--tokencsp-token=opencryptoki", env=sandbox)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed, 3 skipped" in result.stdout, result.stdout
    assert result.stdout.count("softhsm_token needs SoftHSM") == 3, result.stdout


@SOFTHSM_ONLY
@pytest.mark.softhsm
@pytest.mark.slow
def test_downstream_project_with_only_pip_install_tokencsp(project: Path, tmp_path_factory) -> None:
    """issue 15's Done-when, literally: a fresh venv (no system site-packages) with nothing but
    ``pip install <this repository>`` and pytest runs the two test files, with no conftest."""
    venv = tmp_path_factory.mktemp("downstream-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                str(REPO_ROOT), "pytest"], capture_output=True, text=True, env=env, timeout=900,
                               stdin=subprocess.DEVNULL)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    where = subprocess.run([str(python), "-c", "import tokencsp, sys; print(tokencsp.__file__)"],
                           capture_output=True, text=True, env=env, check=True, cwd=project).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout
    assert (venv / "share" / "man" / "man1" / "tokencsp.1").is_file()  # pip install <source tree> installs it too
    assert not (project / "conftest.py").exists()
    result = run_downstream(project, "-p", "no:randomly", python=python)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout, result.stdout


@SOFTHSM_ONLY
def test_pure_tests_need_no_softhsm(project: Path) -> None:
    no_softhsm = {"PATH": str(Path(sys.executable).parent)}
    assert shutil.which("softhsm2-util", path=no_softhsm["PATH"]) is None
    pure = run_downstream(project, "-m", "not softhsm", env=no_softhsm)
    assert pure.returncode == 0 and "1 passed, 8 deselected" in pure.stdout, pure.stdout + pure.stderr
    missing = run_downstream(project, env=no_softhsm)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "cannot create the SoftHSM test tokens: softhsm2-util not found" in missing.stdout + missing.stderr
    assert "skipped" not in missing.stdout, missing.stdout


@SOFTHSM_ONLY
def test_tokencsp_token_option_selects_opencryptoki_and_fails_outside_its_sandbox(project: Path) -> None:
    """--tokencsp-token=opencryptoki asks for the opencryptoki kit; outside opencryptoki/run-in-namespace.sh
    the run fails with the way to run it (never a skip, never a real opencryptoki store touched)."""
    result = run_downstream(project, "--tokencsp-token=opencryptoki")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "cannot create the opencryptoki test tokens" in out and "run-in-namespace.sh" in out, out
    assert "skipped" not in result.stdout and "passed" not in result.stdout, out
    # The option names the backend for the whole run: help lists it, a contradicting variable is a usage error.
    assert "--tokencsp-token={softhsm,opencryptoki}" in run_downstream(project, "--help").stdout
    clash = run_downstream(project, "--tokencsp-token=softhsm", env={"TOKENCSP_TEST_BACKEND": "opencryptoki"})
    assert clash.returncode == 4 and "contradicts TOKENCSP_TEST_BACKEND=opencryptoki" in clash.stderr, \
        clash.stdout + clash.stderr
    bad = run_downstream(project, "--tokencsp-token=nshield")
    assert bad.returncode == 4 and "invalid choice" in bad.stderr, bad.stdout + bad.stderr
