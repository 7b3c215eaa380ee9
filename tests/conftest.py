"""Session-wide SoftHSM tokens for the test suite.

The PKCS#11 module is initialised once per process (by ``tokencsp.token``)
and only sees the tokens that exist at that moment, reading SOFTHSM2_CONF
then. So the tokens are made here, when pytest imports this conftest -
before it imports any test module - and the environment is pointed at them
for the whole process (and any subprocess a test starts).

Whatever SOFTHSM2_CONF / TOKENCSP_* the caller's shell had (say from
``. .softhsm/env``) is dropped, so tests never touch the dev token;
TOKENCSP_VECTORS is the one variable kept.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tokencsp.testing import SoftHSMKit

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_TOKEN_LABELS = ("tokencsp-test-a", "tokencsp-test-b")

_KEEP_FROM_CALLER = {"TOKENCSP_VECTORS"}


def _build_kit() -> SoftHSMKit:
    for name in list(os.environ):
        if name == "SOFTHSM2_CONF" or (
            name.startswith("TOKENCSP_") and name not in _KEEP_FROM_CALLER
        ):
            del os.environ[name]

    directory = Path(tempfile.mkdtemp(prefix="tokencsp-softhsm-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    kit = SoftHSMKit(directory, labels=TEST_TOKEN_LABELS)
    try:
        kit.__enter__()
    except RuntimeError as e:
        # Fail the whole run loudly (the message says to use `make test`):
        # skipping would let CI pass having tested nothing that needs a token.
        raise RuntimeError(f"cannot create the SoftHSM test tokens: {e}") from None
    kit.apply()
    # Replay caches and serial counters default to the user's state directory:
    # keep the suite's inside the throwaway directory.
    os.environ["XDG_STATE_HOME"] = str(directory / "state")
    return kit


_KIT = _build_kit()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_KIT.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def softhsm_kit() -> SoftHSMKit:
    """The session's SoftHSM kit: tokens ``tokencsp-test-a`` (also
    TOKENCSP_TOKEN) and ``tokencsp-test-b``, user PIN ``kit.user_pin``."""
    return _KIT


@pytest.fixture(scope="module")
def tokens(softhsm_kit):
    """Providers for both test tokens, (a, b): one party each in the two-party tests."""
    from tokencsp import Provider

    with Provider.open(token="tokencsp-test-a", pin=softhsm_kit.user_pin) as a, \
            Provider.open(token="tokencsp-test-b", pin=softhsm_kit.user_pin) as b:
        yield a, b


@pytest.fixture(scope="module")
def keys(tokens, request):
    """Exchange keys for two-party tests: alice and mallory on token a, bob on token b.

    Named ``<KEY_PREFIX>-alice`` etc. after the test module's ``KEY_PREFIX``;
    deleted afterwards, and no session object may be left on either token.
    """
    a, b = tokens
    prefix = getattr(request.module, "KEY_PREFIX", request.module.__name__)
    made = [(a, f"{prefix}-alice"), (b, f"{prefix}-bob"), (a, f"{prefix}-mallory")]
    pairs = [provider.generate_exchange_key(name) for provider, name in made]
    yield dict(zip(("alice", "bob", "mallory"), pairs))
    for provider, name in made:
        provider.delete_key(name)
    assert a.session_object_count() == 0 and b.session_object_count() == 0


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The Wycheproof vectors folder: $TOKENCSP_VECTORS, else
    ``<repo>/../shared/vectors/wycheproof``; skips the test when absent."""
    from_env = os.environ.get("TOKENCSP_VECTORS")
    if from_env:
        path = Path(from_env)
    else:
        path = REPO_ROOT.parent / "shared" / "vectors" / "wycheproof"
    path = path.resolve()
    if not path.is_dir():
        pytest.skip(f"Wycheproof vectors not found at {path}")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line per Wycheproof file run through the token: passed/failed/unsupported."""
    import sys

    module = sys.modules.get("test_wycheproof_token") or sys.modules.get("tests.test_wycheproof_token")
    SUMMARY = getattr(module, "SUMMARY", {})
    if not SUMMARY:
        return
    terminalreporter.section("Wycheproof through the token")
    for name, tally in sorted(SUMMARY.items()):
        terminalreporter.write_line(
            f"{name}: {tally['passed']} passed, {tally['failed']} failed, {tally['unsupported']} unsupported")
