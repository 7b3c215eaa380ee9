"""Sealed messages to several recipients, format version 2 (docs/FORMAT.md sections 9 and 10).

The recipients' exchange keys live on two SoftHSM tokens (alice and mallory on token a, bob on
token b: the ``keys`` fixture); the salamander is built for real with GCM's GHASH algebra.  Tests
that exhaust byte positions use host receivers (``HostReceiver``) to stay fast.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from test_envelope import Counting, FixedSigner, HostReceiver, RecordingReader, attempt, payload
from tokencsp import envelope as E
from tokencsp.blobs import AlgId, SimpleBlob
from tokencsp.envelope import Header2, open_bytes, open_message, read_header, seal_bytes
from tokencsp.envelope._format import nonce
from tokencsp.envelope._format2 import Entry, derive_keys, prefix2, replay_key2, signed_data2
from tokencsp.envelope.opening import PSS
from tokencsp.errors import (
    AuthenticationFailed,
    BadSignature,
    EnvelopeFormatError,
    InvalidKeyError,
    MessageRejected,
    NotForThisKey,
    Pkcs1Refused,
    ReplayedMessage,
    SignatureRequired,
    TruncatedMessage,
)
from tokencsp.pubkeys import fingerprint
from tokencsp.replay import MemoryReplayCache, SQLiteReplayCache
from tokencsp.session import SessionKey

pytest_plugins = ("pg_server",)  # pg_server, pg_dsn (tests/pg_server.py)

KEY_PREFIX = "v2"
REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
CS = 64
TAG = 16


@pytest.fixture(scope="module")
def signer(tokens):
    a, _ = tokens
    pair = a.generate_signature_key("v2-signer")
    yield pair
    a.delete_key("v2-signer")


@pytest.fixture(scope="module")
def hosts():
    return HostReceiver(), HostReceiver(), HostReceiver()


def v2_layout(message: bytes) -> dict[str, range]:
    """Byte ranges of the fields of a version 2 message (section 9.2)."""
    pre = read_header(io.BytesIO(message))
    assert isinstance(pre, E.Preamble2)
    header = len(pre.header.to_bytes())
    out, at = {"header": range(0, header)}, header
    for index, entry in enumerate(pre.entries):
        out[f"id{index}"] = range(at, at + 32)
        out[f"len{index}"] = range(at + 32, at + 34)
        out[f"blobhead{index}"] = range(at + 34, at + 46)  # the SIMPLEBLOB's fixed 12 bytes
        out[f"blob{index}"] = range(at + 46, at + 34 + len(entry.key_blob))
        at += 34 + len(entry.key_blob)
    out["commitment"] = range(at, at + 32)
    at += 32
    if pre.signature is not None:
        out["signature"] = range(at, at + 2 + len(pre.signature))
        at += 2 + len(pre.signature)
    out["chunks"] = range(at, len(message) - pre.trailer_length)
    if pre.signature is not None:
        out["trailer"] = range(len(message) - pre.trailer_length, len(message))
    return out


# -- on two tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_a_message_to_two_keys_on_two_tokens_opens_on_each(keys, signer, signed):
    alice, bob = keys["alice"], keys["bob"]
    data = payload(5 * CS + 7)
    extra = {"signer": signer, "serial": 7} if signed else {}
    sealed = seal_bytes(data, [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS, **extra)
    pre = read_header(io.BytesIO(sealed))
    assert pre.header.version == 2 and pre.header.recipient_count == 2
    assert set(pre.recipients) == {fingerprint(alice.public_key()), fingerprint(bob.public_key())}
    trust = E.trust_set([signer.public_key()]) if signed else None
    for who in (alice, bob):
        counted = Counting(who)
        sink = io.BytesIO()
        opened = open_message(io.BytesIO(sealed), sink, counted, cache=MemoryReplayCache(), now=NOW, trust=trust)
        assert sink.getvalue() == data
        assert counted.imports == 1, "one token operation per open, whatever the number of recipients (R3)"
        assert opened.recipient_id == fingerprint(who.public_key())
        assert opened.recipients == pre.recipients
        assert opened.sender_verified == signed


def test_a_third_key_is_not_addressed_and_costs_no_token_operation(keys):
    alice, bob, mallory = keys["alice"], keys["bob"], keys["mallory"]
    sealed = seal_bytes(b"for alice and bob", [alice.public_key(), bob.public_key()], now=NOW)
    counted = Counting(mallory)
    error, out = attempt(sealed, counted)
    assert isinstance(error, NotForThisKey) and str(error) == "message is not addressed to this key"
    assert out == b"" and counted.imports == 0


def test_one_recipient_still_gets_version_1_and_version_2_can_be_forced(keys):
    alice = keys["alice"]
    for recipient in (alice.public_key(), [alice.public_key()]):
        sealed = seal_bytes(b"one", recipient, now=NOW)
        assert sealed[8] == 1 and read_header(io.BytesIO(sealed)).header.version == 1
    forced = seal_bytes(b"one, v2", alice.public_key(), now=NOW, version=2)
    assert forced[8] == 2 and read_header(io.BytesIO(forced)).header.recipient_count == 1
    assert open_bytes(forced, alice, cache=MemoryReplayCache(), now=NOW) == b"one, v2"
    with pytest.raises(ValueError, match="exactly one recipient"):
        seal_bytes(b"", [alice.public_key(), keys["bob"].public_key()], version=1)


def test_tampering_on_the_token_is_refused_by_both_recipients_alike(keys):
    alice, bob = keys["alice"], keys["bob"]
    sealed = seal_bytes(payload(200), [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS)
    where = v2_layout(sealed)
    for region in ("blob0", "blob1", "commitment", "chunks"):
        for pos in (where[region][0], where[region][-1]):
            bad = bytearray(sealed)
            bad[pos] ^= 0x01
            for who in (alice, bob):
                error, out = attempt(bytes(bad), who)
                assert type(error) is AuthenticationFailed, (region, pos, error)
                assert str(error) == "message could not be authenticated"
                assert out == b"" or pos >= where["chunks"][0] + CS + TAG  # streaming: earlier chunks went out


def test_pkcs1_v2_is_refused_before_any_token_work(keys):
    alice, bob = keys["alice"], keys["bob"]
    sealed = seal_bytes(b"v1.5", [alice.public_key(), bob.public_key()], now=NOW, oaep=False)
    counted = Counting(bob)
    error, _ = attempt(sealed, counted)
    assert isinstance(error, Pkcs1Refused) and counted.imports == 0
    assert open_bytes(sealed, bob, cache=MemoryReplayCache(), now=NOW, allow_pkcs1=True) == b"v1.5"


# -- every byte, every recipient (host keys) -------------------------------------------------------


def _expected(region: str) -> tuple[type[MessageRejected], ...]:
    if region == "header":  # a field's own check (time window, format, PKCS#1 flag) or AD
        return (MessageRejected,)
    if region.startswith("id"):  # a changed id: not ours any more, or out of order, or someone else's
        return (NotForThisKey, EnvelopeFormatError, AuthenticationFailed)
    if region.startswith(("len", "blobhead")):
        return (EnvelopeFormatError, AuthenticationFailed, TruncatedMessage)
    return (AuthenticationFailed,)


def test_every_single_byte_change_is_refused_by_every_recipient(hosts):
    a, b, _ = hosts
    sealed = seal_bytes(payload(100), [a.public_key(), b.public_key()], now=NOW, chunk_size=CS)
    layout = v2_layout(sealed)
    for region, positions in layout.items():
        for pos in positions:
            bad = bytearray(sealed)
            bad[pos] ^= 0x80 if pos % 2 else 0x01
            for who in (a, b):
                error, out = attempt(bytes(bad), who, allow_pkcs1=True)
                assert isinstance(error, _expected(region)), (region, pos, error)
                if _expected(region) == (AuthenticationFailed,):
                    assert str(error) == "message could not be authenticated"
                assert out == b"" or region == "chunks"


def test_dropping_adding_or_swapping_an_entry_is_refused(hosts):
    a, b, c = hosts
    sealed = seal_bytes(b"three of us", [a.public_key(), b.public_key(), c.public_key()], now=NOW)
    pre = read_header(io.BytesIO(sealed))
    body = sealed[len(pre.raw):]
    kept = pre.entries[:1] + pre.entries[2:]
    header = Header2(pre.header.message_id, pre.header.timestamp_ms, 2)
    dropped = prefix2(header, kept, pre.commitment, None) + body
    for who in (a, b, c):
        error, _ = attempt(dropped, who)
        assert isinstance(error, (AuthenticationFailed, NotForThisKey)), error
    survivor = HostReceiver()
    key_id = fingerprint(survivor.public_key())
    stranger = Entry(key_id, pre.entries[0].key_blob)
    added = sorted((*pre.entries, stranger))
    more = prefix2(Header2(pre.header.message_id, pre.header.timestamp_ms, 4), tuple(added), pre.commitment,
                   None) + body
    for who in (a, b, c):
        error, _ = attempt(more, who)
        assert type(error) is AuthenticationFailed  # R4: AD covers every entry


def test_entries_out_of_order_or_twice_are_refused_while_parsing(hosts):
    a, b, _ = hosts
    sealed = seal_bytes(b"order", [a.public_key(), b.public_key()], now=NOW)
    pre = read_header(io.BytesIO(sealed))
    body = sealed[len(pre.raw):]
    swapped = prefix2(pre.header, pre.entries[::-1], pre.commitment, None) + body
    twice = prefix2(pre.header, (pre.entries[0], pre.entries[0]), pre.commitment, None) + body
    for bad in (swapped, twice):
        reader = RecordingReader(bad)
        with pytest.raises(EnvelopeFormatError, match=r"recipient_id\[1\]: not above"):
            read_header(reader)
        assert reader.tell() == len(pre.header.to_bytes()) + 34 + len(pre.entries[0].key_blob) + 32


@pytest.mark.parametrize("count", [0, 17, 255])
def test_recipient_count_is_checked_before_any_entry_is_read(hosts, count):
    a, b, _ = hosts
    sealed = bytearray(seal_bytes(b"count", [a.public_key(), b.public_key()], now=NOW))
    sealed[48] = count
    reader = RecordingReader(bytes(sealed))
    with pytest.raises(EnvelopeFormatError, match="recipient_count"):
        read_header(reader)
    assert reader.tell() == 49


def test_seal_refuses_duplicates_too_many_and_none(hosts):
    a, b, _ = hosts
    with pytest.raises(InvalidKeyError, match="given twice"):
        seal_bytes(b"", [a.public_key(), b.public_key(), a.public_key()])
    many = [rsa.generate_private_key(65537, 2048).public_key() for _ in range(E.MAX_RECIPIENTS + 1)]
    with pytest.raises(InvalidKeyError, match=r"1\.\.16 recipients, not 17"):
        seal_bytes(b"", many)
    assert seal_bytes(b"sixteen", many[:16], now=NOW)[48] == 16
    with pytest.raises(InvalidKeyError, match="not 0"):
        seal_bytes(b"", [])


def test_entries_are_sorted_whatever_order_the_sender_names_them(hosts):
    a, b, c = hosts
    keys = [a.public_key(), b.public_key(), c.public_key()]
    one = read_header(io.BytesIO(seal_bytes(b"", keys, now=NOW))).recipients
    other = read_header(io.BytesIO(seal_bytes(b"", keys[::-1], now=NOW))).recipients
    assert one == other == tuple(sorted(fingerprint(k) for k in keys))


# -- the invisible salamander (section 9, K1) -----------------------------------------------------

_R = 0xE1 << 120


def _gf_mul(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (NIST SP 800-38D, algorithm 1)."""
    z, v = 0, x
    for i in range(127, -1, -1):
        if (y >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, n: int) -> int:
    result = 1 << 127  # the field's one (bit 0 leftmost)
    while n:
        if n & 1:
            result = _gf_mul(result, x)
        x = _gf_mul(x, x)
        n >>= 1
    return result


