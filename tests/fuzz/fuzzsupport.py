"""Shared by the atheris harnesses, make_corpus.py and tests/test_fuzz_properties.py.

Everything here is host-only: the "token" keys are ``cryptography`` RSA keys
kept in ``fixtures.json`` (test keys, never used for anything else), so the
parsers and state machines can be fuzzed at full speed without PKCS#11.

The invariants the fuzzers enforce live here, once:

* :func:`check_blob`        -- blob parsing: typed errors only, exact round trip;
* :func:`check_public_key`  -- ``pubkeys.load_public_key``: typed errors only;
* :func:`check_open`        -- opening a sealed message (format 1 or 2): MessageRejected only,
  success only for a byte-exact known message, and the sink only ever holds
  a chunk-granular prefix of a known plaintext whose ciphertext bytes were
  unmodified in the input (no unauthenticated plaintext) -- and nothing at all
  for a format 2 message opened with a trust set, which is released only once
  its trailer signature verified (docs/FORMAT.md 9.5, T4);
* :func:`drive_threephase`  -- a fresh ThreePhase machine in a chosen state fed
  arbitrary bytes: TokenCSPError only, ERROR state (for good) after one,
  records delivered only if they are the peer's real records in order.

Anything else raises (AssertionError or the original exception): a crash.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokencsp import blobs
from tokencsp.blobs import AlgId, SimpleBlob
from tokencsp.envelope import TAG_SIZE, open_message, read_header
from tokencsp.errors import (
    BlobFormatError,
    InvalidKeyError,
    MessageRejected,
    ProtocolError,
    SessionKeyImportError,
    TokenCSPError,
    UnsupportedAlgorithm,
)
from tokencsp.implicit import substitute_key
from tokencsp.pubkeys import fingerprint, load_public_key
from tokencsp.replay import MemoryReplayCache
from tokencsp.session import SessionKey
from tokencsp.threephase import (
    NEED_DATA,
    Close,
    ConnectionClosed,
    Data,
    HandshakeComplete,
    Role,
    State,
    ThreePhase,
    TrustSet,
)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures.json"
CORPUS = HERE / "corpus"
CRASHERS = HERE / "crashers"
TARGETS = ("blobs", "envelope", "threephase")

NOW = 1_800_000_000.0  # every fixture message is sealed and opened "now"
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


# -- crash signatures --------------------------------------------------------------------


def crash_signature(exc: BaseException) -> str:
    """Exception type @ the innermost tokencsp (or fuzzsupport) line: how run.py tells crashes apart."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}tokencsp{os.sep}" in f.filename or f.filename.endswith("fuzzsupport.py")]
    frame = (ours or frames or [None])[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno}" if frame is not None else "?"
    return f"{type(exc).__name__}@{where}"


