"""Run the atheris harnesses and report how many inputs each one executed.

    python tests/fuzz/run.py            # what `make fuzz` runs

Environment:
  FUZZ_RUNS     inputs per target (libFuzzer -runs; default 350000: 3 targets = 1,050,000)
  FUZZ_SECONDS  also stop each target after this many seconds (libFuzzer -max_total_time)
  FUZZ_TARGETS  comma-separated subset of: blobs,envelope,threephase
  FUZZ_JOBS     targets run at once (default: min(targets, CPUs))
  FUZZ_WORKDIR  where the growing corpora and logs live (default: <tmp>/tokencsp-fuzz);
                the checked-in seeds in tests/fuzz/corpus/<target>/ are only read
  FUZZ_ARGS     extra libFuzzer arguments, e.g. "-seed=1"

Each target's seeds come from tests/fuzz/corpus/<target>/; crashing inputs go
to tests/fuzz/crashers/<target>/ (tests/test_fuzz_properties.py replays every
file there).  After a crash the target resumes with the runs it has left (at
most FUZZ_RESTARTS, default 10, times), told to let that crash's signature
(exception type @ innermost tokencsp line) through, so one known bug does not
hide the next; FUZZ_KNOWN_CRASHES pre-loads such signatures.  Prints one line
per target and a total; the exit status is 1 if anything crashed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("blobs", "envelope", "threephase")
DEFAULT_RUNS = 350_000
DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.M)
EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)
SIGNATURE = re.compile(r"^FUZZ-SIGNATURE: (\S+)", re.M)
ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Result:
    target: str
    runs: int = 0
    seconds: float = 0.0
    crashes: list[Path] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    failed: str = ""  # libFuzzer ended without reporting a count


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def fuzz(target: str, runs: int, seconds: int | None, workdir: Path, extra: list[str], restarts: int) -> Result:
    result = Result(target)
    corpus, seeds = workdir / target, HERE / "corpus" / target
    crashers = HERE / "crashers" / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashers.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{target}.log"
    log.write_text("")
    known = [s for s in os.environ.get("FUZZ_KNOWN_CRASHES", "").split(",") if s]
    started = time.monotonic()
    for _ in range(restarts + 1):
        left = runs - result.runs
        budget = None if seconds is None else int(seconds - (time.monotonic() - started))
        if left <= 0 or (budget is not None and budget <= 0):
            break
        cmd = [sys.executable, str(HERE / f"fuzz_{target}.py"), str(corpus), str(seeds),
               f"-runs={left}", "-max_len=4096", "-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1",
               f"-artifact_prefix={crashers}{os.sep}", *([f"-max_total_time={budget}"] if budget else []), *extra]
        env = {**os.environ, "FUZZ_KNOWN_CRASHES": ",".join(known)}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              env=env)
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
        done = DONE.search(proc.stdout) or EXECUTED.search(proc.stdout)
        if done is None:
            result.failed = f"exit {proc.returncode}, no run count (see {log})"
            break
        result.runs += int(done.group(1))
        new = [Path(p) for p in ARTIFACT.findall(proc.stdout)]
        result.crashes += new
        if proc.returncode == 0 and not new:
            break
        tail = proc.stdout[proc.stdout.rfind("=== Uncaught Python exception"):] if "Uncaught" in proc.stdout else \
            proc.stdout[-3000:]
        print(f"{target}: CRASH -> {', '.join(map(str, new)) or '(no crash file)'}\n{tail[:4000]}",
              file=sys.stderr, flush=True)
        signature = SIGNATURE.search(proc.stdout)
        if not new or signature is None:
            result.failed = f"exit {proc.returncode}: {'no crash file' if not new else 'not a Python exception'} (see {log})"
            break
        result.signatures.append(signature.group(1))
        known.append(signature.group(1))
    result.seconds = time.monotonic() - started
    return result


def main() -> int:
    targets = [t.strip() for t in os.environ.get("FUZZ_TARGETS", ",".join(TARGETS)).split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        print(f"unknown FUZZ_TARGETS {sorted(unknown)}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    try:
        import atheris  # noqa: F401
    except ImportError:
        print(f"atheris is not installed for {sys.executable}: pip install atheris", file=sys.stderr)
        return 2
    runs = _env_int("FUZZ_RUNS", DEFAULT_RUNS)
    seconds = _env_int("FUZZ_SECONDS", None)
    jobs = _env_int("FUZZ_JOBS", min(len(targets), os.cpu_count() or 1))
    restarts = _env_int("FUZZ_RESTARTS", 10)
    workdir = Path(os.environ.get("FUZZ_WORKDIR") or Path(tempfile.gettempdir()) / "tokencsp-fuzz")
    workdir.mkdir(parents=True, exist_ok=True)
    extra = os.environ.get("FUZZ_ARGS", "").split()
    limit = f"{runs} runs" + (f" or {seconds} s" if seconds else "")
    print(f"fuzzing {', '.join(targets)}: {limit} each, {jobs} at a time; corpora and logs in {workdir}", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        # the slowest target (per input) starts first, so two cores finish together
        slowest_first = sorted(targets, key=lambda t: TARGETS.index(t), reverse=True)
        started_futures = {t: pool.submit(fuzz, t, runs, seconds, workdir, extra, restarts) for t in slowest_first}
        futures = [started_futures[t] for t in targets]
        results = []
        for future in futures:
            r = future.result()
            results.append(r)
            rate = r.runs / r.seconds if r.seconds else 0.0
            status = f"{len(r.crashes)} crashes" + (f" ({', '.join(r.signatures)})" if r.signatures else "")
            status += f", FAILED: {r.failed}" if r.failed else ""
            print(f"{r.target:<11} {r.runs:>10,} inputs in {r.seconds:8.1f} s ({rate:,.0f}/s), {status}", flush=True)
    total = sum(r.runs for r in results)
    crashes = sum(len(r.crashes) for r in results)
    print(f"{'total':<11} {total:>10,} inputs in {time.monotonic() - started:8.1f} s, {crashes} crashes", flush=True)
    for r in results:
        for path in r.crashes:
            print(f"crasher: {path}")
    return 1 if crashes or any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