def _ecb(key: bytes, block: bytes) -> int:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(enc.update(block) + enc.finalize(), "big")


def _blocks(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 16].ljust(16, b"\0"), "big") for i in range(0, len(data), 16)]


def _ghash_terms(h: int, ad: bytes, ct_blocks: list[int], free: int) -> tuple[int, int]:
    """GHASH_H over (AD, C, lengths) with block ``free`` of C taken as 0, and that block's coefficient."""
    lengths = (len(ad) * 8) << 64 | (len(ct_blocks) * 16 * 8)
    xs = _blocks(ad) + ct_blocks + [lengths]
    n, position = len(xs), len(_blocks(ad)) + free  # 0-based position of the free block
    total = 0
    for i, x in enumerate(xs):
        if i != position:
            total ^= _gf_mul(x, _gf_pow(h, n - i))
    return total, _gf_pow(h, n - position)


def gcm_salamander(key_a: bytes, key_b: bytes, nonce_: bytes, ad: bytes, text_a: bytes) -> bytes:
    """One ciphertext ‖ tag that AES-GCM authenticates under both keys: decrypting under ``key_a``
    gives ``text_a`` (32 bytes) then one block the construction chooses; under ``key_b``, other bytes."""
    assert len(text_a) == 32 and len(nonce_) == 12
    j0 = nonce_ + b"\0\0\0\1"

    def keystream(key: bytes, i: int) -> int:
        return _ecb(key, nonce_ + (2 + i).to_bytes(4, "big"))

    ct = [b ^ keystream(key_a, i) for i, b in enumerate(_blocks(text_a))] + [0]
    h_a, h_b = _ecb(key_a, bytes(16)), _ecb(key_b, bytes(16))
    g_a, c_a = _ghash_terms(h_a, ad, ct, 2)
    g_b, c_b = _ghash_terms(h_b, ad, ct, 2)
    # tag_a = E_a(J0) + g_a + C2*c_a must equal tag_b = E_b(J0) + g_b + C2*c_b: solve for C2.
    rhs = _ecb(key_a, j0) ^ g_a ^ _ecb(key_b, j0) ^ g_b
    ct[2] = _gf_mul(rhs, _gf_pow(c_a ^ c_b, 2**128 - 2))
    g_a, c_a = _ghash_terms(h_a, ad, ct, 2)
    tag = _ecb(key_a, j0) ^ g_a ^ _gf_mul(ct[2], c_a)
    return b"".join(x.to_bytes(16, "big") for x in ct) + tag.to_bytes(16, "big")


