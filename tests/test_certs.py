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


# -- key import-cert / key export --format cert: a CA-issued certificate stored on the token --------


def _host_ca(where):
    """A CA whose key lives on the host (openssl): what a real CA issuing for a token key looks like."""
    if not (where / "hostca.pem").exists():
        assert _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(where / "hostca.key"),
                        "-out", str(where / "hostca.pem"), "-subj", "/CN=host CA/O=Example", "-days", "2",
                        ).returncode == 0
    return where / "hostca.pem", where / "hostca.key"


def _issue(where, name: str, out, serial: str = "0x1234abcd") -> None:
    """openssl's CA signs a certificate for the public key of token key ``name``."""
    ca, ca_key = _host_ca(where)
    (where / f"{name}.pub").write_bytes(tokencsp("key", "export", name, "--format", "pem").stdout)
    result = _openssl("x509", "-new", "-force_pubkey", str(where / f"{name}.pub"), "-subj", f"/CN={name} by host CA",
                      "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", serial, "-days", "2", "-out", str(out))
    assert result.returncode == 0, result.stderr


def _token_objects() -> int:
    """How many objects the token holds, counted by a fresh process (what another application sees)."""
    import sys

    probe = "from tokencsp import Provider\nwith Provider.open() as p: print(p.object_count())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def _p11tool_certs(softhsm_kit) -> str:
    """GnuTLS p11tool's (an independent PKCS#11 reader's) list of the token's certificate objects."""
    import shutil

    p11tool = shutil.which("p11tool")
    assert p11tool, "p11tool not found: install gnutls-bin (softhsm/install-deps.sh does)"
    result = subprocess.run([p11tool, "--provider", softhsm_kit.module, "--list-all-certs",
                             f"pkcs11:token={softhsm_kit.labels[0]}"], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    if result.returncode == 2 and "No matching objects found" in result.stderr:
        return ""
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def stored(softhsm_kit, tmp_path):
    """A fresh exchange key (deleted after the test) and a host CA's certificate for it."""
    name = f"{PREFIX}-stored"
    tokencsp("key", "generate", name)
    _issue(tmp_path, name, tmp_path / "issued.pem")
    yield tmp_path, name
    tokencsp("key", "delete", "--yes", name, check=False)


def test_import_cert_stores_it_and_export_gives_it_back(stored, softhsm_kit):
    where, name = stored
    result = tokencsp("key", "import-cert", name, str(where / "issued.pem"))
    assert b"stored a certificate for" in result.stderr and b"serial 1234abcd" in result.stderr
    issued = x509.load_pem_x509_certificate((where / "issued.pem").read_bytes())
    pem = tokencsp("key", "export", name, "--format", "cert").stdout
    assert x509.load_pem_x509_certificate(pem) == issued and pem.startswith(b"-----BEGIN CERTIFICATE-----")
    der = tokencsp("key", "export", name, "--format", "cert", "--der").stdout
    assert der == _openssl("x509", "-in", str(where / "issued.pem"), "-outform", "DER").stdout
    tokencsp("key", "export", name, "--format", "cert", "-o", str(where / "back.der"))
    assert (where / "back.der").read_bytes() == der
    # an independent reader sees a certificate object with the key's label and CKA_ID
    listing = _p11tool_certs(softhsm_kit)
    key_id = next(line.split("id=")[1] for line in tokencsp("key", "list").stdout.decode().splitlines()
                  if line.startswith(f"{name}\t")).split()[0]
    assert f"object={name};" in listing and "Type: X.509 Certificate" in listing
    assert ":".join(key_id[i:i + 2] for i in range(0, len(key_id), 2)) in listing.lower()


def test_import_cert_accepts_der(stored):
    where, name = stored
    (where / "issued.der").write_bytes(_openssl("x509", "-in", str(where / "issued.pem"), "-outform", "DER").stdout)
    tokencsp("key", "import-cert", name, str(where / "issued.der"))
    assert tokencsp("key", "export", name, "--format", "cert", "--der").stdout == (where / "issued.der").read_bytes()


def test_import_cert_refuses_another_keys_certificate_and_stores_nothing(stored, issued):
    _, name = stored
    certs_dir, _, _ = issued
    before = _token_objects()
    result = tokencsp("key", "import-cert", name, str(certs_dir / "kx.pem"), check=False)
    assert_one_line_error(result, 1, "not for key")
    assert _token_objects() == before
    assert_one_line_error(tokencsp("key", "export", name, "--format", "cert", check=False), 3, "no certificate",
                          hint="import-cert")


def test_import_cert_refuses_what_is_no_certificate(stored):
    where, name = stored
    (where / "junk.pem").write_bytes(tokencsp("key", "export", name, "--format", "pem").stdout)
    assert_one_line_error(tokencsp("key", "import-cert", name, str(where / "junk.pem"), check=False), 1,
                          "not an X.509 certificate")


def test_a_second_certificate_needs_replace(stored):
    where, name = stored
    tokencsp("key", "import-cert", name, str(where / "issued.pem"))
    _issue(where, name, where / "renewed.pem", serial="0x77")
    before = _token_objects()
    result = tokencsp("key", "import-cert", name, str(where / "renewed.pem"), check=False)
    assert_one_line_error(result, 3, "already has a certificate")
    assert b"--replace" in result.stderr
    assert _token_objects() == before
    assert x509.load_pem_x509_certificate(tokencsp("key", "export", name, "--format", "cert").stdout).serial_number \
        == 0x1234ABCD
    assert b"replaced the certificate" in tokencsp("key", "import-cert", name, str(where / "renewed.pem"),
                                                   "--replace").stderr
    assert _token_objects() == before  # one certificate object, not two
    assert x509.load_pem_x509_certificate(tokencsp("key", "export", name, "--format", "cert").stdout).serial_number \
        == 0x77


def test_export_cert_without_a_stored_one_says_how_to_make_one(stored):
    _, name = stored
    result = tokencsp("key", "export", name, "--format", "cert", check=False)
    assert_one_line_error(result, 3, "has no certificate", hint="key cert")
    assert b"key import-cert" in result.stderr


def test_der_is_for_the_certificate_only(stored):
    _, name = stored
    assert_one_line_error(tokencsp("key", "export", name, "--format", "pem", "--der", check=False), 2, "--format cert")


def test_key_delete_removes_the_certificate_too(softhsm_kit, tmp_path):
    name = f"{PREFIX}-gone"
    before = _token_objects()
    tokencsp("key", "generate", name)
    _issue(tmp_path, name, tmp_path / "issued.pem")
    tokencsp("key", "import-cert", name, str(tmp_path / "issued.pem"))
    assert _token_objects() == before + 3
    assert b"(3 objects)" in tokencsp("key", "delete", "--yes", name).stderr
    assert _token_objects() == before
    assert f"object={name};" not in _p11tool_certs(softhsm_kit)
    # the name is free again, and a new key of that name has no certificate
    tokencsp("key", "generate", name)
    try:
        assert_one_line_error(tokencsp("key", "export", name, "--format", "cert", check=False), 3, "no certificate",
                              hint="import-cert")
    finally:
        tokencsp("key", "delete", "--yes", name)


def test_cms_decrypt_finds_the_recipient_through_the_stored_certificate(stored, issued):
    """Two recipients named by issuer and serial: without --cert the stored certificate picks ours."""
    where, name = stored
    certs_dir, _, _ = issued
    (where / "plain").write_bytes(b"for the stored certificate")
    message = _openssl("cms", "-encrypt", "-binary", "-aes-256-gcm", "-outform", "DER", "-in", str(where / "plain"),
                       "-recip", str(certs_dir / "kx.pem"), "-recip", str(where / "issued.pem")).stdout
    (where / "msg").write_bytes(message)
    assert_one_line_error(tokencsp("cms", "decrypt", "--key", name, str(where / "msg"), check=False), 15,
                          "import-cert")
    tokencsp("key", "import-cert", name, str(where / "issued.pem"))
    assert tokencsp("cms", "decrypt", "--key", name, str(where / "msg")).stdout == b"for the stored certificate"
