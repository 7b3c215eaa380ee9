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

from asn1crypto import algos
from asn1crypto import cms as asn1_cms
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import CmsFormatError, CmsRecipientNotFound, UnsupportedAlgorithm

__all__ = ["OAEP_HASHES", "KeyTransport", "key_identifier", "oaep_hash_label", "parse_recipient_infos",
           "select_recipient"]

#: RSAES-OAEP hashes a CMS key transport may name (MGF1 over the same hash, empty label), asn1crypto
#: names: what the token layer and the host-side decoding (tokencsp.rsadecode) both implement.
OAEP_HASHES = ("sha1", "sha256", "sha384", "sha512")


@dataclass(frozen=True)
class KeyTransport:
    encrypted_key: bytes
    oaep: bool  # RSAES-OAEP (MGF1 over ``oaep_hash``, empty label); else PKCS#1 v1.5
    matched: bool  # named this key (False: the only candidate of the right size)
    oaep_hash: str = "sha1"  # one of OAEP_HASHES; meaningful with ``oaep`` only


def oaep_hash_label(name: str) -> str:
    """``sha256`` -> ``SHA-256``: how messages name a hash."""
    return name.upper().replace("SHA", "SHA-", 1) if name.startswith("sha") else name


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


def _oaep(params: object) -> str:
    """The OAEP hash of RSAES-OAEP-params (RFC 4055 3.1); anything but MGF1 over it and an empty label is refused."""
    if not isinstance(params, algos.RSAESOAEPParams):
        raise CmsFormatError("the RSAES-OAEP key transport has no RSAES-OAEP-params")
    try:
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        mgf_name = mgf["algorithm"].native
        mgf_hash = mgf["parameters"]["algorithm"].native if mgf_name == "mgf1" else None
        source = params["p_source_algorithm"]
        label = source["parameters"].native if source["algorithm"].native == "p_specified" else None
    except (ValueError, TypeError, KeyError):
        raise CmsFormatError("the RSAES-OAEP parameters are malformed") from None
    shown = oaep_hash_label(str(hash_name))
    if hash_name not in OAEP_HASHES:
        raise UnsupportedAlgorithm(f"RSAES-OAEP with {shown} is not supported "
                                   f"({', '.join(map(oaep_hash_label, OAEP_HASHES))})")
    if mgf_name != "mgf1":
        raise UnsupportedAlgorithm(f"RSAES-OAEP with the mask generation function {mgf_name} is not supported "
                                   "(MGF1 only)")
    if mgf_hash != hash_name:
        raise UnsupportedAlgorithm(f"RSAES-OAEP with {shown} and MGF1-{oaep_hash_label(str(mgf_hash))} is not "
                                   "supported: the MGF1 hash must be the OAEP hash")
    if label != b"":
        raise UnsupportedAlgorithm("RSAES-OAEP with a label (pSourceFunc) is not supported: only the empty label")
    return str(hash_name)


def _transport(ktri: asn1_cms.KeyTransRecipientInfo, matched: bool) -> KeyTransport:
    algorithm = ktri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return KeyTransport(ktri["encrypted_key"].native, False, matched)
    if name == "rsaes_oaep":
        return KeyTransport(ktri["encrypted_key"].native, True, matched, _oaep(algorithm["parameters"]))
    raise UnsupportedAlgorithm(f"key transport {name} is not supported (RSA PKCS#1 v1.5 or RSAES-OAEP)")


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
