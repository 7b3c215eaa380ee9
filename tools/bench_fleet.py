"""Replay-cache throughput for a fleet: accepts/s with 1 and 8 receivers, SQLite vs PostgreSQL,
and PostgreSQL accept latency with 1,000,000 ids stored.  Run by ``make bench``.

Each receiver is its own process with its own cache object (as on separate hosts),
accepting distinct, fresh message ids for a fixed time.  The PostgreSQL server is
a throwaway one started here (tests/pg_server.py: initdb in a temp dir, Unix
socket, fsync and synchronous_commit on), on the same disk as the SQLite file,
so the two are compared on equal durability terms: every accept is a durable
commit.  Figures depend on the disk's fsync latency above all; docs/FLEET.md
quotes a run.

Usage: tools/bench_fleet.py [--seconds S] [--ids N] [--skip-million]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import multiprocessing.queues
    import multiprocessing.synchronize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_server import start_server
from tokencsp.replay import PostgresReplayCache, ReplayCache, ReplayPolicy, SQLiteReplayCache

POLICY = ReplayPolicy()


def _open(kind: str, target: str) -> ReplayCache:
    return PostgresReplayCache(target) if kind == "postgresql" else SQLiteReplayCache(target)


def _receiver(kind: str, target: str, seconds: float, tag: int, start: multiprocessing.synchronize.Barrier,
              results: multiprocessing.queues.Queue[int]) -> None:
    with _open(kind, target) as cache:
        start.wait()
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            now = time.time()
            cache.accept(f"{tag}-{n}".encode(), now, now, POLICY)
            n += 1
        results.put(n)


def throughput(kind: str, target: str, receivers: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(receivers + 1)
    results = ctx.Queue()
    tag = int(time.time() * 1000) % 10**9
    procs = [ctx.Process(target=_receiver, args=(kind, target, seconds, tag * 100 + i, start, results))
             for i in range(receivers)]
    for p in procs:
        p.start()
    start.wait()
    total = sum(results.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a {kind} receiver failed (exit {p.exitcode})")
    return total / seconds


def latencies(cache: PostgresReplayCache, count: int, prefix: str) -> tuple[float, float]:
    times = []
    for i in range(count):
        now = time.time()
        t0 = time.perf_counter()
        cache.accept(f"{prefix}-{i}".encode(), now, now, POLICY)
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    parser.add_argument("--ids", type=int, default=1_000_000, help="ids stored for the latency check")
    parser.add_argument("--skip-million", action="store_true", help="skip the latency-with-many-ids check")
    args = parser.parse_args()

    server = start_server()
    os.environ["PGPASSFILE"] = str(server.passfile)
    work = Path(tempfile.mkdtemp(prefix="tokencsp-bench-fleet-"))
    try:
        print(f"replay cache accepts/s ({args.seconds:g} s each, every accept a durable commit; "
              f"receivers are processes):")
        figures = {}
        for kind in ("sqlite", "postgresql"):
            for receivers in (1, 8):
                target = (str(work / f"r{receivers}.sqlite3") if kind == "sqlite"
                          else server.dsn(server.new_schema()))
                rate = throughput(kind, target, receivers, args.seconds)
                figures[kind, receivers] = rate
                print(f"  {kind:<10} {receivers} receiver{'s' if receivers > 1 else ' '}: {rate:8.0f} accepts/s",
                      flush=True)
        for kind in ("sqlite", "postgresql"):
            print(f"  {kind}: 8 receivers = {figures[kind, 8] / figures[kind, 1]:.1f}x one receiver")
        if not args.skip_million:
            schema = server.new_schema()
            dsn = server.dsn(schema)
            with PostgresReplayCache(dsn) as cache:
                empty = latencies(cache, 300, "empty")
                with server.admin() as db:
                    db.execute(f"SET search_path = {schema}")
                    db.execute("INSERT INTO tokencsp_seen SELECT decode(md5(i::text), 'hex'), "
                               "extract(epoch FROM now()) - random() * 80000, '\\x00' "
                               "FROM generate_series(1, %s) i", (args.ids,))
                    db.execute("ANALYZE tokencsp_seen")
                    size = db.execute("SELECT pg_total_relation_size('tokencsp_seen')").fetchone()[0]
                full = latencies(cache, 300, "full")
                with server.admin() as db:  # make a quarter of them prunable, then time the batched prune
                    db.execute(f"UPDATE {schema}.tokencsp_seen SET msg_time = msg_time - 2 * 86400 "
                               "WHERE get_byte(message_key, 0) < 64")
                pruned_at = time.perf_counter()
                removed = cache.prune()
                prune_s = time.perf_counter() - pruned_at
            print(f"PostgreSQL accept latency, 1 receiver: empty cache median {empty[0]:.2f} ms "
                  f"(p99 {empty[1]:.2f}); with {args.ids:,} ids stored median {full[0]:.2f} ms (p99 {full[1]:.2f})")
            print(f"  {args.ids:,} ids take {size / 2**20:.0f} MiB ({size / args.ids:.0f} bytes each, table + "
                  f"indexes); pruning {removed:,} of them took {prune_s:.1f} s in batches of 10,000")
    finally:
        server.destroy()
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
