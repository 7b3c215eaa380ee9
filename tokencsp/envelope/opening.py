"""Opening (docs/FORMAT.md section 7, steps 1-8 and opener rules O1-O13; version 2: section 9.6).

The clock, the replay cache, the trust set and the receiver's token key come
from the caller.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..blobs import AlgId
from ..config import env_number
from ..errors import (
    AuthenticationFailed,
    BadSignature,
    ConfigError,
    EnvelopeFormatError,
    NotForThisKey,
    OutputError,
    Pkcs1Refused,
    SignatureRequired,
    SpoolLimitExceeded,
    TokenError,
    TruncatedMessage,
    UntrustedSender,
)
from ..pubkeys import fingerprint
from ..replay import ReplayCache, ReplayPolicy
from ..session import SessionKey
from ._chunks import Chunker, HoldBack, blocks_into
from ._format import KEY_SIZE, TAG_SIZE, Header, Preamble, nonce
from ._format2 import Addressed, Header2, read_header, trailer_signed_data2

# The prefix as the receiver opens it: version 1's, or version 2's with its own entry picked out.
Prefix = Preamble | Addressed

__all__ = ["Checked", "Opened", "Receiver", "Release", "SenderStatus", "check_prefix", "import_session_key",
           "open_bytes", "open_checked", "open_message", "trust_set"]

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)  # section 6, G4
# FORMAT.md 9.6 step 8a: a verified version 2 message meant for a streaming sink waits here for its
# trailer; in memory up to this size, then in an unlinked 0600 file in TMPDIR.
SPOOL_IN_MEMORY = 1 << 20
# ... and at most this much plaintext in all (TOKENCSP_SPOOL_MAX, bytes): a co-recipient, who knows the
# payload key, can put the sender's genuine prefix before any number of valid chunks (docs/SECURITY.md).
ENV_SPOOL_MAX = "TOKENCSP_SPOOL_MAX"
SPOOL_MAX_DEFAULT = 64 << 20


def spool_limit(environ: Mapping[str, str] = os.environ) -> int:
    """The most plaintext the step-8a spool holds: ``TOKENCSP_SPOOL_MAX`` bytes, 64 MiB when unset."""
    limit = env_number(ENV_SPOOL_MAX, int, SPOOL_MAX_DEFAULT, what="a whole number of bytes", environ=environ)
    if limit < 0:
        raise ConfigError(f"{ENV_SPOOL_MAX} must be a whole number of bytes, not {limit}")
    return limit


class _Spool:
    """The step-8a spool: plaintext held until the trailer verified, at most ``limit`` bytes of it.

    Past the limit :class:`SpoolLimitExceeded`; an OS failure of the spool itself (TMPDIR unusable, disk
    full) :class:`OutputError` -- never a raw OSError.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 -- close()

    def write(self, data: bytes | memoryview) -> None:
        if self.size + len(data) > self.limit:
            raise SpoolLimitExceeded(
                f"the verified message is bigger than the stdout spool may hold ({ENV_SPOOL_MAX}={self.limit} "
                "bytes); nothing was written")
        try:
            self.file.write(data)
        except OSError as exc:
            raise _spool_failed(exc) from None
        self.size += len(data)

    def copy_to(self, sink: BinaryIO) -> None:
        try:
            self.file.seek(0)
        except OSError as exc:
            raise _spool_failed(exc) from None
        while True:
            try:
                block = self.file.read(1 << 16)
            except OSError as exc:
                raise _spool_failed(exc) from None
            if not block:
                return
            sink.write(block)

    def close(self) -> None:
        self.file.close()


def _spool_failed(exc: OSError) -> OutputError:
    try:
        where = f" ({tempfile.gettempdir()})"
    except OSError:  # no usable temporary directory at all
        where = ""
    return OutputError(f"cannot spool the plaintext in the temporary directory{where}: "
                       f"{exc.strerror or exc}; nothing was written (open with -o FILE needs no spool)")


class Receiver(Protocol):  # a tokencsp ExchangeKey
    def public_key(self) -> rsa.RSAPublicKey: ...
    def import_simpleblob(self, blob: bytes, oaep: bool = False) -> SessionKey: ...