def harness(check):
    """Wrap a check into a TestOneInput that names each crash's signature on stderr.

    Signatures listed in FUZZ_KNOWN_CRASHES (comma-separated; run.py sets it
    after saving a crasher) are let through, so one known bug does not stop
    the search for others.  Unset -- as in the pytest replays -- every
    exception is a crash.
    """
    known = frozenset(s for s in os.environ.get("FUZZ_KNOWN_CRASHES", "").split(",") if s)

    def TestOneInput(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            signature = crash_signature(exc)
            if signature in known:
                return
            print(f"FUZZ-SIGNATURE: {signature}", file=sys.stderr, flush=True)
            raise

    return TestOneInput


# -- host-only keys ----------------------------------------------------------------------


class HostKey:
    """An exchange key in host memory with ExchangeKey's import interface (``import_simpleblob`` and
    ``import_simpleblob_implicit``), so that the protocols take the production path -- the one a
    token-backed key gives them -- rather than a fallback only test doubles reach.

    ``import_simpleblob``: malformed blob structure -> BlobFormatError/UnsupportedAlgorithm;
    anything that depends on the secret -> one SessionKeyImportError.
    ``import_simpleblob_implicit``: never fails on the secret; a bad blob gives the substitute
    :func:`tokencsp.implicit.substitute_key` derives, from a secret fixed by the key (so a crash
    reproduces).  The RSA result is memoised on (blob, oaep): a pure function, and it lets the
    fuzzers spend their time in the parsers instead of in RSA.
    """

    def __init__(self, key: rsa.RSAPrivateKey, memo: bool = True) -> None:
        self.key = key
        self._unwrap = functools.lru_cache(maxsize=4096)(self._unwrap_raw) if memo else self._unwrap_raw
        modulus = key.public_key().public_numbers().n
        self._rejection_secret = hashlib.sha256(b"fuzz rejection secret" + modulus.to_bytes(512, "big")).digest()
        self.implicit_imports = 0

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def _unwrap_raw(self, ciphertext: bytes, oaep: bool) -> bytes | None:
        try:
            return self.key.decrypt(ciphertext, OAEP_SHA1 if oaep else padding.PKCS1v15())
        except ValueError:
            return None

    def import_simpleblob(self, blob: bytes | SimpleBlob, oaep: bool = False) -> SessionKey:
        simple = blob if isinstance(blob, SimpleBlob) else SimpleBlob.from_bytes(blob)
        value = self._unwrap(bytes(simple.encrypted_key), bool(oaep))
        if value is None or len(value) != blobs.SESSION_KEY_LENGTHS[simple.alg_id]:
            raise SessionKeyImportError()
        return SessionKey.from_bytes(simple.alg_id, value)

    def import_simpleblob_implicit(self, blob: bytes | SimpleBlob, oaep: bool = False) -> SessionKey:
        self.implicit_imports += 1
        simple = blob if isinstance(blob, SimpleBlob) else SimpleBlob.from_bytes(blob)
        length = blobs.SESSION_KEY_LENGTHS[simple.alg_id]
        value = self._unwrap(bytes(simple.encrypted_key), bool(oaep))
        if value is None or len(value) != length:
            value = substitute_key(self._rejection_secret, simple, length)
        return SessionKey.from_bytes(simple.alg_id, value)


class HostSigner:
    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, PSS, hashes.SHA256())


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_key(text: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(text.encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.cache
def fixtures() -> dict:
    """fixtures.json (written by make_corpus.py): keys, three-phase secrets, sealed messages."""
    return json.loads(FIXTURES.read_text())


# -- blobs -------------------------------------------------------------------------------

BLOB_ERRORS = (BlobFormatError, UnsupportedAlgorithm)
BLOB_CLASSES = (blobs.PublicKeyBlob, blobs.PrivateKeyBlob, blobs.SimpleBlob, blobs.PlaintextKeyBlob)


def check_blob(data: bytes) -> None:
    """parse() and every from_bytes(): typed errors only; whatever parses re-serialises byte-exactly."""
    try:
        parsed = blobs.parse(data)
    except BLOB_ERRORS:
        parsed = None
    else:
        assert parsed.to_bytes() == data, "parse() accepted bytes that do not round-trip"
        assert blobs.parse(parsed.to_bytes()) == parsed
    for cls in BLOB_CLASSES:
        try:
            one = cls.from_bytes(data)
        except BLOB_ERRORS:
            continue
        assert one == parsed, f"{cls.__name__}.from_bytes accepted what parse() did not"
        assert one.to_bytes() == data


def check_public_key(data: bytes) -> None:
    """load_public_key (PUBLICKEYBLOB / PEM / DER): InvalidKeyError or UnsupportedAlgorithm only."""
    try:
        key = load_public_key(data)
    except (InvalidKeyError, UnsupportedAlgorithm):
        return
    assert isinstance(key, rsa.RSAPublicKey)
    fingerprint(key)


# -- sealed messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A genuine sealed message and what opening it must give."""

    sealed: bytes
    plaintext: bytes
    chunk_size: int
    prefix_len: int

    @classmethod
    def of(cls, sealed: bytes, plaintext: bytes) -> Known:
        pre = read_header(io.BytesIO(sealed))
        return cls(sealed, plaintext, pre.header.chunk_size, len(pre.raw))


class RecordingSink(io.BytesIO):
    """A sink that also remembers each write (one write per authenticated chunk)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().write(data)


@dataclass
class EnvelopeWorld:
    receiver: HostKey
    trust: dict
    known: tuple[Known, ...]
    receiver2: HostKey  # the second recipient of the format 2 fixture messages

    @property
    def receivers(self) -> tuple[HostKey, HostKey]:
        return self.receiver, self.receiver2


@functools.cache
def envelope_world() -> EnvelopeWorld:
    fx = fixtures()
    signer = load_key(fx["signer_pem"]).public_key()
    known = tuple(Known.of(bytes.fromhex(m["sealed"]), bytes.fromhex(m["plaintext"])) for m in fx["messages"])
    return EnvelopeWorld(HostKey(load_key(fx["receiver_pem"])), {fingerprint(signer): signer}, known,
                         HostKey(load_key(fx["receiver2_pem"])))


def _authentic_prefix(data: bytes, out: bytes, known: Known) -> bool:
    """``out`` is what k whole chunks of ``known`` decrypt to, and those k chunks are intact in ``data``."""
    if out != known.plaintext[: len(out)]:
        return False
    if len(out) % known.chunk_size and len(out) != len(known.plaintext):
        return False
    chunks = math.ceil(len(out) / known.chunk_size)
    end = min(known.prefix_len + chunks * (known.chunk_size + TAG_SIZE), len(known.sealed))
    return data[:end] == known.sealed[:end]


def check_open(data: bytes, receiver, known, *, trust=None, now: float = NOW,
               allow_pkcs1: bool = True) -> BaseException | None:
    """Open ``data`` with a fresh replay cache; returns the MessageRejected raised (None if it opened).

    PKCS#1 v1.5 transport is allowed by default so that the fuzzers reach its
    unwrap path; ``allow_pkcs1=False`` is the receiver's default.

    Success is allowed only for a byte-exact known message and must give its
    exact plaintext.  On refusal the sink may hold only a chunk-granular
    prefix of a known plaintext whose prefix and chunks are unmodified in
    ``data``, and nothing when ``trust`` is given and ``data`` is format 2
    (verified senders: released after the trailer, T4).  Any other exception
    propagates.
    """
    sink = RecordingSink()
    try:
        opened = open_message(io.BytesIO(data), sink, receiver, cache=MemoryReplayCache(), trust=trust, now=now,
                              allow_pkcs1=allow_pkcs1)
    except MessageRejected as exc:
        error: BaseException | None = exc
    else:
        error = None
    out = sink.getvalue()
    if error is None:
        # (a message to several recipients opens for each of them: the same known plaintext)
        match = [k for k in known if k.sealed == data]
        assert match, "a message that is not a genuine sealed message opened"
        assert out == match[0].plaintext, "a genuine message opened to the wrong plaintext"
        assert opened.plaintext_length == len(out)
        return None
    if out and trust is not None and data[:9] == b"TCSPSEAL\x02":
        raise AssertionError(f"{type(error).__name__} raised after {len(out)} bytes of a format 2 message reached "
                             "the sink with a trust set: released before its trailer verified")
    if out:
        assert any(_authentic_prefix(data, out, k) for k in known), (
            f"{type(error).__name__} raised after {len(out)} bytes of unauthenticated plaintext reached the sink")
    return error


def envelope_trust_for(data: bytes, trust):
    """Signed messages (flags bit 1) are opened against the trust set, unsigned ones without."""
    return trust if len(data) > 11 and data[11] & 0x02 else None


# -- three-phase -------------------------------------------------------------------------

# The records each side sends once the handshake is done (then its close record).
INITIATOR_RECORDS = (b"hello bob", b"", bytes(range(256)) * 2)
RESPONDER_RECORDS = (b"hello alice", bytes(100))

SCENARIOS = ("responder awaiting phase 1", "initiator awaiting phase 2", "responder awaiting phase 3",
             "initiator open", "responder open")
# control byte 1
F_EOF = 0x01          # end of stream after the input
F_CLOSE_FIRST = 0x02  # (open states) send our close record before feeding
F_ECHO = 0x04         # answer each Data event with a record of our own
F_LATE = 0x08         # pass now=1e9, past every handshake deadline


def _fixed_source(value: bytes, blob: bytes):
    def source(_recipient):
        return SessionKey.from_bytes(AlgId.CALG_AES_256, value), blob
    return source


@dataclass
class ThreePhaseWorld:
    alice: HostKey
    bob: HostKey
    trust: TrustSet
    a: bytes
    b: bytes
    blob_a: bytes
    blob_b: bytes
    m1: bytes = b""
    m2: bytes = b""
    m3: bytes = b""
    init_records: tuple[bytes, ...] = ()  # frames the initiator sends after the handshake
    resp_records: tuple[bytes, ...] = ()

    def initiator(self) -> ThreePhase:
        return ThreePhase(Role.INITIATOR, "alice", self.alice, self.trust, peer_name="bob",
                          local_public=self.trust["alice"], key_source=_fixed_source(self.a, self.blob_a))

    def responder(self) -> ThreePhase:
        return ThreePhase(Role.RESPONDER, "bob", self.bob, self.trust, local_public=self.trust["bob"],
                          key_source=_fixed_source(self.b, self.blob_b))

    def machine(self, scenario: int) -> ThreePhase:
        """A fresh machine in the state ``SCENARIOS[scenario]``, reached with the real transcript."""
        responder = scenario in (0, 2, 4)
        conn = self.responder() if responder else self.initiator()
        conn.start(0.0)
        conn.data_to_send()
        steps = {0: (), 1: (), 2: (self.m1,), 3: (self.m2,), 4: (self.m1, self.m3)}[scenario]
        for message in steps:
            conn.receive_data(message)
            conn.next_event(0.0)
        conn.data_to_send()
        expected = {0: State.AWAIT_PHASE1, 1: State.AWAIT_PHASE2, 2: State.AWAIT_PHASE3,
                    3: State.OPEN, 4: State.OPEN}[scenario]
        assert conn.state is expected, (scenario, conn.state)
        return conn


@functools.cache
def threephase_world() -> ThreePhaseWorld:
    """Both parties with fixed keys and fixed session keys A, B: the transcript is deterministic."""
    fx = fixtures()["threephase"]
    alice, bob = load_key(fx["alice_pem"]), load_key(fx["bob_pem"])
    world = ThreePhaseWorld(HostKey(alice), HostKey(bob),
                            TrustSet({"alice": alice.public_key(), "bob": bob.public_key()}),
                            *(bytes.fromhex(fx[k]) for k in ("A", "B", "blob_A", "blob_B")))
    init, resp = world.initiator(), world.responder()
    init.start(0.0)
    resp.start(0.0)
    world.m1 = init.data_to_send()
    resp.receive_data(world.m1)
    assert resp.next_event(0.0) is NEED_DATA
    world.m2 = resp.data_to_send()
    init.receive_data(world.m2)
    assert isinstance(init.next_event(0.0), HandshakeComplete)
    world.m3 = init.data_to_send()
    resp.receive_data(world.m3)
    assert isinstance(resp.next_event(0.0), HandshakeComplete)
    world.init_records = (*tuple(init.send(Data(r)) for r in INITIATOR_RECORDS), init.send(Close()))
    world.resp_records = (*tuple(resp.send(Data(r)) for r in RESPONDER_RECORDS), resp.send(Close()))
    return world


def _pieces(data: bytes, exponent: int):
    size = len(data) if exponent >= 12 else 1 << exponent
    for start in range(0, len(data), max(size, 1)):
        yield data[start : start + size]


def drive_threephase(data: bytes, world: ThreePhaseWorld | None = None) -> BaseException | None:
    """Input = scenario byte, control byte, then the byte stream from the peer.

    Returns the TokenCSPError that ended the session (None if it did not end
    in error); any other exception, or a broken invariant, propagates.
    """
    if len(data) < 2:
        return None
    world = world or threephase_world()
    scenario, control, stream = data[0] % len(SCENARIOS), data[1], data[2:]
    conn = world.machine(scenario)
    responder = scenario in (0, 2, 4)
    peer_records = INITIATOR_RECORDS if responder else RESPONDER_RECORDS
    now = 1e9 if control & F_LATE else 0.0
    received = 0  # records (Data and Close) delivered so far
    try:
        if control & F_CLOSE_FIRST and conn.state is State.OPEN:
            conn.send(Close())
        pieces = list(_pieces(stream, control >> 4))
        if control & F_EOF:
            pieces.append(b"")
        for piece in pieces:
            conn.receive_data(piece)
            while True:
                event = conn.next_event(now)
                if event is NEED_DATA:
                    break
                if isinstance(event, HandshakeComplete):
                    assert conn.state is State.OPEN
                    peer = "alice" if responder else "bob"
                    assert event.peer_name == peer and event.peer_fingerprint == world.trust.fingerprint(peer)
                elif isinstance(event, Data):
                    assert received < len(peer_records) and event.data == peer_records[received], (
                        "a record that the peer never sent was delivered")
                    received += 1
                    if control & F_ECHO and not conn.our_closed:
                        conn.send(Data(event.data[: conn.max_record]))
                elif isinstance(event, Close):
                    assert received == len(peer_records), "a close record the peer never sent was delivered"
                    received += 1
                elif isinstance(event, ConnectionClosed):
                    assert conn.their_closed
                    break
                else:
                    raise AssertionError(f"unknown event {event!r}")
            conn.data_to_send()
    except TokenCSPError as exc:
        assert_failed_for_good(conn, exc)
        return exc
    return None


def assert_failed_for_good(conn: ThreePhase, exc: BaseException) -> None:
    assert conn.state is State.ERROR, f"{type(exc).__name__} left the machine in {conn.state}"
    assert conn._send_aead is None and conn._recv_aead is None, "traffic keys survived the failure"
    for call in (lambda: conn.next_event(0.0), lambda: conn.receive_data(b"x"), lambda: conn.send(Data(b"x"))):
        try:
            call()
        except ProtocolError:
            pass
        else:
            raise AssertionError("a failed session accepted another call")
    assert isinstance(conn.abort(exc), bytes)
