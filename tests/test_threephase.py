"""The three-phase state machine (tokencsp.threephase), with each party's key on its own SoftHSM token."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokencsp.errors import ConfigError, TokenCSPError
from tokencsp.pubkeys import fingerprint
from tokencsp.session import SessionKey
from tokencsp.threephase import (
    NEED_DATA,
    TRANSITIONS,
    Close,
    ConnectionClosed,
    Data,
    FrameTooLarge,
    HandshakeComplete,
    LocalProtocolError,
    MsgType,
    PeerAborted,
    PeerAuthenticationFailed,
    PeerDisconnected,
    PhaseTimeout,
    ProtocolError,
    RecordError,
    RemoteProtocolError,
    Role,
    State,
    ThreePhase,
    TruncatedSession,
    TrustSet,
    UnknownPeer,
    check_name,
    frame,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "THREEPHASE.md"


# -- fixtures: alice on token a, bob on token b ------------------------------------------

KEY_PREFIX = "tp"  # the `keys` fixture (conftest) makes tp-alice, tp-bob, tp-mallory


@pytest.fixture(autouse=True)
def no_token_objects_left(tokens):
    yield
    assert [p.session_object_count() for p in tokens] == [0, 0], "a token object was leaked"


@pytest.fixture(scope="module")
def pubs(keys):
    return {name: pair.public_key() for name, pair in keys.items()}


@pytest.fixture(scope="module")
def trust(pubs):
    return TrustSet({"alice": pubs["alice"], "bob": pubs["bob"]})


def pair(keys, pubs, trust, *, init_kw=None, resp_kw=None):
    init = ThreePhase(Role.INITIATOR, "alice", keys["alice"], trust, peer_name="bob",
                      local_public=pubs["alice"], **(init_kw or {}))
    resp = ThreePhase(Role.RESPONDER, "bob", keys["bob"], trust, local_public=pubs["bob"], **(resp_kw or {}))
    init.start(0.0)
    resp.start(0.0)
    return init, resp


def deliver(src_bytes: bytes, dst: ThreePhase, now: float = 0.0):
    dst.receive_data(src_bytes)
    return dst.next_event(now)


def handshake(init: ThreePhase, resp: ThreePhase):
    m1 = init.data_to_send()
    assert deliver(m1, resp) is NEED_DATA
    m2 = resp.data_to_send()
    ev_i = deliver(m2, init)
    m3 = init.data_to_send()
    ev_r = deliver(m3, resp)
    assert isinstance(ev_i, HandshakeComplete) and isinstance(ev_r, HandshakeComplete)
    return (m1, m2, m3), ev_i, ev_r


def assert_failed_for_good(conn: ThreePhase) -> None:
    assert conn.state is State.ERROR
    for call in (lambda: conn.next_event(0.0), lambda: conn.send(Data(b"x")), lambda: conn.receive_data(b"x")):
        with pytest.raises(ProtocolError, match="already failed"):
            call()


# -- the test vector in docs/THREEPHASE.md -----------------------------------------------

def parse_doc_vector(text: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    pems = {m.group(1): m.group(2).encode() + b"\n"
            for m in re.finditer(r"```pem (\w+)\n(.*?)\n```", text, re.S)}
    block = re.search(r"```vector\n(.*?)\n```", text, re.S).group(1)
    values: dict[str, bytes] = {}
    key = None
    for line in block.splitlines():
        if line.startswith("  "):
            values[key] += bytes.fromhex(line.strip())
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        values[key] = value[1:-1].encode() if value.startswith('"') else bytes.fromhex(value)
    return pems, values


@pytest.fixture(scope="module")
def doc_vector(tokens):
    pems, v = parse_doc_vector(DOC.read_text())
    a, b = tokens
    alice = a.import_pem("tv-alice", pems["alice"])
    bob = b.import_pem("tv-bob", pems["bob"])
    yield alice, bob, v
    a.delete_key("tv-alice")
    b.delete_key("tv-bob")


def test_doc_vector_replays_byte_for_byte_through_both_tokens(doc_vector):
    alice, bob, v = doc_vector
    assert v["initiator.name"] == b"alice" and v["responder.name"] == b"bob"
    pub_a, pub_b = alice.public_key(), bob.public_key()
    assert fingerprint(pub_a) == v["fp_I"] and fingerprint(pub_b) == v["fp_R"]
    trust = TrustSet({"alice": pub_a, "bob": pub_b})
    fixed = {"A": (v["A"], v["simpleblob_A"]), "B": (v["B"], v["simpleblob_B"])}
    init = ThreePhase(Role.INITIATOR, "alice", alice, trust, peer_name="bob",
                      key_source=lambda pk: (SessionKey.from_bytes("aes256", fixed["A"][0]), fixed["A"][1]))
    resp = ThreePhase(Role.RESPONDER, "bob", bob, trust,
                      key_source=lambda pk: (SessionKey.from_bytes("aes256", fixed["B"][0]), fixed["B"][1]))
    # The SIMPLEBLOBs really carry A and B: each token unwraps the one addressed to it.
    assert bob.import_simpleblob(v["simpleblob_A"], oaep=True).key == v["A"]
    assert alice.import_simpleblob(v["simpleblob_B"], oaep=True).key == v["B"]

    init.start(0.0)
    resp.start(0.0)
    assert init.data_to_send() == frame(v["M1"])
    assert deliver(frame(v["M1"]), resp) is NEED_DATA
    assert resp.data_to_send() == frame(v["M2"])
    assert deliver(frame(v["M2"]), init) == HandshakeComplete("bob", v["fp_R"])
    assert init.data_to_send() == frame(v["M3"])
    assert deliver(frame(v["M3"]), resp) == HandshakeComplete("alice", v["fp_I"])

    assert init.send(Data(v["record_IR_0.plaintext"])) == frame(v["record_IR_0"])
    assert init.send(Close()) == frame(v["record_IR_1"])
    assert resp.send(Data(v["record_RI_0.plaintext"])) == frame(v["record_RI_0"])
    assert resp.send(Close()) == frame(v["record_RI_1"])
    assert deliver(frame(v["record_IR_0"]), resp) == Data(v["record_IR_0.plaintext"])
    assert deliver(frame(v["record_IR_1"]), resp) == Close()
    assert deliver(frame(v["record_RI_0"]), init) == Data(v["record_RI_0.plaintext"])
    assert deliver(frame(v["record_RI_1"]), init) == Close()
    assert init.state is State.CLOSED and resp.state is State.CLOSED
    assert deliver(b"", init) == ConnectionClosed()


def test_doc_vector_key_schedule_matches_the_formulas(doc_vector):
    """Recompute everything from the doc's prose, independently of tokencsp.threephase."""
    _, _, v = doc_vector

    def h(key, data):
        return hmac.new(key, data, hashlib.sha256).digest()

    m1, m2 = v["M1"], v["M2"]
    # PHASE1 layout
    assert m1[:2] == b"\x01\x01" and m1[2] == 5 and m1[3:8] == b"alice" and m1[8] == 3 and m1[9:12] == b"bob"
    assert m1[12:44] == v["fp_I"] and m1[44:76] == v["fp_R"]
    assert int.from_bytes(m1[76:78], "big") == 268 and m1[78:] == v["simpleblob_A"]
    assert m2[0] == 2 and int.from_bytes(m2[1:3], "big") == 268 and m2[3:271] == v["simpleblob_B"]
    assert v["M3"] == b"\x03" + v["mac3"] and m2[271:] == v["mac2"]

    th = hashlib.sha256(b"tokencsp three-phase v1 transcript" + m1 + m2[:-32]).digest()
    assert th == v["TH"]
    prk = h(th, v["A"] + v["B"])
    assert prk == v["PRK"]
    for name, label in (("K2", "phase 2 mac"), ("K3", "phase 3 mac"), ("K_IR", "initiator to responder"),
                        ("K_RI", "responder to initiator")):
        assert h(prk, b"tokencsp three-phase v1 " + label.encode() + b"\x01") == v[name], name
    assert h(v["K2"], b"phase 2" + th) == v["mac2"]
    assert h(v["K3"], b"phase 3" + th) == v["mac3"]
    for direction, key in (("IR", v["K_IR"]), ("RI", v["K_RI"])):
        for seq, kind in ((0, 0x17), (1, 0x15)):
            record = v[f"record_{direction}_{seq}"]
            assert record[0] == kind
            plain = AESGCM(key).decrypt(bytes(4) + seq.to_bytes(8, "big"), record[1:], bytes([kind]))
            assert plain == (v[f"record_{direction}_0.plaintext"] if kind == 0x17 else b"")


