"""``make audit``: is a bad SIMPLEBLOB distinguishable by time?  (Bleichenbacher/Marvin check.)

On a throwaway SoftHSM token, times ``ExchangeKey.import_simpleblob_implicit``
-- the path sealed messages take -- for two classes of blob, interleaved in
random order so drift hits both alike:

* valid:   PKCS#1 v1.5 padding correct, AES-256 key inside;
* invalid: the same kind of blob with its ciphertext altered, so the padding
           check fails inside the token (SoftHSM on OpenSSL 3.0 raises
           CKR_GENERAL_ERROR; tokencsp substitutes an HMAC-derived key).

``--no-deadline`` times the same import without its deadline padding, which
shows the difference the token itself makes.

Prints the means, medians and Welch's t statistic.  |t| < 4.5 is the usual
TVLA threshold for "no leak detected at this sample size"; larger values
mean the classes differ in time and a remote attacker with enough samples
may tell them apart.  Results are recorded in docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokencsp.provider import ExchangeKey

TVLA_THRESHOLD = 4.5


def welch_t(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a), statistics.variance(b)
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va / len(a) + vb / len(b))


def trimmed(samples: list[float], fraction: float = 0.01) -> list[float]:
    """Drop the slowest 1% (scheduler preemption), as timing tools commonly do."""
    keep = sorted(samples)[: max(2, int(len(samples) * (1 - fraction)))]
    return keep


def measure(pair: ExchangeKey, valid: list[bytes], invalid: list[bytes], oaep: bool,
            padded: bool = True) -> tuple[list[float], list[float]]:
    order = [(True, blob) for blob in valid] + [(False, blob) for blob in invalid]
    random.shuffle(order)
    times: dict[bool, list[float]] = {True: [], False: []}
    clock = time.perf_counter_ns
    from tokencsp.blobs import SimpleBlob

    for is_valid, blob in order:
        start = clock()
        if padded:
            pair.import_simpleblob_implicit(blob, oaep=oaep)
        else:  # the same import without the deadline: what the token's own timing gives away
            pair._import_or_substitute(SimpleBlob.from_bytes(blob), oaep)
        times[is_valid].append((clock() - start) / 1e3)
    return times[True], times[False]


def corrupt(blob: bytes) -> bytes:
    body = bytearray(blob)
    body[12 + random.randrange(len(body) - 12)] ^= 1 << random.randrange(8)
    return bytes(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/timing_audit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000, help="samples per class (default 10000)")
    parser.add_argument("--oaep", action="store_true", help="audit OAEP blobs instead of PKCS#1 v1.5")
    parser.add_argument("--no-deadline", action="store_true",
                        help="time the import without its deadline padding (shows the token's own difference)")
    args = parser.parse_args(argv)

    from tokencsp.session import SessionKey
    from tokencsp.testing import SoftHSMKit

    with tempfile.TemporaryDirectory(prefix="tokencsp-audit-") as scratch:
        os.environ["XDG_STATE_HOME"] = str(Path(scratch) / "state")  # the throwaway key's calibration, not the user's
        kit = SoftHSMKit(Path(scratch), labels=("tokencsp-audit",))
        kit.__enter__()
        kit.apply()
        from tokencsp.provider import Provider

        with Provider.open(token="tokencsp-audit", pin=kit.user_pin) as provider:
            pair = provider.generate_exchange_key("audit")
            public = pair.public_blob()
            print(f"building {args.samples} valid and {args.samples} invalid "
                  f"{'OAEP' if args.oaep else 'PKCS#1 v1.5'} SIMPLEBLOBs for RSA-2048...", file=sys.stderr)
            valid = [SessionKey.generate("aes256").export_simpleblob(public, oaep=args.oaep)
                     for _ in range(args.samples)]
            invalid = [corrupt(blob) for blob in
                       (SessionKey.generate("aes256").export_simpleblob(public, oaep=args.oaep)
                        for _ in range(args.samples))]
            padded = not args.no_deadline
            measure(pair, valid[:200], invalid[:200], args.oaep, padded)  # warm-up (and calibration)
            good, bad = measure(pair, valid, invalid, args.oaep, padded)
            rejection = pair.rejection
            overruns, calibrations, deadline = rejection.padder.overruns, rejection.calibrations, \
                rejection.padder.deadline
            flood = flood_check(pair, args.oaep) if padded else None
            leftover = provider.session_object_count()
    good_t, bad_t = trimmed(good), trimmed(bad)
    t = welch_t(good_t, bad_t)
    print(f"valid padding:   n={len(good_t)} mean={statistics.fmean(good_t):8.1f} us "
          f"median={statistics.median(good_t):8.1f} us")
    print(f"invalid padding: n={len(bad_t)} mean={statistics.fmean(bad_t):8.1f} us "
          f"median={statistics.median(bad_t):8.1f} us")
    verdict = "no leak detected" if abs(t) < TVLA_THRESHOLD else "TIMING DIFFERENCE DETECTED"
    print(f"Welch t = {t:+.2f} (|t| < {TVLA_THRESHOLD} passes): {verdict}")
    if padded:
        print(f"deadline {deadline * 1e6:.1f} us after {calibrations} calibration(s); "
              f"{overruns} of {len(valid) + len(invalid) + 400} padded imports overran it")
    flood_ok = True
    if flood is not None:
        before, after, calibrations = flood
        # The deadline moves only by the key's own calibrations (tokencsp.implicit): an overrun on a loaded
        # machine may make one due during the flood, which can only raise it.  Unchanged is the claim.
        flood_ok = after == before or (after > before and calibrations > 0)
        state = "unchanged" if after == before else (
            f"raised by {calibrations} re-calibration(s) from own probes" if flood_ok else "CHANGED")
        print(f"deadline before / after 600 blobs >= n: {before * 1e6:.1f} / {after * 1e6:.1f} us ({state})")
    print(f"session objects left on the token: {leftover}")
    return 0 if leftover == 0 and flood_ok else 1


def flood_check(pair: ExchangeKey, oaep: bool) -> tuple[float, float, int]:
    """Issue 9 finding 1: cheap rejects (ciphertext >= n) must not move the deadline.

    Returns (deadline before, after, calibrations the key made meanwhile).
    """
    from tokencsp.blobs import AlgId, SimpleBlob

    before, calibrations = pair.rejection.padder.deadline, pair.rejection.calibrations
    for i in range(600):
        pair.import_simpleblob_implicit(SimpleBlob(AlgId.CALG_AES_256, b"\xff" * 255 + bytes([i % 256])), oaep=oaep)
    return before, pair.rejection.padder.deadline, pair.rejection.calibrations - calibrations


if __name__ == "__main__":
    sys.exit(main())
