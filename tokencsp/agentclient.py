"""The client side of ``tokencsp agent`` (docs/AGENT.md): a Provider look-alike over the agent's socket.

:func:`connect` returns an :class:`AgentProvider` when an agent for the
wanted token answers at the socket, else None: a command then opens the
token itself.  Keys handed out behave as the in-process ones do for the
commands that use them (``open``, ``capi decrypt``, ``key list``/``export``,
``seal --sign-with``); imports come back as the same SessionKey /
DeferredSessionKey classes, with the agent's padded deadline and its
substitute keys.  Never imports pkcs11.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import errors
from .agentwire import MAX_REQUEST, MAX_RESPONSE, FrameReader, Kind, Message, Op, decode, encode, frame
from .blobs import AlgId, PublicKeyBlob, SimpleBlob
from .config import TokenSelector
from .errors import AgentError, TokenCSPError
from .keyinfo import KeyInfo, KeyUsage
from .session import SessionKey

if TYPE_CHECKING:  # tokencsp.implicit brings the deadline and calibration modules: loaded by capi only
    from .implicit import DeferredSessionKey

__all__ = ["ENV_AGENT", "ENV_SOCK", "AgentProvider", "AgentUnavailable", "check_directory", "connect",
           "key_info", "peer_uid", "socket_path", "status_of", "stop"]

ENV_SOCK = "TOKENCSP_AGENT_SOCK"
ENV_AGENT = "TOKENCSP_AGENT"
TIMEOUT = 120.0  # an import waits for the agent's deadline, a first one for its calibration
_UCRED = struct.Struct("3i")


class AgentUnavailable(AgentError):
    """No usable agent at the socket (gone, stale, unsafe directory, protocol broken): work without it."""


def socket_path(explicit: str | None = None) -> str:
    """``explicit``, $TOKENCSP_AGENT_SOCK, $XDG_RUNTIME_DIR/tokencsp/agent.sock, else /tmp/tokencsp-UID/agent.sock."""
    if explicit:
        return explicit
    if os.environ.get(ENV_SOCK):
        return os.environ[ENV_SOCK]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "tokencsp", "agent.sock")
    return f"/tmp/tokencsp-{os.geteuid()}/agent.sock"


def check_directory(directory: str, create: bool = False) -> None:
    """The socket's directory must be a real 0700 directory of ours (created so with ``create``)."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise AgentUnavailable(f"agent socket directory {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise AgentError(f"agent socket directory {directory} is not a directory (a symlink?): refusing it")
    if info.st_uid != os.geteuid():
        raise AgentError(f"agent socket directory {directory} belongs to uid {info.st_uid}, not to us: refusing it")
    if info.st_mode & 0o077:
        raise AgentError(f"agent socket directory {directory} is open to other users "
                         f"(mode {stat.S_IMODE(info.st_mode):04o}): refusing it")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


class _Connection:
    def __init__(self, path: str) -> None:
        try:
            check_directory(os.path.dirname(os.path.abspath(path)))
        except AgentError as exc:  # unsafe: never talked to, the command works without it
            raise AgentUnavailable(str(exc)) from None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(TIMEOUT)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise AgentUnavailable(f"no agent at {path}: {exc.strerror}") from None
        if peer_uid(self._sock) != os.geteuid():
            self._sock.close()
            raise AgentError(f"the agent at {path} runs under another uid: refusing it")
        self._reader = FrameReader(MAX_RESPONSE)

    def call(self, op: Op, *fields: bytes) -> Message:
        try:
            self._sock.sendall(frame(encode(op, *fields), MAX_REQUEST))
            while True:
                data = self._sock.recv(65536)
                if not data:
                    raise AgentUnavailable("the agent closed the connection")
                bodies = self._reader.feed(data)
                if bodies:
                    if len(bodies) > 1 or self._reader.pending:
                        raise AgentError("agent protocol: more than one response")
                    return decode(bodies[0], Kind)
        except OSError as exc:
            raise AgentUnavailable(f"agent connection: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._sock.close()


def _raise(message: Message) -> None:
    name, text = (f.decode("utf-8", "replace") for f in (*message.fields, b"", b"")[:2])
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, TokenCSPError):
        raise cls(text)
    raise AgentError(f"agent: {name}: {text}")


