"""X.509 certificates for token keys, built with cryptography's builders and signed on the token.

cryptography signs only with keys it holds, so the certificate is built and signed with a
throwaway host key of the same algorithm (RSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt -- the
signature the token makes); its TBSCertificate, which already names that signature algorithm, is
then signed by the ``sign`` callable (``KeyPair.sign``: the token) and the throwaway signature
replaced.  The result is checked against the issuer's public key before it is returned.

Pure: no I/O, no clock (``now`` is passed in), no token (``sign`` is).
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import InvalidKeyError

__all__ = ["PSS_SHA256", "CertificateObject", "CertificateRequest", "build_certificate", "certificate_object",
           "load_certificate", "parse_name"]

#: The token's signature (token.Token.sign_pss_sha256).
PSS_SHA256 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

Signer = Callable[[bytes], bytes]


@functools.lru_cache(maxsize=1)
def _throwaway_key() -> rsa.RSAPrivateKey:
    # Only its signature algorithm reaches the TBSCertificate; its signature is replaced.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def parse_name(text: str) -> x509.Name:
    """An RFC 4514 distinguished name ("CN=alice,O=Example"); one clear error when it is not one."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise InvalidKeyError(f"not a distinguished name (RFC 4514, e.g. CN=alice,O=Example): {text!r}: {exc}") \
            from None
    if not list(name):
        raise InvalidKeyError("the distinguished name is empty")
    return name


class CertificateRequest:
    """What goes into one certificate: the subject's key and name, the issuer's, validity, role."""

    def __init__(self, subject_key: rsa.RSAPublicKey, subject: x509.Name, *, issuer: x509.Name,
                 issuer_key: rsa.RSAPublicKey, days: int, now: datetime.datetime, ca: bool = False,
                 encipherment: bool = True, serial: int | None = None) -> None:
        if days < 1:
            raise InvalidKeyError("a certificate must be valid for at least one day")
        self.subject_key = subject_key
        self.subject = subject
        self.issuer = issuer
        self.issuer_key = issuer_key
        self.days = days
        self.now = now
        self.ca = ca
        self.encipherment = encipherment
        self.serial = serial if serial is not None else int.from_bytes(os.urandom(16), "big") >> 1 or 1


def _builder(req: CertificateRequest) -> x509.CertificateBuilder:
    start = req.now.replace(microsecond=0) - datetime.timedelta(minutes=5)  # some clock skew at the relying party
    builder = (x509.CertificateBuilder()
               .subject_name(req.subject).issuer_name(req.issuer).public_key(req.subject_key)
               .serial_number(req.serial).not_valid_before(start)
               .not_valid_after(start + datetime.timedelta(days=req.days))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(req.subject_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(req.issuer_key), critical=False))
    if req.ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        usage = dict(digital_signature=True, key_cert_sign=True, crl_sign=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = dict(key_encipherment=True) if req.encipherment else dict(digital_signature=True)
    flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                 encipher_only=False, decipher_only=False)
    builder = builder.add_extension(x509.KeyUsage(**{**flags, **usage}), critical=True)
    if not req.ca and req.encipherment:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder


def build_certificate(req: CertificateRequest, sign: Signer) -> x509.Certificate:
    """The certificate ``req`` describes, signed by ``sign`` (RSA-PSS/SHA-256 by the issuer's key)."""
    draft = _builder(req).sign(_throwaway_key(), hashes.SHA256(), rsa_padding=PSS_SHA256)
    tbs = draft.tbs_certificate_bytes
    signature = sign(tbs)
    try:
        req.issuer_key.verify(signature, tbs, PSS_SHA256, hashes.SHA256())
    except InvalidSignature:
        raise InvalidKeyError("the signer's signature does not verify with its public key") from None
    parsed = asn1_x509.Certificate.load(draft.public_bytes(serialization.Encoding.DER))
    parsed["signature_value"] = signature
    return x509.load_der_x509_certificate(parsed.dump(force=False))


def load_certificate(data: bytes, what: str = "the file") -> x509.Certificate:
    """An X.509 certificate from PEM or DER; one clear error when ``data`` is neither."""
    pem = b"-----BEGIN" in data
    try:
        return x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data)
    except ValueError:
        raise InvalidKeyError(f"{what} is not an X.509 certificate (PEM or DER)") from None


@dataclass(frozen=True)
class CertificateObject:
    """What PKCS#11 stores of an X.509 certificate (CKO_CERTIFICATE, CKC_X_509), all DER."""

    subject: bytes  # CKA_SUBJECT: the Name
    issuer: bytes  # CKA_ISSUER: the Name
    serial_number: bytes  # CKA_SERIAL_NUMBER: the INTEGER, tag and length included (PKCS#11 2.40 4.6.3)
    value: bytes  # CKA_VALUE: the whole certificate


def certificate_object(cert: x509.Certificate) -> CertificateObject:
    der = cert.public_bytes(serialization.Encoding.DER)
    tbs = asn1_x509.Certificate.load(der)["tbs_certificate"]
    return CertificateObject(subject=cert.subject.public_bytes(), issuer=cert.issuer.public_bytes(),
                             serial_number=tbs["serial_number"].dump(), value=der)
