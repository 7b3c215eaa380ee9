"""Faults (issue point 4): each ends in a typed error or a clean exit, leaves no plaintext file and
no object on the token, and the next operation in the same process (or a new one) succeeds.

PKCS#11 login is token-wide per process and C_Finalize kills every session of the process, so the
wrong-PIN and module-finalised cases run in a fresh interpreter (``in_child``): a ``child_*``
function of this module, run there, asserts what happens inside that one process.
"""

from __future__ import annotations

import _ctypes
import contextlib
import fcntl
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import REPO_ROOT, assert_one_line_error, tokencsp
from tokencsp import Provider, SessionKey, config, envelope
from tokencsp.errors import (
    KeyNotFoundError,
    ModuleLoadError,
    PinError,
    ReplayedMessage,
    TokenCSPError,
    TokenError,
    TokenNotFoundError,
)
from tokencsp.fileio import atomic_output
from tokencsp.replay import MemoryReplayCache

RX = "fault-rx"
CHUNK = 4096  # small chunks: many of them in a small message


def in_child(function: str, *args: str) -> str:
    """Run ``function(*args)`` of this module in a new interpreter; its stdout."""
    code = (f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests')!r}); import test_faults; "
            f"test_faults.{function}(*sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tokencsp-"))


def imports(key) -> bool:
    """One SIMPLEBLOB round trip through ``key`` on the token."""
    session_key = SessionKey.generate("aes256")
    return key.import_simpleblob(session_key.export_simpleblob(key.public_key())).key == session_key.key


@pytest.fixture(scope="module")
def provider(softhsm_kit):
    with Provider.open() as opened:
        yield opened


@pytest.fixture(scope="module")
def rx(provider):
    key = provider.generate_exchange_key(RX)
    yield key
    provider.delete_key(RX)


@contextlib.contextmanager
def read_only(directory: Path):
    """A directory nobody may create files in: chmod 0500, or for root (who ignores modes) chattr +i."""
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield directory
        finally:
            directory.chmod(0o700)
        return
    get_flags, set_flags, immutable = 0x80086601, 0x40086602, 0x10  # FS_IOC_[GS]ETFLAGS, FS_IMMUTABLE_FL
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            flags = struct.unpack("i", fcntl.ioctl(fd, get_flags, bytes(8))[:4])[0]
            fcntl.ioctl(fd, set_flags, struct.pack("i", flags | immutable) + bytes(4))
        except OSError as exc:
            pytest.skip(f"cannot make a directory read-only for root here: {exc}")
        try:
            yield directory
        finally:
            fcntl.ioctl(fd, set_flags, struct.pack("i", flags) + bytes(4))
    finally:
        os.close(fd)


# -- wrong PIN, token absent, module path wrong ---------------------------------------------------


def child_open_failures(workdir: str) -> None:
    """Each failure is typed and the next Provider.open in this process works; twice over, so a wrong
    PIN is also tried after this process has logged in and out again (no session left logged in)."""
    garbage = Path(workdir) / "garbage.so"
    garbage.write_bytes(b"\x7fELF but not really")
    failures = [(ModuleLoadError, {"module": str(Path(workdir) / "missing.so")}),
                (ModuleLoadError, {"module": str(garbage)}),
                (ModuleLoadError, {"module": _ctypes.__file__}),  # a real shared object, not PKCS#11
                (TokenNotFoundError, {"token": "no-such-token"}),
                (PinError, {"pin": "not-the-pin"})]
    for error, arguments in failures + failures:
        with pytest.raises(error):
            Provider.open(**arguments)
        with Provider.open() as provider:
            assert imports(provider.exchange_key(RX))
            assert provider.session_object_count() == 0


def test_open_failures_are_typed_and_the_process_recovers(rx, tmp_path):
    in_child("child_open_failures", str(tmp_path))


@pytest.mark.parametrize("fault,needle,hint", [
    ({"TOKENCSP_MODULE": "/nonexistent/libp11.so"}, "module not found", "apt-get install softhsm2"),
    ({"TOKENCSP_TOKEN": "no-such-token"}, "no token with", "tokens there: "),
    ({"TOKENCSP_PIN": "not-the-pin"}, "PIN incorrect", "says")])
def test_cli_open_failure_then_success(rx, tmp_path, fault, needle, hint):
    sealed = tmp_path / "m.seal"
    sealed.write_bytes(envelope.seal_bytes(b"hello", rx.public_key()))
    command = ["open", "--key", RX, "--replay-db", str(tmp_path / "db"), "-o", str(tmp_path / "out"), str(sealed)]
    assert_one_line_error(tokencsp(*command, env=fault, check=False), 3, needle, hint=hint)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    tokencsp(*command)  # same replay cache: the failed run recorded nothing
    assert (tmp_path / "out").read_bytes() == b"hello"