class AgentProvider:
    """What the commands use of :class:`tokencsp.provider.Provider`, served by the agent."""

    def __init__(self, connection: _Connection, status: dict[str, Any], pin: Callable[[], str],
                 selector: TokenSelector | None = None) -> None:
        self._connection = connection
        self.status = status
        self._pin = pin
        self.path = ""
        # the command's URI object=/id=/type=, applied here as Provider applies them in process
        self._objects = selector if selector is not None and selector.names_object else None

    def __enter__(self) -> AgentProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    @property
    def token_label(self) -> str:
        return str(self.status["token"])

    @property
    def token_serial(self) -> str:
        return str(self.status["serial"])

    @property
    def token_uri(self) -> str:
        """The token's RFC 7512 URI, as the agent's Provider wrote it."""
        return str(self.status.get("token_uri", ""))

    def call(self, op: Op, *fields: bytes) -> tuple[bytes, ...]:
        """One request's OK fields; NEED_PIN is answered once with a PIN from the usual places."""
        response = self._connection.call(op, *fields)
        if response.code == Kind.NEED_PIN:
            self.login(self._pin())
            response = self._connection.call(op, *fields)
        if response.code != Kind.OK:
            _raise(response)
        return response.fields

    def login(self, pin: str) -> None:
        response = self._connection.call(Op.LOGIN, pin.encode())
        if response.code != Kind.OK:
            _raise(response)

    def key(self, name: str | None = None, *, public: bool = False) -> AgentKey:
        """A key container by name or the URI's object=/id= (``public``: a URI's type=public is accepted)."""
        name = self._select(name, public=public)
        der, info_json = self.call(Op.PUBLIC, name.encode())[:2]
        info = key_info(json.loads(info_json))
        wanted = self._objects
        if wanted is not None and wanted.object_id is not None and info.id != wanted.object_id:
            raise errors.KeyNotFoundError(f"key {name!r} on token {self.token_label!r} changed while it was "
                                          f"looked up: its id is {info.id.hex()}, not {wanted.object_id.hex()}")
        cls = AgentExchangeKey if info.import_path is not None else AgentKey
        return cls(self, name, der, info)

    def exchange_key(self, name: str | None = None) -> AgentExchangeKey:
        key = self.key(name)
        if not isinstance(key, AgentExchangeKey):
            raise errors.KeyNotFoundError(
                f"key {key.name!r} is not an exchange key (it can neither unwrap nor decrypt)")
        return key

    def list_keys(self) -> list[KeyInfo]:
        """Every private key on the agent's token, or those the URI's object=/id= name (as Provider.list_keys)."""
        keys = [key_info(item) for item in json.loads(self.call(Op.LIST)[0])]
        wanted = self._objects
        if wanted is None:
            return keys
        return [k for k in keys if (wanted.object_label is None or k.name == wanted.object_label)
                and (wanted.object_id is None or k.id == wanted.object_id)]

    def _select(self, name: str | None, *, public: bool = False) -> str:
        """The label of the key ``name`` and the URI's object=/id=/type= select, with Provider's rules and
        messages; a key named by id= alone is found in the agent's key list (the agent takes labels)."""
        label, key_id = name, None
        wanted = self._objects
        if wanted is not None:
            if name is not None and wanted.object_label is not None and name != wanted.object_label:
                raise errors.SelectionConflict(
                    f"key {name!r} contradicts object={wanted.object_label!r} of the PKCS#11 URI")
            if wanted.object_type == "public" and not public:
                raise errors.SelectionConflict("the PKCS#11 URI names a public key (type=public), and this needs "
                                               "the private key: use type=private")
            label = name if name is not None else wanted.object_label
            key_id = wanted.object_id
        if key_id is None:
            if label is None:
                raise errors.ConfigError("no key named: give a key name or a PKCS#11 URI with object= or id=")
            return label
        every = [key_info(item) for item in json.loads(self.call(Op.LIST)[0])]
        found = [k for k in every if k.id == key_id and (label is None or k.name == label)]
        what = f"key {label!r}" if label is not None else f"key id {key_id.hex()}"
        if len(found) > 1:
            raise errors.AmbiguousKeyError(
                f"{len(found)} private keys match {what} on token {self.token_label!r}; refusing to guess")
        if found:
            if sum(k.name == found[0].name for k in every) > 1:
                raise errors.AmbiguousKeyError(
                    f"{what} is labelled {found[0].name!r} like another private key on token "
                    f"{self.token_label!r}, and the agent takes keys by label: set TOKENCSP_AGENT=off to "
                    "choose it by id=")
            return found[0].name
        other = next((k for k in every if k.name == label), None) if label is not None else None
        if other is not None:
            raise errors.SelectionConflict(f"key {label!r} has id {other.id.hex()}, not the PKCS#11 URI's "
                                           f"id {key_id.hex()}")
        raise errors.KeyNotFoundError(f"no private {what} on token {self.token_label!r}")