# -- handshake and records ---------------------------------------------------------------

def test_handshake_and_records_both_directions_fed_byte_by_byte(keys, pubs, trust):
    init, resp = pair(keys, pubs, trust)
    m1 = init.data_to_send()
    for i in range(len(m1)):
        resp.receive_data(m1[i : i + 1])
        assert resp.next_event(0.0) is NEED_DATA
    assert resp.state is State.AWAIT_PHASE3
    assert deliver(resp.data_to_send(), init) == HandshakeComplete("bob", fingerprint(pubs["bob"]))
    assert deliver(init.data_to_send(), resp) == HandshakeComplete("alice", fingerprint(pubs["alice"]))
    big = bytes(range(256)) * 100
    wire = init.send(Data(b"")) + init.send(Data(big)) + init.send(Close())
    resp.receive_data(wire)
    assert [resp.next_event(), resp.next_event(), resp.next_event()] == [Data(b""), Data(big), Close()]
    assert resp.next_event() is NEED_DATA
    assert deliver(resp.send(Data(b"back")), init) == Data(b"back")
    resp.receive_data(b"")
    assert resp.next_event() == ConnectionClosed()
    with pytest.raises(ProtocolError, match="already sent its close"):
        init.send(Data(b"more"))


def test_every_session_uses_fresh_keys(keys, pubs, trust):
    wires = []
    for _ in range(2):
        init, resp = pair(keys, pubs, trust)
        handshake(init, resp)
        wires.append(init.send(Data(b"same")))
    assert wires[0] != wires[1]