class Release(Enum):
    """When the plaintext written to the sink becomes visible to anyone (section 7, step 7)."""

    #: Each chunk is released as soon as it authenticates (a pipe, stdout): the
    #: message is recorded after chunk 0, before anything is written (O6).
    STREAMING = "streaming"
    #: The sink holds everything until the caller commits it after ``open_message``
    #: returns (a temporary file renamed on success, a buffer): the message is
    #: recorded only after its last chunk authenticated (O6a).
    AT_END = "at-end"


class SenderStatus(StrEnum):
    """What the opener can say about who sent a message (O8)."""

    VERIFIED = "verified"  # a trust set vouched for sender_id and the signature verified
    UNVERIFIED = "unverified"  # no trust set: nothing about the sender was checked


@dataclass(frozen=True)
class Opened:
    """What ``open_message`` found.  ``verified_sender`` is None unless a trust set vouched for it.

    ``recipient_id`` is the receiver's own key id (the entry it opened); ``recipients``
    every recipient's key id, in the message's order (authenticated like the rest of
    the prefix, R4).
    """

    header: Header | Header2
    verified_sender: bytes | None
    plaintext_length: int
    recipient_id: bytes = b""
    recipients: tuple[bytes, ...] = ()

    @property
    def sender_verified(self) -> bool:
        return self.verified_sender is not None

    @property
    def sender_status(self) -> SenderStatus:
        return SenderStatus.VERIFIED if self.verified_sender is not None else SenderStatus.UNVERIFIED

    @property
    def claimed_sender(self) -> bytes | None:
        """The header's ``sender_id``: only a claim unless :attr:`sender_verified`."""
        return self.header.sender_id

    def sender_line(self) -> str:
        """One line for a human, e.g. on stderr (O8)."""
        if self.verified_sender is not None:
            return f"sender verified: key id {self.verified_sender.hex()}, serial {self.header.serial}"
        if self.header.sender_id is None:
            return "sender unverified: the message is unsigned"
        return (f"sender unverified: the message claims key id {self.header.sender_id.hex()}, "
                "but no trust set was given, so its signature was not checked")


def _open_chunk(chunker: Chunker, index: int, data: memoryview, last: bool,
                chunk_size: int) -> memoryview | bytes:
    """One chunk, authenticated (O5, O9); a full last chunk that is really a middle one means truncation."""
    if last and not data and index == 0:
        raise TruncatedMessage()
    plaintext = chunker.decrypt(nonce(index, last), data)
    if plaintext is None:
        full = last and len(data) == chunk_size + TAG_SIZE
        if full and chunker.decrypt(nonce(index, False), data) is not None:
            raise TruncatedMessage()
        raise AuthenticationFailed()
    if last and not plaintext and index > 0:
        raise EnvelopeFormatError("chunk: empty last chunk after data (not canonical)")
    return plaintext


def trust_set(keys: Iterable[rsa.RSAPublicKey]) -> dict[bytes, rsa.RSAPublicKey]:
    """A trust set for ``open_message``: each signature public key under its key id."""
    return {fingerprint(key): key for key in keys}


def _verify_sender(pre: Prefix, trust: Mapping[bytes, rsa.RSAPublicKey] | None
                   ) -> tuple[bytes, rsa.RSAPublicKey] | None:
    """Step 4: the verified sender's id and key, or None when there is no trust set to verify against."""
    if trust is None:
        return None
    sender, signature = pre.header.sender_id, pre.signature
    if sender is None or signature is None:
        raise SignatureRequired()
    key = trust.get(sender)
    if not isinstance(key, rsa.RSAPublicKey) or fingerprint(key) != sender:
        raise UntrustedSender()
    _verify_pss(key, signature, pre.signed_data())
    return sender, key


