"""``tokencsp agent``: holds one token's login and answers private-key requests on a Unix socket.

The protocol is docs/AGENT.md (codec: :mod:`tokencsp.agentwire`).  The
agent does only what needs the token: imports under the implicit-rejection
rules (the key objects it keeps calibrate once and pad every import to
their deadline), signatures, key lists and public keys.  Peers of another
uid are refused on accept (SO_PEERCRED); requests are bounded; the log
names request kinds and key names, never a PIN, blob, key or signed data.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

from . import agentclient
from .agentwire import MAX_REQUEST, MAX_RESPONSE, FrameReader, Kind, Message, Op, decode, encode, frame
from .blobs import SimpleBlob
from .errors import AgentError, KeyNotFoundError, PinError, TokenCSPError
from .provider import ExchangeKey, KeyPair, Provider

__all__ = ["Agent", "AgentServer", "serve"]

IDLE_TIMEOUT = 60.0
IMPORT_MODES = (b"implicit", b"explicit", b"deferred", b"legacy")

#: Opens (and logs in to) the agent's token with the PIN given, or from the usual places for None.
Opener = Callable[[str | None], Provider]


class Agent:
    """The agent's state and its request handler; no socket here (:class:`AgentServer` carries it)."""

    def __init__(self, opener: Opener, *, ttl: float | None = None, module: str = "",
                 log: Callable[[str], None] = lambda line: None, clock: Callable[[], float] = time.monotonic) -> None:
        self._opener = opener
        self.ttl = ttl
        self.module = os.path.realpath(module) if module else ""
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._provider: Provider | None = None
        self._keys: dict[str, KeyPair] = {}
        self._login_at = 0.0
        self._busy = 0
        self.token = ""
        self.serial = ""
        self.token_uri = ""
        self.requests: collections.Counter[str] = collections.Counter()
        self.logins = 0
        self.stopping = threading.Event()

    # -- login state ---------------------------------------------------------------------------

    def login(self, pin: str | None) -> None:
        """Open the token (PIN ``pin``, or from the usual places for None) and hold the login."""
        provider = self._opener(pin)
        with self._lock:
            old, self._provider, self._keys = self._provider, provider, {}
            self._login_at = self._clock()
            self.logins += 1
            self.token, self.serial = provider.token_label, provider.token_serial
            self.token_uri = provider.token_uri
        if old is not None:
            old.close()
        self._log(f"logged in to token {self.token!r}" + (f" for {self.ttl:g} s" if self.ttl else ""))

    def expire(self, force: bool = False) -> bool:
        """Log out when --ttl has passed since the login (or ``force``) and no request is running."""
        with self._lock:
            provider = self._provider
            due = provider is not None and (force or (self.ttl is not None and
                                                      self._clock() - self._login_at >= self.ttl))
            if not due or (self._busy and not force):
                return False
            self._provider, self._keys = None, {}
        assert provider is not None
        provider.close()  # closes every session: the token logs this application out
        self._log("login expired (--ttl): logged out; the next request asks for the PIN" if not force
                  else "logged out")
        return True

    def _acquire(self) -> Provider | None:
        self.expire()
        with self._lock:
            if self._provider is not None:
                self._busy += 1
            return self._provider

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1

    def _key(self, provider: Provider, name: str) -> KeyPair:
        # One object per name for as long as the login lasts: its calibration and rejection secret with it.
        with self._lock:
            pair = self._keys.get(name)
        if pair is None:
            pair = provider.key(name)
            with self._lock:
                pair = self._keys.setdefault(name, pair)
        return pair

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"version": 1, "pid": os.getpid(), "token": self.token, "serial": self.serial,
                    "token_uri": self.token_uri,
                    "module": self.module, "logged_in": self._provider is not None, "ttl": self.ttl,
                    "requests": dict(self.requests), "logins": self.logins}

    # -- requests ------------------------------------------------------------------------------

    def handle(self, request: Message) -> Message:
        """One request's response; every failure is an ERROR (or NEED_PIN), never an exception."""
        op = Op(request.code)
        with self._lock:
            self.requests[op.name.lower()] += 1
        try:
            if op is Op.STATUS:
                return Message(Kind.OK, (json.dumps(self.status()).encode(),))
            if op is Op.STOP:
                self._log("stop requested")
                self.stopping.set()
                return Message(Kind.OK)
            if op is Op.LOGIN:
                return self._login(request.fields)
            provider = self._acquire()
            if provider is None:
                self._log(f"{op.name.lower()}: not logged in, asked for the PIN")
                return Message(Kind.NEED_PIN, (b"the agent's login expired: send the PIN",))
            try:
                return Message(Kind.OK, self._token_request(provider, op, request.fields))
            finally:
                self._release()
        except TokenCSPError as exc:
            self._log(f"{op.name.lower()}: refused ({type(exc).__name__})")
            return error(exc)

    def _login(self, fields: tuple[bytes, ...]) -> Message:
        if len(fields) != 1:
            raise AgentError("agent protocol: LOGIN takes one field")
        try:
            pin = fields[0].decode()
        except UnicodeDecodeError:
            raise PinError("the PIN is not UTF-8") from None
        self.login(pin)
        return Message(Kind.OK)

    def _token_request(self, provider: Provider, op: Op, fields: tuple[bytes, ...]) -> tuple[bytes, ...]:
        if op is Op.LIST:
            self._log("list")
            return (json.dumps([info.as_dict() for info in provider.list_keys()]).encode(),)
        name = _text(fields[0]) if fields else ""
        if op is Op.PUBLIC and len(fields) == 1:
            pair = self._key(provider, name)
            self._log(f"public {name!r}")
            return pair.public_der(), json.dumps(pair.info().as_dict()).encode()
        if op is Op.SIGN and len(fields) == 2:
            self._log(f"sign with {name!r}")
            return (self._key(provider, name).sign(fields[1]),)
        if op is Op.IMPORT and len(fields) in (4, 5) and fields[1] in IMPORT_MODES and fields[3] in (b"0", b"1"):
            return self._import(provider, name, fields)
        raise AgentError(f"agent protocol: malformed {op.name} request")

    def _import(self, provider: Provider, name: str, fields: tuple[bytes, ...]) -> tuple[bytes, ...]:
        mode, blob, oaep = fields[1], fields[2], fields[3] == b"1"
        pair = self._key(provider, name)
        if not isinstance(pair, ExchangeKey):
            raise KeyNotFoundError(f"key {name!r} is not an exchange key (it can neither unwrap nor decrypt)")
        self._log(f"import ({mode.decode()}) with {name!r}")
        # Each answer is made at the key's padded deadline and never fails on the blob's content.
        if mode == b"legacy":
            lengths = frozenset(int(n) for n in json.loads(fields[4])) if len(fields) == 5 else frozenset()
            return (pair.unwrap_legacy_deferred(blob, oaep, lengths),)
        simple = SimpleBlob.from_bytes(blob)  # structure only: the client checked it too
        importer = {b"implicit": pair.import_simpleblob_implicit, b"explicit": pair.import_simpleblob,
                    b"deferred": pair.import_simpleblob_deferred}[mode]
        session = importer(simple, oaep=oaep)
        answer = (str(int(session.alg)).encode(), bytes(session.key))
        session.wipe()
        return answer


