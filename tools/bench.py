"""``make bench``: throughput figures on a throwaway SoftHSM token.

Figures, not pass/fail: token SIMPLEBLOB import (C_UnwrapKey + read +
destroy) in one and several threads, and host CryptEncrypt/CryptDecrypt
throughput.  Compare with the baselines in README (RSA-2048 unwrap about
0.9 ms on SoftHSM; openssl aes-256-gcm about 3.7 GB/s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from tokencsp.provider import ExchangeKey, Provider
    from tokencsp.testing import SoftHSMKit


def _kit(directory: Path) -> SoftHSMKit:
    from tokencsp.testing import SoftHSMKit

    kit = SoftHSMKit(directory, labels=("tokencsp-bench",))
    kit.__enter__()
    kit.apply()
    return kit


def bench_imports(provider: Provider, bits: int, count: int, threads: int, oaep: bool) -> float:
    from tokencsp.session import SessionKey

    pair = provider.generate_exchange_key(f"bench-{bits}-{threads}-{int(oaep)}", bits=bits)
    try:
        public = pair.public_blob()
        blobs = [SessionKey.generate("aes256").export_simpleblob(public, oaep=oaep) for _ in range(count)]
        per_thread = [blobs[i::threads] for i in range(threads)]
        pair.import_simpleblob(blobs[0], oaep=oaep)  # warm the per-thread handle cache

        def work(batch: list[bytes]) -> None:
            for blob in batch:
                pair.import_simpleblob(blob, oaep=oaep)

        workers = [threading.Thread(target=work, args=(batch,)) for batch in per_thread]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return (time.perf_counter() - start) / count
    finally:
        provider.delete_key(pair.name)


def bench_host(alg: str, size: int) -> tuple[float, float]:
    from tokencsp.session import SessionKey

    key = SessionKey.generate(alg)
    data = os.urandom(size)
    start = time.perf_counter()
    ciphertext = key.encrypt(data)
    encrypt = time.perf_counter() - start
    start = time.perf_counter()
    key.decrypt(ciphertext)
    decrypt = time.perf_counter() - start
    return size / encrypt, size / decrypt


class _Collect:
    """A sink that keeps the chunks without copying them into one growing buffer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def bench_sealed(pair: ExchangeKey, size: int) -> tuple[float, float]:
    """Seal and open ``size`` bytes (64 KiB chunks): host AES-256-GCM plus one token import."""
    import io

    from tokencsp import envelope
    from tokencsp.replay import MemoryReplayCache

    data = os.urandom(size)
    # Timed into a discarding sink: filling fresh memory with the output would
    # measure page faults, not the format.
    start = time.perf_counter()
    envelope.seal(io.BytesIO(data), cast(BinaryIO, _Discard()), pair.public_key())
    seal_rate = size / (time.perf_counter() - start)
    collected = _Collect()
    envelope.seal(io.BytesIO(data), cast(BinaryIO, collected), pair.public_key())
    sealed = io.BytesIO(b"".join(collected.parts))
    pair.public_key()  # fetched once, outside the timing, as any long-lived receiver has it
    start = time.perf_counter()
    envelope.open_message(sealed, _Discard(), pair, cache=MemoryReplayCache())  # type: ignore[arg-type]
    return seal_rate, size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="imports per measurement")
    parser.add_argument("--mib", type=int, default=64, help="MiB for host throughput")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tokencsp-bench-") as scratch:
        kit = _kit(Path(scratch))
        from tokencsp.provider import Provider

        with Provider.open(token="tokencsp-bench", pin=kit.user_pin) as provider:
            print(f"SoftHSM token import (C_UnwrapKey + read + destroy), {args.count} blobs each:")
            for bits, threads, oaep in ((2048, 1, False), (2048, 1, True), (2048, 2, False), (2048, 8, False),
                                        (3072, 1, False), (4096, 1, False)):
                seconds = bench_imports(provider, bits, args.count if bits == 2048 else args.count // 4, threads, oaep)
                print(f"  RSA-{bits} {'OAEP ' if oaep else 'PKCS1'} {threads} thread(s): "
                      f"{seconds * 1e3:7.3f} ms/import  {1 / seconds:8.0f} imports/s")
            pair = provider.generate_exchange_key("bench-sealed")
            try:
                seal_rate, open_rate = bench_sealed(pair, args.mib << 20)
            finally:
                provider.delete_key("bench-sealed")
            print(f"sealed messages ({args.mib} MiB, 64 KiB AES-256-GCM chunks, in memory): "
                  f"seal {seal_rate / 1e6:.0f} MB/s, open {open_rate / 1e6:.0f} MB/s")
    print(f"host CryptEncrypt/CryptDecrypt (CBC, {args.mib} MiB in one call):")
    for alg in ("aes128", "aes256", "3des"):
        enc, dec = bench_host(alg, args.mib << 20)
        print(f"  {alg:8s} encrypt {enc / 1e6:8.1f} MB/s  decrypt {dec / 1e6:8.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