class AgentKey:
    """A key container on the agent's token: public half here, private operations there."""

    def __init__(self, agent: AgentProvider, name: str, der: bytes, info: KeyInfo) -> None:
        self._agent = agent
        self.name = name
        self.key_id = info.id
        self._info = info
        public = serialization.load_der_public_key(der)
        if not isinstance(public, rsa.RSAPublicKey):
            raise AgentError("agent: the public key is not RSA")
        self._public = public

    def info(self) -> KeyInfo:
        return self._info

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def public_blob(self) -> bytes:
        alg = AlgId.CALG_RSA_KEYX if self._info.usage is not KeyUsage.SIGNATURE else AlgId.CALG_RSA_SIGN
        return PublicKeyBlob.from_public_key(self._public, alg).to_bytes()

    def public_pem(self) -> bytes:
        return self._public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_der(self) -> bytes:
        return self._public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        return self._agent.call(Op.SIGN, self.name.encode(), data)[0]


class AgentExchangeKey(AgentKey):
    """An exchange key on the agent's token; imports never fail on the blob (docs/AGENT.md)."""

    #: One connection carries one request at a time: a batch (tokencsp.batch) queues one import ahead.
    concurrent_imports = 1

    def _import(self, mode: bytes, blob: bytes, oaep: bool, *extra: bytes,
                oaep_hash: str = "sha1") -> tuple[bytes, ...]:
        if oaep and oaep_hash != "sha1":  # refused on the public hash name, before the blob is sent
            raise errors.UnsupportedAlgorithm(f"the agent imports RSAES-OAEP with SHA-1 (CRYPT_OAEP) only, not "
                                              f"{oaep_hash}: use the token directly (TOKENCSP_AGENT=off)")
        return self._agent.call(Op.IMPORT, self.name.encode(), mode, blob, b"1" if oaep else b"0", *extra)

    def import_simpleblob(self, blob: bytes | SimpleBlob, oaep: bool = False, *,
                          oaep_hash: str = "sha1") -> SessionKey:
        """The explicit import: a bad blob is the one SessionKeyImportError, at the same deadline."""
        return SessionKey.from_bytes(*self._import_blob(b"explicit", blob, oaep, oaep_hash))

    def import_simpleblob_implicit(self, blob: bytes | SimpleBlob, oaep: bool = False, *,
                                   oaep_hash: str = "sha1") -> SessionKey:
        return SessionKey.from_bytes(*self._import_blob(b"implicit", blob, oaep, oaep_hash))

    def import_simpleblob_deferred(self, blob: bytes | SimpleBlob, oaep: bool = False, *,
                                   oaep_hash: str = "sha1") -> DeferredSessionKey:
        from .implicit import DeferredSessionKey

        return DeferredSessionKey(*self._import_blob(b"deferred", blob, oaep, oaep_hash))

    def _import_blob(self, kind: bytes, blob: bytes | SimpleBlob, oaep: bool, oaep_hash: str) -> tuple[AlgId, bytes]:
        """One IMPORT of ``kind`` (the three SIMPLEBLOB imports differ only in it): the ALG_ID and key bytes."""
        simple = blob if isinstance(blob, SimpleBlob) else SimpleBlob.from_bytes(blob)
        alg, key = self._import(kind, simple.to_bytes(), oaep, oaep_hash=oaep_hash)[:2]
        return AlgId(int(alg)), key

    def unwrap_legacy_deferred(self, encrypted_key: bytes, oaep: bool, lengths: frozenset[int]) -> bytes:
        return self._import(b"legacy", encrypted_key, oaep, json.dumps(sorted(lengths)).encode())[0]