# -- key deleted between calls --------------------------------------------------------------------


@pytest.mark.parametrize("deleter", ["another-process", "another-provider"])
def test_key_deleted_between_calls(provider, tmp_path, deleter):
    name = f"fault-gone-{deleter}"
    key = provider.generate_exchange_key(name)
    assert imports(key)  # the handle is now cached in this thread
    sealed = envelope.seal_bytes(b"x" * 10_000, key.public_key(), chunk_size=CHUNK)
    objects = provider.object_count()
    if deleter == "another-process":
        tokencsp("key", "delete", "--yes", name)
    else:
        with Provider.open() as other:
            assert other.delete_key(name) == 2
    with pytest.raises(KeyNotFoundError):
        imports(key)
    blob = SessionKey.generate("aes256").export_simpleblob(key.public_key())
    with pytest.raises(KeyNotFoundError):  # implicit rejection must not hide a missing key
        key.import_simpleblob_implicit(blob)
    cache, out = MemoryReplayCache(), tmp_path / "out"
    with pytest.raises(KeyNotFoundError), atomic_output(str(out)) as sink:
        envelope.open_message(io.BytesIO(sealed), sink, key, cache=cache)
    assert not out.exists() and leftovers(tmp_path) == []
    assert provider.object_count() == objects - 2 and provider.session_object_count() == 0
    tokencsp("key", "generate", name)  # the same name, a new key
    try:
        fresh = provider.exchange_key(name)
        assert fresh.key_id != key.key_id and imports(fresh)
        with pytest.raises(KeyNotFoundError):
            imports(key)
        assert provider.session_object_count() == 0
    finally:
        provider.delete_key(name)


# -- the session closed or the module finalised mid-stream ---------------------------------------


def _finalize_module() -> None:
    """C_Finalize straight through the module's function list (the 2nd pointer), as foreign code would."""
    from tokencsp.token import _function_list

    _, functions = _function_list(config.find_module())
    finalize = functions.C_Finalize
    assert finalize(None) == 0


class _FaultySource(io.BytesIO):
    """A message source that runs ``fault`` on another thread once reading has passed ``offset``."""

    def __init__(self, data: bytes, offset: int, fault) -> None:
        super().__init__(data)
        self.offset, self.fault, self.fired = offset, fault, False

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        if not self.fired and self.tell() >= self.offset:
            self.fired = True
            thread = threading.Thread(target=self.fault)
            thread.start()
            thread.join()
        return data


def child_mid_stream(action: str, when: str, workdir: str) -> None:
    provider = Provider.open()
    objects, receiver = provider.object_count(), provider.exchange_key(RX)
    data = os.urandom(5 * CHUNK + 123)
    sealed = envelope.seal_bytes(data, receiver.public_key(), chunk_size=CHUNK)
    prefix = len(envelope.read_header(io.BytesIO(sealed)).raw)
    # before-import: while the key blob is read; after-chunk-0: the key is on the host already
    offset = 100 if when == "before-import" else prefix + CHUNK + 16
    fault = provider.close if action == "close" else _finalize_module
    cache, out = MemoryReplayCache(), Path(workdir) / "plain"
    try:
        with atomic_output(str(out)) as sink:
            envelope.open_message(_FaultySource(sealed, offset, fault), sink, receiver, cache=cache)
        assert out.read_bytes() == data
        print("completed")
    except TokenCSPError:
        # Before the import this is the implicit rejection's AuthenticationFailed: envelope lets
        # through only KeyNotFound/Pin/ModuleLoad/TokenNotFound errors, not "token closed".
        assert not out.exists()
        print("refused")
    assert leftovers(Path(workdir)) == []
    with Provider.open() as again:  # after C_Finalize: initialises the module again, retries once
        assert again.object_count() == objects and again.session_object_count() == 0
        assert imports(again.exchange_key(RX))
        # Recorded only if chunk 0 authenticated: a refused message opens now, a completed one never again.
        reopen = io.BytesIO()
        if when == "before-import":
            envelope.open_message(io.BytesIO(sealed), reopen, again.exchange_key(RX), cache=cache)
            assert reopen.getvalue() == data
        else:
            with pytest.raises(ReplayedMessage):
                envelope.open_message(io.BytesIO(sealed), reopen, again.exchange_key(RX), cache=cache)
        # The stale provider's handles now name `again`'s sessions: it must neither use nor close them.
        with pytest.raises(TokenError):
            receiver.info()
        with pytest.raises(TokenCSPError):
            imports(receiver)
        provider.close()
        assert imports(again.exchange_key(RX)) and again.session_object_count() == 0


