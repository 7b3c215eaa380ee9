"""Open many sealed messages in one process (``tokencsp open --out-dir DIR FILE...``).

Each message is opened as :func:`tokencsp.envelope.open_message` opens one,
in its three parts: steps 1-4 (prefix checks, on the host), step 5 (the key
import, on the token), steps 6-8 (decrypt, record, on the host).  The imports
run on threads of their own, ``depth`` of them queued ahead of the message the
host is working on, so the token works on messages N+1..N+depth while the host
decrypts message N: a CPU-bound Python thread making PKCS#11 calls next to
another collapses the unwrap rate, a thread that only waits on the token does
not.  Each import is padded to the key's deadline on its own (the padding is a
sleep: while one import waits out its deadline, the next one's token work
runs), so several in flight are what lets a batch approach the token's own
rate instead of 1/deadline.  An import that overruns its deadline ends one
quantum late, and whether it does can depend on the blobs queued ahead of it
on a token that serialises imports: overruns are where a batch could leak, so
the depth leaves one typical import of headroom under the deadline
(:func:`depth_for`) and every pool session the batch will use is opened, with
the key found in it, before the imports run side by side (outside any padded
time).  The first message's import runs alone, before any host work: it is
the one that may calibrate the deadline, and probes timed next to a busy host
thread would set it high for the day.  While any batch runs the interpreter's
thread switch interval is lowered (one process-wide, reference-counted guard:
the last batch to end restores it): at CPython's default 5 ms, a token thread
that returns from ``C_UnwrapKey`` waits up to 5 ms for the host thread to hand
over the GIL, and imports overrun their deadline.

Each output is written to an unnamed temporary file in the output directory
and linked into place only after the whole message authenticated and its
acceptance committed to the replay cache (FORMAT.md O6a): no partial file,
nothing released before its commit, and an existing file is never
overwritten.  A message that fails is one :class:`Outcome` with its error;
the others go on.  Failures of the receiver's own token or replay cache are
no message's doing and end the batch (they are raised).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric import rsa

from . import envelope
from .errors import ConfigError, InputError, OutputError, ReplayCacheError, TokenCSPError, TokenError
from .fileio import atomic_output
from .replay import ReplayCache, ReplayPolicy

__all__ = ["DEPTH", "MAX_DEPTH", "SUFFIX", "Outcome", "depth_for", "fast_switching", "open_many", "output_paths"]

SUFFIX = ".tcsp"
#: Imports queued ahead of the message the host works on (one thread each) when the key's calibration
#: says nothing about it; else :func:`depth_for`, at most :data:`MAX_DEPTH`.  A receiver with a
#: ``concurrent_imports`` attribute caps it: through ``tokencsp agent`` 1 (one connection, one request
#: at a time).
DEPTH = 4
MAX_DEPTH = 16
SWITCH_INTERVAL = 0.0005  # seconds: sys.setswitchinterval while a batch runs


@dataclass(frozen=True)
class Outcome:
    """One input's result: ``opened`` on success, else ``error`` (and nothing was written)."""

    source: str
    output: str
    opened: envelope.Opened | None = None
    error: TokenCSPError | None = None


def depth_for(deadline: float, typical: float | None) -> int:
    """Imports in flight: as many as a token that serialises them finishes one typical import before the deadline.

    ``floor(deadline / typical) - 1``, at least 1, at most :data:`MAX_DEPTH`: with ``depth``
    imports started together on a token that runs one at a time, the last one ends at about
    ``depth * typical``, and the rule keeps that at most ``deadline - typical``.  That one
    typical import of headroom is for what the median does not cover -- invalid blobs are the
    slower class, and a wave of them ends later than a wave of valid ones -- because an import
    that overruns ends a quantum late, and whether it does would then depend on the blobs queued
    ahead of it.  Both figures come from the key's own calibration probes (never from the blobs
    being opened): the padded deadline, and the probes' median, what one import costs the token
    unloaded.  Idle the deadline is under twice the median (docs/SECURITY.md: 1.24 ms over
    about 0.67 ms), so imports run one at a time; under load, when preempted probes have pushed
    the deadline far above the median, several wait out their deadlines side by side.
    """
    if typical is None or not typical > 0.0 or not deadline > 0.0:
        return DEPTH
    return max(1, min(MAX_DEPTH, int(deadline / typical) - 1))


_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def fast_switching() -> Iterator[None]:
    """``sys.setswitchinterval`` at most :data:`SWITCH_INTERVAL` while any holder is inside.

    The interval is process-wide: the first holder saves it and lowers it, the last one to
    leave restores it, so two batches in two threads (or nested) never leave it lowered.
    Restored on an exception, KeyboardInterrupt or a generator closed early alike.
    """
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


def output_paths(sources: Sequence[str], out_dir: str) -> list[str]:
    """``out_dir/<name without a final .tcsp>`` per source; two sources with one output are refused."""
    outputs: list[str] = []
    seen: dict[str, str] = {}
    for source in sources:
        if source == "-":
            raise ConfigError("--out-dir reads named files, not standard input ('-')")
        name = os.path.basename(source)
        if name.endswith(SUFFIX):
            name = name[:-len(SUFFIX)]
        if name in ("", ".", ".."):
            raise ConfigError(f"{source}: no output name is left once {SUFFIX} is removed")
        output = os.path.join(out_dir, name)
        if output in seen:
            raise ConfigError(f"{seen[output]} and {source} would both be written to {output}; "
                              "open them into different directories")
        seen[output] = source
        outputs.append(output)
    return outputs


