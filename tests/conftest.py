"""tokencsp's own test rules, on top of the ``tokencsp`` pytest plugin (tokencsp/pytest_plugin.py).

The plugin makes the session's SoftHSM tokens (``tokencsp-test-a`` and ``tokencsp-test-b`` from
pyproject's ``tokencsp_softhsm_labels``, plus a fresh token per ``softhsm_token``/``pkcs11_token`` user) when
collection has finished - after every test module is imported (none touches the token at import)
and before any test runs, because SoftHSM only sees tokens that existed when a process initialised
the module - and only if a selected test needs them: ``pytest -m "not softhsm" tests/test_blobs.py``
needs no SoftHSM.  A test is a ``softhsm`` test when it uses ``softhsm_kit`` (directly or through
``tokens``, ``keys``, a module's ``provider``...) or another plugin fixture; a test that reaches the
token only through the environment carries ``@pytest.mark.softhsm`` itself.

Here: under ``CI=true`` a skipped token test or Wycheproof test (a vectors folder not found) fails
the run, because a green CI must have tested what needs the token and the vectors; the two-party
fixtures; the vectors folder.

Whatever SOFTHSM2_CONF / TOKENCSP_* the caller's shell had (say from ``. .softhsm/env``) is
dropped, so tests never touch the dev token; TOKENCSP_VECTORS is the one variable kept (and
the opencryptoki run's TOKENCSP_TEST_BACKEND / TOKENCSP_OCK_*).

The plugin's ``--tokencsp-token=opencryptoki`` (``make test-opencryptoki``, inside
``opencryptoki/run-in-namespace.sh``, which also sets ``TOKENCSP_TEST_BACKEND=opencryptoki``) makes
it build the same labels on opencryptoki soft tokens (:class:`tokencsp.testing.OpencryptokiKit`).  ``softhsm_only`` / ``opencryptoki_only`` tests are
skipped, with their reason, on the other backend; those deliberate skips do not count as the
CI-failing token-test skips above, since the other make target runs them.
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

from tokencsp.testing import OpencryptokiKit, SoftHSMKit, selected_backend

if TYPE_CHECKING:
    from tokencsp import Provider
    from tokencsp.provider import ExchangeKey

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Under CI, a skip of a test with one of these markers fails the run.
STRICT_IN_CI = ("softhsm", "wycheproof")

_KEEP_FROM_CALLER = {"TOKENCSP_VECTORS", "TOKENCSP_TEST_BACKEND", "TOKENCSP_OCK_SANDBOX", "TOKENCSP_OCK_MODULE"}
#: marker -> the backend it needs (other backends skip the test, with the marker's reason).
BACKEND_MARKERS = {"softhsm_only": "softhsm", "opencryptoki_only": "opencryptoki"}

for _name in list(os.environ):
    if _name == "SOFTHSM2_CONF" or (_name.startswith("TOKENCSP_") and _name not in _KEEP_FROM_CALLER):
        del os.environ[_name]

_SCRATCH = Path(tempfile.mkdtemp(prefix="tokencsp-tests-"))  # removed in pytest_unconfigure
# Replay caches and serial counters default to the user's state directory: keep the suite's here.
os.environ["XDG_STATE_HOME"] = str(_SCRATCH / "state")
# A developer's own `tokencsp agent` must not serve the suite: tests that want one start their own.
os.environ["TOKENCSP_AGENT"] = "off"

_strict_skips: list[tuple[str, str]] = []
_backend_skips: set[str] = set()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("tokencsp"):
        raise pytest.UsageError("the tokencsp pytest plugin is not installed: run `make test` "
                                "(or pip install -e '.[test]'), which registers its pytest11 entry point")
    config.addinivalue_line("markers", "softhsm_only(reason): needs SoftHSM itself (softhsm2-util, SOFTHSM2_CONF, "
                            "a token per test); skipped with the reason on other backends")
    config.addinivalue_line("markers", "opencryptoki_only(reason): only meaningful on opencryptoki (fork: SoftHSM "
                            "does not notice one); skipped with the reason elsewhere")
    config.addinivalue_line("markers", "host_side(reason): a token test whose subject is host-side (parsing, network "
                            "framing, the PostgreSQL cache), the token only holding the key; make test-opencryptoki "
                            "deselects it (-m 'softhsm and not host_side'), make test runs it")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backend = selected_backend()  # the plugin's --tokencsp-token / TOKENCSP_TEST_BACKEND, settled at configure
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "vectors_dir" in used and item.get_closest_marker("wycheproof") is None:
            item.add_marker(pytest.mark.wycheproof)
        for name, needs in BACKEND_MARKERS.items():
            marker = item.get_closest_marker(name)
            if marker is not None and needs != backend:
                why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else name)
                item.add_marker(pytest.mark.skip(reason=f"{name} (backend {backend}): {why}"))
                _backend_skips.add(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and report.nodeid not in _backend_skips:
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


@pytest.fixture(scope="module")
def tokens(softhsm_kit: SoftHSMKit | OpencryptokiKit) -> Iterator[tuple[Provider, Provider]]:
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
def token_has_allowed_mechanisms(softhsm_kit: SoftHSMKit | OpencryptokiKit) -> bool:
    """Whether ``tokencsp-test-a`` knows CKA_ALLOWED_MECHANISMS, asked of the token itself: a session
    AES key made with the attribute (SoftHSM 2.6 takes it; opencryptoki 3.8 answers
    CKR_ATTRIBUTE_TYPE_INVALID).  Tests of OAEP-only keys expect either the restriction or its refusal
    from this, not from the backend's name."""
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11 import exceptions as p11

    from tokencsp import config
    from tokencsp.token import open_token

    token = open_token(config.find_module(), softhsm_kit.user_pin, label="tokencsp-test-a")
    try:
        with token._lease() as lease:
            try:
                key = lease.session.generate_key(KeyType.AES, 128, store=False,
                                                 template={Attribute.ALLOWED_MECHANISMS: [Mechanism.AES_CBC]})
            except p11.AttributeTypeInvalid:
                return False
            try:
                return list(key[Attribute.ALLOWED_MECHANISMS]) == [Mechanism.AES_CBC]
            finally:
                key.destroy()
    finally:
        token.close()


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
            for reason in sorted(tally.get("reasons", ())):
                terminalreporter.write_line(f"    unsupported: {reason}")
    if _strict_skips:
        verdict = "these fail the run (CI=true)" if in_ci() else "under CI=true these would fail the run"
        terminalreporter.section(f"skipped token/vector tests: {verdict}", red=in_ci(), bold=True)
        for nodeid, reason in _strict_skips:
            terminalreporter.write_line(f"{nodeid}: {reason}")
