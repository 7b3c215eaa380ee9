"""Three-phase frames and handshake messages (docs/THREEPHASE.md, "Wire format"): bytes only.

No I/O, no token, no keys: each message is a frozen dataclass with
``to_bytes()`` and a ``parse()`` that accepts exactly the documented layout
and raises :class:`RemoteProtocolError` (or :class:`FrameTooLarge`) for
anything else -- these bytes always come from the peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .._wire import U32_MAX, be_bytes, check_empty, from_be, reraise_as, take_bytes, take_prefixed, uint_be, view
from ..errors import ConfigError, FrameTooLarge, RemoteProtocolError
from ..trust import check_name

__all__ = [
    "ABORT_REASONS",
    "APPLICATION_ERROR",
    "DEFAULT_MAX_FRAME",
    "FP_LEN",
    "LENGTH_PREFIX",
    "MAC_LEN",
    "PROTOCOL_VERSION",
    "TAG_LEN",
    "UNSPECIFIED",
    "Abort",
    "MsgType",
    "Phase1",
    "Phase2",
    "Phase3",
    "check_frame_length",
    "frame",
    "frame_length",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20
FP_LEN = MAC_LEN = 32
TAG_LEN = 16
LENGTH_PREFIX = 4


class MsgType(IntEnum):
    PHASE1 = 0x01
    PHASE2 = 0x02
    PHASE3 = 0x03
    CLOSE = 0x15
    DATA = 0x17
    ABORT = 0x7F


UNSPECIFIED = 0
APPLICATION_ERROR = 6
ABORT_REASONS = {UNSPECIFIED: "no reason given", 1: "protocol error", 2: "authentication failed",
                 3: "unknown peer", 4: "timeout", 5: "frame too large", APPLICATION_ERROR: "application error"}


def check_frame_length(length: int, max_frame: int) -> None:
    """Refuse a frame from its length prefix alone, before any body is read."""
    if length == 0:
        raise RemoteProtocolError("empty frame")
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_frame} bytes")


def frame_length(prefix: bytes | bytearray | memoryview) -> int:
    """The payload length in a 4-byte frame prefix."""
    return from_be(prefix[:LENGTH_PREFIX])


def frame(payload: bytes) -> bytes:
    if len(payload) > U32_MAX:
        raise ValueError("a frame carries at most 2^32 - 1 bytes")
    return be_bytes(len(payload), LENGTH_PREFIX) + payload


def _name(data: memoryview, what: str) -> tuple[str, memoryview]:
    raw, rest = take_prefixed(data, 1, what)
    try:
        return check_name(bytes(raw).decode("utf-8")), rest
    except (UnicodeDecodeError, ConfigError):
        raise RemoteProtocolError(f"malformed {what}") from None


def _malformed(what: str) -> Callable[[str], RemoteProtocolError]:
    return lambda detail: RemoteProtocolError(f"malformed {what} message: {detail}")


def _expect_type(data: bytes, kind: MsgType) -> None:
    if not data or data[0] != kind:
        raise RemoteProtocolError(f"not a {kind.name} message")


@dataclass(frozen=True)
class Phase1:
    initiator: str
    responder: str
    fp_initiator: bytes
    fp_responder: bytes
    blob_a: bytes
    version: int = PROTOCOL_VERSION

    def to_bytes(self) -> bytes:
        name_i, name_r = check_name(self.initiator).encode(), check_name(self.responder).encode()
        return b"".join((bytes([MsgType.PHASE1, self.version, len(name_i)]), name_i, bytes([len(name_r)]), name_r,
                         self.fp_initiator, self.fp_responder, be_bytes(len(self.blob_a), 2), self.blob_a))

    @classmethod
    def parse(cls, data: bytes) -> Phase1:
        _expect_type(data, MsgType.PHASE1)
        with reraise_as(_malformed("phase 1")):
            version, rest = uint_be(view(data)[1:], 1, "version")
            if version != PROTOCOL_VERSION:
                raise RemoteProtocolError("unsupported protocol version")
            name_i, rest = _name(rest, "initiator name")
            name_r, rest = _name(rest, "responder name")
            fp_i, rest = take_bytes(rest, FP_LEN, "initiator fingerprint")
            fp_r, rest = take_bytes(rest, FP_LEN, "responder fingerprint")
            blob_a, rest = take_prefixed(rest, 2, "SIMPLEBLOB A")
            check_empty(rest, "phase 1 message")
        return cls(name_i, name_r, fp_i, fp_r, bytes(blob_a))


@dataclass(frozen=True)
class Phase2:
    blob_b: bytes
    mac2: bytes

    @staticmethod
    def prefix_for(blob_b: bytes) -> bytes:
        """The payload without its MAC (``M2'``): what the transcript hash covers."""
        return bytes([MsgType.PHASE2]) + be_bytes(len(blob_b), 2) + blob_b

    @property
    def prefix(self) -> bytes:
        return self.prefix_for(self.blob_b)

    def to_bytes(self) -> bytes:
        return self.prefix + self.mac2

    @classmethod
    def parse(cls, data: bytes) -> Phase2:
        _expect_type(data, MsgType.PHASE2)
        with reraise_as(_malformed("phase 2")):
            blob_b, rest = take_prefixed(view(data)[1:], 2, "SIMPLEBLOB B")
            mac2, rest = take_bytes(rest, MAC_LEN, "MAC")
            check_empty(rest, "phase 2 message")
        return cls(bytes(blob_b), mac2)


@dataclass(frozen=True)
class Phase3:
    mac3: bytes

    def to_bytes(self) -> bytes:
        return bytes([MsgType.PHASE3]) + self.mac3

    @classmethod
    def parse(cls, data: bytes) -> Phase3:
        _expect_type(data, MsgType.PHASE3)
        with reraise_as(_malformed("phase 3")):
            mac3, rest = take_bytes(view(data)[1:], MAC_LEN, "MAC")
            check_empty(rest, "phase 3 message")
        return cls(mac3)


@dataclass(frozen=True)
class Abort:
    reason: int = UNSPECIFIED

    @property
    def description(self) -> str:
        return ABORT_REASONS.get(self.reason, f"reason code {self.reason}")

    def to_bytes(self) -> bytes:
        return bytes([MsgType.ABORT, self.reason])

    @classmethod
    def parse(cls, data: bytes) -> Abort:
        """Lenient on purpose: an ABORT ends the session whatever it carries."""
        _expect_type(data, MsgType.ABORT)
        return cls(data[1] if len(data) == 2 else UNSPECIFIED)