def test_send_before_handshake_and_oversized_record_refused(keys, pubs, trust):
    init, resp = pair(keys, pubs, trust, init_kw={"max_frame": 4096})
    with pytest.raises(ProtocolError, match="before the handshake"):
        init.send(Data(b"early"))
    init, resp = pair(keys, pubs, trust, init_kw={"max_frame": 4096})
    handshake(init, resp)
    init.send(Data(bytes(init.max_record)))
    with pytest.raises(ProtocolError, match="at most"):
        init.send(Data(bytes(init.max_record + 1)))


@pytest.mark.parametrize("attack", ["replay", "reorder", "drop", "alter", "reflect", "after-close", "truncate"])
def test_record_attacks_abort(keys, pubs, trust, attack):
    init, resp = pair(keys, pubs, trust)
    handshake(init, resp)
    r0, r1, r2 = (init.send(Data(b"record %d" % i)) for i in range(3))
    expected = RecordError
    if attack == "replay":
        wire = r0 + r0
    elif attack == "reorder":
        wire = r1 + r0
    elif attack == "drop":
        wire = r0 + r2
    elif attack == "alter":
        wire = r0[:-1] + bytes([r0[-1] ^ 1])
    elif attack == "reflect":  # the initiator's own record sent back to it
        resp, wire = init, r0
    elif attack == "after-close":
        wire, expected = r0 + r1 + r2 + init.send(Close()) + r2, ProtocolError
    else:
        wire, expected = r0 + r1 + b"", TruncatedSession
    resp.receive_data(wire)
    if attack == "truncate":
        resp.receive_data(b"")
    with pytest.raises(expected):
        while True:
            event = resp.next_event()
            assert event is not NEED_DATA, "the attack went unnoticed"
    assert_failed_for_good(resp)


