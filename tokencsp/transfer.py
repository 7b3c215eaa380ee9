"""The file-transfer application inside three-phase DATA records (docs/THREEPHASE.md), sans-IO.

No sockets and no files: :class:`FileReceiver` turns the sender's record
payloads into :class:`FileStart` / :class:`FileChunk` / :class:`FileEnd`
events and refuses anything out of order; the builders make the sender's
records and :func:`check_ack` checks the receiver's confirmation.  Every
refusal of the peer's bytes is a :class:`RemoteProtocolError`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ._wire import WireError, be_bytes, check_empty, take_prefixed, uint_be, view
from .errors import ConfigError, RemoteProtocolError

__all__ = [
    "KIND_ACK",
    "KIND_DATA",
    "KIND_HEADER",
    "MAX_NAME_BYTES",
    "FileChunk",
    "FileEnd",
    "FileHeader",
    "FileReceiver",
    "FileStart",
    "ack_record",
    "check_ack",
    "check_file_name",
    "data_record",
]

KIND_HEADER, KIND_DATA, KIND_ACK = b"H", b"D", b"K"
MAX_NAME_BYTES = 255
_DIGEST_LEN = hashlib.sha256().digest_size


def check_file_name(name: str) -> str:
    """A received file name must be one plain path component (no traversal, no dot-files)."""
    if (not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0")
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
            or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES):
        raise RemoteProtocolError(f"refused file name {name!r}")
    return name


def check_peer_directory(peer: str) -> str:
    """Received files go to ``out_dir/<peer>/``: a trusted name must be usable as that one directory name.

    Checked for every trusted name before the listener starts, so that the
    authenticated peer's name alone decides where its files land and one peer
    can never replace a file another peer delivered.
    """
    try:
        return check_file_name(peer)
    except RemoteProtocolError:
        raise ConfigError(f"trusted name {peer!r} cannot be a directory name for received files") from None


@dataclass(frozen=True)
class FileHeader:
    name: str
    size: int

    def to_bytes(self) -> bytes:
        encoded = check_file_name(self.name).encode("utf-8")
        return KIND_HEADER + be_bytes(len(encoded), 2) + encoded + be_bytes(self.size, 8)

    @classmethod
    def parse(cls, data: bytes) -> FileHeader:
        """``data`` is the whole record, kind byte included; the layout must be exact."""
        if data[:1] != KIND_HEADER:
            raise RemoteProtocolError("malformed file header")
        try:
            raw, rest = take_prefixed(view(data)[1:], 2, "file name")
            size, rest = uint_be(rest, 8, "file size")
            check_empty(rest, "file header")
            name = bytes(raw).decode("utf-8")
        except (WireError, UnicodeDecodeError):
            raise RemoteProtocolError("malformed file header") from None
        return cls(check_file_name(name), size)


def data_record(chunk: bytes) -> bytes:
    return KIND_DATA + chunk


def ack_record(digest: bytes) -> bytes:
    return KIND_ACK + digest


def check_ack(payload: bytes, digest: bytes, name: str) -> None:
    """The receiver's confirmation must carry the SHA-256 of exactly what was sent."""
    if len(payload) != 1 + _DIGEST_LEN or not hmac.compare_digest(payload, ack_record(digest)):
        raise RemoteProtocolError(f"the receiver's confirmation of {name!r} does not match what was sent")


@dataclass(frozen=True)
class FileStart:
    name: str
    size: int


@dataclass(frozen=True)
class FileChunk:
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    """Exactly ``size`` bytes arrived; commit the file, then send ``ack``."""

    name: str
    ack: bytes


FileEvent = FileStart | FileChunk | FileEnd


class FileReceiver:
    """The receiving side: header, data until the announced size, header, ... then the sender's CLOSE."""

    def __init__(self) -> None:
        self.announced: list[str] = []  # file names announced so far, in order
        self._current: FileHeader | None = None
        self._received = 0
        self._digest = hashlib.sha256()

    @property
    def in_progress(self) -> str | None:
        return self._current.name if self._current is not None else None

    def receive(self, record: bytes) -> list[FileEvent]:
        """One DATA record's plaintext from the sender -> what to do with it, in order."""
        if self._current is None:
            if record[:1] != KIND_HEADER:
                raise RemoteProtocolError("expected a file header")
            header = FileHeader.parse(record)
            if header.name in self.announced:
                raise RemoteProtocolError(f"file {header.name!r} was sent twice")
            self.announced.append(header.name)
            self._current, self._received, self._digest = header, 0, hashlib.sha256()
            return [FileStart(header.name, header.size), *self._maybe_end()]
        if record[:1] != KIND_DATA:
            raise RemoteProtocolError("expected file data")
        chunk = record[1:]
        if self._received + len(chunk) > self._current.size:
            raise RemoteProtocolError("the sender sent more bytes than the file's announced size")
        self._received += len(chunk)
        self._digest.update(chunk)
        return [FileChunk(chunk), *self._maybe_end()]

    def close(self) -> None:
        """The sender's CLOSE record arrived: only allowed between files."""
        if self._current is not None:
            raise RemoteProtocolError("expected file data, got the sender's close record")

    def _maybe_end(self) -> list[FileEvent]:
        if self._current is None or self._received < self._current.size:
            return []
        end = FileEnd(self._current.name, ack_record(self._digest.digest()))
        self._current = None
        return [end]
