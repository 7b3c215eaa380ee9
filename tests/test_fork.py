"""A Provider used across os.fork() works in the child and in the parent (issue 10).

PKCS#11 requires a forked child to call C_Initialize again before using the
module; opencryptoki (like hardware modules) refuses a child that reuses the
parent's state with CKR_CRYPTOKI_NOT_INITIALIZED. So these tests run on the
opencryptoki backend only (`make test-opencryptoki`): SoftHSM does not notice
a fork, and a child reusing the parent's module state passes there.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable

import pytest

from tokencsp import Provider, SessionKey

pytestmark = pytest.mark.opencryptoki_only(
    reason="SoftHSM does not notice fork(): a child reusing the parent's module state passes there")

TOKEN = "tokencsp-test-a"
KEY = "fork-kx"
_CHILD_TIMEOUT_S = 60


def round_trip(key) -> bool:
    """One SIMPLEBLOB import through ``key`` on the token."""
    session_key = SessionKey.generate("aes256")
    return key.import_simpleblob(session_key.export_simpleblob(key.public_key())).key == session_key.key


def in_fork(work: Callable[[], str]) -> tuple[int, str]:
    """Run ``work`` in a forked child; its exit code and what it returned (or raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.close(read_end)
            report = work()
            code = 0
        except BaseException as exc:  # noqa: BLE001 -- everything must reach the parent
            report = f"{type(exc).__name__}: {exc}"
        try:
            os.write(write_end, report.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    seen = b""
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    try:
        while (left := deadline - time.monotonic()) > 0 and select.select([read_end], [], [], left)[0]:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            seen += chunk
        else:  # no EOF before the deadline: the child hangs
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


@pytest.fixture()
def provider(softhsm_kit):
    with Provider.open(token=TOKEN) as opened:
        opened.generate_exchange_key(KEY)
        try:
            yield opened
        finally:
            opened.delete_key(KEY)
            assert opened.session_object_count() == 0


def test_provider_used_across_fork_works_in_child_and_parent(provider):
    key = provider.exchange_key(KEY)
    assert round_trip(key)  # the parent has sessions, a login and cached handles before the fork

    def child() -> str:
        return "ok" if round_trip(key) and round_trip(provider.exchange_key(KEY)) else "wrong key"

    assert in_fork(child) == (0, "ok")
    assert round_trip(key)  # the parent's sessions survive the child and its exit
    assert in_fork(child) == (0, "ok")  # and a second child after the parent used them again


def test_provider_opened_in_a_forked_child(provider):
    """The module was initialised in the parent; a Provider the child opens itself works too."""
    assert round_trip(provider.exchange_key(KEY))

    def child() -> str:
        with Provider.open(token=TOKEN) as own:
            return "ok" if round_trip(own.exchange_key(KEY)) else "wrong key"

    assert in_fork(child) == (0, "ok")
    assert round_trip(provider.exchange_key(KEY))
