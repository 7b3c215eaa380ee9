"""Property tests for every parser and serialiser beyond the key BLOBs (tests/test_blobs.py has those):
sealed-message headers and prefixes, whole sealed messages, public-key files and three-phase frames.

Round trips for generated valid values; mutated or random bytes give only
tokencsp's typed errors, never plaintext that did not authenticate.  Host-only
keys from tests/fuzz/fixtures.json stand in for token keys: nothing here
needs PKCS#11.  The invariants themselves live in tests/fuzz/fuzzsupport.py,
shared with the atheris harnesses (``make fuzz``); the last section replays
the harnesses' seed corpora and every saved crasher.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))

import fuzzsupport as fs  # noqa: E402
from tokencsp import envelope as E  # noqa: E402
from tokencsp.blobs import PublicKeyBlob, SimpleBlob  # noqa: E402
from tokencsp.envelope import Header, Header2, read_header, seal_bytes  # noqa: E402
from tokencsp.errors import (  # noqa: E402
    EnvelopeFormatError,
    FrameTooLarge,
    MessageRejected,
    Pkcs1Refused,
    ProtocolError,
    TokenCSPError,
)
from tokencsp.pubkeys import load_public_key  # noqa: E402
from tokencsp.threephase import (  # noqa: E402
    NEED_DATA,
    Close,
    ConnectionClosed,
    Data,
    HandshakeComplete,
    MsgType,
    State,
    check_frame_length,
    frame,
)


def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- mutations --------------------------------------------------------------------------------


@st.composite
def mutations(draw, min_ops: int = 1, max_ops: int = 4):
    """A list of edits (flip, insert, delete, truncate, overwrite, splice) with positions taken mod length."""
    position = st.integers(min_value=0, max_value=1 << 16)
    op = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(min_value=1, max_value=255)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(min_value=1, max_value=100)),
        st.tuples(st.just("truncate"), position, st.just(0)),
        st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("splice"), position, position),  # copy 80 bytes from elsewhere in the input
    )
    return draw(st.lists(op, min_size=min_ops, max_size=max_ops))


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for kind, pos, arg in ops:
        at = pos % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= arg
        elif kind == "insert":
            out[at:at] = arg
        elif kind == "delete":
            del out[at : at + arg]
        elif kind == "truncate":
            del out[at:]
        elif kind == "overwrite":
            out[at : at + len(arg)] = arg
        elif kind == "splice" and out:
            src = arg % len(out)
            out[at : at + 80] = out[src : src + 80]
    return bytes(out)


# -- sealed-message headers ---------------------------------------------------------------------

ids32 = st.binary(min_size=32, max_size=32)
headers = st.builds(
    Header,
    recipient_id=ids32,
    message_id=st.binary(min_size=16, max_size=16),
    timestamp_ms=st.integers(min_value=0, max_value=E.U64_MAX),
    serial=st.integers(min_value=0, max_value=E.U64_MAX),
    sender_id=st.none() | ids32,
    oaep=st.booleans(),
    chunk_size=st.integers(min_value=E.MIN_CHUNK_SIZE, max_value=E.MAX_CHUNK_SIZE),
)


@fast(300)
@given(headers)
def test_header_round_trip(header):
    raw = header.to_bytes()
    assert len(raw) == (112 if header.signed else 80)
    assert Header.parse(raw) == header
    assert Header.parse(raw).to_bytes() == raw


def _parse_header_or_typed_error(data: bytes) -> Header | None:
    try:
        header = Header.parse(data)
    except EnvelopeFormatError:
        return None
    assert header.to_bytes() == data, "Header.parse accepted bytes that do not round-trip"
    return header


@fast(500)
@given(headers, mutations())
@example(Header(bytes(32), bytes(16), 0), [("truncate", 79, 0)])
@example(Header(bytes(32), bytes(16), 0, sender_id=bytes(32)), [("truncate", 100, 0)])
def test_mutated_header_gives_only_envelope_format_errors(header, ops):
    _parse_header_or_typed_error(mutate(header.to_bytes(), ops))


@fast(300)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda tail: E.MAGIC + tail, st.binary(max_size=150)),
                 st.builds(lambda tail: E.MAGIC + b"\x01\x00\x01" + tail, st.binary(max_size=150))))
def test_random_header_bytes_give_only_envelope_format_errors(data):
    _parse_header_or_typed_error(data)


headers2 = st.builds(
    Header2,
    message_id=st.binary(min_size=16, max_size=16),
    timestamp_ms=st.integers(min_value=0, max_value=E.U64_MAX),
    recipient_count=st.integers(min_value=1, max_value=E.MAX_RECIPIENTS),
    serial=st.integers(min_value=0, max_value=E.U64_MAX),
    sender_id=st.none() | ids32,
    oaep=st.booleans(),
    chunk_size=st.integers(min_value=E.MIN_CHUNK_SIZE, max_value=E.MAX_CHUNK_SIZE),
)


@fast(300)
@given(headers2)
def test_header2_round_trip(header):
    raw = header.to_bytes()
    assert len(raw) == (81 if header.signed else 49)
    assert Header2.parse(raw) == header and Header2.parse(raw).to_bytes() == raw


@fast(500)
@given(headers2, mutations())
@example(Header2(bytes(16), 0, 2), [("truncate", 48, 0)])
@example(Header2(bytes(16), 0, 2), [("flip", 48, 0x10)])
def test_mutated_header2_gives_only_envelope_format_errors(header, ops):
    data = mutate(header.to_bytes(), ops)
    try:
        parsed = Header2.parse(data)
    except EnvelopeFormatError:
        return
    assert parsed.to_bytes() == data, "Header2.parse accepted bytes that do not round-trip"


def _reserialised_prefix(pre: E.Preamble | E.Preamble2) -> bytes:
    if isinstance(pre, E.Preamble2):
        raw = pre.header.to_bytes() + b"".join(e.recipient_id + len(e.key_blob).to_bytes(2, "big") + e.key_blob
                                               for e in pre.entries) + pre.commitment
        assert [e.recipient_id for e in pre.entries] == sorted({e.recipient_id for e in pre.entries})  # R1
    else:
        raw = pre.header.to_bytes() + len(pre.key_blob).to_bytes(2, "big") + pre.key_blob
    return raw + (len(pre.signature).to_bytes(2, "big") + pre.signature if pre.signature is not None else b"")


KNOWN = st.integers(min_value=0, max_value=len(fs.envelope_world().known) - 1)  # format 1 and 2 fixtures


@fast(400)
@given(KNOWN, mutations(min_ops=0))
def test_read_header_on_mutated_prefixes(index, ops):
    """read_header: a Preamble that re-serialises to exactly the bytes it consumed, or MessageRejected."""
    known = fs.envelope_world().known[index]
    data = mutate(known.sealed, ops)
    stream = io.BytesIO(data)
    try:
        pre = read_header(stream)
    except MessageRejected as exc:
        assert isinstance(exc, EnvelopeFormatError)
        return
    assert stream.tell() == len(pre.raw), "read_header read past the prefix"
    assert pre.raw == data[: len(pre.raw)] == _reserialised_prefix(pre)
    if data == known.sealed:
        assert len(pre.raw) == known.prefix_len


# -- whole sealed messages ------------------------------------------------------------------------


def _open(data: bytes):
    """fs.check_open with the receiver -- and for format 2 also with the second recipient, who must agree."""
    world = fs.envelope_world()
    trust = fs.envelope_trust_for(data, world.trust)
    error = fs.check_open(data, world.receiver, world.known, trust=trust)
    if data[8:9] == b"\x02":
        other = fs.check_open(data, world.receiver2, world.known, trust=trust)
        assert (error is None) == (other is None), "two recipients of one message disagree"
    return error


def test_fixture_messages_open_to_their_plaintext():
    for known in fs.envelope_world().known:
        assert _open(known.sealed) is None


@fast(400)
@given(KNOWN, mutations(min_ops=0))
def test_mutated_sealed_message_never_leaks_unauthenticated_plaintext(index, ops):
    """Opens to the exact plaintext only if unmodified; otherwise a MessageRejected, and the sink holds
    at most the plaintext of whole chunks that are unmodified in the input (fs.check_open)."""
    known = fs.envelope_world().known[index]
    data = mutate(known.sealed, ops)
    error = _open(data)
    assert (error is None) == (data == known.sealed)


@fast(300)
@given(KNOWN, st.data())
def test_mutations_in_the_chunks_keep_the_authenticated_prefix_only(index, data):
    known = fs.envelope_world().known[index]
    at = data.draw(st.integers(min_value=known.prefix_len, max_value=len(known.sealed)), label="at")
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]), label="how")
    arg = {"flip": 1 << data.draw(st.integers(0, 7)), "truncate": 0, "insert": b"\x00", "delete": 1}[how]
    mutated = mutate(known.sealed, [(how, at, arg)])
    error = _open(mutated)
    assert (error is None) == (mutated == known.sealed)


def test_the_sink_check_is_not_vacuous():
    """A flip in the last chunk of the three-chunk fixture: the two intact chunks reach the sink (allowed),
    and a forged sink content would be caught."""
    world = fs.envelope_world()
    known = world.known[0]
    assert len(known.plaintext) == 150 and known.chunk_size == 64
    bad = bytearray(known.sealed)
    bad[-1] ^= 1
    sink = fs.RecordingSink()
    with pytest.raises(MessageRejected):
        E.open_message(io.BytesIO(bytes(bad)), sink, world.receiver, cache=fs.MemoryReplayCache(), now=fs.NOW)
    assert sink.writes == [known.plaintext[:64], known.plaintext[64:128]]
    assert fs._authentic_prefix(bytes(bad), sink.getvalue(), known)
    assert not fs._authentic_prefix(bytes(bad), known.plaintext, known)  # the whole plaintext would not be
    bad[known.prefix_len] ^= 1  # chunk 0 altered too: its plaintext may not appear
    assert not fs._authentic_prefix(bytes(bad), known.plaintext[:64], known)


@fast(40)
@given(plaintext=st.binary(max_size=400), chunk_size=st.integers(min_value=64, max_value=200),
       oaep=st.booleans(), ops=mutations(min_ops=0, max_ops=3))
def test_seal_open_round_trip_and_mutations(plaintext, chunk_size, oaep, ops):
    world = fs.envelope_world()
    sealed = seal_bytes(plaintext, world.receiver.public_key(), now=fs.NOW, oaep=oaep, chunk_size=chunk_size)
    known = fs.Known.of(sealed, plaintext)
    assert fs.check_open(sealed, world.receiver, [known]) is None
    data = mutate(sealed, ops)
    error = fs.check_open(data, world.receiver, [known])
    assert (error is None) == (data == sealed)


@fast(30)
@given(plaintext=st.binary(max_size=300), chunk_size=st.integers(min_value=64, max_value=160),
       signed=st.booleans(), ops=mutations(min_ops=0, max_ops=3))
def test_seal_open_round_trip_and_mutations_v2(plaintext, chunk_size, signed, ops):
    """Format 2 to two recipients: each opens it; a mutated copy opens for neither (and leaks nothing)."""
    world = fs.envelope_world()
    signer = fs.HostSigner(fs.load_key(fs.fixtures()["signer_pem"])) if signed else None
    sealed = seal_bytes(plaintext, [r.public_key() for r in world.receivers], now=fs.NOW, chunk_size=chunk_size,
                        signer=signer, serial=9 if signed else None)
    known = [fs.Known.of(sealed, plaintext)]
    trust = world.trust if signed else None
    data = mutate(sealed, ops)
    for receiver in world.receivers:
        assert fs.check_open(sealed, receiver, known, trust=trust) is None
        error = fs.check_open(data, receiver, known, trust=fs.envelope_trust_for(data, world.trust))
        assert (error is None) == (data == sealed)


@fast(30)
@given(plaintext=st.binary(max_size=300), chunk_size=st.integers(min_value=64, max_value=160), data=st.data())
def test_a_signed_v2_trailer_covers_every_byte_before_it(plaintext, chunk_size, data):
    """FORMAT.md 9.5: the trailer is the last signature_length bytes and signs SHA-256 of all before it;
    a change anywhere after the prefix, or a cut/extension at the end, opens for neither recipient with a
    trust set and puts nothing in its sink (fs.check_open), whatever the chunk it lands in."""
    world = fs.envelope_world()
    signer_key = fs.load_key(fs.fixtures()["signer_pem"])
    sealed = seal_bytes(plaintext, [r.public_key() for r in world.receivers], now=fs.NOW, chunk_size=chunk_size,
                        signer=fs.HostSigner(signer_key), serial=9)
    pre = read_header(io.BytesIO(sealed))
    trailer = sealed[-pre.trailer_length:]
    assert pre.trailer_length == len(pre.signature) == 256
    signer_key.public_key().verify(trailer, b"tokencsp sealed message v2 trailer signature\0"
                                   + hashlib.sha256(sealed[:-256]).digest(), fs.PSS, hashes.SHA256())
    known = [fs.Known.of(sealed, plaintext)]
    at = data.draw(st.integers(min_value=len(pre.raw), max_value=len(sealed)), label="at")
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]), label="how")
    arg = {"flip": 1 << data.draw(st.integers(0, 7)), "truncate": 0, "insert": b"\x00", "delete": 1}[how]
    mutated = mutate(sealed, [(how, at, arg)])
    for receiver in world.receivers:
        error = fs.check_open(mutated, receiver, known, trust=world.trust)
        assert (error is None) == (mutated == sealed)


@fast(40)
@given(plaintext=st.binary(max_size=200), ops=mutations(min_ops=0, max_ops=2))
def test_pkcs1_transport_is_refused_unless_allowed(plaintext, ops):
    """Whatever else is wrong with it, a PKCS#1 v1.5 message the receiver did not opt in to
    releases nothing; unmodified, it is refused exactly as Pkcs1Refused."""
    world = fs.envelope_world()
    sealed = seal_bytes(plaintext, world.receiver.public_key(), now=fs.NOW, oaep=False, chunk_size=64)
    data = mutate(sealed, ops)
    sink = fs.RecordingSink()
    with pytest.raises(MessageRejected) as info:
        E.open_message(io.BytesIO(data), sink, world.receiver, cache=fs.MemoryReplayCache(), now=fs.NOW)
    assert sink.getvalue() == b""
    if data == sealed:
        assert type(info.value) is Pkcs1Refused


# -- public-key files -----------------------------------------------------------------------------

# tests/fuzz/crashers/blobs/ holds the inputs that once let cryptography's UnsupportedAlgorithm
# escape load_public_key (an unknown SPKI algorithm OID, an unsupported EC curve); fixed, replayed below.


def _key_encodings(public) -> list[bytes]:
    return [
        PublicKeyBlob.from_public_key(public).to_bytes(),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
    ]


def test_public_key_encodings_round_trip():
    public = fs.envelope_world().receiver.public_key()
    for encoded in _key_encodings(public):
        assert load_public_key(encoded).public_numbers() == public.public_numbers()


@fast(400)
@given(st.integers(min_value=0, max_value=4), mutations())
@example(3, [("flip", 7, 2)])  # the RSA OID in a DER SubjectPublicKeyInfo becomes an unknown one
def test_mutated_public_key_files_give_only_typed_errors(which, ops):
    fs.check_public_key(mutate(_key_encodings(fs.envelope_world().receiver.public_key())[which], ops))


# -- three-phase frames ---------------------------------------------------------------------------


def _full_stream(scenario: int) -> bytes:
    """Everything the peer sends from the scenario's state to its close record (the real transcript)."""
    w = fs.threephase_world()
    return {0: w.m1 + w.m3 + b"".join(w.init_records), 1: w.m2 + b"".join(w.resp_records),
            2: w.m3 + b"".join(w.init_records), 3: b"".join(w.resp_records), 4: b"".join(w.init_records)}[scenario]