def _tamper_each_byte(message: bytes, fresh, suffix: bytes = b"") -> None:
    """Flip one bit in each byte of ``message`` (then ``suffix``); ``fresh()`` gives a machine awaiting it."""
    for i in range(len(message)):
        conn = fresh()
        conn.receive_data(frame(message[:i] + bytes([message[i] ^ 0x40]) + message[i + 1 :] + suffix))
        try:
            event = conn.next_event(0.0)
        except ProtocolError:
            assert conn.state is State.ERROR
            continue
        pytest.fail(f"flipping byte {i} went unnoticed: {event!r}")


def test_every_byte_of_every_handshake_message_is_checked(keys, pubs, trust):
    a_fixed, b_fixed = SessionKey.generate("aes256").key, SessionKey.generate("aes256").key
    blob_a = SessionKey.from_bytes("aes256", a_fixed).export_simpleblob(pubs["bob"], oaep=True)
    blob_b = SessionKey.from_bytes("aes256", b_fixed).export_simpleblob(pubs["alice"], oaep=True)

    def fresh_pair():
        return pair(keys, pubs, trust,
                    init_kw={"key_source": lambda pk: (SessionKey.from_bytes("aes256", a_fixed), blob_a)},
                    resp_kw={"key_source": lambda pk: (SessionKey.from_bytes("aes256", b_fixed), blob_b)})

    (m1, m2, m3), _, _ = handshake(*fresh_pair())
    m1, m2, m3 = m1[4:], m2[4:], m3[4:]
    blob_at = len(m1) - len(blob_a)
    _tamper_each_byte(m1[:blob_at], lambda: fresh_pair()[1], suffix=m1[blob_at:])
    # A changed SIMPLEBLOB A gets the same answer as a good one (implicit rejection: no
    # padding oracle); the initiator, which holds the true A and transcript, refuses phase 2.
    for i in range(blob_at, len(m1)):
        init, resp = fresh_pair()
        init.data_to_send()
        tampered = m1[:i] + bytes([m1[i] ^ 0x40]) + m1[i + 1:]
        try:
            assert deliver(frame(tampered), resp) is NEED_DATA
        except ProtocolError:  # only a malformed blob header may be refused at once
            assert i < blob_at + 12 and resp.state is State.ERROR
            continue
        assert resp.state is State.AWAIT_PHASE3
        with pytest.raises(PeerAuthenticationFailed):
            deliver(resp.data_to_send(), init)
        assert_failed_for_good(init)

    def initiator_awaiting_phase2():
        init, _ = fresh_pair()
        init.data_to_send()
        return init
    _tamper_each_byte(m2, initiator_awaiting_phase2)

    def responder_awaiting_phase3():
        _, resp = fresh_pair()
        deliver(frame(m1), resp)
        return resp
    _tamper_each_byte(m3, responder_awaiting_phase3)