TEXT_FOR_ALICE = b"Pay Mallory 100 EUR. -- the boss"


def _salamander(alice_key: rsa.RSAPublicKey, bob_key: rsa.RSAPublicKey, committed: str):
    """Mallory's message: alice's entry wraps one file key, bob's another, one ciphertext valid under
    both payload keys; the commitment is the one of ``committed``'s file key (it can hold only one)."""
    message_id, file_a, file_b = bytes(range(16)), b"\x11" * 32, b"\x22" * 32
    (payload_a, commit_a), (payload_b, commit_b) = derive_keys(file_a, message_id), derive_keys(file_b, message_id)
    entries = tuple(sorted([
        Entry(fingerprint(alice_key), SessionKey.from_bytes(AlgId.CALG_AES_256, file_a).export_simpleblob(alice_key, oaep=True)),
        Entry(fingerprint(bob_key), SessionKey.from_bytes(AlgId.CALG_AES_256, file_b).export_simpleblob(bob_key, oaep=True)),
    ]))
    header = Header2(message_id, round(NOW * 1000), 2, chunk_size=CS)
    raw = prefix2(header, entries, commit_a if committed == "alice" else commit_b, None)
    ad = hashlib.sha256(raw).digest()
    chunk = gcm_salamander(payload_a, payload_b, nonce(0, True), ad, TEXT_FOR_ALICE)
    text_a = AESGCM(payload_a).decrypt(nonce(0, True), chunk, ad)
    text_b = AESGCM(payload_b).decrypt(nonce(0, True), chunk, ad)  # GCM alone accepts it under both keys
    assert text_a.startswith(TEXT_FOR_ALICE) and text_a != text_b
    return raw + chunk, text_a, text_b


@pytest.mark.parametrize("committed", ["alice", "bob"])
def test_the_salamander_is_refused_by_the_commitment(keys, committed):
    alice, bob = keys["alice"], keys["bob"]
    message, text_a, text_b = _salamander(alice.public_key(), bob.public_key(), committed)
    # Whichever file key the commitment names, its holder reads the message and the other recipient
    # refuses it, exactly like a corrupted message, before decrypting anything: never two plaintexts.
    opener, refuser, text = (alice, bob, text_a) if committed == "alice" else (bob, alice, text_b)
    assert open_bytes(message, opener, cache=MemoryReplayCache(), now=NOW) == text
    counted = Counting(refuser)
    reader = RecordingReader(message)
    error, out = attempt(message, counted, source=reader)
    assert type(error) is AuthenticationFailed and out == b"" and counted.imports == 1
    assert reader.tell() == len(read_header(io.BytesIO(message)).raw), "refused before reading chunk 0"


# -- replay: each recipient accepts its copy once ---------------------------------------------------


def test_the_v2_replay_key_is_the_documented_hash_with_the_recipient_id(hosts):
    a, b, _ = hosts
    sealed = seal_bytes(b"replay", [a.public_key(), b.public_key()], now=NOW)
    ad = hashlib.sha256(read_header(io.BytesIO(sealed)).raw).digest()

    class Recording(MemoryReplayCache):
        def accept(self, message_key, *args, **kw):
            self.keys.append(message_key)
            return super().accept(message_key, *args, **kw)

    cache = Recording()
    cache.keys = []
    for who in (a, b):
        open_bytes(sealed, who, cache=cache, now=NOW)
    expected = [hashlib.sha256(b"tokencsp sealed message v2 replay key\0" + fingerprint(k.public_key()) + ad).digest()
                for k in (a, b)]
    assert cache.keys == expected == [replay_key2(fingerprint(k.public_key()), ad) for k in (a, b)]