def _expected_events(scenario: int) -> list:
    records = fs.INITIATOR_RECORDS if scenario in (0, 2, 4) else fs.RESPONDER_RECORDS
    handshake = [HandshakeComplete] if scenario < 3 else []
    return handshake + [Data(r) for r in records] + [Close(), ConnectionClosed()]


def test_the_fuzz_keys_take_the_production_implicit_import():
    """The three-phase properties run the branch a token-backed ExchangeKey takes (import_simpleblob_implicit),
    not the explicit-import fallback that only keys without it reach: a blob whose second byte of RSA
    ciphertext is flipped must give a substitute key, not an import error."""
    w = fs.threephase_world()
    assert callable(getattr(w.alice, "import_simpleblob_implicit", None))
    assert callable(getattr(w.bob, "import_simpleblob_implicit", None))
    before = w.bob.implicit_imports
    w.machine(2)  # the responder (bob) after PHASE1: it imported blob A
    assert w.bob.implicit_imports == before + 1
    blob = SimpleBlob.from_bytes(w.blob_a)
    broken = SimpleBlob(blob.alg_id, blob.encrypted_key[:1] + bytes([blob.encrypted_key[1] ^ 1]) + blob.encrypted_key[2:])
    key = w.bob.import_simpleblob_implicit(broken, oaep=True)
    assert key.key == w.bob.import_simpleblob_implicit(broken, oaep=True).key != w.a


