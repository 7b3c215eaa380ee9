"""Open many sealed messages in one process (``tokencsp open --out-dir DIR FILE...``).

Each message is opened as :func:`tokencsp.envelope.open_message` opens one,
in its three parts: steps 1-4 (prefix checks, on the host), step 5 (the key
import, on the token), steps 6-8 (decrypt, record, on the host).  The imports
run on one thread of their own, so the token works on message N+1 while the
host decrypts message N: a CPU-bound Python thread making PKCS#11 calls next
to another collapses the unwrap rate, a thread that only waits on the token
does not.

Each output is written to an unnamed temporary file in the output directory
and linked into place only after the whole message authenticated and its
acceptance committed to the replay cache (FORMAT.md O6a): no partial file,
nothing released before its commit, and an existing file is never
overwritten.  A message that fails is one :class:`Outcome` with its error;
the others go on.  Failures of the receiver's own token or replay cache are
no message's doing and end the batch (they are raised).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric import rsa

from . import envelope
from .errors import ConfigError, InputError, OutputError, ReplayCacheError, TokenCSPError, TokenError
from .fileio import atomic_output
from .replay import ReplayCache, ReplayPolicy

__all__ = ["SUFFIX", "Outcome", "open_many", "output_paths"]

SUFFIX = ".tcsp"


@dataclass(frozen=True)
class Outcome:
    """One input's result: ``opened`` on success, else ``error`` (and nothing was written)."""

    source: str
    output: str
    opened: envelope.Opened | None = None
    error: TokenCSPError | None = None


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
              allow_pkcs1: bool = False, clock: Callable[[], float] | None = None) -> Iterator[Outcome]:
    """Open each of ``sources`` into ``out_dir`` (:func:`output_paths`), yielding one Outcome per source, in order."""
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
        item = _Started(source, output, handle, checked, token.submit(envelope.import_session_key, receiver, checked))
        started.append(item)
        return item

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

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokencsp-token") as token:
        try:
            upcoming = start(0) if sources else None
            for index in range(len(sources)):
                current = upcoming
                # Queue the next import before this message's host work, so the two overlap.
                upcoming = start(index + 1) if index + 1 < len(sources) else None
                assert current is not None
                yield current if isinstance(current, Outcome) else finish(current)
        finally:
            for item in started:
                item.key.cancel()
                _close(item.handle)


def _close(handle: BinaryIO | None) -> None:
    if handle is not None:
        handle.close()
