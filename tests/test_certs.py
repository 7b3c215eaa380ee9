"""``tokencsp key cert``: certificates for token keys, signed on the token, checked by the real openssl."""

from __future__ import annotations

import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from helpers import PSS, assert_one_line_error, tokencsp

PREFIX = "certs"


@pytest.fixture(scope="module")
def issued(softhsm_kit, tmp_path_factory):
    """A signature key with a self-signed CA certificate and an exchange key certified by it."""
    where = tmp_path_factory.mktemp("certs")
    ca, kx = f"{PREFIX}-ca", f"{PREFIX}-kx"
    tokencsp("key", "generate", ca, "--usage", "signature")
    tokencsp("key", "generate", kx)
    tokencsp("key", "cert", ca, "--signer", ca, "--subject", "CN=tokencsp test CA,O=Example", "--days", "30",
             "-o", str(where / "ca.pem"))
    tokencsp("key", "cert", kx, "--signer", ca, "--issuer-cert", str(where / "ca.pem"),
             "--subject", "CN=alice,O=Example", "-o", str(where / "kx.pem"))
    yield where, ca, kx
    for name in (ca, kx):
        tokencsp("key", "delete", "--yes", name, check=False)


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, timeout=60)


def test_openssl_verify_accepts_the_chain(issued):
    where, _, _ = issued
    result = _openssl("verify", "-CAfile", str(where / "ca.pem"), str(where / "kx.pem"))
    assert result.returncode == 0, result.stderr
    assert b": OK" in result.stdout


def test_openssl_verify_rejects_a_certificate_from_another_signer(issued, tmp_path):
    where, _, _kx = issued
    other = f"{PREFIX}-other"
    tokencsp("key", "generate", other, "--usage", "signature")
    try:
        tokencsp("key", "cert", other, "--signer", other, "--subject", "CN=tokencsp test CA,O=Example",
                 "-o", str(tmp_path / "other.pem"))
    finally:
        tokencsp("key", "delete", "--yes", other, check=False)
    result = _openssl("verify", "-CAfile", str(tmp_path / "other.pem"), str(where / "kx.pem"))
    assert result.returncode != 0


def test_the_exchange_certificate_says_key_encipherment(issued):
    where, _, _ = issued
    text = _openssl("x509", "-in", str(where / "kx.pem"), "-noout", "-text").stdout.decode()
    assert "Key Encipherment" in text
    assert "Certificate Sign" not in text
    assert "CA:FALSE" in text
    assert "Signature Algorithm: rsassaPss" in text
    assert "Subject: O = Example, CN = alice" in text  # RFC 4514 lists the RDNs last first
    ca_text = _openssl("x509", "-in", str(where / "ca.pem"), "-noout", "-text").stdout.decode()
    assert "CA:TRUE" in ca_text and "Certificate Sign" in ca_text


def test_the_certificate_holds_the_token_key_and_a_token_signature(issued):
    where, ca, kx = issued
    cert = x509.load_pem_x509_certificate((where / "kx.pem").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((where / "ca.pem").read_bytes())
    assert cert.public_key() == _public(kx)
    assert ca_cert.public_key() == _public(ca)
    ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, PSS, hashes.SHA256())
    assert cert.issuer == ca_cert.subject


def _public(name: str):
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(tokencsp("key", "export", name, "--format", "pem").stdout)


def test_openssl_cms_encrypts_to_the_certificate(issued, tmp_path):
    where, _, _ = issued
    (tmp_path / "msg").write_bytes(b"hello")
    result = _openssl("cms", "-encrypt", "-in", str(tmp_path / "msg"), "-out", str(tmp_path / "msg.p7m"),
                      "-outform", "DER", str(where / "kx.pem"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "msg.p7m").stat().st_size > 200


def test_an_exchange_key_cannot_sign(issued, tmp_path):
    _, _, kx = issued
    result = tokencsp("key", "cert", kx, "--signer", kx, "-o", str(tmp_path / "x.pem"), check=False)
    assert_one_line_error(result, 1, "cannot sign")
    assert not (tmp_path / "x.pem").exists()


def test_a_bad_subject_is_one_line(issued, tmp_path):
    _, ca, kx = issued
    result = tokencsp("key", "cert", kx, "--signer", ca, "--subject", "no equals sign", check=False)
    assert_one_line_error(result, 1, "distinguished name")