@pytest.mark.parametrize("when", ["before-import", "after-chunk-0"])
@pytest.mark.parametrize("action", ["close", "finalize"])
def test_session_gone_mid_stream(rx, tmp_path, action, when):
    expected = "refused" if when == "before-import" else "completed"
    assert in_child("child_mid_stream", action, when, str(tmp_path)) == expected
    assert leftovers(tmp_path) == []


# -- unwritable output, full disk -----------------------------------------------------------------


def _inputs(rx, tmp_path: Path, command: str, data: bytes) -> list[str]:
    """Arguments of `tokencsp open` or `tokencsp capi decrypt` for ``data`` sent to ``rx``, minus -o."""
    if command == "open":
        (tmp_path / "m.seal").write_bytes(envelope.seal_bytes(data, rx.public_key()))
        return ["open", "--key", RX, "--replay-db", str(tmp_path / "replay.db"), str(tmp_path / "m.seal")]
    key = SessionKey.generate("aes256")
    (tmp_path / "sb").write_bytes(key.export_simpleblob(rx.public_key()))
    (tmp_path / "ct").write_bytes(key.encrypt(data))
    return ["capi", "decrypt", "--key", RX, "--blob", str(tmp_path / "sb"), str(tmp_path / "ct")]


@pytest.mark.parametrize("where", ["read-only-dir", "missing-dir"])
@pytest.mark.parametrize("command", ["open", "capi"])
def test_unwritable_output(rx, tmp_path, command, where):
    data = os.urandom(200_000)
    args = _inputs(rx, tmp_path, command, data)
    with read_only(tmp_path / "ro") if where == "read-only-dir" else contextlib.nullcontext(tmp_path / "no") as d:
        assert_one_line_error(tokencsp(*args, "-o", str(d / "out"), check=False), 1, "cannot write")
        assert not (d / "out").exists() and (not d.exists() or list(d.iterdir()) == [])
    tokencsp(*args, "-o", str(tmp_path / "out"))  # nothing was decrypted, nothing recorded
    assert (tmp_path / "out").read_bytes() == data and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["open", "capi"])
def test_disk_full(rx, tmp_path, command):
    data = os.urandom(3 << 20)
    args = _inputs(rx, tmp_path, command, data)
    out = tmp_path / "out"
    assert_one_line_error(tokencsp(*args, "-o", str(out), fsize=1 << 20, check=False), 1, "File too large")
    assert not out.exists() and leftovers(tmp_path) == []
    # With -o the message is recorded only after it authenticated completely (FORMAT.md O6a): the
    # failed write did not spend it, so it opens now, and only once.
    tokencsp(*args, "-o", str(out))
    assert out.read_bytes() == data and leftovers(tmp_path) == []
    if command == "open":
        assert_one_line_error(tokencsp(*args, "-o", str(tmp_path / "again"), check=False), 20, "replay",
                              hint="replay cache")
        assert not (tmp_path / "again").exists()


# -- SIGKILL mid-file -----------------------------------------------------------------------------


def _output_file_of(pid: int, directory: Path, timeout: float = 60.0) -> str:
    """The file ``pid`` writes in ``directory`` (named or O_TMPFILE), once it holds plaintext."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(f"{directory}/") and "replay.db" not in target \
                        and os.stat(f"/proc/{pid}/fd/{fd}").st_size > 0:
                    return target
        time.sleep(0.01)
    raise AssertionError(f"process {pid} wrote no output in {directory}")


def test_sigkill_mid_file(rx, provider, tmp_path):
    data = os.urandom(32 << 20)
    sealed = envelope.seal_bytes(data, rx.public_key())
    out, db = tmp_path / "out", tmp_path / "replay.db"
    objects = provider.object_count()
    command = ["open", "--key", RX, "--replay-db", str(db), "-q", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "tokencsp", *command], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        # Returns once the reader took all but a pipe buffer of it: the process is mid-file.
        proc.stdin.write(sealed[: len(sealed) // 2])
        proc.stdin.flush()
        _output_file_of(proc.pid, tmp_path)
    except BrokenPipeError:
        raise AssertionError(proc.stderr.read().decode()) from None
    finally:
        watchdog.cancel()
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stderr):
            with contextlib.suppress(BrokenPipeError):
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and leftovers(tmp_path) == []
    # Killed before the end: with -o nothing was recorded (FORMAT.md O6a), so the message opens now,
    # exactly once.
    tokencsp(*command, input=sealed)
    assert out.read_bytes() == data and leftovers(tmp_path) == []
    for _ in range(2):
        assert_one_line_error(tokencsp(*command[:-1], str(tmp_path / "again"), input=sealed, check=False), 20,
                              "replay", hint="replay cache")
        assert not (tmp_path / "again").exists() and leftovers(tmp_path) == []
    assert provider.object_count() == objects and provider.session_object_count() == 0
