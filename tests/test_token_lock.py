"""The cross-process token lock: a private directory, no symlinks, an owner check, a timeout.

Issue 9, finding 6: the lock used to be ``/tmp/tokencsp-UID-HASH.lock``,
created following symlinks, with no owner check and no timeout, so another
local user could pre-create it and hang every tokencsp process of the victim.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokencsp import config
from tokencsp.errors import TokenLockError
from tokencsp.token import lock, open_token

OPEN_ONCE = "from tokencsp import Provider; Provider.open(token='tokencsp-test-a').close(); print('opened')"


def _private_env(tmp_path: Path) -> dict[str, str]:
    """A fresh temp dir (what /tmp is to the old code) and private runtime/state dirs."""
    shared_tmp, runtime, state = tmp_path / "tmp", tmp_path / "run", tmp_path / "state"
    for d in (shared_tmp, runtime, state):
        d.mkdir(mode=0o700)
    shared_tmp.chmod(0o1777)
    return {"TMPDIR": str(shared_tmp), "XDG_RUNTIME_DIR": str(runtime), "XDG_STATE_HOME": str(state)}


def _run(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", OPEN_ONCE], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_a_hostile_lock_in_tmp_does_not_hang_the_open(tmp_path, softhsm_kit):
    env = _private_env(tmp_path)
    module = os.path.realpath(config.find_module())
    key = hashlib.sha256(f"{module}\0{os.environ.get('SOFTHSM2_CONF', '')}".encode()).hexdigest()[:16]
    hostile = Path(env["TMPDIR"]) / f"tokencsp-{os.getuid()}-{key}.lock"  # where the old code put it
    fd = os.open(hostile, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "another user" holds it forever
        result = _run(env)  # the old code waits here until the timeout kills the test
    finally:
        os.close(fd)
    assert result.returncode == 0 and result.stdout.strip() == "opened", result.stderr


def test_an_open_leaves_nothing_in_tmp(tmp_path, softhsm_kit):
    env = _private_env(tmp_path)
    result = _run(env)
    assert result.returncode == 0, result.stderr
    assert list(Path(env["TMPDIR"]).iterdir()) == []
    locks = list((Path(env["XDG_RUNTIME_DIR"]) / "tokencsp").iterdir())
    assert len(locks) == 1 and locks[0].name.startswith("open-")
    assert (Path(env["XDG_RUNTIME_DIR"]) / "tokencsp").stat().st_mode & 0o777 == 0o700


def test_the_state_dir_serves_when_there_is_no_runtime_dir(tmp_path, monkeypatch):
    env = _private_env(tmp_path)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    assert lock.lock_directory() == Path(env["XDG_STATE_HOME"]) / "tokencsp"


def test_a_symlinked_lock_file_is_refused(tmp_path, monkeypatch, softhsm_kit):
    env = _private_env(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    path = lock.lock_path(os.path.realpath(config.find_module()))
    target = tmp_path / "victim"
    target.write_text("precious")
    path.symlink_to(target)
    with pytest.raises(TokenLockError, match="symlink"):
        open_token(config.find_module(), softhsm_kit.user_pin, label="tokencsp-test-a")
    assert target.read_text() == "precious"


def test_a_symlinked_lock_directory_is_refused(tmp_path, monkeypatch):
    env = _private_env(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (Path(env["XDG_RUNTIME_DIR"]) / "tokencsp").symlink_to(elsewhere)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    with pytest.raises(TokenLockError, match="not a directory"):
        lock.lock_directory()


def test_a_lock_directory_open_to_others_is_refused(tmp_path, monkeypatch):
    env = _private_env(tmp_path)
    (Path(env["XDG_RUNTIME_DIR"]) / "tokencsp").mkdir(mode=0o700)
    (Path(env["XDG_RUNTIME_DIR"]) / "tokencsp").chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    with pytest.raises(TokenLockError, match="open to other users"):
        lock.lock_directory()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory owned by another user needs root (CI is root)")
def test_a_lock_directory_of_another_user_is_refused(tmp_path, monkeypatch):
    env = _private_env(tmp_path)
    foreign = Path(env["XDG_STATE_HOME"]) / "tokencsp"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    with pytest.raises(TokenLockError, match="belongs to uid 65534"):
        lock.lock_directory()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another user needs root (CI is root)")
def test_a_lock_file_of_another_user_is_refused(tmp_path, monkeypatch):
    env = _private_env(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    path = lock.lock_path("/some/module.so")
    path.touch(mode=0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(TokenLockError, match="not a file of ours"), lock.cross_process_lock("/some/module.so"):
        pass


def test_waiting_for_the_lock_times_out_with_one_clear_error(tmp_path, softhsm_kit):
    env = _private_env(tmp_path)
    module = os.path.realpath(config.find_module())
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom tokencsp.token import lock\n"
         f"with lock.cross_process_lock({module!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = subprocess.run([sys.executable, "-m", "tokencsp", "token", "list"],
                                env={**os.environ, **env, "TOKENCSP_LOCK_TIMEOUT": "0.5"},
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokencsp: error: timed out after 0.5 s waiting for the token lock")


def test_the_lock_timeout_variable_is_read_or_refused(monkeypatch):
    monkeypatch.delenv("TOKENCSP_LOCK_TIMEOUT", raising=False)
    assert lock._timeout() == lock.DEFAULT_TIMEOUT
    monkeypatch.setenv("TOKENCSP_LOCK_TIMEOUT", "2.5")
    assert lock._timeout() == 2.5
    monkeypatch.setenv("TOKENCSP_LOCK_TIMEOUT", "-3")
    assert lock._timeout() == 0.0  # a negative wait is no wait
    monkeypatch.setenv("TOKENCSP_LOCK_TIMEOUT", "soon")
    with pytest.raises(TokenLockError, match=r"^TOKENCSP_LOCK_TIMEOUT must be a number of seconds, not 'soon'$"):
        lock._timeout()
