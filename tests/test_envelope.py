"""Sealed messages (docs/FORMAT.md) against a real SoftHSM token: the receiver's exchange key and
the sender's signature key live on the token; no PKCS#11 mocks.

Where a test only exercises host-side parsing, a small ``HostReceiver`` wrapping a
``cryptography`` private key stands in for the token key to keep the test fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tokencsp import Provider
from tokencsp import envelope as E
from tokencsp.blobs import AlgId, SimpleBlob
from tokencsp.envelope import Header, Release, SenderStatus, open_bytes, open_message, read_header, seal, seal_bytes
from tokencsp.envelope._format import nonce
from tokencsp.envelope.opening import PSS
from tokencsp.errors import (
    AuthenticationFailed,
    BadSignature,
    EnvelopeFormatError,
    InvalidKeyError,
    MessageFromFuture,
    MessageRejected,
    MessageTooOld,
    NotForThisKey,
    Pkcs1Refused,
    ReplayedMessage,
    SerialNotIncreasing,
    SessionKeyImportError,
    SignatureRequired,
    TruncatedMessage,
    UntrustedSender,
)
from tokencsp.pubkeys import fingerprint
from tokencsp.replay import MemoryReplayCache, ReplayPolicy, SQLiteReplayCache
from tokencsp.session import SessionKey

REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
CS = 64  # small chunks keep the exhaustive tests fast
TAG = 16
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider(softhsm_kit):
    with Provider.open() as opened:
        yield opened


def _token_key(provider, name, kind):
    pair = provider.generate_exchange_key(name) if kind == "kx" else provider.generate_signature_key(name)
    return pair


@pytest.fixture(scope="module")
def receiver(provider):
    yield _token_key(provider, "envelope-kx", "kx")
    provider.delete_key("envelope-kx")


@pytest.fixture(scope="module")
def other_receiver(provider):
    yield _token_key(provider, "envelope-kx-2", "kx")
    provider.delete_key("envelope-kx-2")


@pytest.fixture(scope="module")
def signer(provider):
    yield _token_key(provider, "envelope-sig", "sig")
    provider.delete_key("envelope-sig")


@pytest.fixture(scope="module")
def other_signer(provider):
    yield _token_key(provider, "envelope-sig-2", "sig")
    provider.delete_key("envelope-sig-2")


@pytest.fixture(scope="module")
def trust(signer):
    return E.trust_set([signer.public_key()])


class HostReceiver:
    """An exchange key in host memory with ExchangeKey's import contract (host-only tests)."""

    def __init__(self, key: rsa.RSAPrivateKey | None = None) -> None:
        self.key = key or rsa.generate_private_key(65537, 2048)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def import_simpleblob(self, blob: bytes, oaep: bool = False) -> SessionKey:
        simple = SimpleBlob.from_bytes(blob)
        try:
            value = self.key.decrypt(simple.encrypted_key, OAEP_SHA1 if oaep else padding.PKCS1v15())
            return SessionKey.from_bytes(simple.alg_id, value)
        except ValueError:
            raise SessionKeyImportError() from None