def _verify_pss(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> None:
    """One PSS signature by ``key``, exactly as long as its modulus (9.2): `cryptography` alone also takes
    one whose leading 0x00 was stripped; any failure is BadSignature."""
    if len(signature) != (key.key_size + 7) // 8:
        raise BadSignature()
    try:
        key.verify(signature, data, PSS, hashes.SHA256())
    except InvalidSignature:
        raise BadSignature() from None


def _import_key(receiver: Receiver, pre: Prefix) -> bytes:
    """Step 5 with implicit rejection (O4): any failure yields a key that fails at chunk 0.

    Only failures that say the receiver's own key or token is unusable (which no
    message can cause) propagate.
    """
    # A tokencsp ExchangeKey rejects implicitly on the token side too, making
    # the same PKCS#11 calls whatever the padding; other receivers fall back here.
    importer = getattr(receiver, "import_simpleblob_implicit", receiver.import_simpleblob)
    try:
        session = importer(pre.key_blob, oaep=pre.header.oaep)
        key = session.key if session.alg is AlgId.CALG_AES_256 else b""
        session.wipe()
    except _RECEIVER_PROBLEMS:
        raise
    except Exception:  # noqa: BLE001 -- implicit rejection: every other failure looks the same
        key = b""
    return key if len(key) == KEY_SIZE else os.urandom(KEY_SIZE)


# The receiver's own token being unusable (closed, logged out, removed, key
# gone) is no message's doing and says nothing about the blob: report it.
_RECEIVER_PROBLEMS = (TokenError,)


def _clock(now: float | None, clock: Callable[[], float] | None) -> Callable[[], float]:
    if now is not None and clock is not None:
        raise TypeError("give now= or clock=, not both")
    if now is not None:
        fixed = float(now)
        return lambda: fixed
    return time.time if clock is None else clock


@dataclass(frozen=True)
class Checked:
    """A message whose prefix passed steps 1-4 (:func:`check_prefix`): the token may now be asked (O3).

    ``pre`` is the prefix as this receiver opens it (in version 2, with its own entry picked out).
    """

    pre: Prefix
    sender: bytes | None
    policy: ReplayPolicy
    read_clock: Callable[[], float]
    sender_key: rsa.RSAPublicKey | None = None  # the verified sender's key: it checks the trailer (9.6, 8a)


def check_prefix(source: BinaryIO, receiver: Receiver, *, policy: ReplayPolicy | None = None,
                 trust: Mapping[bytes, rsa.RSAPublicKey] | None = None, now: float | None = None,
                 clock: Callable[[], float] | None = None, allow_pkcs1: bool = False) -> Checked:
    """Steps 1-4 of :func:`open_message` (no token work): read the prefix and check it."""
    policy = ReplayPolicy() if policy is None else policy
    read_clock = _clock(now, clock)
    whole = read_header(source)  # 1
    header = whole.header
    pre = whole.for_recipient(fingerprint(receiver.public_key()))  # 2: our own entry only (R3)
    if pre is None:
        raise NotForThisKey()
    if not header.oaep and not allow_pkcs1:  # 2a (O12): on the public flag, before any token work
        raise Pkcs1Refused()
    policy.check_time(header.timestamp, read_clock())  # 3, read after the prefix arrived (O13)
    verified = _verify_sender(pre, trust)  # 4
    if verified is None:
        return Checked(pre, None, policy, read_clock)
    return Checked(pre, verified[0], policy, read_clock, verified[1])


def import_session_key(receiver: Receiver, checked: Checked) -> bytes:
    """Step 5 for a checked message: its session (version 2: file) key, or a substitute that fails at
    chunk 0 (version 2: at the commitment) (O4, K2)."""
    return _import_key(receiver, checked.pre)


def open_checked(checked: Checked, source: BinaryIO, sink: BinaryIO, key: bytes, *, cache: ReplayCache,
                 release: Release = Release.STREAMING) -> Opened:
    """Steps 6-8 for a checked message whose step-5 key is ``key`` (from :func:`import_session_key`).

    :func:`check_prefix`, :func:`import_session_key` and this are
    :func:`open_message` in three parts, so that a batch can ask the token
    for one message's key while the host decrypts another.
    """
    pre, sender, policy, read_clock = checked.pre, checked.sender, checked.policy, checked.read_clock
    header = pre.header
    ad = hashlib.sha256(pre.raw).digest()
    # version 2: step 5a, the commitment, before any chunk (K1, K2); version 1: the key itself
    chunker = Chunker(pre.payload_key(key), ad, header.chunk_size)
    replay_key = pre.replay_key(ad)
    # version 2, signed: the chunks stop where the trailer starts (9.2, T5); verified, the trailer is
    # checked before anything is recorded or released (T4), so a streaming sink waits in a spool.
    body: Any = HoldBack(source, pre.trailer_length) if pre.trailer_length else source
    trailer_key = checked.sender_key if pre.trailer_length and sender is not None else None
    if pre.trailer_length and sender is not None and trailer_key is None:  # fail closed, never skip T1
        raise TypeError("a Checked with a verified sender needs its sender_key to check the trailer")
    digest = hashlib.sha256(pre.raw) if trailer_key is not None else None
    spool: _Spool | None = None
    if trailer_key is not None and release is Release.STREAMING:
        spool = _Spool(spool_limit())
        release = Release.AT_END
    out: Any = sink if spool is None else spool

    def record() -> None:  # 7: keyed on the authenticated prefix (O6b, O6c), clock read again (O13)
        cache.accept(replay_key, header.timestamp, read_clock(), policy,
                     pre.serial_scope(sender) if sender is not None else None,
                     header.serial if sender is not None else None)

    try:
        written = 0
        for index, (data, last) in enumerate(blocks_into(body, header.chunk_size + TAG_SIZE)):
            plaintext = _open_chunk(chunker, index, data, last, header.chunk_size)  # 6, 8
            if digest is not None:
                digest.update(data)  # T2: every byte of every chunk, as read
            if index == 0 and release is Release.STREAMING:
                record()  # O6
            out.write(plaintext)
            written += len(plaintext)
        if trailer_key is not None and digest is not None:
            _verify_trailer(trailer_key, body.tail(), digest.digest())  # 8a (T1, T4, T5)
        if release is Release.AT_END:
            record()  # O6a, and T4: after the trailer
        if spool is not None:  # released only now that the trailer verified and the record committed
            spool.copy_to(sink)
    finally:
        if spool is not None:
            spool.close()
    return Opened(header, sender, written, pre.recipient_id, pre.recipients)


def _verify_trailer(key: rsa.RSAPublicKey, trailer: bytes, message_hash: bytes) -> None:
    """Step 8a: the trailer signature over every byte before it; any failure is BadSignature (T5)."""
    _verify_pss(key, trailer, trailer_signed_data2(message_hash))


def open_message(source: BinaryIO, sink: BinaryIO, receiver: Receiver, *, cache: ReplayCache,
                 policy: ReplayPolicy | None = None, trust: Mapping[bytes, rsa.RSAPublicKey] | None = None,
                 now: float | None = None, clock: Callable[[], float] | None = None,
                 release: Release = Release.STREAMING, allow_pkcs1: bool = False) -> Opened:
    """Open a sealed message from ``source`` into ``sink`` (docs/FORMAT.md section 7, steps 1-8).

    ``release`` says what writing to ``sink`` means.  :attr:`Release.STREAMING`
    (the default): chunks are released as they authenticate; nothing is
    written unless chunk 0 authenticated and the replay cache accepted the
    message, and a later failure raises after the chunks before it were
    written (discard the output; the message counts as seen).
    :attr:`Release.AT_END`: the caller keeps the sink private until this
    returns and discards it on any error; the message is recorded only once
    it authenticated completely, so a broken copy does not spend it.
    A signed version 2 message whose sender the trust set verified is always
    released at the end: its trailer signature covers the payload and is
    checked before anything is recorded or written (FORMAT.md 9.5, T4); with
    STREAMING the plaintext waits in a private spool (memory up to 1 MiB,
    then an unlinked temporary file) and reaches ``sink`` only then.

    The time window is judged with ``clock()`` read once the prefix is in and
    again when the message is recorded (``now`` fixes both readings); a
    sender using PKCS#1 v1.5 key transport is refused unless ``allow_pkcs1``.
    """
    checked = check_prefix(source, receiver, policy=policy, trust=trust, now=now, clock=clock,
                           allow_pkcs1=allow_pkcs1)  # 1-4
    key = import_session_key(receiver, checked)  # 5
    return open_checked(checked, source, sink, key, cache=cache, release=release)  # 6-8


def open_bytes(data: bytes, receiver: Receiver, **kw: Any) -> bytes:
    """Open a whole message held in memory; nothing is released before it authenticated (Release.AT_END)."""
    kw.setdefault("release", Release.AT_END)
    sink = io.BytesIO()
    open_message(io.BytesIO(data), sink, receiver, **kw)
    return sink.getvalue()
