"""Implicit rejection for one exchange key: the substitute key and the deadline.

A receiver that answers a bad SIMPLEBLOB differently from a good one -- in
its error, its output or its timing -- is a Bleichenbacher padding oracle.
:class:`ImplicitRejection` holds what one key needs so that it never does:

* a per-key secret from which a bad blob's *substitute* session key is
  derived (HMAC-SHA256 over the blob, as OpenSSL 3.2 does for PKCS#1 v1.5):
  the same bad blob always yields the same wrong key -- in every process of
  the user, the secret being kept in the state directory -- and the failure
  shows only where the payload fails to authenticate;
* a :class:`~tokencsp.deadline.DeadlinePadder` whose deadline comes only from
  probe imports this object makes itself -- blobs it built, valid and
  invalid, PKCS#1 v1.5 and OAEP -- and from the floor kept in the state
  directory per module, token and key (:mod:`tokencsp.calibration`), which
  only such probes ever wrote; never from the imports it pads.  An import
  that overruns the deadline moves nothing: it only makes a re-calibration
  (from own probes, only raising) due, in this process and the next.  A
  figure older than :data:`~tokencsp.calibration.MAX_AGE` (a wall-clock age:
  no blob decides when) is replaced by a whole fresh calibration, lower or
  higher: a calibration made under a passing load does not slow the key for
  good.

No token here: the caller hands in the import operation.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .blobs import SESSION_KEY_LENGTHS, AlgId, SimpleBlob
from .calibration import MAX_AGE, CalibrationCache, KeyPlace
from .deadline import DeadlinePadder
from .errors import DecryptionError
from .session import SessionKey

__all__ = ["CAPI_DECRYPT_FAILED", "DeferredSessionKey", "ImplicitRejection", "substitute_key"]

T = TypeVar("T")

# An import of one blob, unpadded, that never raises on the blob's content.
ProbeImport = Callable[[SimpleBlob, bool], object]

PROBES_PER_KIND = 6  # x 4 kinds: {PKCS#1 v1.5, OAEP} x {valid, invalid}
RECALIBRATE_EVERY = 4096  # imports; a count, so the moment says nothing about any blob
OVERRUN_SPACING = 256  # imports between re-calibrations that overruns ask for (each costs 24 probes)

CAPI_DECRYPT_FAILED = "the message could not be decrypted (bad key blob, wrong key or corrupted ciphertext)"


def substitute_key(secret: bytes, blob: SimpleBlob, length: int) -> bytes:
    """The key a bad ``blob`` stands for: HMAC-SHA256(secret, i || blob) blocks, ``length`` bytes."""
    wire = blob.to_bytes()
    stream = b"".join(hmac.new(secret, bytes([i]) + wire, "sha256").digest() for i in range((length + 31) // 32))
    return stream[:length]


def key_fingerprint(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo (the key id sealed messages use too)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


class ImplicitRejection:
    """The rejection secret, the deadline padder and its calibration for one exchange key.

    ``where`` is (PKCS#11 module path, token serial): with the key's fingerprint it names the
    cached calibration (:class:`~tokencsp.calibration.KeyPlace`).  When to calibrate, each time
    from this object's own probes only: with no deadline yet and no trusted cache entry (none,
    older than a day, or marked stale); every ``recalibrate_every`` imports; and after an import
    overran the deadline, once ``OVERRUN_SPACING`` imports have passed since the last calibration
    (at the next import when that calibration was a replacement: a lowered figure overruns at most
    once before it is raised again).  A figure dated in the future (the clock set back) is not
    expired: it is kept and re-dated, never replaced at a moment the clock-setter picks.  An overrun
    also marks the cached entry stale at once, so that the next process -- a CLI run makes one
    import -- re-calibrates before its import.  Those calibrations only raise; one made
    because the figure is older than ``max_age`` (the cached entry's, or, in a long-lived process,
    this object's own last calibration) replaces it, lower or higher (``calibrate(replace=True)``).
    Before its timed probes a calibration makes one untimed probe of each of the four kinds (a
    process's first unwrap, and first rejection, is slower: caches, lazy set-up), so a cold path
    does not set the figure.
    """

    def __init__(self, public_key: rsa.RSAPublicKey, *, padder: DeadlinePadder | None = None,
                 secret: bytes | None = None, cache: CalibrationCache | None = None,
                 where: tuple[str, str] = ("", ""),
                 probes_per_kind: int = PROBES_PER_KIND, recalibrate_every: int = RECALIBRATE_EVERY,
                 overrun_spacing: int = OVERRUN_SPACING, max_age: float = MAX_AGE) -> None:
        self._public = public_key
        self._secret = secret
        self.padder = DeadlinePadder() if padder is None else padder
        self.cache = cache
        self.fingerprint = key_fingerprint(public_key)
        self.place = KeyPlace(where[0], where[1], self.fingerprint)
        self._probes_per_kind = probes_per_kind
        self._recalibrate_every = recalibrate_every
        self._overrun_spacing = overrun_spacing
        self._max_age = max_age
        self._calibrated_at: float | None = None  # wall clock (the cache's) of this object's last calibration
        self._since_calibration = 0
        self._overruns_seen = 0
        self._overrun_pending = False
        self._replaced = False  # the last calibration replaced (maybe lowered) the figure: no overrun spacing
        self._state_lock = threading.Lock()
        self._calibration_lock = threading.Lock()
        #: The median of the last calibration's probes (or the cached entry's): one import's token cost,
        #: unloaded.  Sizes a batch's imports in flight (tokencsp.batch); never a deadline.  None: unknown.
        self.typical: float | None = None
        self.probes = 0  # timed probe imports made so far (0 when the cache was trusted)
        self.warmups = 0  # untimed probes made before them
        self.calibrations = 0
        self.imports: collections.Counter[str] = collections.Counter()

    @property
    def secret(self) -> bytes:
        """The key's rejection secret: the state directory's (made there once), else this object's own."""
        with self._state_lock:
            if self._secret is None:
                kept = self.cache.secret(self.fingerprint) if self.cache is not None else None
                self._secret = os.urandom(32) if kept is None else kept
            return self._secret

    def substitute(self, blob: SimpleBlob, length: int | None = None) -> bytes:
        """The key ``blob`` stands for when it does not unwrap: its ALG_ID's length, or ``length`` bytes."""
        return substitute_key(self.secret, blob, SESSION_KEY_LENGTHS[blob.alg_id] if length is None else length)

    def _now(self) -> float:
        return self.cache.now() if self.cache is not None else time.time()

    def _expired(self) -> bool:
        """This object's own calibration is older than ``max_age`` (a long-lived process).

        A calibration dated in the future (the wall clock was set back) is not expired: it is
        re-dated to now, so the clock-setter's step never brings a replacement forward.
        """
        if self._calibrated_at is None:
            return False
        now = self._now()
        if now < self._calibrated_at:
            self._calibrated_at = now
        return now - self._calibrated_at > self._max_age

    def _due(self) -> bool:
        spacing = 1 if self._replaced else self._overrun_spacing
        return self._since_calibration > self._recalibrate_every or \
            (self._overrun_pending and self._since_calibration >= spacing)

    def run(self, operation: Callable[[], T], probe: ProbeImport, path: str = "implicit") -> T:
        """``operation`` padded to the deadline; calibrates first when none is known or one is due.

        ``path`` names the import kind in :attr:`imports` (tests check which path a caller took).
        """
        _ = self.secret  # read (or made) in the state directory before the padded operation, not inside it
        with self._state_lock:
            self.imports[path] += 1
            self._since_calibration += 1
            due = self._due() or self._expired()
        if due or not self.padder.calibrated:
            with self._calibration_lock:  # one calibration at a time; the others wait for its deadline
                if not self.padder.calibrated:
                    trusted, expired = self._trust_cache()
                    if not trusted:
                        self.calibrate(probe, replace=expired)
                elif self._expired():
                    self.calibrate(probe, replace=True)
                elif self._due():
                    self.calibrate(probe)
        try:
            return self.padder.run(operation)
        finally:
            self._note_overruns()

    def _note_overruns(self) -> None:
        with self._state_lock:
            overruns = self.padder.overruns
            if overruns == self._overruns_seen:
                return
            self._overruns_seen = overruns
            first = not self._overrun_pending
            self._overrun_pending = True
        if first and self.cache is not None:  # once per calibration period: a file write, after the padding
            self.cache.mark_stale(self.place)

    def _trust_cache(self) -> tuple[bool, bool]:
        """(start from the cached entry without probing, the entry has expired: a calibration replaces it)."""
        cached = self.cache.load(self.place) if self.cache is not None else None
        if cached is None or self.cache is None:
            return False, False
        now = self.cache.now()
        if cached.expired(now, self._max_age):  # one dated in the future (clock set back) is not: kept, re-dated
            return False, True  # expired: a whole fresh calibration replaces the figure, lower or higher
        self.padder.raise_to(cached.deadline)  # a stale entry's figure stays the floor of its re-calibration
        self._calibrated_at = cached.calibrated
        self.typical = cached.typical
        return cached.trusted(now, self._max_age), False

    def _probe_blobs(self, oaep: bool) -> tuple[SimpleBlob, SimpleBlob]:
        """A valid blob of a fresh key and an invalid one, for ``oaep`` or PKCS#1 v1.5."""
        valid = SimpleBlob.from_bytes(SessionKey.generate("aes256").export_simpleblob(self._public, oaep=oaep))
        # Below the modulus but random: the token does the RSA operation, then rejects the padding.
        invalid = SimpleBlob(AlgId.CALG_AES_256, b"\x00" + os.urandom((self._public.key_size + 7) // 8 - 1))
        return valid, invalid

    def calibrate(self, probe: ProbeImport, *, replace: bool = False) -> float:
        """Time own probes of every kind and raise the deadline, or with ``replace`` set it; record it for the key.

        ``replace`` is for a figure that has expired: the fresh figure then stands, lower or
        higher, in this object and in the state directory.
        """
        for oaep in (False, True):  # untimed, each kind once: a cold first unwrap (or rejection) must not set it
            for blob in self._probe_blobs(oaep):
                probe(blob, oaep)
        durations = []
        for _ in range(self._probes_per_kind):
            for oaep in (False, True):
                for blob in self._probe_blobs(oaep):
                    durations.append(self.padder.measure(functools.partial(probe, blob, oaep)))
        typical = sorted(durations)[len(durations) // 2]
        floor = None
        if self.cache is not None:  # the figure the state directory keeps, before the padder publishes anything
            floor = self.cache.store(self.place, self.padder.deadline_for(durations), replace=replace,
                                     typical=typical)
        deadline = self.padder.calibrate(durations, replace=replace, floor=floor)  # published once
        with self._state_lock:
            self._replaced = replace
            self._calibrated_at = self._now()
            self.typical = typical
            self.warmups += 4
            self.probes += len(durations)
            self.calibrations += 1
            self._since_calibration = 0
            self._overrun_pending = False
            self._overruns_seen = self.padder.overruns
        return deadline


class DeferredSessionKey(SessionKey):
    """A session key whose import failure is reported by the final CryptDecrypt, as any other failure.

    ``ExchangeKey.import_simpleblob_deferred`` returns one for every blob:
    the unwrapped key, or the blob's substitute key when the import failed.
    Nothing here knows which: a substitute decrypts exactly as an unknown
    key a sender chose would -- garbage where the CBC padding happens to be
    valid, else one :class:`DecryptionError` (:data:`CAPI_DECRYPT_FAILED`)
    at the final decrypt -- so neither the message, nor the type, nor the
    moment, nor the outcome tells a bad blob from a good blob carrying
    another key.  (A bad blob that always failed would do: a good blob of
    an unknown key gives valid padding for 1 ciphertext in 256.)
    """

    __slots__ = ()

    def decrypt(self, data: bytes | bytearray | memoryview, final: bool = True) -> bytearray:
        try:
            return super().decrypt(data, final)
        except DecryptionError:
            raise DecryptionError(CAPI_DECRYPT_FAILED) from None