scenarios = st.integers(min_value=0, max_value=len(fs.SCENARIOS) - 1)
controls = st.integers(min_value=0, max_value=255)


@fast(150)
@given(scenarios, st.lists(st.integers(min_value=0, max_value=1 << 12), max_size=12))
def test_real_transcript_in_any_fragmentation_gives_the_same_events(scenario, cuts):
    stream = _full_stream(scenario)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    conn = fs.threephase_world().machine(scenario)
    events = []
    for start, end in zip(points, [*points[1:], None]):
        conn.receive_data(stream[start:end] if end is not None else b"")
        while (event := conn.next_event(0.0)) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
    got = [type(e) if isinstance(e, HandshakeComplete) else e for e in events]
    assert got == _expected_events(scenario)
    assert conn.their_closed and conn.state is State.OPEN


@fast(300)
@given(scenarios, controls, mutations(min_ops=0))
def test_mutated_transcript_fails_typed_and_for_good(scenario, control, ops):
    """The real remainder of a session, mutated, ending with end of stream: any change is a TokenCSPError
    that leaves the machine in ERROR for good; unchanged (and in time) it is a clean end."""
    stream = _full_stream(scenario)
    data = mutate(stream, ops)
    control = (control | fs.F_EOF) & ~fs.F_LATE
    error = fs.drive_threephase(bytes([scenario, control]) + data)
    assert (error is None) == (data == stream), f"{error!r} for a {'changed' if data != stream else 'real'} stream"