def key_info(item: dict[str, Any]) -> KeyInfo:
    """A KeyInfo from its ``as_dict`` form, as the agent sends it."""
    try:
        return KeyInfo.from_dict(item)
    except ValueError as exc:
        raise AgentError(f"agent protocol: unreadable key attributes ({exc})") from None


def status_of(path: str) -> dict[str, Any]:
    """The agent's STATUS at ``path`` (AgentUnavailable when none answers)."""
    connection = _Connection(path)
    try:
        return _status(connection)
    finally:
        connection.close()


def _status(connection: _Connection) -> dict[str, Any]:
    response = connection.call(Op.STATUS)
    if response.code != Kind.OK or not response.fields:
        raise AgentUnavailable("the agent did not answer STATUS")
    try:
        status = json.loads(response.fields[0])
    except ValueError:
        raise AgentUnavailable("agent protocol: STATUS is not JSON") from None
    if not isinstance(status, dict) or status.get("version") != 1:
        raise AgentUnavailable("the agent speaks another protocol version")
    return status


def stop(path: str) -> int:
    """Ask the agent at ``path`` to stop; returns its pid."""
    connection = _Connection(path)
    try:
        pid = int(_status(connection)["pid"])
        response = connection.call(Op.STOP)
        if response.code != Kind.OK:
            _raise(response)
        return pid
    finally:
        connection.close()


# Token, slot and library attributes of a URI that STATUS (token label, serial, module) cannot confirm.
_UNCONFIRMED = (("token_manufacturer", "manufacturer"), ("token_model", "model"), ("slot_id", "slot-id"),
                ("slot_description", "slot-description"), ("slot_manufacturer", "slot-manufacturer"),
                ("library_manufacturer", "library-manufacturer"), ("library_description", "library-description"),
                ("library_version", "library-version"))


def connect(selector: TokenSelector, module: str | None, pin: Callable[[], str],
            path: str | None = None) -> AgentProvider:
    """An AgentProvider for the agent at ``path`` if it serves the token ``selector`` names.

    ``module``: the module path the command would load (None: any).  Raises
    :class:`AgentUnavailable` when there is no agent to use (the command then
    opens the token itself) -- also when the selector has token, slot or library attributes STATUS
    cannot confirm (slot-id=, model=, manufacturer=, ...) -- and :class:`AgentError` when the socket is unsafe.
    """
    where = socket_path(path)
    connection = _Connection(where)
    try:
        status = _status(connection)
        for wanted, key in ((selector.token_label, "token"), (selector.token_serial, "serial")):
            if wanted is not None and wanted != status.get(key):
                raise AgentUnavailable(f"the agent serves token {status.get('token')!r} "
                                       f"(serial {status.get('serial')}), not the one asked for")
        unconfirmed = [attribute for field, attribute in _UNCONFIRMED if getattr(selector, field) is not None]
        if unconfirmed:  # the agent's token may not be the one these name: the command looks itself
            raise AgentUnavailable(f"the agent's STATUS cannot confirm {', '.join(unconfirmed)} of the PKCS#11 URI")
        if module is not None and os.path.realpath(module) != status.get("module"):
            raise AgentUnavailable(f"the agent uses module {status.get('module')}, not {module}")
    except BaseException:
        connection.close()
        raise
    provider = AgentProvider(connection, status, pin, selector)
    provider.path = where
    return provider