def test_two_recipients_sharing_one_sqlite_cache_each_accept_once(hosts, tmp_path):
    a, b, _ = hosts
    sealed = seal_bytes(b"shared", [a.public_key(), b.public_key()], now=NOW)
    with SQLiteReplayCache(tmp_path / "replay.db") as cache:
        for who in (a, b):
            assert open_bytes(sealed, who, cache=cache, now=NOW) == b"shared"
        for who in (a, b):
            with pytest.raises(ReplayedMessage):
                open_bytes(sealed, who, cache=cache, now=NOW)


@pytest.mark.host_side(reason="the PostgreSQL cache shared by two recipients; the tokens only hold the keys")
def test_two_recipients_sharing_one_postgres_cache_each_accept_once(keys, signer, pg_dsn):
    from tokencsp.replay import PostgresReplayCache

    alice, bob = keys["alice"], keys["bob"]  # the server judges time with its own clock: seal now
    sealed = seal_bytes(b"fleet", [alice.public_key(), bob.public_key()], signer=signer, serial=99)
    trust = E.trust_set([signer.public_key()])
    with PostgresReplayCache(pg_dsn) as first, PostgresReplayCache(pg_dsn) as second:
        assert open_bytes(sealed, alice, cache=first, trust=trust) == b"fleet"
        assert open_bytes(sealed, bob, cache=second, trust=trust) == b"fleet"
        for who, cache in ((alice, second), (bob, first)):
            with pytest.raises(ReplayedMessage):
                open_bytes(sealed, who, cache=cache, trust=trust)


# -- signatures: the prefix signature and the trailer (section 9.5) -------------------------------

PREFIX_CONTEXT = b"tokencsp sealed message v2 prefix signature\0"
TRAILER_CONTEXT = b"tokencsp sealed message v2 trailer signature\0"


def test_a_signed_v2_message_verifies_for_each_and_binds_every_entry(keys, signer):
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    sealed = seal_bytes(b"signed", [alice.public_key(), bob.public_key()], now=NOW, signer=signer, serial=5)
    pre = read_header(io.BytesIO(sealed))
    signer.public_key().verify(pre.signature, PREFIX_CONTEXT + pre.header.to_bytes()
                               + b"".join(e.to_bytes() for e in pre.entries) + pre.commitment, PSS, hashes.SHA256())
    trailer = sealed[-len(pre.signature):]  # the trailer, as long as the prefix signature, over the rest
    signer.public_key().verify(trailer, TRAILER_CONTEXT + hashlib.sha256(sealed[:-len(trailer)]).digest(), PSS,
                               hashes.SHA256())
    # Mallory replaces bob's entry with one wrapping a file key of her own: the signature no longer fits.
    bob_index = pre.recipients.index(fingerprint(bob.public_key()))
    forged_blob = SessionKey.from_bytes(AlgId.CALG_AES_256, b"\x33" * 32).export_simpleblob(bob.public_key(), oaep=True)
    entries = list(pre.entries)
    entries[bob_index] = Entry(entries[bob_index].recipient_id, forged_blob)
    forged = prefix2(pre.header, tuple(entries), pre.commitment, pre.signature) + sealed[len(pre.raw):]
    for who in (alice, bob):
        error, _ = attempt(forged, who, trust=trust)
        assert isinstance(error, BadSignature)


def _bobs_keys(bob, pre) -> tuple[bytes, bytes]:
    """What bob, a recipient, learns with his own token from his own entry: the file and payload keys."""
    mine = pre.for_recipient(fingerprint(bob.public_key()))
    file_key = bob.import_simpleblob(mine.key_blob, oaep=True).key
    return file_key, mine.payload_key(file_key)


def _chunks(sealed: bytes, pre) -> list[bytes]:
    body = sealed[len(pre.raw):len(sealed) - pre.trailer_length]
    size = pre.header.chunk_size + TAG
    return [body[i:i + size] for i in range(0, len(body), size)]


def test_a_corecipient_cannot_forge_the_payload_under_the_senders_signature(keys, signer):
    """T1 (FORMAT.md 9.5): bob knows the file key and re-encrypts a payload of his own under the sender's
    signed prefix, keeping the genuine trailer or none at all; alice refuses both, releases nothing."""
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    sealed = seal_bytes(b"genuine", [alice.public_key(), bob.public_key()], now=NOW, signer=signer, serial=6)
    pre = read_header(io.BytesIO(sealed))
    _, payload_key = _bobs_keys(bob, pre)  # bob's token, bob's own entry
    ad = hashlib.sha256(pre.raw).digest()
    chunk = AESGCM(payload_key).encrypt(nonce(0, True), b"forged by bob", ad)
    genuine_trailer = sealed[-pre.trailer_length:]
    for forged in (pre.raw + chunk + genuine_trailer, pre.raw + chunk):
        sink = io.BytesIO()
        with pytest.raises((BadSignature, TruncatedMessage)):  # a wrong trailer, or none: chunk bytes taken for it
            open_message(io.BytesIO(forged), sink, alice, cache=MemoryReplayCache(), now=NOW, trust=trust)
        assert sink.getvalue() == b""
    # The first construction is exactly a valid chunk that the trailer does not cover: BadSignature.
    error, _ = attempt(pre.raw + chunk + genuine_trailer, alice, trust=trust)
    assert type(error) is BadSignature and str(error) == "sender signature does not verify"


