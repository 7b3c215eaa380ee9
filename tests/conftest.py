"""Session-wide SoftHSM tokens for the test suite, built only when a token test is collected.

The PKCS#11 module is initialised once per process (by ``tokencsp.token``) and only sees the
tokens that exist at that moment, reading SOFTHSM2_CONF then.  So the tokens are made when
collection has finished (``pytest_collection_finish``) - after every test module is imported
(none touches the token at import) and before any test runs - and the environment is pointed at
them for the whole process and any subprocess a test starts.  A run that selects no token test
(``pytest -m "not softhsm" tests/test_blobs.py``) never builds them and needs no SoftHSM.

A test is a token test (``softhsm`` marker) when it uses the ``softhsm_kit`` fixture, directly or
through another fixture (``tokens``, ``keys``, a module's ``provider``); a test that reaches the
token only through the environment carries ``@pytest.mark.softhsm`` itself.

Under ``CI=true`` a skipped token test or Wycheproof test (a vectors folder not found) fails the
run: a green CI must have tested what needs the token and the vectors.

Whatever SOFTHSM2_CONF / TOKENCSP_* the caller's shell had (say from ``. .softhsm/env``) is
dropped, so tests never touch the dev token; TOKENCSP_VECTORS is the one variable kept.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tokencsp.testing import SoftHSMKit

if TYPE_CHECKING:
    from tokencsp import Provider
    from tokencsp.provider import ExchangeKey

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_TOKEN_LABELS = ("tokencsp-test-a", "tokencsp-test-b")

#: Using one of these fixtures (directly or through others) makes a test a ``softhsm`` test.
TOKEN_FIXTURES = frozenset({"softhsm_kit"})
#: Under CI, a skip of a test with one of these markers fails the run.
STRICT_IN_CI = ("softhsm", "wycheproof")

_KEEP_FROM_CALLER = {"TOKENCSP_VECTORS"}

for _name in list(os.environ):
    if _name == "SOFTHSM2_CONF" or (_name.startswith("TOKENCSP_") and _name not in _KEEP_FROM_CALLER):
        del os.environ[_name]

_SCRATCH = Path(tempfile.mkdtemp(prefix="tokencsp-tests-"))
# Replay caches and serial counters default to the user's state directory: keep the suite's here.
os.environ["XDG_STATE_HOME"] = str(_SCRATCH / "state")

_kit: SoftHSMKit | None = None
_strict_skips: list[tuple[str, str]] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def build_kit() -> SoftHSMKit:
    """The session's tokens, made on first call and applied to ``os.environ``."""
    global _kit
    if _kit is None:
        kit = SoftHSMKit(_SCRATCH / "softhsm", labels=TEST_TOKEN_LABELS)
        kit.__enter__()
        kit.apply()
        _kit = kit
    return _kit


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "softhsm: needs the session's SoftHSM tokens (set automatically by fixture)")
    config.addinivalue_line("markers", "wycheproof: needs the Wycheproof vectors (set automatically by fixture)")


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so that -m "not softhsm" sees the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & TOKEN_FIXTURES and item.get_closest_marker("softhsm") is None:
            item.add_marker(pytest.mark.softhsm)
        if "vectors_dir" in used and item.get_closest_marker("wycheproof") is None:
            item.add_marker(pytest.mark.wycheproof)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not any(item.get_closest_marker("softhsm") for item in session.items):
        return
    try:
        build_kit()
    except (RuntimeError, ValueError, OSError) as e:
        # Fail the whole run loudly: skipping would let a run pass having tested nothing that needs a token.
        pytest.exit(f"cannot create the SoftHSM test tokens: {e}\n"
                    "(or deselect the token tests: -m 'not softhsm')",
                    returncode=pytest.ExitCode.TESTS_FAILED)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        marks = [name for name in STRICT_IN_CI if name in report.keywords]
        if marks:
            longrepr = report.longrepr
            reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
            _strict_skips.append((report.nodeid, f"[{', '.join(marks)}] {reason}"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _strict_skips and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def softhsm_kit() -> SoftHSMKit:
    """The session's SoftHSM kit: tokens ``tokencsp-test-a`` (also TOKENCSP_TOKEN) and
    ``tokencsp-test-b``, user PIN ``kit.user_pin``."""
    return build_kit()


@pytest.fixture(scope="module")
def tokens(softhsm_kit: SoftHSMKit) -> Iterator[tuple[Provider, Provider]]:
    """Providers for both test tokens, (a, b): one party each in the two-party tests."""
    from tokencsp import Provider

    with Provider.open(token="tokencsp-test-a", pin=softhsm_kit.user_pin) as a, \
            Provider.open(token="tokencsp-test-b", pin=softhsm_kit.user_pin) as b:
        yield a, b


@pytest.fixture(scope="module")
def keys(tokens: tuple[Provider, Provider], request: pytest.FixtureRequest) -> Iterator[dict[str, ExchangeKey]]:
    """Exchange keys for two-party tests: alice and mallory on token a, bob on token b.

    Named ``<KEY_PREFIX>-alice`` etc. after the test module's ``KEY_PREFIX``;
    deleted afterwards, and no session object may be left on either token.
    """
    a, b = tokens
    prefix = getattr(request.module, "KEY_PREFIX", request.module.__name__)
    made = [(a, f"{prefix}-alice"), (b, f"{prefix}-bob"), (a, f"{prefix}-mallory")]
    pairs = [provider.generate_exchange_key(name) for provider, name in made]
    yield dict(zip(("alice", "bob", "mallory"), pairs, strict=True))
    for provider, name in made:
        provider.delete_key(name)
    assert a.session_object_count() == 0 and b.session_object_count() == 0


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The Wycheproof vectors folder: $TOKENCSP_VECTORS, else ``<repo>/../shared/vectors/wycheproof``;
    skips the test when absent (and under CI=true that skip fails the run)."""
    from_env = os.environ.get("TOKENCSP_VECTORS")
    path = Path(from_env) if from_env else REPO_ROOT.parent / "shared" / "vectors" / "wycheproof"
    path = path.resolve()
    if not path.is_dir():
        pytest.skip(f"Wycheproof vectors not found at {path} (set TOKENCSP_VECTORS)")
    return path


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    module = sys.modules.get("test_wycheproof_token") or sys.modules.get("tests.test_wycheproof_token")
    summary = getattr(module, "SUMMARY", {})
    if summary:
        terminalreporter.section("Wycheproof through the token")
        for name, tally in sorted(summary.items()):
            terminalreporter.write_line(
                f"{name}: {tally['passed']} passed, {tally['failed']} failed, {tally['unsupported']} unsupported")
    if _strict_skips:
        verdict = "these fail the run (CI=true)" if in_ci() else "under CI=true these would fail the run"
        terminalreporter.section(f"skipped token/vector tests: {verdict}", red=in_ci(), bold=True)
        for nodeid, reason in _strict_skips:
            terminalreporter.write_line(f"{nodeid}: {reason}")
