"""``make audit`` (part): SIMPLEBLOB imports under load on a throwaway SoftHSM token.

8 threads x 10,000 imports in one process, then 4 processes x 2,500 against
the same token; every recovered key is compared with the one sent, and the
token must hold exactly the objects it held before.  Sizes are flags.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import multiprocessing.queues

    from tokencsp.provider import ExchangeKey

ALGS = ("aes128", "aes192", "aes256", "3des", "3des112")


def _batch(public: bytes, count: int, seed: int) -> list[tuple[bytes, bytes, bool]]:
    from tokencsp.session import SessionKey

    batch = []
    for i in range(count):
        key = SessionKey.generate(ALGS[(i + seed) % len(ALGS)])
        oaep = bool((i + seed) % 2)
        batch.append((key.key, key.export_simpleblob(public, oaep=oaep), oaep))
    return batch


def _run_threads(pair: ExchangeKey, batches: list[list[tuple[bytes, bytes, bool]]]) -> tuple[int, int]:
    errors: list[Exception] = []
    wrong: list[bytes] = []

    def work(batch: list[tuple[bytes, bytes, bool]]) -> None:
        for expected, blob, oaep in batch:
            try:
                if pair.import_simpleblob(blob, oaep=oaep).key != expected:
                    wrong.append(blob)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(exc)

    workers = [threading.Thread(target=work, args=(batch,)) for batch in batches]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(errors), len(wrong)


def _process_main(env: dict[str, str], key_name: str, count: int, seed: int,
                  results: multiprocessing.queues.Queue[tuple[int, int]]) -> None:
    import os

    os.environ.update(env)
    from tokencsp.provider import Provider

    try:
        with Provider.open() as provider:
            pair = provider.exchange_key(key_name)
            batch = _batch(pair.public_blob(), count, seed)
            results.put(_run_threads(pair, [batch]))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, which must not wait forever
        print(f"stress worker {seed}: {type(exc).__name__}: {exc}", file=sys.stderr)
        results.put((count, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/stress.py", description=__doc__)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--per-process", type=int, default=2_500)
    args = parser.parse_args(argv)

    from tokencsp.testing import SoftHSMKit

    with tempfile.TemporaryDirectory(prefix="tokencsp-stress-") as scratch:
        kit = SoftHSMKit(Path(scratch), labels=("tokencsp-stress",))
        kit.__enter__()
        kit.apply()
        from tokencsp.provider import Provider

        failed = False
        with Provider.open() as provider:
            before = provider.object_count()
            pair = provider.generate_exchange_key("stress")
            public = pair.public_blob()
            print(f"preparing {args.threads} x {args.per_thread} SIMPLEBLOBs...", file=sys.stderr)
            batches = [_batch(public, args.per_thread, seed) for seed in range(args.threads)]
            start = time.perf_counter()
            errors, wrong = _run_threads(pair, batches)
            elapsed = time.perf_counter() - start
            total = args.threads * args.per_thread
            print(f"{args.threads} threads x {args.per_thread} imports: {errors} errors, {wrong} wrong keys, "
                  f"{total / elapsed:.0f} imports/s")
            failed |= bool(errors or wrong)

            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            procs = [context.Process(target=_process_main, args=(kit.environ(), "stress", args.per_process, seed,
                                                                  results)) for seed in range(args.processes)]
            start = time.perf_counter()
            for proc in procs:
                proc.start()
            outcomes = [results.get(timeout=3600) for _ in procs]
            for proc in procs:
                proc.join()
            elapsed = time.perf_counter() - start
            errors = sum(e for e, _ in outcomes)
            wrong = sum(w for _, w in outcomes)
            crashed = sum(proc.exitcode != 0 for proc in procs)
            print(f"{args.processes} processes x {args.per_process} imports: {errors} errors, {wrong} wrong keys, "
                  f"{crashed} crashed, {args.processes * args.per_process / elapsed:.0f} imports/s (incl. start-up)")
            failed |= bool(errors or wrong or crashed)

            provider.delete_key("stress")
            after = provider.object_count()
            print(f"objects on the token before: {before}, after: {after}")
            failed |= before != after
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