@dataclass
class _Started:
    """A message past steps 1-4, its key import queued on the token thread."""

    source: str
    output: str
    handle: BinaryIO
    checked: envelope.Checked
    key: concurrent.futures.Future[bytes]


_RECEIVER_PROBLEMS = (TokenError, ReplayCacheError)


def open_many(sources: Sequence[str], out_dir: str, receiver: envelope.Receiver, *, cache: ReplayCache,
              policy: ReplayPolicy | None = None, trust: Mapping[bytes, rsa.RSAPublicKey] | None = None,
              allow_pkcs1: bool = False, clock: Callable[[], float] | None = None,
              depth: int | None = None) -> Iterator[Outcome]:
    """Open each of ``sources`` into ``out_dir`` (:func:`output_paths`), yielding one Outcome per source, in order.

    ``depth`` key imports run ahead of the host's work, each on a thread of its own; None:
    :func:`depth_for` the key's calibration, once the first import (which may calibrate) is done.
    """
    if depth is not None and depth < 1:
        raise ValueError("depth is at least 1")
    if not os.path.isdir(out_dir):
        raise OutputError(f"--out-dir {out_dir} is not a directory")
    outputs = output_paths(sources, out_dir)
    policy = ReplayPolicy() if policy is None else policy
    started: list[_Started] = []

    def start(index: int) -> _Started | Outcome:
        source, output = sources[index], outputs[index]
        handle: BinaryIO | None = None
        try:
            if os.path.lexists(output):
                raise OutputError(f"{output} exists; not overwritten")
            try:
                handle = open(source, "rb")  # noqa: SIM115 -- closed by finish() or the finally below
            except OSError as exc:
                raise InputError(f"cannot read {source}: {exc.strerror}") from None
            checked = envelope.check_prefix(handle, receiver, policy=policy, trust=trust, clock=clock,
                                            allow_pkcs1=allow_pkcs1)
        except _RECEIVER_PROBLEMS:
            _close(handle)
            raise
        except TokenCSPError as exc:
            _close(handle)
            return Outcome(source, output, error=exc)
        item = _Started(source, output, handle, checked, submit(checked))
        started.append(item)
        return item

    executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(checked: envelope.Checked) -> concurrent.futures.Future[bytes]:
        if executor is not None:
            return executor.submit(envelope.import_session_key, receiver, checked)
        # The first import: on this thread, with nothing else running (it may calibrate the deadline).
        done: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        try:
            done.set_result(envelope.import_session_key(receiver, checked))
        except Exception as exc:  # noqa: BLE001 -- handed to finish(), as a token thread's failure would be
            done.set_exception(exc)
        return done

    def finish(item: _Started) -> Outcome:
        try:
            key = item.key.result()
            with item.handle, atomic_output(item.output, replace=False) as sink:
                opened = envelope.open_checked(item.checked, item.handle, sink, key, cache=cache,
                                               release=envelope.Release.AT_END)
        except _RECEIVER_PROBLEMS:
            raise
        except TokenCSPError as exc:
            return Outcome(item.source, item.output, error=exc)
        finally:
            started.remove(item)
        return Outcome(item.source, item.output, opened=opened)

    window: collections.deque[_Started | Outcome] = collections.deque()
    switching = contextlib.ExitStack()
    following = 0
    try:
        while following < len(sources):  # up to the first message that reaches its import
            window.append(start(following))
            following += 1
            if isinstance(window[-1], _Started):
                break
        if depth is None:
            rejection = getattr(receiver, "rejection", None)  # a tokencsp ExchangeKey's calibration
            depth = DEPTH if rejection is None else depth_for(rejection.padder.deadline, rejection.typical)
        # A receiver that can take only so many imports at a time says so (the agent client: one
        # connection; a token: its session pool).
        depth = max(1, min(depth, MAX_DEPTH, getattr(receiver, "concurrent_imports", depth)))
        warm = getattr(receiver, "warm_sessions", None)  # a token's key: its pool sessions, opened now
        if warm is not None and depth > 1 and following < len(sources):
            warm(depth)  # not inside the imports' padded time, which the calibration probes did not pay for
        with concurrent.futures.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="tokencsp-token") as pool:
            executor = pool
            try:
                switching.enter_context(fast_switching())
                while window:
                    current = window.popleft()
                    # Queue the next imports before this message's host work, so the two overlap.
                    while following < len(sources) and len(window) < depth:
                        window.append(start(following))
                        following += 1
                    yield current if isinstance(current, Outcome) else finish(current)
            finally:
                for item in started:
                    item.key.cancel()
    finally:
        switching.close()  # after the pool's threads have ended: none of them still runs an import
        for item in started:
            _close(item.handle)


def _close(handle: BinaryIO | None) -> None:
    if handle is not None:
        handle.close()
