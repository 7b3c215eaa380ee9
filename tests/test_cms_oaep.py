"""CMS key transport RSAES-OAEP with SHA-256 (and SHA-384/512): made by the real ``openssl cms -encrypt``.

Which route opens it is the token's: opencryptoki 3.8 unwraps OAEP-SHA-256 (C_UnwrapKey), SoftHSM 2.6
unwraps OAEP with SHA-1 only, so there a key that unwraps refuses such a message with one line before
the key is used; a key on the decrypt path (CKA_DECRYPT, raw RSA: a card's shape) opens it on both,
the OAEP decoded on the host (tokencsp.rsadecode).
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import assert_one_line_error, kept_substitute, openssl, tokencsp

PREFIX = "cms-oaep"
REFUSED = "this token cannot do RSAES-OAEP with SHA-256"


@pytest.fixture(scope="module")
def keys(softhsm_kit, tmp_path_factory):
    """A CA key, an exchange key that unwraps (``kx``) and one on the decrypt path (``card``), with certificates."""
    from tokencsp import Provider
    from tokencsp.keyinfo import ImportPath, KeyUsage

    where = tmp_path_factory.mktemp("cms-oaep")
    ca, kx, card = f"{PREFIX}-ca", f"{PREFIX}-kx", f"{PREFIX}-card"
    tokencsp("key", "generate", ca, "--usage", "signature")
    tokencsp("key", "generate", kx)
    with Provider.open() as provider:  # the kit's first token, as the CLI's
        provider._token.generate_rsa(card, 2048, KeyUsage.EXCHANGE, import_path=ImportPath.DECRYPT)
    tokencsp("key", "cert", ca, "--signer", ca, "-o", str(where / "ca.pem"))
    for name in (kx, card):
        tokencsp("key", "cert", name, "--signer", ca, "-o", str(where / f"{name}.pem"))
    yield where, {"kx": kx, "card": card}
    for name in (ca, kx, card):
        tokencsp("key", "delete", "--yes", name, check=False)


def _encrypt(where, cert: str, plain: bytes, *options: str, oaep: tuple[str, ...] = ("sha256", "sha256")) -> bytes:
    """openssl cms -encrypt with RSAES-OAEP: ``oaep`` is (OAEP hash, MGF1 hash[, label hex])."""
    (where / "plain").write_bytes(plain)
    keyopts = ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", f"rsa_oaep_md:{oaep[0]}",
               "-keyopt", f"rsa_mgf1_md:{oaep[1]}"]
    if len(oaep) > 2:
        keyopts += ["-keyopt", f"rsa_oaep_label:{oaep[2]}"]
    return openssl("cms", "-encrypt", "-binary", "-in", str(where / "plain"), *options,
                    "-recip", str(where / f"{cert}.pem"), *keyopts).stdout


def _printed(message: bytes) -> bytes:
    return openssl("cms", "-cmsout", "-print", "-inform", "DER", input=message).stdout


def _tamper_key(message: bytes) -> bytes:
    """Flip a byte inside the RSA-encrypted key (the 256-byte OCTET STRING, located by openssl's own parse)."""
    for line in openssl("asn1parse", "-inform", "DER", input=message).stdout.decode().splitlines():
        if "OCTET STRING" in line and "l= 256" in line:
            offset = int(line.split(":")[0]) + int(line.split("hl=")[1].split()[0])
            tampered = bytearray(message)
            tampered[offset + 100] ^= 0x40
            return bytes(tampered)
    raise AssertionError("no 256-byte OCTET STRING in the message")


def _under_the_substitute(message: bytes, cert_pem: bytes) -> bytes:
    """``message`` (DER CBC EnvelopedData, content last) with a content that the key its (bad) key transport
    stands for rejects at the padding: so a failure there is the substitute's, not a lucky garbage padding."""
    from asn1crypto import cms as asn1_cms
    from cryptography import x509

    from tokencsp import SessionKey
    from tokencsp.blobs import AlgId, SimpleBlob

    enveloped = asn1_cms.ContentInfo.load(message)["content"]
    encrypted_key = enveloped["recipient_infos"][0].chosen["encrypted_key"].native
    info = enveloped["encrypted_content_info"]
    iv, content = info["content_encryption_algorithm"]["parameters"].native, info["encrypted_content"].native
    assert message.endswith(content)
    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    key = SessionKey.from_bytes(AlgId.CALG_AES_256,
                                kept_substitute(public, SimpleBlob(AlgId.CALG_AES_256, encrypted_key)))
    key.iv = iv
    return message[:-len(content)] + key.encrypt(bytes(len(content)), final=False)


def _route(name: str, oaep_hash: str = "sha256") -> str:
    from tokencsp import Provider

    with Provider.open() as provider:
        return provider.exchange_key(name).oaep_route(oaep_hash)


def _opens(where, name: str, message: bytes, plain: bytes, tmp_path) -> None:
    """The CLI (with -o, and to stdout) and the library both open ``message`` to ``plain``."""
    from tokencsp import Provider
    from tokencsp.cms import open_stream

    (tmp_path / "msg").write_bytes(message)
    result = tokencsp("cms", "decrypt", "--key", name, "--json", "-o", str(tmp_path / "out"), str(tmp_path / "msg"))
    assert (tmp_path / "out").read_bytes() == plain
    assert json.loads(result.stdout.decode().splitlines()[-1])["oaep"] is True
    assert tokencsp("cms", "decrypt", "--key", name, input=message).stdout == plain
    out = bytearray()
    with Provider.open() as provider, (tmp_path / "msg").open("rb") as src:
        key = provider.exchange_key(name)
        info = open_stream(src.read, out.extend, public_key=key.public_key(),
                           import_key=key.import_simpleblob_deferred)
    assert bytes(out) == plain and info.oaep and info.oaep_hash in ("sha256", "sha384", "sha512")


# -- opencryptoki: the token unwraps OAEP-SHA-256 -------------------------------------------------


@pytest.mark.opencryptoki_only(reason="SoftHSM 2.6 unwraps OAEP with SHA-1 only (its refusal is tested below)")
@pytest.mark.parametrize("variant", [("sha256", "-aes-256-cbc", "-outform", "DER"),
                                     ("sha256", "-aes-256-gcm"),  # S/MIME
                                     ("sha256", "-aes-128-cbc", "-stream", "-outform", "PEM"),
                                     ("sha384", "-aes-256-gcm", "-outform", "DER"),
                                     ("sha512", "-aes-256-cbc", "-stream", "-outform", "DER")], ids=str)
def test_oaep_sha2_opens_through_the_tokens_unwrap(keys, tmp_path, variant):
    where, names = keys
    oaep_hash, *options = variant
    assert _route(names["kx"], oaep_hash) == "unwrap"
    plain = os.urandom(50_001) + b"end"
    message = _encrypt(where, names["kx"], plain, *options, oaep=(oaep_hash, oaep_hash))
    if "DER" in options:  # the hash and MGF1's: what the message names is what was asked for
        assert _printed(message).count(f":{oaep_hash}".encode()) == 2
    _opens(where, names["kx"], message, plain, tmp_path)


@pytest.mark.opencryptoki_only(reason="the unwrap route for OAEP-SHA-256 exists on opencryptoki only")
@pytest.mark.parametrize("cipher", ["-aes-256-cbc", "-aes-256-gcm"])
def test_a_bad_oaep_sha256_key_transport_fails_like_a_bad_content_through_the_unwrap(keys, tmp_path, cipher):
    where, names = keys
    _bad_key_like_bad_content(where, names["kx"], cipher, tmp_path)


# -- SoftHSM: a key that unwraps cannot; refused before the key is used ---------------------------


@pytest.mark.softhsm_only(reason="opencryptoki unwraps OAEP-SHA-256 (tested above)")
def test_oaep_sha256_is_refused_with_one_line_where_the_token_cannot_unwrap_it(keys, tmp_path):
    """Decided from the message's algorithm identifier and the token's capability (a probe with a blob of our
    own), before the message's key transport is used: a good and a tampered key transport get the same line."""
    from tokencsp import Provider
    from tokencsp.errors import UnsupportedAlgorithm

    where, names = keys
    message = _encrypt(where, names["kx"], b"sha-256", "-aes-256-gcm", "-outform", "DER")
    lines = []
    for name, data in (("good", message), ("tampered", _tamper_key(message))):
        (tmp_path / name).write_bytes(data)
        result = tokencsp("cms", "decrypt", "--key", names["kx"], "-o", str(tmp_path / f"{name}.out"),
                          str(tmp_path / name), check=False)
        lines.append(assert_one_line_error(result, 1, REFUSED, hint="rsa_padding_mode:oaep"))
        assert not (tmp_path / f"{name}.out").exists()
    assert lines[0] == lines[1]
    with Provider.open() as provider:
        key = provider.exchange_key(names["kx"])
        before = provider.session_object_count()
        with pytest.raises(UnsupportedAlgorithm, match=REFUSED):
            key.oaep_route("sha256")
        assert key.oaep_route("sha1") == "unwrap"
        assert provider.session_object_count() == before == 0


# -- both tokens: a decrypt-path key decodes OAEP-SHA-256 on the host ------------------------------


@pytest.mark.parametrize("variant", [("sha256", "-aes-256-cbc", "-outform", "DER"),
                                     ("sha256", "-aes-256-gcm", "-stream"),
                                     ("sha512", "-aes-256-gcm", "-outform", "PEM")], ids=str)
def test_oaep_sha2_opens_through_raw_rsa_on_a_decrypt_key(keys, tmp_path, variant):
    where, names = keys
    oaep_hash, *options = variant
    assert _route(names["card"], oaep_hash) == "raw"
    plain = os.urandom(30_000)
    _opens(where, names["card"], _encrypt(where, names["card"], plain, *options, oaep=(oaep_hash, oaep_hash)),
           plain, tmp_path)


@pytest.mark.parametrize("cipher", ["-aes-256-cbc", "-aes-256-gcm"])
def test_a_bad_oaep_sha256_key_transport_fails_like_a_bad_content_through_raw_rsa(keys, tmp_path, cipher):
    where, names = keys
    _bad_key_like_bad_content(where, names["card"], cipher, tmp_path)


def _bad_key_like_bad_content(where, name: str, cipher: str, tmp_path) -> None:
    """One line, one status, no output for a tampered OAEP-SHA-256 key transport and for a tampered content."""
    plain = os.urandom(5000)
    message = _encrypt(where, name, plain, cipher, "-outform", "DER")
    bad_key = _tamper_key(message)
    if cipher.endswith("cbc"):
        bad_key = _under_the_substitute(bad_key, (where / f"{name}.pem").read_bytes())
    bad_content = bytearray(message)
    bad_content[-17 if cipher.endswith("cbc") else -5] ^= 1  # CBC: the padding byte's block; GCM: the tag
    lines = []
    for what, data in (("key", bad_key), ("content", bytes(bad_content))):
        (tmp_path / what).write_bytes(data)
        result = tokencsp("cms", "decrypt", "--key", name, "-o", str(tmp_path / f"{what}.out"), str(tmp_path / what),
                          check=False)
        lines.append(assert_one_line_error(result, 4, "could not be decrypted"))
        assert not (tmp_path / f"{what}.out").exists()
    assert lines[0] == lines[1]


# -- OAEP variants nobody opens: refused on the algorithm identifier -------------------------------


@pytest.mark.host_side(reason="the subject is the parse of RSAES-OAEP-params; the token only holds the key")
@pytest.mark.parametrize("oaep, needle", [
    (("sha256", "sha1"), "RSAES-OAEP with SHA-256 and MGF1-SHA-1 is not supported"),
    (("sha1", "sha256"), "RSAES-OAEP with SHA-1 and MGF1-SHA-256 is not supported"),
    (("sha1", "sha1", "0102"), "RSAES-OAEP with a label"),
    (("sha256", "sha256", "6c6162656c"), "RSAES-OAEP with a label"),
    (("sha224", "sha224"), "RSAES-OAEP with SHA-224 is not supported"),
], ids=str)
def test_other_oaep_variants_are_refused_with_one_line(keys, tmp_path, oaep, needle):
    where, names = keys
    for name in names.values():
        (tmp_path / "msg").write_bytes(_encrypt(where, name, b"x", "-aes-256-gcm", "-outform", "DER", oaep=oaep))
        result = tokencsp("cms", "decrypt", "--key", name, "-o", str(tmp_path / "out"), str(tmp_path / "msg"),
                          check=False)
        assert_one_line_error(result, 1, needle)
        assert not (tmp_path / "out").exists()


# -- tokencsp cms encrypt --oaep-hash ---------------------------------------------------------------


@pytest.mark.host_side(reason="tokencsp encrypts on the host; the token opens it through the routes above")
@pytest.mark.parametrize("oaep_hash", ["sha256", "sha512"])
def test_cms_encrypt_oaep_hash_opens_in_openssl_and_on_the_decrypt_key(keys, tmp_path, oaep_hash):
    where, names = keys
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
             "-out", str(tmp_path / "cert.pem"), "-subj", "/CN=openssl recipient", "-days", "2")
    plain = os.urandom(100_000)
    (tmp_path / "plain").write_bytes(plain)
    tokencsp("cms", "encrypt", "--oaep-hash", oaep_hash, "--gcm", "--to", str(tmp_path / "cert.pem"),
             "--to", str(where / f"{names['card']}.pem"), "-o", str(tmp_path / "msg"), str(tmp_path / "plain"))
    message = (tmp_path / "msg").read_bytes()
    printed = _printed(message)
    assert printed.count(b"rsaesOaep") == 2 and printed.count(f":{oaep_hash}".encode()) == 4, printed
    assert openssl("cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(tmp_path / "msg"),
                    "-inkey", str(tmp_path / "key.pem"), "-recip", str(tmp_path / "cert.pem")).stdout == plain
    out = tokencsp("cms", "decrypt", "--key", names["card"], "--cert", str(where / f"{names['card']}.pem"),
                   str(tmp_path / "msg")).stdout
    assert out == plain