def test_refusals_in_phase1(keys, pubs, trust):
    def responder(trust_set=trust, name="bob"):
        resp = ThreePhase(Role.RESPONDER, name, keys["bob"], trust_set, local_public=pubs["bob"])
        resp.start(0.0)
        return resp

    def m1_from(name="alice", key="alice", local_public=None, peer_trust=trust, peer="bob"):
        init = ThreePhase(Role.INITIATOR, name, keys[key], peer_trust, peer_name=peer,
                          local_public=local_public or pubs[key])
        init.start(0.0)
        return init, init.data_to_send()

    cases = [
        (responder(TrustSet({"bob": pubs["bob"]})), m1_from()[1], UnknownPeer, "not in the trust set"),
        (responder(TrustSet({"alice": pubs["mallory"], "bob": pubs["bob"]})), m1_from()[1],
         PeerAuthenticationFailed, "not the trusted key for that name"),
        (responder(), m1_from(key="mallory")[1], PeerAuthenticationFailed, "not the trusted key"),
        (responder(), m1_from(peer_trust=TrustSet({"bob": pubs["mallory"]}))[1],
         PeerAuthenticationFailed, "different public key"),
        (responder(name="carol"), m1_from()[1], ProtocolError, "addressed to 'bob'"),
    ]
    for resp, m1, error, message in cases:
        resp.receive_data(m1)
        with pytest.raises(error, match=message):
            resp.next_event(0.0)
        assert resp.data_to_send() == b""
        assert_failed_for_good(resp)


class RecordingKey:
    """A real token ExchangeKey that records how the machine asks it to unwrap."""

    def __init__(self, key) -> None:
        self.key, self.calls = key, []

    def public_key(self):
        return self.key.public_key()

    def import_simpleblob(self, blob, oaep=False):
        self.calls.append(("explicit", oaep))
        return self.key.import_simpleblob(blob, oaep=oaep)

    def import_simpleblob_implicit(self, blob, oaep=False):
        self.calls.append(("implicit", oaep))
        return self.key.import_simpleblob_implicit(blob, oaep=oaep)


def test_pkcs1_v15_key_transport_is_never_used(keys, pubs, trust):
    """Three-phase has no PKCS#1 v1.5 mode to opt into (finding 9.1): a v1.5 SIMPLEBLOB A, valid for bob's key,
    is unwrapped as OAEP only -- implicit rejection on the token -- and the session fails at the initiator."""
    a = SessionKey.generate("aes256")
    pkcs1_blob = a.export_simpleblob(pubs["bob"], oaep=False)
    assert keys["bob"].import_simpleblob(pkcs1_blob, oaep=False).key == a.key  # a genuine v1.5 blob for bob
    bob, alice = RecordingKey(keys["bob"]), RecordingKey(keys["alice"])
    init = ThreePhase(Role.INITIATOR, "alice", alice, trust, peer_name="bob", local_public=pubs["alice"],
                      key_source=lambda pk: (SessionKey.from_bytes("aes256", a.key), pkcs1_blob))
    resp = ThreePhase(Role.RESPONDER, "bob", bob, trust, local_public=pubs["bob"])
    init.start(0.0)
    resp.start(0.0)
    assert deliver(init.data_to_send(), resp) is NEED_DATA  # answered like any blob: no oracle
    with pytest.raises(PeerAuthenticationFailed, match="phase 2 MAC mismatch"):
        deliver(resp.data_to_send(), init)
    assert bob.calls == [("implicit", True)] and alice.calls == [("implicit", True)]
    alice, bob = RecordingKey(keys["alice"]), RecordingKey(keys["bob"])
    init = ThreePhase(Role.INITIATOR, "alice", alice, trust, peer_name="bob", local_public=pubs["alice"])
    resp = ThreePhase(Role.RESPONDER, "bob", bob, trust, local_public=pubs["bob"])
    init.start(0.0)
    resp.start(0.0)
    handshake(init, resp)
    assert bob.calls == alice.calls == [("implicit", True)]  # an honest session: OAEP, on the production path


