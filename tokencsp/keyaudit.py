"""Findings about one key container's security attributes.  Pure: KeyInfo in, findings out."""

from __future__ import annotations

from dataclasses import dataclass

from .keyinfo import KeyInfo

__all__ = ["Finding", "audit_key"]

WARN = "warning"
NOTE = "note"


@dataclass(frozen=True)
class Finding:
    level: str  # "warning": weakens the key's protection; "note": worth knowing
    message: str


def audit_key(info: KeyInfo) -> list[Finding]:
    findings = []
    if info.extractable:
        findings.append(Finding(WARN, "private key is EXTRACTABLE: it can be wrapped off the token"))
    if not info.sensitive:
        findings.append(Finding(WARN, "private key is not SENSITIVE: its value can be read in the clear"))
    if info.bits < 2048:
        findings.append(Finding(WARN, f"{info.bits}-bit RSA is below 2048 bits"))
    if info.can_sign and (info.can_unwrap or info.can_decrypt):
        findings.append(Finding(WARN, "key both signs and unwraps/decrypts: one key, two jobs "
                                      "(a decryption oracle can be turned into a signing oracle)"))
    if info.can_decrypt and not info.can_sign:
        findings.append(Finding(NOTE, "key allows raw C_Decrypt besides C_UnwrapKey: session keys could be "
                                      "decrypted to the host without the unwrap template"))
    if not (info.always_sensitive and info.never_extractable):
        findings.append(Finding(NOTE, "key was not always sensitive / never extractable: "
                                      "it existed outside the token (imported)"))
    if info.can_unwrap and not info.oaep_only:
        findings.append(Finding(NOTE, "accepts PKCS#1 v1.5 unwraps (needed by CryptoAPI peers without "
                                      "CRYPT_OAEP; --oaep-only removes the padding-oracle surface)"))
    if not info.has_public:
        findings.append(Finding(NOTE, "no public key object with the same CKA_ID"))
    return findings