class Counting:
    """Passes everything to a real receiver and counts the key imports (token operations).

    Over a token's ExchangeKey it offers the implicit import too, so the opener
    takes the production path (not its fallback for receivers without one).
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.imports = 0
        if hasattr(inner, "import_simpleblob_implicit"):
            self.import_simpleblob_implicit = self._import_implicit

    def _import_implicit(self, blob, oaep: bool = False) -> SessionKey:
        self.imports += 1
        return self.inner.import_simpleblob_implicit(blob, oaep)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.inner.public_key()

    def import_simpleblob(self, blob: bytes, oaep: bool = False) -> SessionKey:
        self.imports += 1
        return self.inner.import_simpleblob(blob, oaep)


class FixedSigner:
    """Hands out a given signature (test vectors, forged signatures)."""

    def __init__(self, public: rsa.RSAPublicKey, sign) -> None:
        self._public = public
        self._sign = sign

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._sign(data)


@pytest.fixture(scope="module")
def host_receiver():
    return HostReceiver()


# -- helpers ------------------------------------------------------------------------------


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def attempt(message: bytes, receiver, *, source=None, **kw) -> tuple[BaseException | None, bytes]:
    """Open into a fresh sink (fresh cache unless given); return (error or None, sink contents).

    ``source`` replaces the BytesIO over ``message`` (a RecordingReader, a stalling reader).
    """
    kw.setdefault("cache", MemoryReplayCache())
    if "clock" not in kw:
        kw.setdefault("now", NOW)
    sink = io.BytesIO()
    try:
        open_message(io.BytesIO(message) if source is None else source, sink, receiver, **kw)
    except MessageRejected as exc:
        return exc, sink.getvalue()
    return None, sink.getvalue()


def prefix_len(message: bytes) -> int:
    return len(read_header(io.BytesIO(message)).raw)


def split(message: bytes, chunk_size: int = CS) -> tuple[bytes, list[bytes]]:
    n = prefix_len(message)
    body, step = message[n:], chunk_size + TAG
    return message[:n], [body[i : i + step] for i in range(0, len(body), step)]


def expected_length(prefix: int, size: int, chunk_size: int) -> int:
    chunks = max(1, -(-size // chunk_size))
    return prefix + size + chunks * TAG


class RecordingReader(io.BytesIO):
    """A source that remembers the largest read asked of it and answers in short reads."""

    def __init__(self, data: bytes, short: int | None = None) -> None:
        super().__init__(data)
        self.largest = 0
        self.short = short

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size if size is not None and size >= 0 else 1 << 62)
        return super().read(min(size, self.short) if self.short and size and size > 0 else size)


# -- round trips on the token ----------------------------------------------------------------


@pytest.mark.parametrize("oaep", [True, False], ids=["oaep", "pkcs1"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 5 * CS + 7])
def test_round_trip_on_token(receiver, signer, trust, size, signed, oaep):
    data = payload(size)
    extra = {"signer": signer, "serial": 7} if signed else {}
    header = seal(io.BytesIO(data), sink := io.BytesIO(), receiver.public_key(), now=NOW, oaep=oaep,
                  chunk_size=CS, **extra)
    message = sink.getvalue()
    assert len(message) == expected_length(prefix_len(message), size, CS)
    out = io.BytesIO()
    opened = open_message(io.BytesIO(message), out, receiver, cache=MemoryReplayCache(),
                          trust=trust if signed else None, now=NOW, allow_pkcs1=not oaep)
    assert out.getvalue() == data
    assert opened.header == header == read_header(io.BytesIO(message)).header
    assert opened.plaintext_length == size
    assert opened.sender_verified is signed
    assert opened.verified_sender == (fingerprint(signer.public_key()) if signed else None)
    assert header.oaep is oaep and header.signed is signed and header.chunk_size == CS
    assert header.recipient_id == fingerprint(receiver.public_key())
    assert header.timestamp_ms == NOW * 1000 and header.serial == (7 if signed else 0)


@pytest.mark.parametrize("chunk_size", [E.DEFAULT_CHUNK_SIZE, 4096])
def test_ten_mib_round_trip_reads_one_chunk_at_a_time(receiver, signer, trust, chunk_size):
    data = os.urandom(10 * 1024 * 1024)
    source = RecordingReader(data)
    sink = io.BytesIO()
    seal(source, sink, receiver.public_key(), signer=signer, serial=1, now=NOW, chunk_size=chunk_size)
    assert source.largest <= chunk_size
    message = sink.getvalue()
    assert len(message) == expected_length(prefix_len(message), len(data), chunk_size)
    reader, out = RecordingReader(message), io.BytesIO()
    opened = open_message(reader, out, receiver, cache=MemoryReplayCache(), trust=trust, now=NOW)
    assert out.getvalue() == data and opened.sender_verified
    assert reader.largest <= max(chunk_size + TAG, E.MAX_RSA_BYTES + 12)


def test_default_chunk_size_is_in_the_documented_range():
    assert 64 * 1024 <= E.DEFAULT_CHUNK_SIZE <= 1024 * 1024
    assert E.MIN_CHUNK_SIZE <= E.DEFAULT_CHUNK_SIZE <= E.MAX_CHUNK_SIZE


def test_short_reads_from_a_pipe_are_fine(receiver):
    data = payload(5 * CS + 3)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS)
    out = io.BytesIO()
    open_message(RecordingReader(message, short=7), out, receiver, cache=MemoryReplayCache(), now=NOW)
    assert out.getvalue() == data


def test_signed_message_without_trust_set_is_unverified(receiver, signer):
    message = seal_bytes(b"hello", receiver.public_key(), signer=signer, serial=5, now=NOW, chunk_size=CS)
    cache = MemoryReplayCache()
    sink = io.BytesIO()
    opened = open_message(io.BytesIO(message), sink, receiver, cache=cache, now=NOW)
    assert sink.getvalue() == b"hello"
    assert not opened.sender_verified and opened.verified_sender is None
    assert opened.header.sender_id == fingerprint(signer.public_key())  # a claim, not a verified fact
    # The unverified serial was not recorded (O7): a lower serial from the verified sender still passes.
    lower = seal_bytes(b"again", receiver.public_key(), signer=signer, serial=1, now=NOW, chunk_size=CS)
    assert open_bytes(lower, receiver, cache=cache, trust=E.trust_set([signer.public_key()]), now=NOW) == b"again"


def test_read_header_shows_the_prefix_without_decrypting(receiver, signer):
    message = seal_bytes(b"x" * 100, receiver.public_key(), signer=signer, serial=3, now=NOW, chunk_size=CS)
    pre = read_header(io.BytesIO(message))
    assert pre.header.signed and pre.header.serial == 3 and pre.header.timestamp == NOW
    assert pre.signature is not None and len(pre.signature) == 256
    assert pre.key_blob[:12] == E.SIMPLEBLOB_HEADER and len(pre.key_blob) == 12 + 256
    assert message.startswith(pre.raw) and pre.raw.startswith(pre.header.to_bytes())
    unsigned = read_header(io.BytesIO(seal_bytes(b"", receiver.public_key(), now=NOW)))
    assert unsigned.signature is None and unsigned.header.sender_id is None and len(unsigned.header.to_bytes()) == 80


# -- replay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_replay_is_refused(receiver, signer, trust, tmp_path, kind):
    def make_cache():
        return MemoryReplayCache() if kind == "memory" else SQLiteReplayCache(tmp_path / "replay.db")

    message = seal_bytes(payload(3 * CS), receiver.public_key(), signer=signer, serial=100, now=NOW, chunk_size=CS)
    cache = make_cache()
    assert open_bytes(message, receiver, cache=cache, trust=trust, now=NOW) == payload(3 * CS)
    for again in (cache, make_cache()):  # the same object, and (for SQLite) another process's view
        err, sink = attempt(message, receiver, cache=again, trust=trust, now=NOW + 1)
        assert type(err) is ReplayedMessage and sink == b""
        if kind == "memory":
            break
    # Unsigned messages are replay-protected by id alone.
    plain = seal_bytes(b"unsigned", receiver.public_key(), now=NOW, chunk_size=CS)
    assert open_bytes(plain, receiver, cache=cache, now=NOW) == b"unsigned"
    assert type(attempt(plain, receiver, cache=cache)[0]) is ReplayedMessage
    cache.close()


def test_unauthenticated_junk_does_not_burn_the_message_id(receiver):
    message = seal_bytes(payload(2 * CS), receiver.public_key(), now=NOW, chunk_size=CS)
    cache = MemoryReplayCache()
    forged = bytearray(message)
    forged[prefix_len(message) + 3] ^= 1  # chunk 0
    assert type(attempt(bytes(forged), receiver, cache=cache)[0]) is AuthenticationFailed
    assert open_bytes(message, receiver, cache=cache, now=NOW) == payload(2 * CS)


def test_a_failure_after_chunk_0_has_recorded_the_id(receiver):
    """Documented: chunk 0 authenticated, so the id is spent even though a later chunk fails."""
    message = seal_bytes(payload(3 * CS), receiver.public_key(), now=NOW, chunk_size=CS)
    cache = MemoryReplayCache()
    broken = message[:-1] + bytes([message[-1] ^ 1])
    err, sink = attempt(broken, receiver, cache=cache)
    assert type(err) is AuthenticationFailed and sink == payload(3 * CS)[: 2 * CS]
    assert type(attempt(message, receiver, cache=cache)[0]) is ReplayedMessage


@pytest.mark.parametrize("delta, error", [
    (ReplayPolicy().max_age + 1, MessageTooOld),
    (-ReplayPolicy().max_skew - 1, MessageFromFuture),
])
def test_time_window(receiver, delta, error):
    message = seal_bytes(b"timely", receiver.public_key(), now=NOW, chunk_size=CS)
    counting = Counting(receiver)
    err, sink = attempt(message, counting, now=NOW + delta)
    assert type(err) is error and sink == b"" and counting.imports == 0
    edge = ReplayPolicy().max_age if error is MessageTooOld else -ReplayPolicy().max_skew
    assert open_bytes(message, receiver, cache=MemoryReplayCache(), now=NOW + edge) == b"timely"


def test_custom_policy_is_used(receiver):
    message = seal_bytes(b"x", receiver.public_key(), now=NOW, chunk_size=CS)
    err, _ = attempt(message, receiver, now=NOW + 61, policy=ReplayPolicy(max_age=60))
    assert type(err) is MessageTooOld


def test_serial_must_increase_per_sender(receiver, signer, trust):
    cache = MemoryReplayCache()

    def send(serial: int) -> BaseException | None:
        message = seal_bytes(b"s%d" % serial, receiver.public_key(), signer=signer, serial=serial, now=NOW,
                             chunk_size=CS)
        return attempt(message, receiver, cache=cache, trust=trust)[0]

    assert send(10) is None
    assert type(send(9)) is SerialNotIncreasing
    assert type(send(10)) is SerialNotIncreasing
    assert send(11) is None


# -- sender authentication --------------------------------------------------------------------


def test_untrusted_signer_is_refused(receiver, other_signer, trust):
    message = seal_bytes(b"who?", receiver.public_key(), signer=other_signer, serial=1, now=NOW, chunk_size=CS)
    counting = Counting(receiver)
    err, sink = attempt(message, counting, trust=trust)
    assert type(err) is UntrustedSender and sink == b"" and counting.imports == 0


def test_unsigned_message_is_refused_when_a_trust_set_is_given(receiver, trust):
    message = seal_bytes(b"anon", receiver.public_key(), now=NOW, chunk_size=CS)
    counting = Counting(receiver)
    err, sink = attempt(message, counting, trust=trust)
    assert type(err) is SignatureRequired and sink == b"" and counting.imports == 0
    assert type(attempt(message, receiver, trust={})[0]) is SignatureRequired


def test_bad_signature_is_refused(receiver, signer, other_signer, trust):
    pub = signer.public_key()
    forgeries = [
        FixedSigner(pub, other_signer.sign),  # claims the trusted id, signed by another key
        FixedSigner(pub, lambda data: signer.sign(data + b"!")),  # right key, other data
        FixedSigner(pub, lambda data: signer.sign(data[len(E.SIGNATURE_CONTEXT):])),  # no context string
    ]
    for forged in forgeries:
        message = seal_bytes(b"forged", receiver.public_key(), signer=forged, serial=1, now=NOW, chunk_size=CS)
        counting = Counting(receiver)
        err, sink = attempt(message, counting, trust=trust)
        assert type(err) is BadSignature and sink == b"" and counting.imports == 0


def test_trust_entry_must_match_its_key_id(receiver, signer, other_signer):
    message = seal_bytes(b"x", receiver.public_key(), signer=signer, serial=1, now=NOW, chunk_size=CS)
    mislabelled = {fingerprint(signer.public_key()): other_signer.public_key()}
    assert type(attempt(message, receiver, trust=mislabelled)[0]) is UntrustedSender


def test_stripping_the_signature_does_not_pass(receiver, signer, trust):
    message = seal_bytes(b"payload", receiver.public_key(), signer=signer, serial=1, now=NOW, chunk_size=CS)
    pre, chunks = split(message)
    header = pre[:80]
    stripped = bytearray(header + pre[112 : 112 + 2 + 268]) + b"".join(chunks)
    stripped[11] &= ~E.FLAG_SIGNED
    assert type(attempt(bytes(stripped), receiver, trust=trust)[0]) is SignatureRequired
    err, sink = attempt(bytes(stripped), receiver)  # no trust set: the AD no longer matches
    assert type(err) is AuthenticationFailed and sink == b""


# -- tampering --------------------------------------------------------------------------------


def _regions(message: bytes, signed: bool) -> dict[str, range]:
    n = prefix_len(message)
    h = 112 if signed else 80
    regions = {
        "fixed": range(0, 16), "recipient_id": range(16, 48), "message_id": range(48, 64),
        "timestamp": range(64, 72), "serial": range(72, 80),
        "key_blob_length": range(h, h + 2), "key_blob_header": range(h + 2, h + 14),
        "key_blob_rsa": range(h + 14, h + 2 + 268), "chunks": range(n, len(message)),
    }
    if signed:
        regions["sender_id"] = range(80, 112)
        regions["signature_length"] = range(h + 270, h + 272)
        regions["signature"] = range(h + 272, n)
    return regions


def _check_flip(message, data, receiver, pos, mask, *, trust, signed, chunk_size=CS):
    tampered = bytearray(message)
    tampered[pos] ^= mask
    err, sink = attempt(bytes(tampered), receiver, trust=trust)
    assert isinstance(err, MessageRejected) and type(err) is not MessageRejected, (pos, err)
    n = prefix_len(message)
    chunk = (pos - n) // (chunk_size + TAG) if pos >= n else -1
    if chunk <= 0:
        assert sink == b"", pos  # refused before anything was released
    else:
        assert type(err) is AuthenticationFailed, (pos, err)
        assert sink == data[: chunk * chunk_size], pos  # only authenticated chunks, then the error
    regions = _regions(message, signed)
    if pos in regions["recipient_id"]:
        assert type(err) is NotForThisKey
    if pos in regions["chunks"] or (not signed and pos in regions["key_blob_rsa"]):
        assert type(err) is AuthenticationFailed and str(err) == str(AuthenticationFailed())
    if trust is not None and any(pos in regions[r] for r in ("signature", "key_blob_rsa", "serial", "message_id")):
        assert type(err) is BadSignature, (pos, err)
    if trust is None and signed and any(pos in regions[r] for r in ("signature", "sender_id")):
        assert type(err) is AuthenticationFailed, (pos, err)  # the AD covers them
    return err


@pytest.mark.parametrize("mask", [0x01, 0x80])
@pytest.mark.parametrize("mode", ["unsigned", "signed-trusted", "signed-no-trust-set"])
def test_every_single_byte_change_is_refused(receiver, signer, trust, mode, mask):
    """Every byte of a 3-chunk message, two masks: header, key blob, signature, every chunk."""
    signed = mode != "unsigned"
    data = payload(2 * CS + 22)
    extra = {"signer": signer, "serial": 9} if signed else {}
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS, **extra)
    for pos in range(len(message)):
        _check_flip(message, data, receiver, pos, mask, trust=trust if mode == "signed-trusted" else None,
                    signed=signed)


def test_byte_changes_in_a_bigger_message(receiver):
    chunk_size, chunks = 1024, 20
    data = payload(chunks * chunk_size + 100)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=chunk_size)
    n = prefix_len(message)
    positions = set(range(n))  # every prefix byte: header, key blob
    for k in range(chunks + 2):  # around every chunk boundary
        boundary = n + k * (chunk_size + TAG)
        positions.update(p for p in range(boundary - 6, boundary + 6) if n <= p < len(message))
    rng = random.Random(7)
    positions.update(rng.randrange(n, len(message)) for _ in range(150))
    for pos in sorted(positions):
        _check_flip(message, data, receiver, pos, 0x01, trust=None, signed=False, chunk_size=chunk_size)


def test_truncation_at_every_chunk_boundary(receiver):
    data = payload(4 * CS + 10)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS)
    pre, chunks = split(message)
    for k in range(len(chunks)):  # keep chunks 0..k-1
        cut = pre + b"".join(chunks[:k])
        err, sink = attempt(cut, receiver)
        assert type(err) is TruncatedMessage, k
        assert sink == data[: max(0, k - 1) * CS]


def test_truncation_at_random_points(receiver):
    data = payload(4 * CS + 10)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS)
    n = prefix_len(message)
    for cut in range(n):  # anywhere inside the prefix
        err, sink = attempt(message[:cut], receiver)
        assert type(err) is EnvelopeFormatError and sink == b"", cut
    rng = random.Random(3)
    boundaries = {n + k * (CS + TAG) for k in range(6)}
    for cut in sorted({rng.randrange(n, len(message)) for _ in range(60)} - boundaries):
        err, sink = attempt(message[:cut], receiver)
        assert isinstance(err, AuthenticationFailed), cut
        assert data.startswith(sink) and len(sink) % CS == 0


@pytest.mark.host_side(reason="byte-level parsing of the sealed format; the token part is in test_round_trip_on_token")
@pytest.mark.parametrize("order", [[1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 1, 2, 3], [0, 0, 1, 2, 3], [0, 2, 3],
                                   [0, 1, 3], [0, 1, 2], [0, 1, 2, 3, 3], [3], [0, 1, 3, 2]])
def test_reordered_duplicated_or_dropped_chunks(receiver, order):
    data = payload(3 * CS + 20)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS)
    pre, chunks = split(message)
    err, sink = attempt(pre + b"".join(chunks[i] for i in order), receiver)
    assert isinstance(err, AuthenticationFailed)
    good = next((i for i, c in enumerate(order) if c != i), len(order))  # chunks still in place
    assert data.startswith(sink) and len(sink) <= good * CS


def test_chunk_from_another_message_to_the_same_key(receiver):
    key = os.urandom(32)  # even a sealer that (wrongly) reused a session key is caught by the AD
    data_a, data_b = payload(3 * CS, 1), payload(3 * CS, 2)
    a = seal_bytes(data_a, receiver.public_key(), now=NOW, chunk_size=CS, session_key=key)
    b = seal_bytes(data_b, receiver.public_key(), now=NOW, chunk_size=CS, session_key=key)
    c = seal_bytes(data_b, receiver.public_key(), now=NOW, chunk_size=CS)  # fresh key: the normal case
    pre_a, chunks_a = split(a)
    for other in (b, c):
        _, chunks_o = split(other)
        for i in range(3):
            spliced = [*chunks_a[:i], chunks_o[i], *chunks_a[i + 1:]]
            err, sink = attempt(pre_a + b"".join(spliced), receiver)
            assert type(err) is AuthenticationFailed and sink == data_a[: i * CS]
    # Same key and message id, only the timestamp differs: still a different AD.
    mid = os.urandom(16)
    d = seal_bytes(data_a, receiver.public_key(), now=NOW, chunk_size=CS, session_key=key, message_id=mid)
    e = seal_bytes(data_b, receiver.public_key(), now=NOW + 1, chunk_size=CS, session_key=key, message_id=mid)
    assert type(attempt(split(d)[0] + b"".join(split(e)[1]), receiver)[0]) is AuthenticationFailed


@pytest.mark.host_side(reason="byte-level parsing of the sealed format; the token part is in test_round_trip_on_token")
@pytest.mark.parametrize("size", [10, CS, 3 * CS + 5, 3 * CS])
@pytest.mark.parametrize("tail", [b"\x00", bytes(16), bytes(CS + TAG), b"chunk"])
def test_trailing_data_is_refused(receiver, size, tail):
    data = payload(size)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS)
    err, sink = attempt(message + tail, receiver)
    assert type(err) is AuthenticationFailed
    last_start = (max(1, -(-size // CS)) - 1) * CS
    assert sink == data[:last_start]  # everything but the last chunk at most; a 1-chunk message: nothing


def test_another_messages_chunk_appended_is_refused(receiver):
    data = payload(CS + 5)
    message = seal_bytes(data, receiver.public_key(), now=NOW, chunk_size=CS)
    other = seal_bytes(payload(CS + 5, 9), receiver.public_key(), now=NOW, chunk_size=CS)
    err, _ = attempt(message + split(other)[1][-1], receiver)
    assert type(err) is AuthenticationFailed


def test_empty_last_chunk_after_data_is_not_canonical(host_receiver):
    key, data = os.urandom(32), payload(CS)
    message = seal_bytes(data, host_receiver.public_key(), now=NOW, chunk_size=CS, session_key=key)
    pre = read_header(io.BytesIO(message))
    ad = hashlib.sha256(pre.raw).digest()
    aead = AESGCM(key)
    forged = pre.raw + aead.encrypt(nonce(0, False), data, ad) + aead.encrypt(nonce(1, True), b"", ad)
    err, _sink = attempt(forged, host_receiver)
    assert type(err) is EnvelopeFormatError and "chunk" in str(err)


# -- key transport ------------------------------------------------------------------------------


def test_wrong_recipient_is_not_for_this_key(receiver, other_receiver):
    message = seal_bytes(b"for the other one", other_receiver.public_key(), now=NOW, chunk_size=CS)
    counting = Counting(receiver)
    err, sink = attempt(message, counting)
    assert type(err) is NotForThisKey and sink == b"" and counting.imports == 0
    assert open_bytes(message, other_receiver, cache=MemoryReplayCache(), now=NOW) == b"for the other one"


def _garbage_blobs(public: rsa.RSAPublicKey) -> list[tuple[bytes, bool]]:
    modulus = public.key_size // 8
    short_key = public.encrypt(os.urandom(16), OAEP_SHA1)  # a 16-byte key under an AES-256 label
    return [
        (E.SIMPLEBLOB_HEADER + os.urandom(modulus), True),  # random ciphertext
        (E.SIMPLEBLOB_HEADER + b"\xff" * modulus, True),  # larger than the modulus
        (SimpleBlob(AlgId.CALG_AES_256, short_key).to_bytes(), True),
        (SimpleBlob(AlgId.CALG_AES_256, public.encrypt(os.urandom(32), OAEP_SHA1)).to_bytes(), False),  # wrong padding
        (SimpleBlob(AlgId.CALG_AES_256, public.encrypt(os.urandom(32), padding.PKCS1v15())).to_bytes(), True),
        (E.SIMPLEBLOB_HEADER + os.urandom(modulus + 2), True),  # longer than the modulus
    ]


def test_garbage_key_blob_fails_exactly_like_a_corrupted_payload(receiver):
    public = receiver.public_key()
    sound = seal_bytes(payload(2 * CS), public, now=NOW, chunk_size=CS)
    corrupted = sound[:-1] + bytes([sound[-1] ^ 1])
    reference, _ = attempt(sound[: prefix_len(sound)] + bytes([sound[prefix_len(sound)] ^ 1])
                           + sound[prefix_len(sound) + 1 :], receiver)
    assert type(reference) is AuthenticationFailed
    assert type(attempt(corrupted, receiver)[0]) is AuthenticationFailed
    for blob, oaep in _garbage_blobs(public):
        message = seal_bytes(payload(2 * CS), public, now=NOW, chunk_size=CS, oaep=oaep,
                             session_key=os.urandom(32), key_blob=blob)
        counting = Counting(receiver)
        implicit = receiver.rejection.imports["implicit"]
        err, sink = attempt(message, counting, allow_pkcs1=True)
        assert type(err) is type(reference) and str(err) == str(reference) and err.reason == reference.reason
        assert sink == b"" and counting.imports == 1
        assert receiver.rejection.imports["implicit"] == implicit + 1  # the token's implicit rejection ran


def test_pkcs1_and_oaep_flag_mismatch_is_an_authentication_failure(receiver):
    message = bytearray(seal_bytes(b"x" * 10, receiver.public_key(), now=NOW, chunk_size=CS, oaep=True))
    message[11] ^= E.FLAG_OAEP
    err, sink = attempt(bytes(message), receiver, allow_pkcs1=True)
    assert type(err) is AuthenticationFailed and str(err) == str(AuthenticationFailed()) and sink == b""
    pkcs1 = bytearray(seal_bytes(b"x" * 10, receiver.public_key(), now=NOW, chunk_size=CS, oaep=False))
    pkcs1[11] ^= E.FLAG_OAEP
    err, sink = attempt(bytes(pkcs1), receiver)
    assert type(err) is AuthenticationFailed and sink == b""


# -- parsing and bounds (host-only) ---------------------------------------------------------------


def _patched(message: bytes, offset: int, new: bytes) -> bytes:
    return message[:offset] + new + message[offset + len(new) :]


@pytest.fixture(scope="module")
def host_message(host_receiver):
    return seal_bytes(b"abc", host_receiver.public_key(), now=NOW, chunk_size=CS)


@pytest.mark.parametrize("offset, new, field", [
    (0, b"XCSPSEAL", "magic"),
    (8, b"\x03", "version"),  # 2 is format version 2 (FORMAT.md section 9)
    (9, b"\x00\x02", "suite"),
    (11, b"\x05", "flags"),
    (12, (0).to_bytes(4, "big"), "chunk_size"),
    (12, (63).to_bytes(4, "big"), "chunk_size"),
    (12, (E.MAX_CHUNK_SIZE + 1).to_bytes(4, "big"), "chunk_size"),
    (12, b"\xff\xff\xff\xff", "chunk_size"),
    (80, (0).to_bytes(2, "big"), "key_blob_length"),
    (80, (12 + 255).to_bytes(2, "big"), "key_blob_length"),
    (80, (12 + 257).to_bytes(2, "big"), "key_blob_length"),
    (80, (12 + 1026).to_bytes(2, "big"), "key_blob_length"),
    (80, b"\xff\xff", "key_blob_length"),
    (82, b"\x06", "key_blob"),
    (86, b"\x0e", "key_blob"),  # CALG_AES_128
    (90, b"\x00\x24", "key_blob"),  # CALG_RSA_SIGN
])
def test_parse_failures_name_the_field(host_receiver, host_message, offset, new, field):
    bad = _patched(host_message, offset, new)
    with pytest.raises(EnvelopeFormatError, match=f"^{field}:"):
        read_header(io.BytesIO(bad))
    reader = RecordingReader(bad + bytes(1 << 16))  # enough input to satisfy any absurd length
    err, sink = attempt(bad, host_receiver, source=reader)
    assert type(err) is EnvelopeFormatError and str(err).startswith(f"{field}:") and sink == b""
    assert reader.largest <= E.MAX_RSA_BYTES + 12  # nothing absurd was asked for (O2)


def test_absurd_chunk_size_is_refused_before_reading_a_chunk(host_message):
    reader = RecordingReader(_patched(host_message, 12, b"\xff\xff\xff\xff") + bytes(1 << 16))
    with pytest.raises(EnvelopeFormatError, match="chunk_size"):
        open_message(reader, io.BytesIO(), HostReceiver(), cache=MemoryReplayCache(), now=NOW)
    assert reader.largest <= 80


def test_signature_length_bounds(receiver, signer):
    message = seal_bytes(b"abc", receiver.public_key(), signer=signer, serial=1, now=NOW, chunk_size=CS)
    offset = 112 + 2 + 268
    for value in (0, 255, 1025, 0xFFFF):
        bad = _patched(message, offset, value.to_bytes(2, "big"))
        with pytest.raises(EnvelopeFormatError, match=r"^signature_length:"):
            read_header(io.BytesIO(bad))
        reader = RecordingReader(bad + bytes(1 << 16))
        err, sink = attempt(bad, receiver, source=reader)
        assert type(err) is EnvelopeFormatError and str(err).startswith("signature_length:") and sink == b""
        assert reader.largest <= E.MAX_RSA_BYTES + 12  # the length was checked before the read (O2)


@pytest.mark.host_side(reason="byte-level parsing of the sealed format; the token part is in test_round_trip_on_token")
@pytest.mark.parametrize("cut, field", [(0, "header"), (79, "header"), (80, "sender_id"), (111, "sender_id"),
                                        (112, "key_blob_length"), (113, "key_blob_length"), (114, "key_blob"),
                                        (381, "key_blob"), (382, "signature_length"), (384, "signature"),
                                        (639, "signature")])
def test_truncated_prefix_names_the_field(receiver, signer, cut, field):
    message = seal_bytes(b"abc", receiver.public_key(), signer=signer, serial=1, now=NOW, chunk_size=CS)
    assert prefix_len(message) == 640
    with pytest.raises(EnvelopeFormatError, match=f"^{field}: truncated"):
        read_header(io.BytesIO(message[:cut]))


def test_nothing_after_the_prefix_is_truncated(host_receiver, host_message):
    err, sink = attempt(host_message[: prefix_len(host_message)], host_receiver)
    assert type(err) is TruncatedMessage and sink == b""


def test_header_round_trip_and_validation():
    header = Header(recipient_id=bytes(32), message_id=bytes(range(16)), timestamp_ms=2**64 - 1,
                    serial=2**64 - 1, sender_id=b"\x01" * 32, oaep=False, chunk_size=E.MIN_CHUNK_SIZE)
    raw = header.to_bytes()
    assert len(raw) == 112 and raw[:12] == b"TCSPSEAL\x01\x00\x01\x02"
    assert Header.parse(raw) == header
    with pytest.raises(EnvelopeFormatError, match="sender_id"):
        Header.parse(raw + b"\x00")
    for bad in ({"recipient_id": bytes(31)}, {"message_id": bytes(15)}, {"timestamp_ms": -1},
                {"serial": 2**64}, {"sender_id": bytes(5)}, {"chunk_size": E.MAX_CHUNK_SIZE + 1}):
        fields = {"recipient_id": bytes(32), "message_id": bytes(16), "timestamp_ms": 0, **bad}
        with pytest.raises(ValueError):
            Header(**fields)


def test_seal_argument_checks(host_receiver, signer):
    public = host_receiver.public_key()
    with pytest.raises(ValueError, match="serial"):
        seal_bytes(b"", public, signer=signer)
    with pytest.raises(InvalidKeyError):
        seal_bytes(b"", rsa.generate_private_key(65537, 1024).public_key())
    with pytest.raises(ValueError):
        seal_bytes(b"", public, chunk_size=E.MAX_CHUNK_SIZE + 1)
    with pytest.raises(InvalidKeyError):
        seal_bytes(b"", public, session_key=bytes(16))
    with pytest.raises(ValueError, match="session_key"):
        seal_bytes(b"", public, key_blob=b"x")
    with pytest.raises(InvalidKeyError, match="key_blob"):
        seal_bytes(b"", public, session_key=bytes(32), key_blob=b"\x01\x02" + bytes(266))


def test_fresh_randomness_per_message(host_receiver):
    a = read_header(io.BytesIO(seal_bytes(b"", host_receiver.public_key(), now=NOW)))
    b = read_header(io.BytesIO(seal_bytes(b"", host_receiver.public_key(), now=NOW)))
    assert a.header.message_id != b.header.message_id and a.key_blob != b.key_blob


# -- the test vector in docs/FORMAT.md --------------------------------------------------------------


def _vector() -> dict[str, bytes]:
    text = (REPO / "docs" / "FORMAT.md").read_text("utf-8")
    section = text[text.index("## 8. Test vector") :]
    blocks = re.findall(r"^```(hex|pem) ([\w-]+)\n(.*?)^```", section, re.M | re.S)
    out = {name: (bytes.fromhex(body) if kind == "hex" else body.encode()) for kind, name, body in blocks}
    assert {"receiver-private-key", "sender-public-key", "message", "header", "key-blob", "signature",
            "associated-data", "chunk-0", "chunk-1", "plaintext", "session-key", "message-id"} <= set(out)
    return out


@pytest.fixture(scope="module")
def vector_receiver(provider):
    vector = _vector()
    yield provider.import_pem("envelope-vector-kx", vector["receiver-private-key"])
    provider.delete_key("envelope-vector-kx")


def test_vector_from_format_md(vector_receiver):
    v = _vector()
    sender = load_pem_public_key(v["sender-public-key"])
    message, plaintext = v["message"], v["plaintext"]
    now = 1767225600.0
    # The pieces add up to the message and match their descriptions in the document.
    assert fingerprint(vector_receiver.public_key()) == v["recipient-id"]
    assert fingerprint(sender) == v["sender-id"]
    prefix = (v["header"] + len(v["key-blob"]).to_bytes(2, "big") + v["key-blob"]
              + len(v["signature"]).to_bytes(2, "big") + v["signature"])
    assert message == prefix + v["chunk-0"] + v["chunk-1"]
    assert hashlib.sha256(prefix).digest() == v["associated-data"]
    assert v["nonce-0"] == bytes(12) and v["nonce-1"] == bytes(10) + b"\x01\x01"
    # The token unwraps the session key from the key blob.
    simple = SimpleBlob.from_bytes(v["key-blob"])
    assert vector_receiver.unwrap_raw(simple.encrypted_key, oaep=True, alg_id=AlgId.CALG_AES_256) == v["session-key"]
    # Independently of envelope.py: AES-256-GCM with the documented nonces and AD.
    aead = AESGCM(v["session-key"])
    assert (aead.decrypt(v["nonce-0"], v["chunk-0"], v["associated-data"])
            + aead.decrypt(v["nonce-1"], v["chunk-1"], v["associated-data"])) == plaintext
    sender.verify(v["signature"], b"tokencsp sealed message v1 signature\x00" + v["header"]
                  + len(v["key-blob"]).to_bytes(2, "big") + v["key-blob"], PSS, hashes.SHA256())
    # envelope.py opens it with the token key and verifies the sender ...
    sink = io.BytesIO()
    opened = open_message(io.BytesIO(message), sink, vector_receiver, cache=MemoryReplayCache(),
                          trust=E.trust_set([sender]), now=now)
    assert sink.getvalue() == plaintext and opened.verified_sender == v["sender-id"]
    assert opened.header == Header.parse(v["header"])
    assert opened.header.serial == 42 and opened.header.chunk_size == 64 and opened.header.oaep
    # ... and re-sealing with the vector's inputs reproduces every byte.
    again = seal_bytes(plaintext, vector_receiver.public_key(), signer=FixedSigner(sender, lambda d: v["signature"]),
                       serial=42, now=now, chunk_size=64, message_id=v["message-id"],
                       session_key=v["session-key"], key_blob=v["key-blob"])
    assert again == message


def test_top_level_seal_and_open_over_bytes_and_streams(softhsm_kit):
    import io

    import tokencsp
    from tokencsp.errors import ReplayedMessage

    with tokencsp.Provider.open(token="tokencsp-test-b") as provider:
        receiver = provider.generate_exchange_key("api-rx")
        try:
            cache = tokencsp.MemoryReplayCache()
            sealed = tokencsp.seal(b"hello", receiver.public_blob())
            assert tokencsp.open(sealed, receiver, cache=cache) == b"hello"
            with pytest.raises(ReplayedMessage):
                tokencsp.open(sealed, receiver, cache=cache)
            sink = io.BytesIO()
            header = tokencsp.seal(io.BytesIO(b"streamed"), receiver.public_key(), sink=sink)
            out = io.BytesIO()
            opened = tokencsp.open(io.BytesIO(sink.getvalue()), receiver, cache=cache, sink=out)
            assert out.getvalue() == b"streamed" and opened.header.message_id == header.message_id
        finally:
            provider.delete_key("api-rx")


# -- the clock is read when the prefix is in, and again at accept (finding 9.2) -----------------


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t


class StallingReader(io.BytesIO):
    """A pipe that goes quiet for ``stall`` seconds (on ``clock``) once ``at`` bytes were read."""

    def __init__(self, data: bytes, clock: FakeClock, at: int, stall: float) -> None:
        super().__init__(data)
        self.clock, self.at, self.stall, self.stalled = clock, at, stall, False

    def read(self, size: int | None = -1) -> bytes:
        if not self.stalled and size is not None and size > 0 and self.tell() + size > self.at:
            part = super().read(self.at - self.tell())
            self.stalled = True
            self.clock.t += self.stall
            return part
        return super().read(size)


STALL = ReplayPolicy().max_age + 60


@pytest.mark.parametrize("at", [40, 79], ids=["mid-header", "end-of-header"])
def test_a_stall_inside_the_prefix_cannot_defeat_max_age(receiver, at):
    message = seal_bytes(b"old news", receiver.public_key(), now=NOW, chunk_size=CS)
    clock = FakeClock(NOW)
    counting = Counting(receiver)
    err, sink = attempt(message, counting, source=StallingReader(message, clock, at, STALL), clock=clock)
    assert type(err) is MessageTooOld and sink == b"" and counting.imports == 0


@pytest.mark.parametrize("release", list(Release))
def test_a_stall_after_the_prefix_is_judged_at_accept(receiver, release):
    message = seal_bytes(payload(3 * CS), receiver.public_key(), now=NOW, chunk_size=CS)
    clock, cache = FakeClock(NOW), MemoryReplayCache()
    stalling = StallingReader(message, clock, prefix_len(message) + 10, STALL)  # inside chunk 0
    err, sink = attempt(message, receiver, source=stalling, clock=clock, cache=cache, release=release)
    assert type(err) is MessageTooOld and sink == (b"" if release is Release.STREAMING else sink)
    # Nothing was recorded: the message is refused for its age, not as a replay.
    assert type(attempt(message, receiver, cache=cache, now=NOW + STALL)[0]) is MessageTooOld
    assert open_bytes(message, receiver, cache=cache, now=NOW) == payload(3 * CS)


def test_now_and_clock_are_exclusive(receiver):
    with pytest.raises(TypeError):
        open_message(io.BytesIO(b""), io.BytesIO(), receiver, cache=MemoryReplayCache(), now=NOW, clock=time.time)


# -- nobody who saw a message id can burn another sender's message (finding 9.4) ---------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_an_observer_reusing_the_message_id_does_not_burn_the_message(receiver, signer, trust, tmp_path,
                                                                      kind, signed):
    extra = {"signer": signer, "serial": 100} if signed else {}
    genuine = seal_bytes(b"genuine", receiver.public_key(), now=NOW, chunk_size=CS, **extra)
    seen_id = read_header(io.BytesIO(genuine)).header.message_id
    # The observer seals his own message to the same receiver under the genuine id, and it arrives first.
    decoy = seal_bytes(b"decoy", receiver.public_key(), now=NOW, chunk_size=CS, message_id=seen_id)
    cache = MemoryReplayCache() if kind == "memory" else SQLiteReplayCache(tmp_path / "r.db")
    with cache:
        assert open_bytes(decoy, receiver, cache=cache, now=NOW) == b"decoy"
        opts = {"trust": trust} if signed else {}
        assert open_bytes(genuine, receiver, cache=cache, now=NOW + 1, **opts) == b"genuine"
        # Each is still accepted at most once.
        assert type(attempt(decoy, receiver, cache=cache, now=NOW + 2)[0]) is ReplayedMessage
        assert type(attempt(genuine, receiver, cache=cache, now=NOW + 2, **opts)[0]) is ReplayedMessage


def test_the_replay_key_is_the_hash_of_the_authenticated_prefix(receiver):
    message = seal_bytes(b"k", receiver.public_key(), now=NOW, chunk_size=CS)
    keys = []

    class Spy(MemoryReplayCache):
        def accept(self, message_key, *args, **kw):  # type: ignore[override]
            keys.append(message_key)
            return super().accept(message_key, *args, **kw)

    open_bytes(message, receiver, cache=Spy(), now=NOW)
    assert keys == [hashlib.sha256(read_header(io.BytesIO(message)).raw).digest()]


# -- a broken copy does not spend the genuine message where nothing is released early (9.11) ----


def _broken_copies(message: bytes) -> dict[str, bytes]:
    n = prefix_len(message)
    return {
        "last-chunk-flipped": message[:-1] + bytes([message[-1] ^ 1]),
        "truncated": message[: n + 2 * (CS + TAG)],
        "middle-chunk-flipped": message[: n + CS + TAG + 5] + bytes([message[n + CS + TAG + 5] ^ 1])
        + message[n + CS + TAG + 6 :],
    }


@pytest.mark.parametrize("damage", ["last-chunk-flipped", "truncated", "middle-chunk-flipped"])
def test_a_broken_copy_does_not_burn_the_genuine_message_at_end_release(receiver, tmp_path, damage):
    message = seal_bytes(payload(3 * CS + 5), receiver.public_key(), now=NOW, chunk_size=CS)
    with SQLiteReplayCache(tmp_path / "r.db") as cache:
        err, _ = attempt(_broken_copies(message)[damage], receiver, cache=cache, release=Release.AT_END)
        assert type(err) in (AuthenticationFailed, TruncatedMessage)
        with pytest.raises((AuthenticationFailed, TruncatedMessage)):
            open_bytes(_broken_copies(message)[damage], receiver, cache=cache, now=NOW)  # bytes API: at end
        assert open_bytes(message, receiver, cache=cache, now=NOW) == payload(3 * CS + 5)
        assert type(attempt(message, receiver, cache=cache, release=Release.AT_END)[0]) is ReplayedMessage


def test_streaming_release_still_records_after_chunk_0(receiver):
    """O6 for a pipe: the id is spent once chunk 0 authenticated (documented as "already seen")."""
    message = seal_bytes(payload(3 * CS), receiver.public_key(), now=NOW, chunk_size=CS)
    cache = MemoryReplayCache()
    err, sink = attempt(_broken_copies(message)["last-chunk-flipped"], receiver, cache=cache,
                        release=Release.STREAMING)
    assert type(err) is AuthenticationFailed and sink == payload(3 * CS)[: 2 * CS]
    err, sink = attempt(message, receiver, cache=cache, release=Release.STREAMING)
    assert type(err) is ReplayedMessage and sink == b""
    assert "already" in str(err) and "damaged" in str(err)


def test_at_end_release_records_nothing_for_a_replay_refused_at_the_end(receiver):
    message = seal_bytes(payload(2 * CS), receiver.public_key(), now=NOW, chunk_size=CS)
    cache = MemoryReplayCache()
    assert open_bytes(message, receiver, cache=cache, now=NOW) == payload(2 * CS)
    sink = io.BytesIO()
    with pytest.raises(ReplayedMessage):
        open_message(io.BytesIO(message), sink, receiver, cache=cache, now=NOW, release=Release.AT_END)
    # The caller discards the private sink; open_bytes never returns it.
    with pytest.raises(ReplayedMessage):
        open_bytes(message, receiver, cache=cache, now=NOW)


# -- the sender is reported as unverified without a trust set (9.12, O8) ------------------------


def test_opened_reports_the_sender_status(receiver, signer, trust):
    signed = seal_bytes(b"s", receiver.public_key(), signer=signer, serial=3, now=NOW, chunk_size=CS)
    unsigned = seal_bytes(b"u", receiver.public_key(), now=NOW, chunk_size=CS)
    key_id = fingerprint(signer.public_key())

    def opened(message: bytes, **kw) -> E.Opened:
        return open_message(io.BytesIO(message), io.BytesIO(), receiver, cache=MemoryReplayCache(), now=NOW, **kw)

    o = opened(signed)
    assert o.sender_status is SenderStatus.UNVERIFIED and o.claimed_sender == key_id and o.verified_sender is None
    assert o.sender_line().startswith("sender unverified") and key_id.hex() in o.sender_line()
    assert "not checked" in o.sender_line()
    o = opened(unsigned)
    assert o.sender_status is SenderStatus.UNVERIFIED and o.claimed_sender is None
    assert o.sender_line() == "sender unverified: the message is unsigned"
    o = opened(signed, trust=trust)
    assert o.sender_status is SenderStatus.VERIFIED and o.verified_sender == key_id
    assert o.sender_line().startswith("sender verified") and "serial 3" in o.sender_line()


# -- PKCS#1 v1.5 key transport is refused unless allowed (9.1) ----------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_pkcs1_transport_is_refused_before_any_token_work(receiver, tmp_path, kind):
    message = seal_bytes(b"legacy", receiver.public_key(), now=NOW, chunk_size=CS, oaep=False)
    counting = Counting(receiver)
    cache = MemoryReplayCache() if kind == "memory" else SQLiteReplayCache(tmp_path / "r.db")
    with cache:
        err, sink = attempt(message, counting, cache=cache)
        assert type(err) is Pkcs1Refused and sink == b"" and counting.imports == 0
        assert str(err) == str(Pkcs1Refused()) and err.reason == "pkcs1-refused"
        with pytest.raises(Pkcs1Refused):
            open_bytes(message, receiver, cache=cache, now=NOW)
        # Refused before the cache: the same message opens once the receiver opts in.
        assert open_bytes(message, receiver, cache=cache, now=NOW, allow_pkcs1=True) == b"legacy"