def test_impostor_presenting_another_name_cannot_finish(keys, pubs, trust):
    """mallory claims alice's name *and* alice's fingerprint: only the phase-3 proof stops her."""
    mallory = ThreePhase(Role.INITIATOR, "alice", keys["mallory"], trust, peer_name="bob",
                         local_public=pubs["alice"])
    resp = ThreePhase(Role.RESPONDER, "bob", keys["bob"], trust, local_public=pubs["bob"])
    mallory.start(0.0)
    resp.start(0.0)
    assert deliver(mallory.data_to_send(), resp) is NEED_DATA  # phase 1 looks fine
    # B went to alice's key: mallory's token unwraps nothing useful (implicit rejection
    # gives her a substitute key), so bob's phase-2 MAC cannot verify for her.
    with pytest.raises(PeerAuthenticationFailed, match="phase 2 MAC mismatch"):
        deliver(resp.data_to_send(), mallory)
    with pytest.raises(PeerAuthenticationFailed, match="phase 3 MAC mismatch"):
        deliver(frame(b"\x03" + bytes(32)), resp)  # the best she can do: a guess
    assert_failed_for_good(resp)


def test_impostor_responder_cannot_answer(keys, pubs, trust):
    """A listener with the wrong private key cannot recover A, so phase 2 never verifies."""
    init = ThreePhase(Role.INITIATOR, "alice", keys["alice"], trust, peer_name="bob", local_public=pubs["alice"])
    fake = ThreePhase(Role.RESPONDER, "bob", keys["mallory"], trust, local_public=pubs["bob"])
    init.start(0.0)
    fake.start(0.0)
    # Implicit rejection: the impostor's token "recovers" a substitute for A and answers
    # as a genuine responder would; its phase 2 cannot carry a MAC keyed with the real A.
    assert deliver(init.data_to_send(), fake) is NEED_DATA
    with pytest.raises(PeerAuthenticationFailed, match="phase 2 MAC mismatch"):
        deliver(fake.data_to_send(), init)
    init = ThreePhase(Role.INITIATOR, "alice", keys["alice"], trust, peer_name="bob", local_public=pubs["alice"])
    init.start(0.0)
    init.data_to_send()
    # and a made-up phase 2 fails the MAC (B is genuine, wrapped to alice)
    blob = SessionKey.generate("aes256").export_simpleblob(pubs["alice"], oaep=True)
    with pytest.raises(PeerAuthenticationFailed, match="phase 2 MAC mismatch"):
        deliver(frame(b"\x02" + len(blob).to_bytes(2, "big") + blob + bytes(32)), init)


def test_deadlines_frames_and_end_of_stream(keys, pubs, trust):
    init, resp = pair(keys, pubs, trust, init_kw={"phase_timeout": 5.0}, resp_kw={"phase_timeout": 5.0})
    assert init.deadline == 5.0 and resp.deadline == 5.0
    assert resp.next_event(4.9) is NEED_DATA
    with pytest.raises(PhaseTimeout, match="phase 1"):
        resp.next_event(5.1)
    assert_failed_for_good(resp)

    init, resp = pair(keys, pubs, trust, resp_kw={"phase_timeout": 5.0})
    deliver(init.data_to_send(), resp, now=3.0)
    assert resp.deadline == 8.0 and resp.state is State.AWAIT_PHASE3
    with pytest.raises(PhaseTimeout, match="phase 3"):
        resp.next_event(8.5)

    init, resp = pair(keys, pubs, trust, resp_kw={"max_frame": 1000})
    resp.receive_data((1001).to_bytes(4, "big"))  # the header alone is enough
    with pytest.raises(FrameTooLarge):
        resp.next_event(0.0)

    init, resp = pair(keys, pubs, trust)
    resp.receive_data(bytes(4))
    with pytest.raises(ProtocolError, match="empty frame"):
        resp.next_event(0.0)

    init, resp = pair(keys, pubs, trust)
    resp.receive_data(init.data_to_send()[:100])
    resp.receive_data(b"")
    with pytest.raises(PeerDisconnected, match="middle of a frame"):
        resp.next_event(0.0)

    init, resp = pair(keys, pubs, trust)
    deliver(init.data_to_send(), resp)
    resp.receive_data(b"")
    with pytest.raises(PeerDisconnected, match="phase 3"):
        resp.next_event(0.0)


