"""Exit statuses: the one table that ``--help``, README's table and every command use.

Each status has a fixed number (scripts depend on them) and a description;
``status_for`` maps an exception to its status through ``BY_ERROR``, looked
up along the exception's MRO so that the most specific class listed wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum

from .. import errors

__all__ = ["BY_ERROR", "ExitStatus", "UsageError", "epilog", "status_for"]


class ExitStatus(IntEnum):
    description: str

    def __new__(cls, value: int, description: str) -> ExitStatus:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    OK = 0, "success"
    ERROR = 1, "error (bad input file, unusable key, I/O failure, replay cache unusable)"
    USAGE = 2, "usage error"
    TOKEN = 3, "token error (module, token, PIN, missing key)"
    DECRYPT = 4, "decryption failed (the session key blob or the ciphertext did not decrypt; one message for both)"
    FINDINGS = 5, "key audit --strict found warnings"
    DOCTOR = 6, "doctor: a check failed (its line says which)"
    UNAUTHENTICATED = 10, "open: message could not be authenticated (tampered, wrong key blob)"
    TRUNCATED = 11, "open: message is truncated"
    NOT_FOR_THIS_KEY = 12, "open: message is not addressed to this key"
    MALFORMED = 13, "open: not a sealed message (malformed header)"
    CMS_MALFORMED = 14, "cms: not a CMS EnvelopedData/AuthEnvelopedData (malformed or unsupported)"
    CMS_NOT_FOR_THIS_KEY = 15, "cms: no recipient of the message is this key (give --cert)"
    PKCS1_REFUSED = 16, "open: PKCS#1 v1.5 key transport, refused without --allow-pkcs1"
    REPLAYED = 20, "open: replayed (already accepted once)"
    TOO_OLD = 21, "open: too old (--max-age)"
    FROM_FUTURE = 22, "open: timestamp too far in the future (--max-skew)"
    SERIAL_BACKWARDS = 23, "open: sender serial number did not increase"
    UNTRUSTED = 30, "open: sender not in --trust"
    BAD_SIGNATURE = 31, "open: sender signature does not verify"
    UNSIGNED = 32, "open: unsigned message but --trust was given"
    PROTOCOL = 40, "listen/send: protocol error"
    PEER_AUTH = 41, "listen/send: the peer failed to authenticate (wrong key, tampering, replay)"
    UNKNOWN_PEER = 42, "listen/send: unknown peer"
    TIMEOUT = 43, "listen/send: a phase timed out"
    CONNECT = 44, "listen/send: cannot listen or connect (address in use, unknown host, connection refused)"
    INTERRUPTED = 130, "interrupted (Ctrl-C)"


class UsageError(errors.ConfigError):
    """The command line cannot work as given (exit 2), found after argparse was done with it."""


# Each refusal of a sealed message has its own status, so scripts can tell
# "replayed" from "tampered" without parsing text.
BY_ERROR: Mapping[type[BaseException], ExitStatus] = {
    errors.TokenCSPError: ExitStatus.ERROR,
    UsageError: ExitStatus.USAGE,
    errors.UriError: ExitStatus.USAGE,
    errors.SelectionConflict: ExitStatus.USAGE,
    errors.TokenError: ExitStatus.TOKEN,
    errors.DecryptionError: ExitStatus.DECRYPT,
    errors.AuthenticationFailed: ExitStatus.UNAUTHENTICATED,
    errors.TruncatedMessage: ExitStatus.TRUNCATED,
    errors.NotForThisKey: ExitStatus.NOT_FOR_THIS_KEY,
    errors.EnvelopeFormatError: ExitStatus.MALFORMED,
    errors.CmsFormatError: ExitStatus.CMS_MALFORMED,
    errors.CmsRecipientNotFound: ExitStatus.CMS_NOT_FOR_THIS_KEY,
    errors.Pkcs1Refused: ExitStatus.PKCS1_REFUSED,
    errors.ReplayedMessage: ExitStatus.REPLAYED,
    errors.MessageTooOld: ExitStatus.TOO_OLD,
    errors.MessageFromFuture: ExitStatus.FROM_FUTURE,
    errors.SerialNotIncreasing: ExitStatus.SERIAL_BACKWARDS,
    errors.UntrustedSender: ExitStatus.UNTRUSTED,
    errors.BadSignature: ExitStatus.BAD_SIGNATURE,
    errors.SignatureRequired: ExitStatus.UNSIGNED,
    errors.ProtocolError: ExitStatus.PROTOCOL,
    errors.PeerAuthenticationFailed: ExitStatus.PEER_AUTH,
    errors.UnknownPeer: ExitStatus.UNKNOWN_PEER,
    errors.PhaseTimeout: ExitStatus.TIMEOUT,
    errors.ConnectFailed: ExitStatus.CONNECT,
    KeyboardInterrupt: ExitStatus.INTERRUPTED,
}


def status_for(exc: BaseException) -> ExitStatus:
    for cls in type(exc).__mro__:
        if cls in BY_ERROR:
            return BY_ERROR[cls]
    return ExitStatus.ERROR


def epilog() -> str:
    """The ``exit status:`` block of ``tokencsp --help``."""
    return "exit status:\n" + "".join(f"{int(s):3d}  {s.description}\n" for s in ExitStatus)
