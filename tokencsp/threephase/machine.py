"""The sans-IO ThreePhase machine (docs/THREEPHASE.md, "State machines").

No sockets, no clock, no threads: bytes go in with :meth:`ThreePhase.receive_data`,
events come out of :meth:`ThreePhase.next_event`, bytes to send come out of
:meth:`ThreePhase.data_to_send` and :meth:`ThreePhase.send`.  The only blocking
call is the local party's ``import_simpleblob`` (a token unwrap), made inside
``next_event`` while the handshake runs: transports call it from a worker
thread then.

What may happen in each state is data: :data:`TRANSITIONS` (the session) and
:data:`HALF_TRANSITIONS` (each direction of the record channel).  A trigger
not in the table is a :class:`LocalProtocolError` when this party caused it
(a call) and a :class:`RemoteProtocolError` when the peer did (a message).
Any error moves the machine to ``ERROR``, which is final.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Concatenate, Final, ParamSpec, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from ..blobs import AlgId, SimpleBlob
from ..errors import (
    BlobFormatError,
    ConfigError,
    InvalidKeyError,
    LocalProtocolError,
    PeerAborted,
    PeerAuthenticationFailed,
    PeerDisconnected,
    PhaseTimeout,
    RemoteProtocolError,
    SessionKeyImportError,
    TokenCSPError,
    TruncatedSession,
    UnsupportedAlgorithm,
)
from ..pubkeys import fingerprint
from ..session import SessionKey
from ..trust import TrustSet, check_name
from .keyschedule import schedule
from .messages import (
    APPLICATION_ERROR,
    DEFAULT_MAX_FRAME,
    LENGTH_PREFIX,
    TAG_LEN,
    UNSPECIFIED,
    Abort,
    MsgType,
    Phase1,
    Phase2,
    Phase3,
    check_frame_length,
    frame,
    frame_length,
)
from .records import RecordProtection

__all__ = [
    "HALF_TRANSITIONS",
    "NEED_DATA",
    "TRANSITIONS",
    "Close",
    "ConnectionClosed",
    "Data",
    "Event",
    "ExchangeKeyLike",
    "Half",
    "HandshakeComplete",
    "KeySource",
    "Role",
    "State",
    "ThreePhase",
    "Trigger",
    "new_session_key",
]


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


class Half(Enum):
    """One direction of the record channel."""

    OPEN = "open"
    CLOSED = "closed"


class Trigger(Enum):
    """What this party does to its own machine (the peer's triggers are message types)."""

    START = "start()"
    SEND_DATA = "send(Data)"
    SEND_CLOSE = "send(Close)"



def _records(state: State) -> dict[Trigger | MsgType, State]:
    # Records keep the session where it is; HALF_TRANSITIONS decides which
    # direction may still carry one, and CLOSED is reached when both are closed.
    return {MsgType.DATA: state, MsgType.CLOSE: state, Trigger.SEND_DATA: state, Trigger.SEND_CLOSE: state}


_MOVES: dict[tuple[Role, State], dict[Trigger | MsgType, State]] = {
    (Role.INITIATOR, State.IDLE): {Trigger.START: State.AWAIT_PHASE2},
    (Role.RESPONDER, State.IDLE): {Trigger.START: State.AWAIT_PHASE1},
    (Role.RESPONDER, State.AWAIT_PHASE1): {MsgType.PHASE1: State.AWAIT_PHASE3},
    (Role.INITIATOR, State.AWAIT_PHASE2): {MsgType.PHASE2: State.OPEN},
    (Role.RESPONDER, State.AWAIT_PHASE3): {MsgType.PHASE3: State.OPEN},
    **{(role, state): _records(state) for role in Role for state in (State.OPEN, State.CLOSED)},
}

# (role, state) -> {trigger: next state}.  ABORT from the peer is accepted in
# every state but ERROR and ends in ERROR; nothing leaves ERROR.
TRANSITIONS: Final[Mapping[tuple[Role, State], Mapping[Trigger | MsgType, State]]] = {
    **{key: {**moves, MsgType.ABORT: State.ERROR} for key, moves in _MOVES.items()},
    **{(role, State.ERROR): {} for role in Role},
}

# Each direction: records until its CLOSE, nothing after it -- not even a duplicate.
HALF_TRANSITIONS: Final[Mapping[Half, Mapping[MsgType, Half]]] = {
    Half.OPEN: {MsgType.DATA: Half.OPEN, MsgType.CLOSE: Half.CLOSED},
    Half.CLOSED: {},
}

_HANDSHAKE: Final = frozenset({State.AWAIT_PHASE1, State.AWAIT_PHASE2, State.AWAIT_PHASE3})
_EXPECTING: Final = {State.AWAIT_PHASE1: "phase 1", State.AWAIT_PHASE2: "phase 2", State.AWAIT_PHASE3: "phase 3"}


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


NEED_DATA: Final = _NeedData()
Event = HandshakeComplete | Data | Close | ConnectionClosed | _NeedData


class ExchangeKeyLike(Protocol):
    """What the machine needs of the local party's key (tokencsp.provider.ExchangeKey)."""

    def import_simpleblob(self, blob: SimpleBlob, oaep: bool = ...) -> SessionKey: ...

    def public_key(self) -> rsa.RSAPublicKey: ...


KeySource = Callable[[rsa.RSAPublicKey], "tuple[SessionKey, bytes]"]
_ImplicitImport = Callable[..., SessionKey]


def new_session_key(recipient: rsa.RSAPublicKey) -> tuple[SessionKey, bytes]:
    """The default key source: a fresh AES-256 key and its OAEP SIMPLEBLOB."""
    key = SessionKey.generate("aes256")
    return key, key.export_simpleblob(recipient, oaep=True)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(method: Callable[Concatenate[ThreePhase, _P], _R]) -> Callable[Concatenate[ThreePhase, _P], _R]:
    """ERROR is final; any exception on the way in moves the machine there."""

    def wrapper(self: ThreePhase, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self.state is State.ERROR:
            raise LocalProtocolError("the session has already failed")
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self._fail()
            raise

    functools.update_wrapper(wrapper, method)
    return wrapper


class ThreePhase:
    """One party's side of one session; see docs/THREEPHASE.md for the protocol."""

    def __init__(self, role: Role, local_name: str, local_key: ExchangeKeyLike, trust: TrustSet, *,
                 peer_name: str | None = None, local_public: rsa.RSAPublicKey | None = None,
                 phase_timeout: float = 30.0, max_frame: int = DEFAULT_MAX_FRAME,
                 key_source: KeySource | None = None) -> None:
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
        self.authenticated = False  # the peer proved its key (mac2 for the initiator, mac3 for the responder)
        self.ours, self.theirs = Half.OPEN, Half.OPEN
        self.deadline: float | None = None
        self._eof = False
        self._in, self._out = bytearray(), bytearray()
        self._m1 = self._mac3 = b""
        self._a: SessionKey | None = None
        self._send_aead: RecordProtection | None = None
        self._recv_aead: RecordProtection | None = None

    # -- public API ----------------------------------------------------------

    @property
    def our_closed(self) -> bool:
        return self.ours is Half.CLOSED

    @property
    def their_closed(self) -> bool:
        return self.theirs is Half.CLOSED

    @property
    def handshaking(self) -> bool:
        return self.state in _HANDSHAKE or self.state is State.IDLE

    @property
    def expecting(self) -> str:
        return _EXPECTING.get(self.state, "a record")

    @_guarded
    def start(self, now: float = 0.0) -> None:
        after = self._local(Trigger.START, "start() called twice")
        if self.role is Role.INITIATOR:
            assert self.peer_name is not None  # checked in __init__
            self._a, blob = self._key_source(self._trust.key_for(self.peer_name))
            self._m1 = Phase1(self.local_name, self.peer_name, self._fp, self._trust.fingerprint(self.peer_name),
                              blob).to_bytes()
            self._out += frame(self._m1)
        self._enter(after, now)

    @_guarded
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means end of stream."""
        if not data:
            self._eof = True
        elif self._eof:
            raise LocalProtocolError("data after end of stream")
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
        if isinstance(event, Data):
            trigger, kind = Trigger.SEND_DATA, MsgType.DATA
        elif isinstance(event, Close):
            trigger, kind = Trigger.SEND_CLOSE, MsgType.CLOSE
        else:
            raise TypeError(f"cannot send {event!r}")
        self._local(trigger, "cannot send records before the handshake is complete")
        if kind not in HALF_TRANSITIONS[self.ours]:
            raise LocalProtocolError("this side has already sent its close record")
        plaintext = bytes(event.data) if isinstance(event, Data) else b""
        if len(plaintext) > self.max_record:
            raise LocalProtocolError(f"a record carries at most {self.max_record} bytes")
        assert self._send_aead is not None  # OPEN implies the handshake derived it
        record = frame(self._send_aead.seal(kind, plaintext))
        self.ours = HALF_TRANSITIONS[self.ours][kind]
        self._maybe_closed()
        return self.data_to_send() + record

    def abort(self, exc: BaseException | None = None) -> bytes:
        """Enter ERROR; returns the ABORT frame to send (``b""`` if the peer aborted).

        Until the peer has authenticated, every ABORT carries the same reason
        (0): an unknown name, a key that does not match it and a failed proof
        must look alike to a party that has proved nothing.
        """
        self._fail()
        if isinstance(exc, PeerAborted):
            return b""
        code = getattr(exc, "abort_code", APPLICATION_ERROR if isinstance(exc, TokenCSPError) else UNSPECIFIED)
        return frame(Abort(code if self.authenticated else UNSPECIFIED).to_bytes())

    # -- the tables ----------------------------------------------------------

    def _local(self, trigger: Trigger, refusal: str) -> State:
        after = TRANSITIONS[self.role, self.state].get(trigger)
        if after is None:
            raise LocalProtocolError(refusal)
        return after

    def _remote(self, kind: int) -> State:
        try:
            after = TRANSITIONS[self.role, self.state].get(MsgType(kind))
        except ValueError:  # not a message type at all
            after = None
        if after is None:
            where = "on the record channel" if self.state in (State.OPEN, State.CLOSED) else f"while {self.state.value}"
            raise RemoteProtocolError(f"unexpected message type 0x{kind:02x} {where}")
        return after

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
        if len(self._in) < LENGTH_PREFIX:
            return None
        length = frame_length(self._in)
        check_frame_length(length, self.max_frame)
        if len(self._in) < LENGTH_PREFIX + length:
            return None
        payload = bytes(self._in[LENGTH_PREFIX : LENGTH_PREFIX + length])
        del self._in[: LENGTH_PREFIX + length]
        return payload

    def _at_end(self) -> Event:
        if self._in:
            raise PeerDisconnected("the connection ended in the middle of a frame")
        if self.handshaking:
            raise PeerDisconnected(f"the peer closed the connection while waiting for {self.expecting}")
        if not self.their_closed:
            raise TruncatedSession("the connection ended without the peer's close record (truncated)")
        return ConnectionClosed()

    def _dispatch(self, payload: bytes, now: float | None) -> Event | None:
        after = self._remote(payload[0])
        kind = MsgType(payload[0])
        if kind is MsgType.ABORT:
            abort = Abort.parse(payload)
            raise PeerAborted(abort.reason, abort.description)
        if kind is MsgType.PHASE1:
            self._on_phase1(payload)
            self._enter(after, now)
            return None
        if kind is MsgType.PHASE2:
            event = self._on_phase2(payload)
        elif kind is MsgType.PHASE3:
            event = self._on_phase3(payload)
        else:
            return self._on_record(kind, payload)
        self._enter(after, now)
        return event

    def _import(self, blob_bytes: bytes, what: str) -> SessionKey:
        try:
            blob = SimpleBlob.from_bytes(blob_bytes)
        except (BlobFormatError, UnsupportedAlgorithm, InvalidKeyError, ValueError):
            raise RemoteProtocolError(f"SIMPLEBLOB {what} is malformed") from None
        if blob.alg_id is not AlgId.CALG_AES_256:
            raise RemoteProtocolError(f"SIMPLEBLOB {what} is not an AES-256 key")
        # Implicit rejection: answering a bad blob differently from a good one
        # (an ABORT now instead of phase 2) would be a padding oracle on this
        # party's key for anyone who claims a trusted name.  A tokencsp
        # ExchangeKey substitutes a derived key and the MAC check fails later.
        implicit: _ImplicitImport | None = getattr(self._key, "import_simpleblob_implicit", None)
        if implicit is not None:
            return implicit(blob, oaep=True)
        try:
            return self._key.import_simpleblob(blob, oaep=True)
        except SessionKeyImportError:
            raise PeerAuthenticationFailed(f"session key {what} could not be imported with this party's key") from None

    def _on_phase1(self, m1: bytes) -> None:
        msg = Phase1.parse(m1)
        if msg.responder != self.local_name:
            raise RemoteProtocolError(f"phase 1 is addressed to {msg.responder!r}, not to {self.local_name!r}")
        peer_key = self._trust.key_for(msg.initiator)
        if not hmac.compare_digest(msg.fp_initiator, self._trust.fingerprint(msg.initiator)):
            raise PeerAuthenticationFailed(
                f"the key presented by {msg.initiator!r} is not the trusted key for that name")
        if not hmac.compare_digest(msg.fp_responder, self._fp):
            raise PeerAuthenticationFailed("phase 1 was made for a different public key than this party's")
        self.peer_name = msg.initiator
        a = self._import(msg.blob_a, "A")
        b, blob_b = self._key_source(peer_key)
        try:
            m2_prefix = Phase2.prefix_for(blob_b)
            mac2 = self._derive(a.key, b.key, m1, m2_prefix)
        finally:
            a.wipe()
            b.wipe()
        self._out += frame(Phase2(blob_b, mac2).to_bytes())

    def _on_phase2(self, m2: bytes) -> HandshakeComplete:
        msg = Phase2.parse(m2)
        b = self._import(msg.blob_b, "B")
        assert self._a is not None  # made by start()
        try:
            expected = self._derive(self._a.key, b.key, self._m1, msg.prefix)
        finally:
            b.wipe()
            self._a.wipe()
            self._a = None
        if not hmac.compare_digest(msg.mac2, expected):
            raise PeerAuthenticationFailed("phase 2 MAC mismatch: the responder did not prove it holds its key")
        self._out += frame(Phase3(self._mac3).to_bytes())
        return self._complete()

    def _on_phase3(self, m3: bytes) -> HandshakeComplete:
        msg = Phase3.parse(m3)
        if not hmac.compare_digest(msg.mac3, self._mac3):
            raise PeerAuthenticationFailed(
                f"phase 3 MAC mismatch: the initiator did not prove it holds the key of {self.peer_name!r}")
        return self._complete()

    def _derive(self, a: bytes, b: bytes, m1: bytes, m2_prefix: bytes) -> bytes:
        """Set up mac3 and both traffic keys; return mac2."""
        keys = schedule(a, b, m1, m2_prefix)
        self._mac3 = keys.mac3
        mine, theirs = (keys.key_ir, keys.key_ri) if self.role is Role.INITIATOR else (keys.key_ri, keys.key_ir)
        self._send_aead, self._recv_aead = RecordProtection(mine), RecordProtection(theirs)
        return keys.mac2

    def _complete(self) -> HandshakeComplete:
        assert self.peer_name is not None
        self.authenticated = True
        return HandshakeComplete(self.peer_name, self._trust.fingerprint(self.peer_name))

    def _on_record(self, kind: MsgType, payload: bytes) -> Event:
        after = HALF_TRANSITIONS[self.theirs].get(kind)
        if after is None:
            raise RemoteProtocolError("the peer sent a record after its close record")
        assert self._recv_aead is not None
        plaintext = self._recv_aead.open(payload)
        if kind is MsgType.DATA:
            return Data(plaintext)
        if plaintext:
            raise RemoteProtocolError("a close record must be empty")
        self.theirs = after
        self._maybe_closed()
        return Close()

    def _maybe_closed(self) -> None:
        if self.our_closed and self.their_closed:
            self.state = State.CLOSED
