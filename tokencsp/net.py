"""The three-phase exchange and its file transfer over TCP (asyncio): the transport only.

The protocol lives in sans-IO pieces (``tokencsp.threephase`` for the
session, ``tokencsp.transfer`` for the file records); this module moves their
bytes over sockets and writes received files atomically.  Frames are read
with their 4-byte length first and refused above the limit before the body
is read; each handshake phase has a deadline and the record
channel an idle timeout.  Token work (the unwraps inside ``next_event`` while
the handshake runs) happens in a worker thread, so one listener serves many
sessions at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from .admission import Admission, AdmissionPolicy, Ticket
from .errors import ConfigError, ConnectFailed, InputError, OutputError
from .fileio import atomic_output
from .threephase import (
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    Close,
    ConnectionClosed,
    Data,
    Event,
    ExchangeKeyLike,
    HandshakeComplete,
    PeerDisconnected,
    PhaseTimeout,
    ProtocolError,
    Role,
    ThreePhase,
    TrustSet,
    check_name,
)
from .threephase.messages import LENGTH_PREFIX, check_frame_length, frame_length
from .transfer import (
    FileChunk,
    FileEnd,
    FileHeader,
    FileReceiver,
    FileStart,
    check_ack,
    check_file_name,
    check_peer_directory,
    data_record,
)

__all__ = ["NetConfig", "Receiver", "SessionResult", "check_file_name", "send_files"]

Progress = Callable[[str, int, int], None]
_T = TypeVar("_T")


class NamedExchangeKey(ExchangeKeyLike, Protocol):
    """An exchange key that knows its own name on the token (tokencsp.provider.ExchangeKey)."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class NetConfig:
    phase_timeout: float = 30.0   # each handshake phase
    idle_timeout: float = 60.0    # each read / write drain after the handshake
    max_frame: int = DEFAULT_MAX_FRAME
    chunk_size: int = 64 * 1024
    # Each session costs the listener a token unwrap before the peer is
    # authenticated; past this many at once, new connections are closed at once.
    max_sessions: int = 64
    # Unauthenticated handshakes per source and per second (tokencsp.admission).
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)


