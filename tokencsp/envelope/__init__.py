"""Sealed messages: SIMPLEBLOB key transport, AES-256-GCM STREAM payload, optional signature.

``docs/FORMAT.md`` is the specification.  The package has three parts:
``_format`` (the pure wire format of version 1: header, prefix, nonces,
constants), ``_format2`` (version 2, several recipients: header, entries, key
commitment; ``read_header`` for both), ``sealing`` and ``opening``.  This module re-exports the public surface; the
names below are the documented import paths.
"""

from __future__ import annotations

from .._wire import U64_MAX
from ._format import (
                      DEFAULT_CHUNK_SIZE,
                      FLAG_OAEP,
                      FLAG_SIGNED,
                      ID_SIZE,
                      KEY_SIZE,
                      MAGIC,
                      MAX_CHUNK_SIZE,
                      MAX_RSA_BYTES,
                      MESSAGE_ID_SIZE,
                      MIN_CHUNK_SIZE,
                      MIN_RSA_BYTES,
                      SIGNATURE_CONTEXT,
                      SIMPLEBLOB_HEADER,
                      SUITE,
                      TAG_SIZE,
                      VERSION,
                      Header,
                      Preamble,
                      signed_data,
)
from ._format2 import MAX_RECIPIENTS, VERSION2, Entry, Header2, Preamble2, read_header
from .opening import (
    Checked,
    Opened,
    Receiver,
    Release,
    SenderStatus,
    check_prefix,
    import_session_key,
    open_bytes,
    open_checked,
    open_message,
    trust_set,
)
from .sealing import Signer, seal, seal_bytes

__all__ = ["DEFAULT_CHUNK_SIZE", "FLAG_OAEP", "FLAG_SIGNED", "ID_SIZE", "KEY_SIZE", "MAGIC", "MAX_CHUNK_SIZE",
           "MAX_RSA_BYTES", "MESSAGE_ID_SIZE", "MIN_CHUNK_SIZE", "MIN_RSA_BYTES", "SIGNATURE_CONTEXT",
           "SIMPLEBLOB_HEADER", "SUITE", "TAG_SIZE", "U64_MAX", "VERSION", "MAX_RECIPIENTS", "VERSION2", "Entry",
           "Header2", "Preamble2", "Checked", "Header", "Opened",
           "Preamble", "Receiver", "Release", "SenderStatus", "Signer", "check_prefix", "import_session_key",
           "open_bytes", "open_checked", "open_message", "read_header", "seal", "seal_bytes", "signed_data",
           "trust_set"]
