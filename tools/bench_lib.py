"""Measuring for ``make bench``: alternating runs, medians, per-pair ratios, peak RSS of a child.

The machine is shared and noisy, so no figure is read alone: every comparison
runs its contenders in turns (the order rotates each round, so neither always
runs first on a warm cache), and the ratio is taken per round, between runs
that saw the same load, before the median of those ratios is taken.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Row", "Run", "alternate", "rate_rows", "run_child", "time_call"]


@dataclass(frozen=True)
class Run:
    """One measured run: wall seconds and, for a child process, its peak RSS."""

    seconds: float
    rss_kib: int | None = None


def time_call(fn: Callable[[], object]) -> Run:
    start = time.perf_counter()
    fn()
    return Run(time.perf_counter() - start)


GNU_TIME = "/usr/bin/time"


def run_child(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: str | None = None,
              stdout: str | None = None, rss: bool = False) -> Run:
    """Run ``argv`` once: wall time from spawn to exit and, with ``rss``, the child's peak RSS.

    The peak RSS comes from GNU time (``%M``): Linux carries a process's peak over
    exec, so a child spawned from this Python would report at least this Python's
    RSS; one forked by time(1) starts from time's.  time adds about a millisecond,
    to every contender alike; latency rows go without it.
    """
    import shutil
    import tempfile

    wrap = rss and os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as peak:
        full = [GNU_TIME, "-f", "%M", "-o", peak.name, *argv] if wrap else list(argv)
        program = shutil.which(full[0]) or full[0]
        actions = [(os.POSIX_SPAWN_OPEN, 0, stdin or os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, stdout or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                   (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        start = time.perf_counter()
        pid = os.posix_spawn(program, full, dict(os.environ if env is None else env), file_actions=actions)
        _, status, _ = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            message = err.read().decode(errors="replace").strip()[-400:]
            raise RuntimeError(f"{' '.join(argv[:3])} exited {code}: {message}")
        kib = None
        if wrap:
            text = Path(peak.name).read_text().strip().splitlines()
            kib = int(text[-1]) if text and text[-1].isdigit() else None
    return Run(seconds, kib)


def alternate(contenders: Mapping[str, Callable[[int], Run]], rounds: int, *,
              warmup: bool = False) -> dict[str, list[Run]]:
    """Run each contender once per round, rotating the order; ``fn(round)`` gets the round's index.

    ``warmup`` first runs each contender once unrecorded (index -1): first calls that
    load a cipher or fill a cache are not what a round should compare.
    """
    names = list(contenders)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    if warmup:
        for name in names:
            contenders[name](-1)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(contenders[name](index))
    return runs


@dataclass
class Row:
    """One line of the table: a contender's rate (or time) and its ratio to the row's reference."""

    section: str
    operation: str
    contender: str
    unit: str  # "MB/s", "ops/s" or "ms"
    value: float  # median
    reference: str | None = None
    ratio: float | None = None  # median of per-round ratios (see rate_rows)
    ratio_min: float | None = None
    ratio_max: float | None = None
    rounds: int = 0
    rss_mib: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rate_rows(section: str, operation: str, runs: Mapping[str, list[Run]], *, amount: float, unit: str,
              subject: str, against: str | None = None, note: str = "") -> list[Row]:
    """Rows for ``runs``: each contender's median and a per-round ratio.

    ``amount`` is the work per run (bytes for MB/s, operations for ops/s); unit "ms"
    reports the median time itself.  Without ``against``, each other contender's
    row holds ``subject``'s ratio to it; with ``against``, each contender's row holds
    its own ratio to ``against`` (the floor).  For a rate the ratio is rate over
    rate (> 1: faster); for a time it is time over time (> 1: takes longer), as the
    goals are phrased.  ``Row.reference`` names the pair, e.g. "tokencsp / age".
    """
    def value(run: Run) -> float:
        if unit == "ms":
            return run.seconds * 1e3
        return amount / run.seconds / (1e6 if unit == "MB/s" else 1.0)

    def ratios(top: list[Run], bottom: list[Run]) -> list[float]:
        return [t.seconds / b.seconds if unit == "ms" else b.seconds / t.seconds
                for t, b in zip(top, bottom, strict=True)]

    rows = []
    for name, theirs in runs.items():
        rss = [run.rss_kib for run in theirs if run.rss_kib is not None]
        row = Row(section, operation, name, unit, _median([value(run) for run in theirs]), rounds=len(theirs),
                  rss_mib=max(rss) / 1024 if rss else None, note=note if name == subject else "")
        pair = (name, against) if against is not None else (subject, name)
        if pair[0] != pair[1]:
            found = ratios(runs[pair[0]], runs[pair[1]])
            row.reference = f"{pair[0]} / {pair[1]}"
            row.ratio, row.ratio_min, row.ratio_max = _median(found), min(found), max(found)
        rows.append(row)
    return rows
