"""The three-phase session-key exchange (docs/THREEPHASE.md) as a sans-IO state machine.

No sockets, no clock, no threads: bytes go in with :meth:`ThreePhase.receive_data`,
events come out of :meth:`ThreePhase.next_event`, bytes to send come out of
:meth:`ThreePhase.data_to_send` and :meth:`ThreePhase.send`.  The only blocking
call is the local party's ``ExchangeKey.import_simpleblob`` (a token unwrap),
made inside ``next_event`` while the handshake runs: transports call it from a
worker thread then.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..blobs import AlgId, SimpleBlob
from ..errors import (
    BlobFormatError,
    ConfigError,
    FrameTooLarge,
    PeerAborted,
    PeerAuthenticationFailed,
    PeerDisconnected,
    PhaseTimeout,
    ProtocolError,
    RecordError,
    SessionKeyImportError,
    TokenCSPError,
    TruncatedSession,
    UnknownPeer,
    UnsupportedAlgorithm,
)
from ..pubkeys import fingerprint
from ..session import SessionKey
from ..trust import TrustSet, check_name

__all__ = [
    "PROTOCOL_VERSION", "DEFAULT_MAX_FRAME", "MsgType", "ABORT_REASONS", "Role", "State",
    "HandshakeComplete", "Data", "Close", "ConnectionClosed", "NEED_DATA", "ThreePhase", "TrustSet",
    "check_name", "check_frame_length", "frame",
    "ProtocolError", "PeerAuthenticationFailed", "UnknownPeer", "FrameTooLarge", "PhaseTimeout",
    "PeerDisconnected", "TruncatedSession", "RecordError", "PeerAborted",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20
FP_LEN = MAC_LEN = 32
TAG_LEN = 16
_LEN = struct.Struct(">I")
TRANSCRIPT_LABEL = b"tokencsp three-phase v1 transcript"
LABEL_K2 = b"tokencsp three-phase v1 phase 2 mac"
LABEL_K3 = b"tokencsp three-phase v1 phase 3 mac"
LABEL_IR = b"tokencsp three-phase v1 initiator to responder"
LABEL_RI = b"tokencsp three-phase v1 responder to initiator"


class MsgType(IntEnum):
    PHASE1 = 0x01
    PHASE2 = 0x02
    PHASE3 = 0x03
    CLOSE = 0x15
    DATA = 0x17
    ABORT = 0x7F


ABORT_REASONS = {0: "no reason given", 1: "protocol error", 2: "authentication failed", 3: "unknown peer",
                 4: "timeout", 5: "frame too large", 6: "application error"}
APPLICATION_ERROR = 6


class Role(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(Enum):
    IDLE = "idle"
    AWAIT_PHASE1 = "awaiting phase 1"
    AWAIT_PHASE2 = "awaiting phase 2"
    AWAIT_PHASE3 = "awaiting phase 3"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


_HANDSHAKE = frozenset({State.AWAIT_PHASE1, State.AWAIT_PHASE2, State.AWAIT_PHASE3})


@dataclass(frozen=True)
class HandshakeComplete:
    peer_name: str
    peer_fingerprint: bytes


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Close:
    """The peer's close record (inbound), or ask to send ours (outbound)."""