@dataclass
class SessionResult:
    address: str
    peer: str | None = None
    files: list[str] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Channel:
    """One ThreePhase machine on one stream pair."""

    def __init__(self, conn: ThreePhase, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 config: NetConfig) -> None:
        self.conn, self.reader, self.writer, self.config = conn, reader, writer, config
        self.loop = asyncio.get_running_loop()

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.config.idle_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise PhaseTimeout(f"the peer did not read for {self.config.idle_timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise PeerDisconnected(f"connection lost while sending ({type(exc).__name__})") from None

    async def next_event(self) -> Event:
        conn = self.conn
        while True:
            if conn.handshaking:  # may unwrap on the token: keep the loop free
                event = await asyncio.to_thread(conn.next_event, self.loop.time())
            else:
                event = conn.next_event(self.loop.time())
            await self._write(conn.data_to_send())
            if event is not NEED_DATA:
                return event
            await self._read_frame()

    async def _read_frame(self) -> None:
        conn, got = self.conn, b""
        deadline = conn.deadline if conn.handshaking else self.loop.time() + self.config.idle_timeout
        try:
            async with asyncio.timeout_at(deadline):
                got = await self.reader.readexactly(LENGTH_PREFIX)
                check_frame_length(frame_length(got), self.config.max_frame)  # before reading the body
                got += await self.reader.readexactly(frame_length(got))
        except TimeoutError:
            what = conn.expecting
            limit = conn.phase_timeout if conn.handshaking else self.config.idle_timeout
            raise PhaseTimeout(f"timed out waiting for {what} ({limit:g} s)") from None
        except asyncio.IncompleteReadError as exc:
            conn.receive_data(got + exc.partial)
            conn.receive_data(b"")
            return
        except (ConnectionError, OSError) as exc:
            raise PeerDisconnected(f"connection lost ({type(exc).__name__})") from None
        conn.receive_data(got)

    async def send(self, event: Data | Close) -> None:
        await self._write(self.conn.send(event))

    async def expect(self, kind: type[_T], what: str) -> _T:
        event = await self.next_event()
        if not isinstance(event, kind):
            raise ProtocolError(f"expected {what}, got {type(event).__name__}")
        return event


async def _run_session(conn: ThreePhase, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       config: NetConfig, body: Callable[[_Channel], Awaitable[_T]]) -> _T:
    channel = _Channel(conn, reader, writer, config)
    try:
        await asyncio.to_thread(conn.start, channel.loop.time())
        return await body(channel)
    except BaseException as exc:
        abort = conn.abort(exc)
        if abort and not writer.is_closing():
            with contextlib.suppress(Exception):
                writer.write(abort)
        raise
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


# -- receiver --------------------------------------------------------------------------

class _Incoming:
    """One file being written: committed whole, or never visible."""

    def __init__(self, path: str) -> None:
        self._cm = atomic_output(path)
        self._fh: BinaryIO = self._cm.__enter__()

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def commit(self) -> None:
        self._cm.__exit__(None, None, None)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._cm.__exit__(OutputError, OutputError("transfer aborted"), None)


def _peer_directory(out_dir: str, peer: str) -> str:
    """``out_dir/<peer>``, made 0700 on first use; an existing symlink or non-directory there is refused."""
    path = os.path.join(out_dir, check_peer_directory(peer))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise OutputError(f"{path} exists and is not a directory")
    return path


async def _receive_files(channel: _Channel, out_dir: str, result: SessionResult,
                         on_authenticated: Callable[[SessionResult], None]) -> None:
    hello = await channel.expect(HandshakeComplete, "the handshake")
    result.peer = hello.peer_name
    on_authenticated(result)
    directory: str | None = None
    files = FileReceiver()
    incoming: _Incoming | None = None
    try:
        while True:
            event = await channel.next_event()
            if isinstance(event, Close):
                files.close()
                break
            if not isinstance(event, Data):
                raise ProtocolError(f"expected {'file data' if files.in_progress else 'a file header'}, "
                                    f"got {type(event).__name__}")
            for step in files.receive(event.data):
                if isinstance(step, FileStart):
                    directory = directory or _peer_directory(out_dir, hello.peer_name)
                    incoming = _Incoming(os.path.join(directory, step.name))
                elif isinstance(step, FileChunk):
                    assert incoming is not None
                    incoming.write(step.data)
                elif isinstance(step, FileEnd):
                    assert incoming is not None
                    incoming.commit()
                    incoming = None
                    result.files.append(step.name)
                    await channel.send(Data(step.ack))
    finally:
        if incoming is not None:
            incoming.discard()
    await channel.expect(ConnectionClosed, "the end of the stream after the close record")
    await channel.send(Close())


class Receiver:
    """A listener: every connection is one responder session writing files to ``out_dir/<peer>/``.

    The subdirectory is the authenticated peer's trust-set name, so no peer can
    replace a file that another peer delivered.

    With ``once`` the listener serves until one sender *authenticates*, then
    accepts nothing more: connections that fail before authenticating do not
    use it up (:meth:`wait_authenticated` returns that one session's result).
    """

    def __init__(self, key: NamedExchangeKey, trust: TrustSet, out_dir: str, *, name: str | None = None,
                 config: NetConfig = NetConfig(), local_public: rsa.RSAPublicKey | None = None,
                 once: bool = False, on_session: Callable[[SessionResult], None] | None = None) -> None:
        if not os.path.isdir(out_dir):
            raise OutputError(f"output directory {out_dir} does not exist")
        for peer in trust:
            check_peer_directory(peer)
        self.key, self.trust, self.out_dir, self.config = key, trust, out_dir, config
        self.name = check_name(name or key.name)
        self.local_public, self.once, self.on_session = local_public, once, on_session
        self.results: list[SessionResult] = []
        self.refused = 0  # connections closed unserved: max_sessions running, or over an admission limit
        self._admission = Admission(config.admission)
        self._server: asyncio.Server | None = None
        self._claimed: SessionResult | None = None  # once: the session that authenticated
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        if self.local_public is None:
            self.local_public = await asyncio.to_thread(self.key.public_key)
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._server is not None
        peer = writer.get_extra_info("peername")
        result = SessionResult(f"{peer[0]}:{peer[1]}" if peer else "?")
        if self._claimed is not None:  # once, and already taken: the server is closing
            writer.close()
            return
        ticket = (self._admission.admit(str(peer[0]) if peer else "?", asyncio.get_running_loop().time())
                  if len(self._tasks) < self.config.max_sessions else "max_sessions")
        if not isinstance(ticket, Ticket):
            self.refused += 1
            writer.close()
            return
        def authenticated(result: SessionResult) -> None:
            ticket.release()  # no longer unauthenticated work
            self._authenticated(result)

        self._tasks.add(task)
        try:
            async with self._changed:
                self._changed.notify_all()
            conn = ThreePhase(Role.RESPONDER, self.name, self.key, self.trust, local_public=self.local_public,
                              phase_timeout=self.config.phase_timeout, max_frame=self.config.max_frame)
            await _run_session(conn, reader, writer, self.config,
                               lambda ch: _receive_files(ch, self.out_dir, result, authenticated))
        except Exception as exc:  # noqa: BLE001 -- one session's failure is its result; the listener serves on
            result.error = exc
        except asyncio.CancelledError:  # close(): end quietly, the result says why
            result.error = PeerDisconnected("the session was cut off: the listener shut down")
        finally:
            ticket.release()
            writer.close()
            self.results.append(result)
            if self.on_session:
                self.on_session(result)
            async with self._changed:
                self._changed.notify_all()
            self._tasks.discard(task)

    def _authenticated(self, result: SessionResult) -> None:
        if not self.once:
            return
        if self._claimed is not None:
            raise ProtocolError("this listener serves one session (--once) and another sender authenticated first")
        self._claimed = result
        assert self._server is not None
        self._server.close()
        current = asyncio.current_task()
        for task in self._tasks:  # the others have not authenticated: they can no longer be served
            if task is not current:
                task.cancel()

    async def wait_authenticated(self) -> SessionResult:
        """With ``once``: wait until the one authenticated session has ended."""
        if not self.once:
            raise ConfigError("wait_authenticated() needs a Receiver made with once=True")
        async with self._changed:
            await self._changed.wait_for(lambda: self._claimed is not None and self._claimed in self.results)
        assert self._claimed is not None
        return self._claimed

    @property
    def active(self) -> int:
        """Sessions being served right now."""
        return len(self._tasks)

    async def wait_active(self, count: int) -> None:
        """Wait until at least ``count`` sessions are being served (they have been accepted)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._tasks) >= count)

    async def wait_for(self, count: int) -> list[SessionResult]:
        """Wait until ``count`` sessions have ended."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.results) >= count)
        return self.results[:count]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# -- sender ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Outgoing:
    path: str
    name: str
    size: int


async def send_files(key: NamedExchangeKey, trust: TrustSet, peer_name: str, host: str, port: int,
                     paths: Sequence[str], *, name: str | None = None, config: NetConfig = NetConfig(),
                     local_public: rsa.RSAPublicKey | None = None, progress: Progress | None = None) -> list[str]:
    """Send files to a Receiver; returns their names once the receiver confirmed every one."""
    files: list[_Outgoing] = []
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        base = check_file_name(os.path.basename(path))
        if any(base == other.name for other in files):
            raise InputError(f"two files are named {base!r}")
        files.append(_Outgoing(path, base, size))
    if local_public is None:
        local_public = await asyncio.to_thread(key.public_key)
    conn = ThreePhase(Role.INITIATOR, name or key.name, key, trust, peer_name=peer_name, local_public=local_public,
                      phase_timeout=config.phase_timeout, max_frame=config.max_frame)
    try:
        async with asyncio.timeout(config.phase_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        reason = getattr(exc, "strerror", None) or "timed out"
        raise ConnectFailed(f"cannot connect to {host}:{port}: {reason}") from None
    chunk = min(config.chunk_size, conn.max_record - 1)
    return await _run_session(conn, reader, writer, config, lambda ch: _send(ch, files, chunk, progress))


async def _send(channel: _Channel, files: Sequence[_Outgoing], chunk: int, progress: Progress | None) -> list[str]:
    await channel.expect(HandshakeComplete, "the handshake")
    confirmed = []
    for item in files:
        await channel.send(Data(FileHeader(item.name, item.size).to_bytes()))
        digest, sent = hashlib.sha256(), 0
        try:
            with open(item.path, "rb") as handle:
                while sent < item.size:
                    data = handle.read(min(chunk, item.size - sent))
                    if not data:
                        raise InputError(f"{item.path} shrank while it was being sent")
                    digest.update(data)
                    await channel.send(Data(data_record(data)))
                    sent += len(data)
                    if progress:
                        progress(item.name, sent, item.size)
        except OSError as exc:
            raise InputError(f"cannot read {item.path}: {exc.strerror}") from None
        ack = await channel.expect(Data, "the receiver's confirmation")
        check_ack(ack.data, digest.digest(), item.name)
        confirmed.append(item.name)
    await channel.send(Close())
    if channel.writer.can_write_eof():
        channel.writer.write_eof()
    await channel.expect(Close, "the receiver's close record")
    await channel.expect(ConnectionClosed, "the end of the stream")
    return confirmed