def _text(field: bytes) -> str:
    try:
        return field.decode()
    except UnicodeDecodeError:
        raise AgentError("agent protocol: a key name is not UTF-8") from None


def error(exc: TokenCSPError) -> Message:
    return Message(Kind.ERROR, (type(exc).__name__.encode(), str(exc).encode()))


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        agent = self.server.agent
        if agentclient.peer_uid(sock) != os.geteuid():
            agent._log("refused a connection from another uid")
            with contextlib.suppress(OSError):
                sock.sendall(frame(encode(Kind.ERROR, b"AgentError", b"refused: another uid"), MAX_RESPONSE))
                # Read (and drop) what the peer already sent, so closing does not reset the refusal away.
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(1.0)
                for _ in range(4):
                    if not sock.recv(MAX_REQUEST):
                        break
            return
        sock.settimeout(IDLE_TIMEOUT)
        reader = FrameReader(MAX_REQUEST)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                bodies = reader.feed(data)
                responses = [agent.handle(decode(body, Op)) for body in bodies]
            except AgentError as exc:
                with contextlib.suppress(OSError):
                    sock.sendall(frame(encode(*_fields(error(exc))), MAX_RESPONSE))
                return
            try:
                for response in responses:
                    sock.sendall(frame(encode(*_fields(response)), MAX_RESPONSE))
            except OSError:
                return
            if agent.stopping.is_set():
                threading.Thread(target=self.server.shutdown, daemon=True).start()
                return


def _fields(message: Message) -> tuple[Any, ...]:
    return (message.code, *message.fields)


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        self.path = path
        self.check(path)
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)

    @staticmethod
    def check(path: str) -> None:
        """Refuse an unsafe directory or a live agent at ``path`` (before logging in); remove a stale socket."""
        agentclient.check_directory(os.path.dirname(os.path.abspath(path)), create=True)
        _remove_stale(path)

    def service_actions(self) -> None:
        self.agent.expire()

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _remove_stale(path: str) -> None:
    """A socket file nobody answers on is left by an agent that died: replace it; refuse a live one."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise AgentError(f"an agent already answers at {path} (tokencsp agent stop ends it)")


def serve(server: AgentServer, ready: Callable[[], None] = lambda: None) -> None:
    """Serve until STOP (or KeyboardInterrupt); then log out and remove the socket."""
    try:
        ready()
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.agent.expire(force=True)