def test_a_forged_payload_releases_nothing_and_does_not_burn_the_genuine_message(keys, signer):
    """T4: the trailer is checked before anything reaches a streaming sink and before the record."""
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    text = payload(4 * CS + 5)  # five chunks: streaming would have released four before the last one
    sealed = seal_bytes(text, [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS, signer=signer,
                        serial=7)
    pre = read_header(io.BytesIO(sealed))
    _, payload_key = _bobs_keys(bob, pre)
    ad = hashlib.sha256(pre.raw).digest()
    chunks = _chunks(sealed, pre)
    # bob changes the last chunk only: every chunk authenticates under the payload key
    chunks[-1] = AESGCM(payload_key).encrypt(nonce(len(chunks) - 1, True), b"bob's", ad)
    forged = pre.raw + b"".join(chunks) + sealed[-pre.trailer_length:]
    cache = MemoryReplayCache()
    sink = io.BytesIO()  # a pipe: not one chunk released, though four authenticated before the last
    with pytest.raises(BadSignature):
        open_message(io.BytesIO(forged), sink, alice, cache=cache, now=NOW, trust=trust)
    assert sink.getvalue() == b""
    with pytest.raises(BadSignature):  # a private sink (released at the end): the caller gets nothing
        open_bytes(forged, alice, cache=cache, now=NOW, trust=trust)
    sink = io.BytesIO()  # the genuine copy still opens, streaming, from the same cache
    opened = open_message(io.BytesIO(sealed), sink, alice, cache=cache, now=NOW, trust=trust)
    assert sink.getvalue() == text and opened.sender_verified
    error, _ = attempt(sealed, alice, cache=cache, trust=trust)
    assert isinstance(error, ReplayedMessage)


def test_a_corecipient_keeping_every_gcm_tag_is_refused_by_the_trailer(keys, signer):
    """T2: under a key he knows, bob changes chunk 0's ciphertext in two blocks so that GHASH -- and so
    the tag -- stays the same; GCM accepts the new chunk, a hash of the tags would too, the trailer not."""
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    sealed = seal_bytes(payload(CS), [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS,
                        signer=signer, serial=8)
    pre = read_header(io.BytesIO(sealed))
    _, payload_key = _bobs_keys(bob, pre)
    ad = hashlib.sha256(pre.raw).digest()
    (chunk,) = _chunks(sealed, pre)
    blocks, tag = _blocks(chunk[:-TAG]), chunk[-TAG:]
    h = _ecb(payload_key, bytes(16))
    n = len(_blocks(ad)) + len(blocks) + 1  # GHASH inputs: AD, ciphertext, lengths
    first, second = len(_blocks(ad)), len(_blocks(ad)) + 1  # positions of ciphertext blocks 0 and 1
    delta = 1 << 100
    # delta*H^(n-first) + delta'*H^(n-second) = 0  =>  delta' = delta * H^(second-first)
    blocks[0] ^= delta
    blocks[1] ^= _gf_mul(delta, _gf_pow(h, second - first))
    assert second - first == 1 and n > second
    twin = b"".join(x.to_bytes(16, "big") for x in blocks) + tag
    assert twin != chunk and twin[-TAG:] == chunk[-TAG:]
    changed = AESGCM(payload_key).decrypt(nonce(0, True), twin, ad)  # GCM accepts it: the same tag
    assert changed != payload(CS)
    forged = pre.raw + twin + sealed[-pre.trailer_length:]
    error, out = attempt(forged, alice, trust=trust)
    assert type(error) is BadSignature and out == b""


def test_a_trailer_from_another_message_is_refused(keys, signer):
    """T3: the same sender, recipients and payload, another message id: its trailer does not fit."""
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    recipients = [alice.public_key(), bob.public_key()]
    one = seal_bytes(b"same words", recipients, now=NOW, signer=signer, serial=9)
    other = seal_bytes(b"same words", recipients, now=NOW, signer=signer, serial=9)
    length = read_header(io.BytesIO(one)).trailer_length
    spliced = one[:-length] + other[-length:]
    for who in (alice, bob):
        error, out = attempt(spliced, who, trust=trust)
        assert type(error) is BadSignature and out == b""
        assert attempt(one, who, trust=trust)[0] is None


def test_a_truncated_or_altered_trailer_is_refused(hosts):
    """T5, with host keys to try every trailer byte: a cut trailer, a flipped bit, bytes appended."""
    a, b, _ = hosts
    sender = rsa.generate_private_key(65537, 2048)
    host_signer = FixedSigner(sender.public_key(), lambda d: sender.sign(d, PSS, hashes.SHA256()))
    trust = E.trust_set([sender.public_key()])
    sealed = seal_bytes(payload(3 * CS), [a.public_key(), b.public_key()], now=NOW, chunk_size=CS,
                        signer=host_signer, serial=10)
    where = v2_layout(sealed)
    assert len(where["trailer"]) == 256 and where["trailer"][-1] == len(sealed) - 1
    cuts = [sealed[:-cut] for cut in (1, 16, 255, 256, 256 + TAG, 256 + CS + TAG)]
    flips = []
    for pos in where["trailer"]:
        bad = bytearray(sealed)
        bad[pos] ^= 0x80 if pos % 2 else 0x01
        flips.append(bytes(bad))
    for bad in (*cuts, *flips, sealed + b"\0", sealed + sealed[-256:]):
        for who in (a, b):
            error, out = attempt(bad, who, trust=trust)
            assert isinstance(error, (BadSignature, AuthenticationFailed)), error  # TruncatedMessage included
            assert out == b""
    for bad in flips:  # a whole trailer that is not the sender's: BadSignature, not a tamper error
        assert type(attempt(bad, a, trust=trust)[0]) is BadSignature
    for who in (a, b):  # without a trust set nobody checks the trailer, but it still is not plaintext
        assert attempt(sealed, who)[1] == payload(3 * CS)


def test_reordered_or_dropped_chunks_of_a_signed_v2_message_are_refused(keys, signer):
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    sealed = seal_bytes(payload(3 * CS + 1), [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS,
                        signer=signer, serial=11)
    pre = read_header(io.BytesIO(sealed))
    chunks, trailer = _chunks(sealed, pre), sealed[-pre.trailer_length:]
    assert len(chunks) == 4
    for order in ([1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3], [0, 0, 1, 2, 3]):
        bad = pre.raw + b"".join(chunks[i] for i in order) + trailer
        for who in (alice, bob):
            error, out = attempt(bad, who, trust=trust)
            assert isinstance(error, AuthenticationFailed), (order, error)
            assert out == b""  # verified senders: nothing is released before the trailer (T4)


def test_stripping_the_signature_of_a_v2_message_is_refused_with_a_trust_set(keys, signer):
    """The downgrade: bob makes an unsigned message of the signed one (same entries, commitment and
    payload key: he knows the file key) -- refused by alice when she requires a trusted sender (O8)."""
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    sealed = seal_bytes(b"signed by the sender", [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS,
                        signer=signer, serial=12)
    pre = read_header(io.BytesIO(sealed))
    _, payload_key = _bobs_keys(bob, pre)
    h = pre.header
    unsigned = Header2(h.message_id, h.timestamp_ms, h.recipient_count, chunk_size=h.chunk_size)
    raw = prefix2(unsigned, pre.entries, pre.commitment, None)
    stripped = raw + AESGCM(payload_key).encrypt(nonce(0, True), b"from bob, unsigned",
                                                 hashlib.sha256(raw).digest())
    assert stripped[11] & 0x02 == 0
    error, out = attempt(stripped, alice, trust=trust)
    assert type(error) is SignatureRequired and out == b""
    opened_text = open_bytes(stripped, alice, cache=MemoryReplayCache(), now=NOW)  # no trust set: anonymous
    assert opened_text == b"from bob, unsigned"
    # Only the flag cleared (the signed bytes kept): a different prefix, refused whatever the trust.
    flag_only = bytearray(sealed)
    flag_only[11] &= ~0x02
    for kw in ({"trust": trust}, {}):
        error, out = attempt(bytes(flag_only), alice, **kw)
        assert isinstance(error, MessageRejected) and out == b"", (kw, error)


def test_a_v2_message_signed_the_header_only_way_is_refused(keys, signer):
    """G3': the header-only draft of 9.5 (one signature, old context, no trailer) opens for nobody who
    verifies the sender: its prefix signature is refused at step 4, before any token work."""
    alice, bob = keys["alice"], keys["bob"]
    trust = E.trust_set([signer.public_key()])
    sealed = seal_bytes(payload(100), [alice.public_key(), bob.public_key()], now=NOW, chunk_size=CS,
                        signer=signer, serial=13)
    pre = read_header(io.BytesIO(sealed))
    draft_signed = b"tokencsp sealed message v2 signature\0" + signed_data2(pre.header, pre.entries,
                                                                            pre.commitment)[len(PREFIX_CONTEXT):]
    draft = prefix2(pre.header, pre.entries, pre.commitment, signer.sign(draft_signed))
    _, payload_key = _bobs_keys(bob, pre)
    ad = hashlib.sha256(draft).digest()
    text = payload(100)
    body = (AESGCM(payload_key).encrypt(nonce(0, False), text[:CS], ad)
            + AESGCM(payload_key).encrypt(nonce(1, True), text[CS:], ad))
    for who in (alice, bob):
        counted = Counting(who)
        error, out = attempt(draft + body, counted, trust=trust)
        assert type(error) is BadSignature and out == b"" and counted.imports == 0


# -- the version 2 test vector in docs/FORMAT.md (section 10) ------------------------------------


def _vector() -> dict[str, bytes]:
    text = (REPO / "docs" / "FORMAT.md").read_text("utf-8")
    section = text[text.index("## 10. Test vector, version 2") :]
    found = re.findall(r"^```(hex|pem) (v2-[\w-]+)\n(.*?)^```", section, re.M | re.S)
    out = {name[3:]: (bytes.fromhex(body) if kind == "hex" else body.encode()) for kind, name, body in found}
    assert {"alice-private-key", "bob-private-key", "sender-public-key", "plaintext", "file-key", "message-id",
            "header", "key-blob-alice", "key-blob-bob", "payload-key", "commitment", "signature",
            "associated-data", "replay-key-alice", "replay-key-bob", "chunk-0", "chunk-1", "message-hash",
            "trailer", "message"} <= set(out)
    return out


@pytest.fixture(scope="module")
def vector_keys(tokens):
    a, b = tokens
    v = _vector()
    alice = a.import_pem("v2-vector-alice", v["alice-private-key"])
    bob = b.import_pem("v2-vector-bob", v["bob-private-key"])
    yield alice, bob
    a.delete_key("v2-vector-alice")
    b.delete_key("v2-vector-bob")


def test_v2_vector_from_format_md(vector_keys):
    v = _vector()
    alice, bob = vector_keys
    sender = load_pem_public_key(v["sender-public-key"])
    message, now = v["message"], 1767225600.0
    # The pieces add up, independently of the envelope package.
    id_a, id_b = fingerprint(alice.public_key()), fingerprint(bob.public_key())
    assert id_a < id_b and v["header"][48] == 2 and v["header"][8] == 2
    entries = b"".join(i + len(blob).to_bytes(2, "big") + blob
                       for i, blob in ((id_a, v["key-blob-alice"]), (id_b, v["key-blob-bob"])))
    signed = v["header"] + entries + v["commitment"]
    prefix = signed + len(v["signature"]).to_bytes(2, "big") + v["signature"]
    assert message == prefix + v["chunk-0"] + v["chunk-1"] + v["trailer"]
    assert len(v["trailer"]) == len(v["signature"]) == 256
    assert hashlib.sha256(prefix).digest() == v["associated-data"]
    assert hashlib.sha256(prefix + v["chunk-0"] + v["chunk-1"]).digest() == v["message-hash"]
    sender.verify(v["signature"], PREFIX_CONTEXT + signed, PSS, hashes.SHA256())
    sender.verify(v["trailer"], TRAILER_CONTEXT + v["message-hash"], PSS, hashes.SHA256())
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def hkdf(label: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, v["message-id"], label).derive(v["file-key"])

    assert hkdf(b"tokencsp sealed message v2 payload key") == v["payload-key"]
    assert hkdf(b"tokencsp sealed message v2 key commitment") == v["commitment"]
    for key_id, name in ((id_a, "alice"), (id_b, "bob")):
        label = b"tokencsp sealed message v2 replay key\0"
        assert hashlib.sha256(label + key_id + v["associated-data"]).digest() == v[f"replay-key-{name}"]
    aead = AESGCM(v["payload-key"])
    assert (aead.decrypt(bytes(12), v["chunk-0"], v["associated-data"])
            + aead.decrypt(bytes(10) + b"\1\1", v["chunk-1"], v["associated-data"])) == v["plaintext"]
    # Each token unwraps the same file key from its own entry, and each opens the message.
    for who, name in ((alice, "alice"), (bob, "bob")):
        simple = SimpleBlob.from_bytes(v[f"key-blob-{name}"])
        assert who.unwrap_raw(simple.encrypted_key, oaep=True, alg_id=AlgId.CALG_AES_256) == v["file-key"]
        sink = io.BytesIO()
        opened = open_message(io.BytesIO(message), sink, who, cache=MemoryReplayCache(),
                              trust=E.trust_set([sender]), now=now)
        assert sink.getvalue() == v["plaintext"] and opened.verified_sender == fingerprint(sender)
        assert opened.header == Header2.parse(v["header"]) and opened.header.serial == 42
    # Re-sealing with the vector's inputs reproduces every byte.
    again = seal_bytes(v["plaintext"], [bob.public_key(), alice.public_key()],
                       signer=FixedSigner(sender, lambda d: v["signature" if d.startswith(PREFIX_CONTEXT) else "trailer"]),
                       serial=42, now=now, chunk_size=64,
                       message_id=v["message-id"], session_key=v["file-key"],
                       key_blobs=[v["key-blob-bob"], v["key-blob-alice"]])
    assert again == message



def test_a_big_verified_message_waits_in_an_unlinked_spool(hosts, tmp_path, monkeypatch):
    """9.6 step 8a: beyond 1 MiB the spool is a temporary file in TMPDIR -- with no name left there --
    and the sink gets the plaintext only after the trailer verified."""
    import tempfile

    from tokencsp.envelope import opening

    a, b, _ = hosts
    sender = rsa.generate_private_key(65537, 2048)
    host_signer = FixedSigner(sender.public_key(), lambda d: sender.sign(d, PSS, hashes.SHA256()))
    text = payload(opening.SPOOL_IN_MEMORY + 3 * 65536 + 11)
    sealed = seal_bytes(text, [a.public_key(), b.public_key()], now=NOW, signer=host_signer, serial=1)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    files = []
    real = tempfile.TemporaryFile

    def counted(*args, **kw):  # the spool's roll-over to disk
        files.append(real(*args, **kw))
        return files[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", counted)

    class Cache(MemoryReplayCache):
        def accept(self, *args, **kw):
            self.sink_then = len(sink.getvalue())
            return super().accept(*args, **kw)

    cache = Cache()
    sink = io.BytesIO()
    opened = open_message(io.BytesIO(sealed), sink, a, cache=cache, now=NOW, trust=E.trust_set([sender.public_key()]))
    assert sink.getvalue() == text and opened.plaintext_length == len(text) and opened.sender_verified
    assert cache.sink_then == 0, "recorded after the trailer, released after the record"
    assert len(files) == 1 and files[0].closed, "one spool file on disk, closed once copied"
    bad = bytearray(sealed)
    bad[-1] ^= 1
    error, out = attempt(bytes(bad), b, trust=E.trust_set([sender.public_key()]))
    assert type(error) is BadSignature and out == b""
    # the refused copy rolled over to disk too, and its spool was closed (its file is O_TMPFILE: no name in
    # tmp_path whether closed or not, so only the file object can tell)
    assert len(files) == 2 and files[1].closed


def _spool_files(monkeypatch) -> list:
    """Every step-8a spool the opener makes, to check it was closed (an O_TMPFILE spool leaves no name in
    TMPDIR, so listing the directory cannot tell)."""
    import tempfile

    made = []
    real = tempfile.SpooledTemporaryFile

    def counted(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", counted)
    return made


def _host_signer(sender: rsa.RSAPrivateKey) -> FixedSigner:
    return FixedSigner(sender.public_key(), lambda d: sender.sign(d, PSS, hashes.SHA256()))


def test_the_stdout_spool_is_capped_and_a_refusal_releases_and_records_nothing(hosts, monkeypatch):
    """9.6 step 8a: past TOKENCSP_SPOOL_MAX the opener refuses with SpoolLimitExceeded -- nothing in the
    sink, nothing recorded (the same cache opens the message afterwards), the spool closed.  A co-recipient
    can make a message of any size behind the sender's genuine prefix; this is what bounds its cost."""
    from tokencsp.envelope.opening import SPOOL_MAX_DEFAULT, spool_limit
    from tokencsp.errors import ConfigError, SpoolLimitExceeded

    assert spool_limit({}) == SPOOL_MAX_DEFAULT == 64 << 20 and spool_limit({"TOKENCSP_SPOOL_MAX": "5"}) == 5
    for bad in ("64M", "-1"):
        with pytest.raises(ConfigError, match="TOKENCSP_SPOOL_MAX"):
            spool_limit({"TOKENCSP_SPOOL_MAX": bad})
    a, b, _ = hosts
    sender = rsa.generate_private_key(65537, 2048)
    text = payload(300_000)
    sealed = seal_bytes(text, [a.public_key(), b.public_key()], now=NOW, signer=_host_signer(sender), serial=1)
    trust = E.trust_set([sender.public_key()])
    cache = MemoryReplayCache()
    made = _spool_files(monkeypatch)
    monkeypatch.setenv("TOKENCSP_SPOOL_MAX", str(len(text) - 1))
    sink = io.BytesIO()
    with pytest.raises(SpoolLimitExceeded, match="TOKENCSP_SPOOL_MAX=299999"):
        open_message(io.BytesIO(sealed), sink, a, cache=cache, now=NOW, trust=trust)
    assert sink.getvalue() == b"" and len(made) == 1 and made[0].closed
    monkeypatch.setenv("TOKENCSP_SPOOL_MAX", str(len(text)))  # exactly the plaintext fits
    sink = io.BytesIO()
    open_message(io.BytesIO(sealed), sink, a, cache=cache, now=NOW, trust=trust)
    assert sink.getvalue() == text, "the refused open recorded nothing"
    monkeypatch.setenv("TOKENCSP_SPOOL_MAX", "0")  # a private sink needs no spool: no cap
    assert open_bytes(sealed, b, cache=MemoryReplayCache(), now=NOW, trust=trust) == text


def test_a_spool_that_cannot_be_written_is_an_output_error(hosts, tmp_path, monkeypatch):
    """An unusable TMPDIR (here: a regular file) fails the spool's roll-over to disk: OutputError, never a raw
    OSError; nothing released or recorded, the spool closed."""
    import tempfile

    from tokencsp.envelope import opening
    from tokencsp.errors import OutputError

    a, b, _ = hosts
    sender = rsa.generate_private_key(65537, 2048)
    text = payload(opening.SPOOL_IN_MEMORY + 70_000)
    sealed = seal_bytes(text, [a.public_key(), b.public_key()], now=NOW, signer=_host_signer(sender), serial=1)
    trust = E.trust_set([sender.public_key()])
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    made = _spool_files(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_dir))
    cache, sink = MemoryReplayCache(), io.BytesIO()
    with pytest.raises(OutputError, match="cannot spool the plaintext") as refused:
        open_message(io.BytesIO(sealed), sink, a, cache=cache, now=NOW, trust=trust)
    assert type(refused.value) is OutputError and refused.value.__cause__ is None
    assert sink.getvalue() == b"" and len(made) == 1 and made[0].closed
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sink = io.BytesIO()
    open_message(io.BytesIO(sealed), sink, a, cache=cache, now=NOW, trust=trust)
    assert sink.getvalue() == text, "the failed open recorded nothing"


def test_a_failed_trailer_closes_the_spool(hosts, monkeypatch):
    """The error path of 9.6 step 8a closes the spool (before, only the success path was checked)."""
    a, b, _ = hosts
    sender = rsa.generate_private_key(65537, 2048)
    sealed = bytearray(seal_bytes(payload(5000), [a.public_key(), b.public_key()], now=NOW,
                                  signer=_host_signer(sender), serial=1))
    sealed[-1] ^= 1
    made = _spool_files(monkeypatch)
    error, out = attempt(bytes(sealed), b, trust=E.trust_set([sender.public_key()]))
    assert type(error) is BadSignature and out == b""
    assert len(made) == 1 and made[0].closed


def test_a_signature_one_byte_short_of_the_modulus_is_refused(hosts):
    """9.2: each signature is exactly as long as the sender key's modulus.  A PSS signature whose leading
    0x00 is stripped (k-1 bytes) verifies in `cryptography`; the opener refuses it as BadSignature.  A
    3072-bit key: its 383-byte short signature is inside 2.5's 256..1024 (a 2048-bit key's 255 is not)."""
    from tokencsp.envelope import opening

    a, _, _ = hosts
    sender = rsa.generate_private_key(65537, 3072)

    def short(data: bytes) -> bytes:  # PSS is randomised: sign until the signature starts with 0x00
        for _ in range(20_000):
            signature = sender.sign(data, PSS, hashes.SHA256())
            if signature[0] == 0:
                return signature[1:]
        raise AssertionError("no signature with a leading zero byte")

    sender.public_key().verify(short(b"x"), b"x", PSS, hashes.SHA256())  # the library alone accepts it
    sealed = seal_bytes(b"short", [a.public_key()], now=NOW, signer=FixedSigner(sender.public_key(), short),
                        serial=1, version=2)
    assert read_header(io.BytesIO(sealed)).trailer_length == 383
    error, out = attempt(sealed, a, trust=E.trust_set([sender.public_key()]))
    assert type(error) is BadSignature and out == b""
    with pytest.raises(BadSignature):  # the trailer check refuses such a signature on its own too
        opening._verify_trailer(sender.public_key(), short(b"y"), b"\0" * 32)


def test_a_signer_whose_two_signatures_differ_in_length_leaves_no_message(hosts, tmp_path):
    """S10: a trailer signature of another length than the prefix signature is refused by the sealer.  Into
    a file (atomic_output, as `seal -o`) nothing is left; a stream (stdout) has already had the prefix and
    the chunks, without a trailer, which every opener refuses (FORMAT.md S10)."""
    from tokencsp.envelope import seal
    from tokencsp.fileio import atomic_output

    a, _, _ = hosts
    sender = rsa.generate_private_key(65537, 2048)
    calls = []

    def uneven(data: bytes) -> bytes:
        calls.append(data)
        signature = sender.sign(data, PSS, hashes.SHA256())
        return signature if len(calls) % 2 else signature + b"\0"

    signer = FixedSigner(sender.public_key(), uneven)
    text = payload(3 * 65536 + 5)
    with pytest.raises(InvalidKeyError, match="257-byte trailer signature after a 256-byte prefix signature"):
        seal_bytes(b"x", [a.public_key()], now=NOW, signer=signer, serial=1, version=2)
    assert len(calls) == 2
    out = tmp_path / "m.tcsp"
    with pytest.raises(InvalidKeyError), atomic_output(str(out)) as sink:
        seal(io.BytesIO(text), sink, [a.public_key()], now=NOW, signer=signer, serial=2, version=2)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    stream = io.BytesIO()
    with pytest.raises(InvalidKeyError):
        seal(io.BytesIO(text), stream, [a.public_key()], now=NOW, signer=signer, serial=3, version=2)
    left = stream.getvalue()
    assert len(left) > 3 * 65536 and read_header(io.BytesIO(left)).trailer_length == 256
    # its last 256 bytes are taken for the trailer, so its last chunk fails: a verifying opener releases
    # nothing; one without a trust set streams the chunks before it, as for any damaged message (O6)
    error, released = attempt(left, a, trust=E.trust_set([sender.public_key()]))
    assert isinstance(error, AuthenticationFailed) and released == b""
    error, released = attempt(left, a)
    assert isinstance(error, AuthenticationFailed) and len(released) < len(text) and text.startswith(released)
