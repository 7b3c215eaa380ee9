"""pytest fixtures for PKCS#11 tests on throwaway SoftHSM2 tokens (registered as the ``tokencsp``
plugin through the ``pytest11`` entry point; docs/TESTING.md).

``softhsm_token`` gives every test a token of its own that has never been used: SoftHSM only sees
tokens that existed when a process initialised the module, so the plugin counts, once collection
is done and before any test runs, the selected tests that need a token, makes that many (a pool,
in one child process) and points the environment at the store.  A test therefore finds an empty
token even when an earlier test in the same process initialised the module and left objects
behind, and no PIN is ever on a command line.

Nothing happens in a run that selects no test using these fixtures; tests that do use them get
the ``softhsm`` marker, so ``-m "not softhsm"`` runs without SoftHSM.  When SoftHSM is missing and
such a test is selected, the run stops with the install hint instead of skipping.

``--tokencsp-token=opencryptoki`` (or ``TOKENCSP_TEST_BACKEND=opencryptoki``, which
``opencryptoki/run-in-namespace.sh`` sets) makes the store :class:`tokencsp.testing.OpencryptokiKit`
instead: the same labels on opencryptoki soft tokens, whose slot table is fixed, so there is no
pool and ``softhsm_token`` skips.  ``pkcs11_token`` works on both: on SoftHSM it is the test's
``softhsm_token``; on opencryptoki one token of its own (``tcsp-pool-ock``) that no other fixture
uses, emptied of every object before each test.  ``tokencsp_provider`` and ``exchange_key`` stand
on ``pkcs11_token``.  The choice is put into ``TOKENCSP_TEST_BACKEND`` for the tests and their
child processes (:func:`tokencsp.testing.selected_backend`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .testing import TEST_BACKENDS, OpencryptokiKit, Pkcs11Token, SoftHSMKit, SoftHSMToken, selected_backend

if TYPE_CHECKING:
    from .provider import ExchangeKey, Provider

__all__ = ["exchange_key", "pkcs11_token", "softhsm_kit", "softhsm_token", "tokencsp_provider"]

#: Fixtures that need the session's token store; a test using any of them is a ``softhsm`` test.
STORE_FIXTURES = frozenset({"softhsm_kit", "softhsm_token", "pkcs11_token", "tokencsp_provider", "exchange_key"})
#: Fixtures that take a fresh token from the pool (one per test: pkcs11_token is softhsm_token on SoftHSM).
POOL_FIXTURES = frozenset({"softhsm_token", "pkcs11_token"})
#: Variables that would point code at another module, token or PIN; dropped before the kit applies.
FOREIGN_ENV = ("SOFTHSM2_CONF", "TOKENCSP_MODULE", "TOKENCSP_TOKEN", "TOKENCSP_PIN", "TOKENCSP_SO_PIN",
               "TOKENCSP_URI", "PKCS11_MODULE", "PKCS11_TOKEN_LABEL", "PKCS11_TOKEN_PIN")

POOL_PREFIX = "tcsp-pool-"
#: pkcs11_token's token on opencryptoki (run-in-namespace.sh's third soft token).
OCK_TOKEN_LABEL = f"{POOL_PREFIX}ock"
_SPARE = 2  # for a test that is run twice (reruns) or requests the fixture through getfixturevalue


class _State:
    def __init__(self) -> None:
        self.kit: SoftHSMKit | OpencryptokiKit | None = None
        self.directory: Path | None = None
        self.pool: list[str] = []
        self.error: str | None = None


_STATE = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tokencsp", "tokencsp PKCS#11 test tokens")
    group.addoption("--tokencsp-token", choices=TEST_BACKENDS, default=None, dest="tokencsp_token",
                    help="the token implementation the fixtures' tokens are made on: softhsm (default) or "
                         "opencryptoki (only inside tokencsp's opencryptoki/run-in-namespace.sh, as root); "
                         "default: $TOKENCSP_TEST_BACKEND, else softhsm")
    parser.addini("tokencsp_softhsm_labels", "token labels the session's SoftHSM store makes besides the pool "
                  "(the first one becomes TOKENCSP_TOKEN)", type="linelist", default=[])
    parser.addini("tokencsp_softhsm_pin", "user PIN of the SoftHSM test tokens", default="1234")


@pytest.hookimpl(tryfirst=True)  # before conftests' configure hooks, which may ask selected_backend()
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "softhsm: needs SoftHSM test tokens (set by the tokencsp plugin's fixtures)")
    config.stash[_STATE] = _State()
    chosen = config.getoption("tokencsp_token", None)
    try:
        from_env = selected_backend() if os.environ.get("TOKENCSP_TEST_BACKEND") else None
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if chosen and from_env and chosen != from_env:
        raise pytest.UsageError(f"--tokencsp-token={chosen} contradicts TOKENCSP_TEST_BACKEND={from_env}")
    os.environ["TOKENCSP_TEST_BACKEND"] = chosen or from_env or "softhsm"


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so that -m "not softhsm" sees the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if set(getattr(item, "fixturenames", ())) & STORE_FIXTURES and item.get_closest_marker("softhsm") is None:
            item.add_marker(pytest.mark.softhsm)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    selected = [item for item in session.items if item.get_closest_marker("softhsm")]
    if not selected:
        return
    need = sum(1 for item in selected if set(getattr(item, "fixturenames", ())) & POOL_FIXTURES)
    try:
        _build(session.config, need + _SPARE if need else 0)
    except (RuntimeError, ValueError, OSError) as e:
        backend = "opencryptoki" if selected_backend() == "opencryptoki" else "SoftHSM"
        pytest.exit(f"cannot create the {backend} test tokens: {e}\n(or deselect the token tests: -m 'not softhsm')",
                    returncode=pytest.ExitCode.TESTS_FAILED)


def _build(config: pytest.Config, pool_size: int) -> SoftHSMKit | OpencryptokiKit:
    state = config.stash[_STATE]
    if state.kit is not None:
        return state.kit
    for name in FOREIGN_ENV:
        os.environ.pop(name, None)
    state.directory = Path(tempfile.mkdtemp(prefix="tokencsp-softhsm-"))
    if selected_backend() == "opencryptoki":
        # the configured labels, and pkcs11_token's own token when a test uses it
        labels = list(dict.fromkeys([*config.getini("tokencsp_softhsm_labels"),
                                     *([OCK_TOKEN_LABEL] if pool_size else [])])) or [f"{POOL_PREFIX}kit"]
        ock = OpencryptokiKit(state.directory, labels=labels, user_pin=str(config.getini("tokencsp_softhsm_pin")))
        ock.__enter__()
        ock.apply()
        state.kit = ock
        return ock
    state.pool = [f"{POOL_PREFIX}{i:04d}" for i in range(pool_size)]
    labels = [*config.getini("tokencsp_softhsm_labels"), *state.pool]
    if not labels:
        labels = [f"{POOL_PREFIX}kit"]
    kit = SoftHSMKit(state.directory, labels=labels, user_pin=str(config.getini("tokencsp_softhsm_pin")))
    kit.__enter__()
    kit.apply()
    state.kit = kit
    return kit


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.directory is not None:
        shutil.rmtree(state.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def softhsm_kit(pytestconfig: pytest.Config) -> SoftHSMKit | OpencryptokiKit:
    """The session's SoftHSM store (:class:`tokencsp.testing.SoftHSMKit`): ``.token(label)``,
    ``.environ()`` for subprocesses, ``.add_tokens()`` for processes started afterwards."""
    return _build(pytestconfig, 0)


@pytest.fixture
def softhsm_token(softhsm_kit: SoftHSMKit | OpencryptokiKit, pytestconfig: pytest.Config) -> SoftHSMToken:
    """A token no test has used: ``.module``, ``.label``, ``.pin``, ``.so_pin``, ``.uri``, ``.env``."""
    if not isinstance(softhsm_kit, SoftHSMKit):
        pytest.skip("softhsm_token needs SoftHSM: a fresh token per test; opencryptoki's slot table is fixed")
    state = pytestconfig.stash[_STATE]
    if not state.pool:
        pytest.fail("no fresh SoftHSM token left: the plugin makes one per test that uses softhsm_token when "
                    "collection ends; a token made now would be invisible to this process (SoftHSM sees only "
                    "tokens that existed when the module was initialised)", pytrace=False)
    return softhsm_kit.token(state.pool.pop(0))


@pytest.fixture
def pkcs11_token(softhsm_kit: SoftHSMKit | OpencryptokiKit, request: pytest.FixtureRequest) -> Pkcs11Token:
    """A token holding no objects, on the run's backend (``--tokencsp-token``): on SoftHSM the test's
    ``softhsm_token``; on opencryptoki the kit's ``tcsp-pool-ock`` token, emptied before the test.
    ``.module``, ``.label``, ``.pin``, ``.so_pin``, ``.uri``, ``.env``."""
    if isinstance(softhsm_kit, SoftHSMKit):
        token: SoftHSMToken = request.getfixturevalue("softhsm_token")
        return token
    if OCK_TOKEN_LABEL not in softhsm_kit.labels:
        pytest.fail(f"no {OCK_TOKEN_LABEL} token: the plugin makes it when collection ends if a selected test "
                    "uses pkcs11_token (not through getfixturevalue alone)", pytrace=False)
    softhsm_kit.empty(OCK_TOKEN_LABEL)
    return softhsm_kit.token(OCK_TOKEN_LABEL)


@pytest.fixture
def tokencsp_provider(pkcs11_token: Pkcs11Token) -> Iterator[Provider]:
    """An open :class:`tokencsp.Provider`, logged in to ``pkcs11_token``."""
    from .provider import Provider

    with Provider.open(token=pkcs11_token.label, pin=pkcs11_token.pin, module=pkcs11_token.module) as provider:
        yield provider


@pytest.fixture
def exchange_key(tokencsp_provider: Provider) -> ExchangeKey:
    """A fresh RSA exchange key pair (AT_KEYEXCHANGE) named ``exchange-key`` on the test's own token."""
    return tokencsp_provider.generate_exchange_key("exchange-key")