@dataclass(frozen=True)
class ConnectionClosed:
    """End of stream after the peer's close record: the clean end."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = HandshakeComplete | Data | Close | ConnectionClosed | _NeedData
KeySource = Callable[[rsa.RSAPublicKey], "tuple[SessionKey, bytes]"]


def check_frame_length(length: int, max_frame: int) -> None:
    if length == 0:
        raise ProtocolError("empty frame")
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_frame} bytes")


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def new_session_key(recipient: rsa.RSAPublicKey) -> tuple[SessionKey, bytes]:
    """The default key source: a fresh AES-256 key and its OAEP SIMPLEBLOB."""
    key = SessionKey.generate("aes256")
    return key, key.export_simpleblob(recipient, oaep=True)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def transcript_hash(m1: bytes, m2_prefix: bytes) -> bytes:
    return hashlib.sha256(TRANSCRIPT_LABEL + m1 + m2_prefix).digest()


def derive_keys(a: bytes, b: bytes, th: bytes) -> dict[str, bytes]:
    """HKDF-SHA256 (one output block per label) from A‖B with salt TH."""
    prk = _hmac(th, a + b)
    return {name: _hmac(prk, label + b"\x01") for name, label in
            (("k2", LABEL_K2), ("k3", LABEL_K3), ("ir", LABEL_IR), ("ri", LABEL_RI))}


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 1, what  # past the type byte

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"truncated {self.what} message")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def length(self, size: int) -> bytes:
        return self.take(int.from_bytes(self.take(size), "big"))

    def name(self) -> str:
        try:
            return check_name(self.length(1).decode("utf-8"))
        except (UnicodeDecodeError, ConfigError):
            raise ProtocolError(f"malformed name in the {self.what} message") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes in the {self.what} message")


def _guarded(method):
    @functools.wraps(method)
    def wrapper(self: ThreePhase, *args, **kwargs):
        if self.state is State.ERROR:
            raise ProtocolError("the session has already failed")
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self._fail()
            raise
    return wrapper


class ThreePhase:
    """One party's side of one session; see docs/THREEPHASE.md for the protocol."""

    def __init__(self, role: Role, local_name: str, local_key, trust: TrustSet, *, peer_name: str | None = None,
                 local_public: rsa.RSAPublicKey | None = None, phase_timeout: float = 30.0,
                 max_frame: int = DEFAULT_MAX_FRAME, key_source: KeySource | None = None) -> None:
        self.role = Role(role)
        self.local_name = check_name(local_name)
        self._key, self._trust = local_key, trust
        self._fp = fingerprint(local_public if local_public is not None else local_key.public_key())
        if self.role is Role.INITIATOR:
            if peer_name is None:
                raise ConfigError("the initiator must name its peer")
            trust.key_for(peer_name)
        self.peer_name, self.phase_timeout, self.max_frame = peer_name, phase_timeout, max_frame
        self.max_record = max_frame - 1 - TAG_LEN
        self._key_source = key_source or new_session_key
        self.state = State.IDLE
        self.deadline: float | None = None
        self.our_closed = self.their_closed = self._eof = False
        self._in, self._out = bytearray(), bytearray()
        self._m1 = self._mac3 = b""
        self._a: SessionKey | None = None
        self._send_aead = self._recv_aead = None
        self._send_seq = self._recv_seq = 0

    # -- public API ----------------------------------------------------------

    @property
    def handshaking(self) -> bool:
        return self.state in _HANDSHAKE or self.state is State.IDLE

    @property
    def expecting(self) -> str:
        return {State.AWAIT_PHASE1: "phase 1", State.AWAIT_PHASE2: "phase 2",
                State.AWAIT_PHASE3: "phase 3"}.get(self.state, "a record")

    @_guarded
    def start(self, now: float = 0.0) -> None:
        if self.state is not State.IDLE:
            raise ProtocolError("start() called twice")
        if self.role is Role.INITIATOR:
            peer_key = self._trust.key_for(self.peer_name)
            self._a, blob = self._key_source(peer_key)
            name_i, name_r = self.local_name.encode(), self.peer_name.encode()
            self._m1 = b"".join((bytes([MsgType.PHASE1, PROTOCOL_VERSION, len(name_i)]), name_i,
                                 bytes([len(name_r)]), name_r, self._fp, self._trust.fingerprint(self.peer_name),
                                 len(blob).to_bytes(2, "big"), blob))
            self._out += frame(self._m1)
            self._enter(State.AWAIT_PHASE2, now)
        else:
            self._enter(State.AWAIT_PHASE1, now)

    @_guarded
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means end of stream."""
        if not data:
            self._eof = True
        elif self._eof:
            raise ProtocolError("data after end of stream")
        else:
            self._in += data

    @_guarded
    def next_event(self, now: float | None = None) -> Event:
        while True:
            if self.state in _HANDSHAKE and now is not None and self.deadline is not None and now > self.deadline:
                raise PhaseTimeout(f"timed out waiting for {self.expecting} ({self.phase_timeout:g} s)")
            payload = self._next_frame()
            if payload is None:
                return self._at_end() if self._eof else NEED_DATA
            event = self._dispatch(payload, now)
            if event is not None:
                return event

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @_guarded
    def send(self, event: Data | Close) -> bytes:
        if self.state not in (State.OPEN, State.CLOSED):
            raise ProtocolError("cannot send records before the handshake is complete")
        if self.our_closed:
            raise ProtocolError("this side has already sent its close record")
        if isinstance(event, Data):
            if len(event.data) > self.max_record:
                raise ProtocolError(f"a record carries at most {self.max_record} bytes")
            record = self._seal(MsgType.DATA, bytes(event.data))
        elif isinstance(event, Close):
            record = self._seal(MsgType.CLOSE, b"")
            self.our_closed = True
            self._maybe_closed()
        else:
            raise TypeError(f"cannot send {event!r}")
        return self.data_to_send() + record

    def abort(self, exc: BaseException | None = None) -> bytes:
        """Enter ERROR; returns the ABORT frame to send (``b""`` if the peer aborted)."""
        self._fail()
        if isinstance(exc, PeerAborted):
            return b""
        code = getattr(exc, "abort_code", APPLICATION_ERROR if isinstance(exc, TokenCSPError) else 0)
        return frame(bytes([MsgType.ABORT, code]))

    # -- internals -----------------------------------------------------------

    def _enter(self, state: State, now: float | None) -> None:
        self.state = state
        self.deadline = None if now is None or state not in _HANDSHAKE else now + self.phase_timeout

    def _fail(self) -> None:
        self.state = State.ERROR
        self.deadline = None
        self._send_aead = self._recv_aead = None
        if self._a is not None:
            self._a.wipe()
            self._a = None

    def _next_frame(self) -> bytes | None:
        if len(self._in) < 4:
            return None
        (length,) = _LEN.unpack_from(self._in)
        check_frame_length(length, self.max_frame)
        if len(self._in) < 4 + length:
            return None
        payload = bytes(self._in[4 : 4 + length])
        del self._in[: 4 + length]
        return payload

    def _at_end(self) -> Event:
        if self._in:
            raise PeerDisconnected("the connection ended in the middle of a frame")
        if self.state in _HANDSHAKE or self.state is State.IDLE:
            raise PeerDisconnected(f"the peer closed the connection while waiting for {self.expecting}")
        if not self.their_closed:
            raise TruncatedSession("the connection ended without the peer's close record (truncated)")
        return ConnectionClosed()

    def _dispatch(self, payload: bytes, now: float | None) -> Event | None:
        kind = payload[0]
        if kind == MsgType.ABORT:
            reason = payload[1] if len(payload) == 2 else 0
            raise PeerAborted(reason, ABORT_REASONS.get(reason, f"reason code {reason}"))
        expected = {State.AWAIT_PHASE1: MsgType.PHASE1, State.AWAIT_PHASE2: MsgType.PHASE2,
                    State.AWAIT_PHASE3: MsgType.PHASE3}.get(self.state)
        if self.state in (State.OPEN, State.CLOSED):
            return self._open_record(kind, payload)
        if expected is None or kind != expected:
            raise ProtocolError(f"unexpected message type 0x{kind:02x} while {self.state.value}")
        if kind == MsgType.PHASE1:
            self._on_phase1(payload, now)
            return None
        if kind == MsgType.PHASE2:
            return self._on_phase2(payload)
        return self._on_phase3(payload)

    def _import(self, blob_bytes: bytes, what: str) -> SessionKey:
        try:
            blob = SimpleBlob.from_bytes(blob_bytes)
        except (BlobFormatError, UnsupportedAlgorithm, ValueError):
            raise ProtocolError(f"SIMPLEBLOB {what} is malformed") from None
        if blob.alg_id is not AlgId.CALG_AES_256:
            raise ProtocolError(f"SIMPLEBLOB {what} is not an AES-256 key")
        # Implicit rejection: answering a bad blob differently from a good one
        # (an ABORT now instead of phase 2) would be a padding oracle on this
        # party's key for anyone who claims a trusted name.  A tokencsp
        # ExchangeKey substitutes a derived key and the MAC check fails later.
        implicit = getattr(self._key, "import_simpleblob_implicit", None)
        if implicit is not None:
            return implicit(blob, oaep=True)
        try:
            return self._key.import_simpleblob(blob, oaep=True)
        except SessionKeyImportError:
            raise PeerAuthenticationFailed(f"session key {what} could not be imported with this party's key") from None

    def _on_phase1(self, m1: bytes, now: float | None) -> None:
        r = _Reader(m1, "phase 1")
        if r.take(1)[0] != PROTOCOL_VERSION:
            raise ProtocolError("unsupported protocol version")
        name_i, name_r = r.name(), r.name()
        fp_i, fp_r = r.take(FP_LEN), r.take(FP_LEN)
        blob_a = r.length(2)
        r.end()
        if name_r != self.local_name:
            raise ProtocolError(f"phase 1 is addressed to {name_r!r}, not to {self.local_name!r}")
        peer_key = self._trust.key_for(name_i)
        if not hmac.compare_digest(fp_i, self._trust.fingerprint(name_i)):
            raise PeerAuthenticationFailed(f"the key presented by {name_i!r} is not the trusted key for that name")
        if not hmac.compare_digest(fp_r, self._fp):
            raise PeerAuthenticationFailed("phase 1 was made for a different public key than this party's")
        self.peer_name = name_i
        a = self._import(blob_a, "A")
        b, blob_b = self._key_source(peer_key)
        try:
            m2_prefix = bytes([MsgType.PHASE2]) + len(blob_b).to_bytes(2, "big") + blob_b
            mac2 = self._derive(a.key, b.key, m1, m2_prefix)
        finally:
            a.wipe()
            b.wipe()
        self._out += frame(m2_prefix + mac2)
        self._enter(State.AWAIT_PHASE3, now)

    def _on_phase2(self, m2: bytes) -> Event:
        r = _Reader(m2, "phase 2")
        blob_b = r.length(2)
        mac2 = r.take(MAC_LEN)
        r.end()
        b = self._import(blob_b, "B")
        try:
            expected = self._derive(self._a.key, b.key, self._m1, m2[:-MAC_LEN])
        finally:
            b.wipe()
            self._a.wipe()
            self._a = None
        if not hmac.compare_digest(mac2, expected):
            raise PeerAuthenticationFailed("phase 2 MAC mismatch: the responder did not prove it holds its key")
        self._out += frame(bytes([MsgType.PHASE3]) + self._mac3)
        return self._open()

    def _on_phase3(self, m3: bytes) -> Event:
        r = _Reader(m3, "phase 3")
        mac3 = r.take(MAC_LEN)
        r.end()
        if not hmac.compare_digest(mac3, self._mac3):
            raise PeerAuthenticationFailed(
                f"phase 3 MAC mismatch: the initiator did not prove it holds the key of {self.peer_name!r}")
        return self._open()

    def _derive(self, a: bytes, b: bytes, m1: bytes, m2_prefix: bytes) -> bytes:
        """Set up mac3 and both traffic keys; return mac2."""
        th = transcript_hash(m1, m2_prefix)
        keys = derive_keys(a, b, th)
        self._mac3 = _hmac(keys["k3"], b"phase 3" + th)
        mine, theirs = ("ir", "ri") if self.role is Role.INITIATOR else ("ri", "ir")
        self._send_aead, self._recv_aead = AESGCM(keys[mine]), AESGCM(keys[theirs])
        return _hmac(keys["k2"], b"phase 2" + th)

    def _open(self) -> HandshakeComplete:
        self._enter(State.OPEN, None)
        return HandshakeComplete(self.peer_name, self._trust.fingerprint(self.peer_name))

    @staticmethod
    def _nonce(seq: int) -> bytes:
        if seq >= 1 << 64:
            raise ProtocolError("record sequence number exhausted")
        return bytes(4) + seq.to_bytes(8, "big")

    def _seal(self, kind: MsgType, plaintext: bytes) -> bytes:
        nonce = self._nonce(self._send_seq)
        self._send_seq += 1
        return frame(bytes([kind]) + self._send_aead.encrypt(nonce, plaintext, bytes([kind])))

    def _open_record(self, kind: int, payload: bytes) -> Event:
        if kind not in (MsgType.DATA, MsgType.CLOSE):
            raise ProtocolError(f"unexpected message type 0x{kind:02x} on the record channel")
        if self.their_closed:
            raise ProtocolError("the peer sent a record after its close record")
        try:
            plaintext = self._recv_aead.decrypt(self._nonce(self._recv_seq), payload[1:], bytes([kind]))
        except InvalidTag:
            raise RecordError("record authentication failed (altered, replayed, reordered or dropped)") from None
        self._recv_seq += 1
        if kind == MsgType.DATA:
            return Data(plaintext)
        if plaintext:
            raise ProtocolError("a close record must be empty")
        self.their_closed = True
        self._maybe_closed()
        return Close()

    def _maybe_closed(self) -> None:
        if self.our_closed and self.their_closed:
            self.state = State.CLOSED