def test_abort_frames(keys, pubs, trust):
    init, resp = pair(keys, pubs, trust)
    handshake(init, resp)
    abort = init.abort(PhaseTimeout("x"))
    assert abort == frame(b"\x7f\x04")  # after authentication the reason is told
    assert init.state is State.ERROR
    resp.receive_data(abort)
    with pytest.raises(PeerAborted, match=r"timeout \(its unauthenticated claim\)") as info:
        resp.next_event(0.0)
    assert info.value.reason == 4
    assert resp.abort(info.value) == b""  # never answer an abort with an abort
    assert_failed_for_good(resp)


def test_aborts_before_authentication_are_uniform(keys, pubs, trust):
    """Finding 9.13: an unauthenticated party cannot tell an unknown name from a wrong key or a failed proof."""
    def refused(resp, m1, m3=None):
        resp.start(0.0)
        try:
            deliver(m1, resp)
            deliver(m3, resp)
        except ProtocolError as exc:
            return type(exc), resp.abort(exc)
        pytest.fail("not refused")

    def responder(trust_set=trust, name="bob"):
        return ThreePhase(Role.RESPONDER, name, keys["bob"], trust_set, local_public=pubs["bob"])

    def m1_of(key="alice", peer_trust=trust):
        init = ThreePhase(Role.INITIATOR, "alice", keys[key], peer_trust, peer_name="bob", local_public=pubs[key])
        init.start(0.0)
        return init.data_to_send()

    outcomes = [
        refused(responder(TrustSet({"bob": pubs["bob"]})), m1_of()),                        # unknown name
        refused(responder(TrustSet({"alice": pubs["mallory"], "bob": pubs["bob"]})), m1_of()),  # not its key
        refused(responder(), m1_of(peer_trust=TrustSet({"bob": pubs["mallory"]}))),          # not my key
        refused(responder(name="carol"), m1_of()),                                           # not my name
        refused(responder(), m1_of(), frame(b"\x03" + bytes(32))),                            # failed proof
        refused(responder(), frame(b"\x01\x02")),                                            # malformed
    ]
    assert {kind for kind, _ in outcomes} == {UnknownPeer, PeerAuthenticationFailed, RemoteProtocolError}
    assert {abort for _, abort in outcomes} == {frame(b"\x7f\x00")}
    init, _ = pair(keys, pubs, trust)
    init.data_to_send()
    assert init.abort(PhaseTimeout("x")) == frame(b"\x7f\x00")  # the initiator, too, before mac2 verified


def test_wrong_message_type_in_each_state(keys, pubs, trust):
    init, resp = pair(keys, pubs, trust)
    resp.receive_data(frame(b"\x03" + bytes(32)))
    with pytest.raises(ProtocolError, match="unexpected message type 0x03 while awaiting phase 1"):
        resp.next_event(0.0)
    init.receive_data(frame(b"\x17" + bytes(40)))
    with pytest.raises(ProtocolError, match="awaiting phase 2"):
        init.next_event(0.0)
    init, resp = pair(keys, pubs, trust)
    handshake(init, resp)
    resp.receive_data(frame(b"\x01\x01"))
    with pytest.raises(ProtocolError, match="record channel"):
        resp.next_event(0.0)


# -- names and trust sets ----------------------------------------------------------------

def test_names():
    assert check_name("alice") == "alice" and check_name("Zoë-1") == "Zoë-1"
    for bad in ("", "x" * 256, "a\nb", "a\x00b"):
        with pytest.raises(ConfigError):
            check_name(bad)