message_types = st.sampled_from([int(t) for t in MsgType] + [0x00, 0x04, 0x16, 0x18, 0xFF])
frames = st.one_of(
    st.builds(lambda t, body: frame(bytes([t]) + body), message_types, st.binary(max_size=300)),
    st.builds(lambda n, body: n.to_bytes(4, "big") + body, st.integers(min_value=0, max_value=2**32 - 1),
              st.binary(max_size=40)),
)


@fast(400)
@given(scenarios, controls, st.lists(frames, max_size=4), st.binary(max_size=16))
def test_random_frames_in_every_state(scenario, control, some_frames, tail):
    """Arbitrary frames fed to a fresh machine in each state: a TokenCSPError with the machine in ERROR,
    or nothing at all (it still waits) -- never another exception, never a record the peer did not send."""
    error = fs.drive_threephase(bytes([scenario, control]) + b"".join(some_frames) + tail)
    assert error is None or isinstance(error, TokenCSPError)
    if control & fs.F_EOF and some_frames and error is None:
        pytest.fail("random frames ended a session cleanly")


@fast(300)
@given(scenarios, controls, st.binary(max_size=600))
def test_random_bytes_in_every_state(scenario, control, stream):
    error = fs.drive_threephase(bytes([scenario, control]) + stream)
    if control & fs.F_EOF:
        assert error is not None, "random bytes ended a session cleanly"


