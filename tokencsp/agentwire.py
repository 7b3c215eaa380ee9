"""The agent protocol's byte format (docs/AGENT.md): frames, requests, responses.  Pure.

:class:`FrameReader` is the receiving side's state machine: bytes go in as
they arrive, whole frame bodies come out; a frame over its bound is refused
from its length prefix alone, before its body is awaited.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import AgentError

__all__ = ["MAX_FIELDS", "MAX_REQUEST", "MAX_RESPONSE", "FrameReader", "Kind", "Message", "Op", "decode",
           "encode", "frame"]

MAX_REQUEST = 16 * 1024
MAX_RESPONSE = 1024 * 1024
MAX_FIELDS = 8
_LEN = struct.Struct(">I")


class Op(IntEnum):
    STATUS = 1
    LOGIN = 2
    PUBLIC = 3
    LIST = 4
    IMPORT = 5
    SIGN = 6
    STOP = 7


class Kind(IntEnum):
    OK = 0
    ERROR = 1
    NEED_PIN = 2


@dataclass(frozen=True)
class Message:
    """A request (``code`` an :class:`Op`) or a response (``code`` a :class:`Kind`) and its fields."""

    code: int
    fields: tuple[bytes, ...] = ()


def encode(code: int, *fields: bytes) -> bytes:
    """One message body (not yet framed)."""
    if not 0 <= code <= 255 or len(fields) > MAX_FIELDS:
        raise AgentError("agent protocol: message code or field count out of range")
    return bytes([code, len(fields)]) + b"".join(_LEN.pack(len(f)) + f for f in fields)


def decode(body: bytes, codes: type[IntEnum]) -> Message:
    """A body as a message whose code is one of ``codes``; fields must fill it exactly."""
    if len(body) < 2:
        raise AgentError("agent protocol: message too short")
    code, count = body[0], body[1]
    if code not in {int(c) for c in codes}:
        raise AgentError(f"agent protocol: unknown {codes.__name__.lower()} {code}")
    if count > MAX_FIELDS:
        raise AgentError("agent protocol: too many fields")
    fields = []
    at = 2
    for _ in range(count):
        if len(body) - at < _LEN.size:
            raise AgentError("agent protocol: field length cut short")
        (length,) = _LEN.unpack_from(body, at)
        at += _LEN.size
        if length > len(body) - at:
            raise AgentError("agent protocol: field longer than the message")
        fields.append(bytes(body[at:at + length]))
        at += length
    if at != len(body):
        raise AgentError("agent protocol: bytes after the last field")
    return Message(codes(code), tuple(fields))


def frame(body: bytes, limit: int) -> bytes:
    if len(body) > limit:
        raise AgentError(f"agent protocol: a message of {len(body)} bytes is over the {limit}-byte limit")
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Bytes in (:meth:`feed`), frame bodies out; refuses a frame over ``limit`` from its length prefix."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._want: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        bodies: list[bytes] = []
        while True:
            if self._want is None:
                if len(self._buffer) < _LEN.size:
                    return bodies
                (self._want,) = _LEN.unpack_from(self._buffer)
                del self._buffer[:_LEN.size]
                if self._want > self.limit:
                    raise AgentError(f"agent protocol: a frame of {self._want} bytes is over the "
                                     f"{self.limit}-byte limit")
            if len(self._buffer) < self._want:
                return bodies
            bodies.append(bytes(self._buffer[:self._want]))
            del self._buffer[:self._want]
            self._want = None

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a whole frame."""
        return len(self._buffer) + (_LEN.size if self._want is not None else 0)