def test_trust_set_from_files_and_directories(tmp_path, keys, pubs):
    pub = pubs["alice"]
    (tmp_path / "alice.blob").write_bytes(keys["alice"].public_blob())
    (tmp_path / "bob.pem").write_bytes(keys["bob"].public_pem())
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "mallory.der").write_bytes(keys["mallory"].public_der())
    (peers / ".hidden").write_bytes(b"ignored")
    ts = TrustSet.from_paths([tmp_path / "alice.blob", tmp_path / "bob.pem", peers])
    assert sorted(ts) == ["alice", "bob", "mallory"] and len(ts) == 3
    assert ts["alice"].public_numbers() == pub.public_numbers()
    assert ts.fingerprint("mallory") == fingerprint(pubs["mallory"])
    with pytest.raises(UnknownPeer):
        ts.key_for("carol")
    (tmp_path / "broken.pem").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match=r"broken\.pem"):
        TrustSet.from_paths([tmp_path / "broken.pem"])
    with pytest.raises(ConfigError, match="two trusted keys"):
        TrustSet.from_paths([tmp_path / "bob.pem", tmp_path / "bob.pem"])
    with pytest.raises(TokenCSPError):
        TrustSet.from_paths([tmp_path / "missing.pem"])
    with pytest.raises(UnknownPeer):
        ThreePhase(Role.INITIATOR, "alice", keys["alice"], ts, peer_name="nobody", local_public=pub)


# -- the transition table ----------------------------------------------------------------

def _machines_in_every_state(keys, pubs, trust):
    """(machine, how it got there) for each (role, state) a session passes through."""
    init, resp = pair(keys, pubs, trust)
    yield ThreePhase(Role.INITIATOR, "alice", keys["alice"], trust, peer_name="bob", local_public=pubs["alice"])
    yield ThreePhase(Role.RESPONDER, "bob", keys["bob"], trust, local_public=pubs["bob"])
    yield resp  # AWAIT_PHASE1
    init.data_to_send()
    yield init  # AWAIT_PHASE2
    init, resp = pair(keys, pubs, trust)
    deliver(init.data_to_send(), resp)
    yield resp  # AWAIT_PHASE3
    for side in (0, 1):
        init, resp = pair(keys, pubs, trust)
        handshake(init, resp)
        yield (init, resp)[side]  # OPEN
        init, resp = pair(keys, pubs, trust)
        handshake(init, resp)
        me, peer = (init, resp)[side], (resp, init)[side]
        me.send(Close())
        deliver(peer.send(Close()), me)
        assert me.state is State.CLOSED
        yield me


def test_every_message_the_table_does_not_allow_is_the_peers_protocol_error(keys, pubs, trust):
    seen = set()
    for probe in range(len(MsgType) + 1):
        for conn in _machines_in_every_state(keys, pubs, trust):
            state = conn.state
            seen.add((conn.role, state))
            allowed = TRANSITIONS[conn.role, state]
            kinds = [k for k in MsgType if k not in allowed] + [0x42]  # 0x42: no message type at all
            if probe >= len(kinds):
                continue
            kind = kinds[probe]
            if kind != 0x42 and state in (State.OPEN, State.CLOSED) and kind in (MsgType.DATA, MsgType.CLOSE):
                continue
            conn.receive_data(frame(bytes([kind]) + bytes(40)))
            with pytest.raises(RemoteProtocolError, match=f"unexpected message type 0x{kind:02x}"):
                conn.next_event(0.0)
            assert_failed_for_good(conn)
    assert seen == {key for key in TRANSITIONS if key[1] is not State.ERROR}


def test_calls_the_table_does_not_allow_are_local_protocol_errors(keys, pubs, trust):
    init, resp = pair(keys, pubs, trust)
    for call, message in ((lambda: init.start(0.0), "called twice"),
                          (lambda: resp.send(Data(b"x")), "before the handshake")):
        with pytest.raises(LocalProtocolError, match=message):
            call()
    init, resp = pair(keys, pubs, trust)
    handshake(init, resp)
    init.send(Close())
    with pytest.raises(LocalProtocolError, match="already sent its close record"):
        init.send(Close())
    with pytest.raises(LocalProtocolError, match="already failed"):
        init.send(Data(b"x"))
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert issubclass(PeerAuthenticationFailed, RemoteProtocolError) and issubclass(RecordError, RemoteProtocolError)