@fast(200)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1 << 20))
def test_frame_serialisation_and_length_limits(payload, max_frame):
    framed = frame(payload)
    assert int.from_bytes(framed[:4], "big") == len(payload) and framed[4:] == payload
    if not payload:
        with pytest.raises(ProtocolError, match="empty"):
            check_frame_length(len(payload), max_frame)
    elif len(payload) > max_frame:
        with pytest.raises(FrameTooLarge):
            check_frame_length(len(payload), max_frame)
    else:
        check_frame_length(len(payload), max_frame)


@fast(100)
@given(st.integers(min_value=1, max_value=2**32 - 1), st.integers(min_value=64, max_value=4096))
def test_oversized_frame_is_refused_from_its_length_alone(length, max_frame):
    conn = fs.threephase_world().responder()
    conn.max_frame = max_frame
    conn.start(0.0)
    conn.receive_data(length.to_bytes(4, "big"))
    if length > max_frame:
        with pytest.raises(FrameTooLarge):
            conn.next_event(0.0)
        fs.assert_failed_for_good(conn, FrameTooLarge())
    else:
        assert conn.next_event(0.0) is NEED_DATA


# -- the atheris harnesses' seeds and crashers ------------------------------------------------------


def _harness(target: str):
    name = f"_fuzz_{target}_replay"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FUZZ_DIR / f"fuzz_{target}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _files(kind: str) -> list:
    return [pytest.param(target, path, id=f"{target}/{path.name}")
            for target in fs.TARGETS
            for path in sorted((FUZZ_DIR / kind / target).glob("*"))
            if path.is_file() and not path.name.startswith(("README", "."))]


