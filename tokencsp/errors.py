"""The whole exception hierarchy of tokencsp.

Programmer mistakes (a wrong argument type, an unknown algorithm name) are
``ValueError``/``TypeError`` subclasses too, so ``except ValueError`` keeps
working for callers who never heard of tokencsp.  Everything an attacker can
provoke with crafted input ends in a *fixed* message, so that the message
itself is never an oracle.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "TokenCSPError",
    "BlobFormatError",
    "UnsupportedAlgorithm",
    "InvalidKeyError",
    "DecryptionError",
    "SessionKeyImportError",
    "ConfigError",
    "UriError",
    "SelectionConflict",
    "InputError",
    "OutputError",
    "SpoolLimitExceeded",
    "TokenError",
    "ModuleLoadError",
    "TokenNotFoundError",
    "PinError",
    "KeyNotFoundError",
    "AmbiguousKeyError",
    "KeyExistsError",
    "TokenOperationError",
    "TokenLockError",
    "UnwrapRefused",
    "CmsError",
    "CmsFormatError",
    "CmsRecipientNotFound",
    "MessageRejected",
    "EnvelopeFormatError",
    "NotForThisKey",
    "AuthenticationFailed",
    "TruncatedMessage",
    "ReplayError",
    "ReplayedMessage",
    "MessageTooOld",
    "MessageFromFuture",
    "SerialNotIncreasing",
    "SignatureError",
    "UntrustedSender",
    "BadSignature",
    "SignatureRequired",
    "Pkcs1Refused",
    "ReplayCacheError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "PeerAuthenticationFailed",
    "UnknownPeer",
    "PhaseTimeout",
    "FrameTooLarge",
    "PeerDisconnected",
    "ConnectFailed",
    "RecordError",
    "TruncatedSession",
    "PeerAborted",
]


class TokenCSPError(Exception):
    """Root of every error tokencsp raises on purpose."""


class BlobFormatError(TokenCSPError, ValueError):
    """Bytes that are not a well-formed CryptoAPI key BLOB; the message names the field."""


class UnsupportedAlgorithm(TokenCSPError, ValueError):
    """An ALG_ID, key size or mechanism that tokencsp does not implement."""


class InvalidKeyError(TokenCSPError, ValueError):
    """Key material handed in by the caller is unusable (wrong length, inconsistent RSA parts)."""


class DecryptionError(TokenCSPError):
    """Ciphertext that does not decrypt (CryptDecrypt's NTE_BAD_DATA)."""


class CmsError(TokenCSPError):
    """A CMS (RFC 5652) message could not be opened or made; see the subclasses."""


class CmsFormatError(CmsError, ValueError):
    """Not a CMS EnvelopedData/AuthEnvelopedData this library reads (malformed or unsupported structure)."""


class CmsRecipientNotFound(CmsError):
    """No RecipientInfo of the CMS message is for the key at hand (a public fact of the message)."""


SESSION_KEY_IMPORT_FAILED = "the session key blob could not be imported"


class SessionKeyImportError(DecryptionError):
    """A SIMPLEBLOB did not yield a session key.

    Raised with one fixed message for bad padding, wrong recipient key, wrong
    key length and token failures alike: telling them apart would hand an
    attacker a Bleichenbacher padding oracle.
    """

    def __init__(self, message: str = SESSION_KEY_IMPORT_FAILED) -> None:
        super().__init__(message)


class ConfigError(TokenCSPError, ValueError):
    """Bad configuration: a malformed PKCS#11 URI, an unreadable PIN file, conflicting options."""


class UriError(ConfigError):
    """A PKCS#11 URI tokencsp cannot use as written: malformed, or an attribute it does not know (named)."""


class SelectionConflict(ConfigError):
    """Two sources name different things: a URI attribute against --key/--token/--module or another attribute."""


class InputError(TokenCSPError):
    """An input file could not be read."""


class OutputError(TokenCSPError):
    """An output could not be written (permissions, disk full...); nothing partial was left."""


class SpoolLimitExceeded(OutputError):
    """A verified format 2 message for a streaming sink (stdout) is bigger than the spool may hold
    (TOKENCSP_SPOOL_MAX, docs/FORMAT.md 9.6 step 8a); nothing was released or recorded."""


class TokenError(TokenCSPError):
    """Something about the PKCS#11 module, token or the objects on it."""


class ModuleLoadError(TokenError):
    """The PKCS#11 module could not be found or loaded."""


class TokenNotFoundError(TokenError):
    """No token matches the label/serial asked for."""


class PinError(TokenError):
    """The PIN was wrong, locked, expired or missing."""


class KeyNotFoundError(TokenError, LookupError):
    """No key with that name on the token."""


class AmbiguousKeyError(TokenError, LookupError):
    """More than one key matches; tokencsp refuses to guess."""


class KeyExistsError(TokenError):
    """A key with that name already exists on the token."""


class TokenOperationError(TokenError):
    """A PKCS#11 call failed for a reason not covered above (the CKR name is in the message)."""


class AgentError(TokenError):
    """The tokencsp agent (docs/AGENT.md), which stands in for the token, broke its protocol, went away, or
    its socket or directory is unsafe.  A TokenError: no message can cause it, so an open reports it as
    such instead of taking it for a bad key blob."""


class TokenLockError(TokenError):
    """The cross-process token lock could not be taken: timed out, or its directory is not private."""


UNWRAP_REFUSED = "the token refused to unwrap or decrypt the blob"


class UnwrapRefused(TokenCSPError):
    """The token refused a caller-supplied blob in C_UnwrapKey or C_Decrypt.

    Deliberately not a :class:`TokenError` and always the same message, with
    no CKR: whatever the token said about the blob (bad padding, bad length,
    a general error) is one outcome.  Failures of the token's own state
    (session closed, logged out, removed, key gone) keep their own types.
    """

    def __init__(self) -> None:
        super().__init__(UNWRAP_REFUSED)


# -- sealed messages (docs/FORMAT.md) ---------------------------------------------------
#
# Each refusal has its own type, a fixed message and a ``reason`` code that the
# CLI maps to its own exit status.  What an attacker can provoke without the
# recipient's key (bad padding, wrong key, altered ciphertext) all lands in
# AuthenticationFailed with one message.


class MessageRejected(TokenCSPError):
    """A sealed message was refused; ``reason`` names why in one word."""

    reason = "rejected"
    default_message = "message rejected"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class EnvelopeFormatError(MessageRejected, ValueError):
    reason = "malformed"
    default_message = "not a tokencsp sealed message"


class NotForThisKey(MessageRejected):
    reason = "not-for-this-key"
    default_message = "message is not addressed to this key"


class AuthenticationFailed(MessageRejected):
    reason = "unauthenticated"
    default_message = "message could not be authenticated"


class TruncatedMessage(AuthenticationFailed):
    reason = "truncated"
    default_message = "message is truncated"


class ReplayError(MessageRejected):
    reason = "replay"


class ReplayedMessage(ReplayError):
    """Seen before.  Streamed opens record a message after its first chunk (FORMAT.md O6), so
    there it can also mean that an earlier copy was damaged after that chunk."""

    reason = "replayed"
    default_message = ("message was already accepted once (replay; when opened as a stream, an earlier copy "
                       "may have been damaged after its first chunk)")


class MessageTooOld(ReplayError):
    reason = "too-old"
    default_message = "message is too old"


class MessageFromFuture(ReplayError):
    reason = "from-future"
    default_message = "message timestamp is too far in the future"


class SerialNotIncreasing(ReplayError):
    reason = "serial-backwards"
    default_message = "sender serial number did not increase"


class SignatureError(MessageRejected):
    reason = "signature"


class UntrustedSender(SignatureError):
    reason = "untrusted"
    default_message = "sender is not trusted"


class BadSignature(SignatureError):
    reason = "bad-signature"
    default_message = "sender signature does not verify"


class SignatureRequired(SignatureError):
    reason = "unsigned"
    default_message = "message is unsigned but a trust set was given"


class Pkcs1Refused(MessageRejected):
    """The message's key blob uses PKCS#1 v1.5 transport and the receiver did not opt in.

    Decided on the public header flag alone, before any token work: a v1.5
    key shared with OAEP messages and three-phase is only as safe as the
    v1.5 path's timing (docs/SECURITY.md).
    """

    reason = "pkcs1-refused"
    default_message = "message uses PKCS#1 v1.5 key transport; refused unless allowed (allow_pkcs1 / --allow-pkcs1)"


class ReplayCacheError(TokenCSPError):
    """The replay cache could not be read or written; nothing was accepted."""




# -- the three-phase exchange (docs/THREEPHASE.md) -----------------------------------
# ``abort_code`` is what a party sends in its ABORT frame for each failure.


class ProtocolError(TokenCSPError):
    """The three-phase session failed; the subclasses say whose fault it was."""
    abort_code = 1


class LocalProtocolError(ProtocolError):
    """This party misused its own machine (a call its state does not allow, a session already failed)."""
    abort_code = 6


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow in this state (malformed or unexpected)."""


class PeerAuthenticationFailed(RemoteProtocolError):
    """The peer did not prove it holds the right key (bad MAC, failed unwrap, wrong key)."""
    abort_code = 2


class UnknownPeer(ProtocolError):
    """A name is not in the trust set (the peer's claim in phase 1, or the peer an initiator asked for)."""
    abort_code = 3


class PhaseTimeout(ProtocolError):
    """A handshake phase (or the record channel) passed its deadline."""
    abort_code = 4


class FrameTooLarge(RemoteProtocolError):
    """A frame's length prefix exceeds the limit; its body was never read."""
    abort_code = 5


class PeerDisconnected(ProtocolError):
    """The connection ended (or could not be made) before the protocol was done."""


class ConnectFailed(PeerDisconnected):
    """No connection at all: the address cannot be listened on or connected to (in use, unknown host, refused)."""


class RecordError(PeerAuthenticationFailed):
    """A record failed authentication: altered, replayed, reordered or dropped."""


class TruncatedSession(RecordError):
    """The stream ended without the peer's close record."""


class PeerAborted(RemoteProtocolError):
    """The peer sent ABORT; ``reason`` is its (unauthenticated) code."""

    def __init__(self, reason: int, description: str) -> None:
        self.reason = reason
        super().__init__(f"the peer aborted the session: {description} (its unauthenticated claim)")
