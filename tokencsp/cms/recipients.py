"""Which KeyTransRecipientInfo of a CMS message is for our key, and how its key is wrapped.

A recipient is named by issuer and serial number (``openssl cms -encrypt`` default) or by
subjectKeyIdentifier (``-keyid``).  The key's own SKI (RFC 5280 method 1, SHA-1 of the public key
bits, as ``key cert`` writes it and openssl computes it) is always known; issuer and serial need
the certificate.  Whatever is matched here is public: the message says it.  Pure.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import CmsFormatError, CmsRecipientNotFound, UnsupportedAlgorithm

__all__ = ["KeyTransport", "key_identifier", "parse_recipient_infos", "select_recipient"]


@dataclass(frozen=True)
class KeyTransport:
    encrypted_key: bytes
    oaep: bool  # RSAES-OAEP (SHA-1, MGF1-SHA-1, empty label); else PKCS#1 v1.5
    matched: bool  # named this key (False: the only candidate of the right size)


def key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's value."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    bits = asn1_keys.PublicKeyInfo.load(der)["public_key"].contents[1:]
    return hashlib.sha1(bits).digest()


def parse_recipient_infos(raw: bytes) -> asn1_cms.RecipientInfos:
    try:
        infos = asn1_cms.RecipientInfos.load(raw)
        for info in infos:
            _ = info.chosen.native if info.name == "ktri" else info.name
    except (ValueError, TypeError) as exc:
        raise CmsFormatError(f"the CMS recipient infos are malformed: {exc}") from None
    return infos


def _oaep(params: asn1_cms.RSAESOAEPParams) -> bool:
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    mgf_hash = mgf["parameters"]["algorithm"].native
    label = params["p_source_algorithm"]["parameters"].native
    if hash_name != "sha1" or mgf["algorithm"].native != "mgf1" or mgf_hash != "sha1" or label:
        raise UnsupportedAlgorithm(f"RSAES-OAEP with {hash_name}/MGF1-{mgf_hash}{' and a label' if label else ''}: "
                                   "only SHA-1 without a label is supported (SoftHSM 2.6 unwraps no other)")
    return True


def _transport(ktri: asn1_cms.KeyTransRecipientInfo, matched: bool) -> KeyTransport:
    algorithm = ktri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        oaep = False
    elif name == "rsaes_oaep":
        oaep = _oaep(algorithm["parameters"])
    else:
        raise UnsupportedAlgorithm(f"key transport {name} is not supported (RSA PKCS#1 v1.5 or RSAES-OAEP)")
    return KeyTransport(ktri["encrypted_key"].native, oaep, matched)


def _names(rid: asn1_cms.RecipientIdentifier, ski: bytes, certs: Sequence[x509.Certificate]) -> bool:
    if rid.name == "subject_key_identifier":
        ours = {ski}
        for cert in certs:
            with contextlib.suppress(x509.ExtensionNotFound):
                ours.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
        return bytes(rid.chosen.native) in ours
    issuer_serial = rid.chosen
    return any(issuer_serial["issuer"].dump() == cert.issuer.public_bytes()
               and issuer_serial["serial_number"].native == cert.serial_number for cert in certs)


def select_recipient(infos: asn1_cms.RecipientInfos, public_key: rsa.RSAPublicKey,
                     cert: x509.Certificate | None = None, certs: Sequence[x509.Certificate] = ()) -> KeyTransport:
    """The KeyTransRecipientInfo naming this key; failing that, the only one sized for its modulus.

    ``cert`` is one the caller gave (it must hold this key); ``certs`` are more of the key's
    certificates (those stored with it on the token), any of which may name it.
    """
    if cert is not None and cert.public_key() != public_key:
        raise CmsRecipientNotFound("the certificate given is not the certificate of this key")
    ours = [c for c in ([cert] if cert is not None else []) + list(certs) if c.public_key() == public_key]
    ski = key_identifier(public_key)
    ktris = [info.chosen for info in infos if info.name == "ktri"]
    for ktri in ktris:
        if _names(ktri["rid"], ski, ours):
            return _transport(ktri, matched=True)
    size = (public_key.key_size + 7) // 8
    sized = [ktri for ktri in ktris if len(ktri["encrypted_key"].native) == size]
    if len(sized) == 1 and len(ktris) == 1:
        return _transport(sized[0], matched=False)
    if not ktris:
        raise CmsRecipientNotFound("the CMS message has no key-transport (RSA) recipient")
    raise CmsRecipientNotFound("no recipient of the CMS message names this key (give its certificate with --cert, "
                               "or store it on the token with key import-cert)")