# Crashers whose fix is not in yet: file name -> (reason, the exception it raises today); the
# replay then runs as a strict xfail, which turns into a failure as soon as the fix makes it pass.
KNOWN_CRASHERS: dict[str, tuple[str, type[BaseException]]] = {}


@pytest.mark.parametrize("target, path", _files("corpus"))
def test_seed_corpus_passes_its_harness(target, path):
    _harness(target).TestOneInput(path.read_bytes())


@pytest.mark.parametrize("target, path", _files("crashers"))
def test_crasher_regression(target, path, request):
    if path.name in KNOWN_CRASHERS:
        reason, raises = KNOWN_CRASHERS[path.name]
        request.applymarker(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
    _harness(target).TestOneInput(path.read_bytes())


def test_corpus_is_what_make_corpus_writes():
    """The checked-in seeds match fixtures.json (rerun tests/fuzz/make_corpus.py after changing either)."""
    make_corpus = importlib.util.module_from_spec(
        spec := importlib.util.spec_from_file_location("_make_corpus", FUZZ_DIR / "make_corpus.py"))
    spec.loader.exec_module(make_corpus)
    fx = fs.fixtures()
    expected = {"blobs": make_corpus.blob_corpus(fx), "envelope": make_corpus.envelope_corpus(fx),
                "threephase": make_corpus.threephase_corpus()}
    for target, files in expected.items():
        on_disk = {p.name.rsplit("-", 1)[0]: p.read_bytes() for p in (fs.CORPUS / target).iterdir()}
        assert on_disk == files, target


def test_genuine_seeds_reach_the_deep_end():
    """The seeds are not just rejected at the first byte: genuine messages open, real sessions finish."""
    world = fs.envelope_world()
    assert [_open(k.sealed) for k in world.known] == [None] * len(world.known)
    for path in (fs.CORPUS / "threephase").iterdir():
        if "whole-session" in path.name or path.name.startswith(("io-records", "ro-records")):
            assert fs.drive_threephase(path.read_bytes()) is None, path.name
