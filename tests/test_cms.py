"""``tokencsp cms decrypt``: messages made by the real ``openssl cms -encrypt``, opened with the key on the token."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import assert_one_line_error, kept_substitute, openssl, tokencsp

PREFIX = "cms"


@pytest.fixture(scope="module")
def recipient(softhsm_kit, tmp_path_factory):
    """An exchange key with a certificate from a CA key on the token, and a second, unrelated key."""
    where = tmp_path_factory.mktemp("cms")
    ca, kx, other = f"{PREFIX}-ca", f"{PREFIX}-kx", f"{PREFIX}-other"
    tokencsp("key", "generate", ca, "--usage", "signature")
    tokencsp("key", "generate", kx)
    tokencsp("key", "generate", other)
    tokencsp("key", "cert", ca, "--signer", ca, "-o", str(where / "ca.pem"))
    tokencsp("key", "cert", kx, "--signer", ca, "-o", str(where / "kx.pem"))
    tokencsp("key", "cert", other, "--signer", ca, "-o", str(where / "other.pem"))
    yield where, kx, other
    for name in (ca, kx, other):
        tokencsp("key", "delete", "--yes", name, check=False)


def _encrypt(where, plain: bytes, *options: str, recipients: tuple[str, ...] = ("kx.pem",)) -> bytes:
    (where / "plain").write_bytes(plain)
    args = ["cms", "-encrypt", "-binary", "-in", str(where / "plain"), *options]
    for name in recipients:
        args += ["-recip", str(where / name)]
    return openssl(*args).stdout


VARIANTS = {
    "cbc-v15-der": ("-aes-256-cbc", "-outform", "DER"),
    "cbc128-v15-pem": ("-aes-128-cbc", "-outform", "PEM"),
    "cbc192-smime": ("-aes-192-cbc",),
    "3des-der": ("-des3", "-outform", "DER"),
    "cbc-oaep-der": ("-aes-256-cbc", "-outform", "DER", "-keyopt", "rsa_padding_mode:oaep"),
    "cbc-keyid-der": ("-aes-256-cbc", "-outform", "DER", "-keyid"),
    "gcm-der": ("-aes-256-gcm", "-outform", "DER"),
    "gcm-oaep-smime": ("-aes-128-gcm", "-keyopt", "rsa_padding_mode:oaep"),
    "stream-cbc-der": ("-aes-256-cbc", "-stream", "-outform", "DER"),
    "stream-cbc-smime": ("-aes-256-cbc", "-stream"),
    "stream-gcm-pem": ("-aes-256-gcm", "-stream", "-outform", "PEM"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_openssl_output_opens_on_the_token(recipient, tmp_path, variant):
    where, kx, _ = recipient
    plain = os.urandom(70_001) + b"end"
    options = VARIANTS[variant]
    if "-keyopt" in options:  # -keyopt applies to the -recip before it
        message = _encrypt(where, plain, *[o for o in options if o not in ("-keyopt", "rsa_padding_mode:oaep")],
                           "-recip", str(where / "kx.pem"), "-keyopt", "rsa_padding_mode:oaep", recipients=())
    else:
        message = _encrypt(where, plain, *options)
    (tmp_path / "msg").write_bytes(message)
    tokencsp("cms", "decrypt", "--key", kx, "-o", str(tmp_path / "out"), str(tmp_path / "msg"))
    assert (tmp_path / "out").read_bytes() == plain
    assert tokencsp("cms", "decrypt", "--key", kx, input=message).stdout == plain


def test_several_recipients_need_the_certificate(recipient, tmp_path):
    where, kx, _ = recipient
    message = _encrypt(where, b"to both", "-aes-256-cbc", "-outform", "DER", recipients=("other.pem", "kx.pem"))
    (tmp_path / "msg").write_bytes(message)
    result = tokencsp("cms", "decrypt", "--key", kx, str(tmp_path / "msg"), check=False)
    assert_one_line_error(result, 15, "--cert")
    out = tokencsp("cms", "decrypt", "--key", kx, "--cert", str(where / "kx.pem"), str(tmp_path / "msg")).stdout
    assert out == b"to both"


def _tamper_key(message: bytes, where) -> bytes:
    """Flip a byte inside the RSA-encrypted key (located through openssl's own parse)."""
    dump = openssl("asn1parse", "-inform", "DER", input=message).stdout.decode().splitlines()
    # the encrypted key is the first OCTET STRING of the modulus' length
    for line in dump:
        if "OCTET STRING" in line and "l= 256" in line:
            offset = int(line.split(":")[0]) + int(line.split("hl=")[1].split()[0])
            tampered = bytearray(message)
            tampered[offset + 100] ^= 0x40
            return bytes(tampered)
    raise AssertionError("no 256-byte OCTET STRING in the message")


def _under_the_substitute(message: bytes, where, plain: bytes | None) -> bytes:
    """``message`` (DER, CBC, content last) with its content replaced by one made under the key the bad
    key transport stands for (every tokencsp process of this user derives the same substitute): a
    content whose padding that key rejects (``plain`` None), or one it decrypts to ``plain``."""
    from asn1crypto import cms as asn1_cms
    from cryptography import x509

    from tokencsp import SessionKey
    from tokencsp.blobs import AlgId, SimpleBlob

    enveloped = asn1_cms.ContentInfo.load(message)["content"]
    encrypted_key = enveloped["recipient_infos"][0].chosen["encrypted_key"].native
    info = enveloped["encrypted_content_info"]
    iv, content = info["content_encryption_algorithm"]["parameters"].native, info["encrypted_content"].native
    assert message.endswith(content)
    public = x509.load_pem_x509_certificate((where / "kx.pem").read_bytes()).public_key()
    key = SessionKey.from_bytes(AlgId.CALG_AES_256,
                                kept_substitute(public, SimpleBlob(AlgId.CALG_AES_256, encrypted_key)))
    key.iv = iv
    replaced = key.encrypt(bytes(len(content)), final=False) if plain is None else key.encrypt(plain)
    assert len(replaced) == len(content)
    return message[:-len(content)] + replaced


@pytest.mark.parametrize("cipher", ["-aes-256-cbc", "-aes-256-gcm"])
def test_a_bad_key_transport_fails_like_a_bad_content(recipient, tmp_path, cipher):
    """One line for both.  CBC: the bad key transport's content is made under its substitute (a padding that
    key rejects), so the failure is the substitute path's, not luck; where the padding is valid under the
    substitute, the garbage is accepted, as under any key the content was not made with (no integrity)."""
    where, kx, _ = recipient
    plain = os.urandom(5000)
    message = _encrypt(where, plain, cipher, "-outform", "DER")
    bad_key = _tamper_key(message, where)
    bad_content = bytearray(message)
    # CBC: the last byte of the next-to-last block, which is the padding's (8 becomes 9); GCM: in the tag
    bad_content[-17 if cipher.endswith("cbc") else -5] ^= 1
    cbc = cipher.endswith("cbc")
    results = []
    for name, data in (("key", _under_the_substitute(bad_key, where, None) if cbc else bad_key),
                       ("content", bytes(bad_content))):
        (tmp_path / name).write_bytes(data)
        result = tokencsp("cms", "decrypt", "--key", kx, "-o", str(tmp_path / f"{name}.out"), str(tmp_path / name),
                          check=False)
        results.append(assert_one_line_error(result, 4, "could not be decrypted"))
        assert not (tmp_path / f"{name}.out").exists()
    assert results[0] == results[1]
    if cbc:
        garbage = b"made under the substitute".ljust(len(plain), b".")
        (tmp_path / "lucky").write_bytes(_under_the_substitute(bad_key, where, garbage))
        tokencsp("cms", "decrypt", "--key", kx, "-o", str(tmp_path / "lucky.out"), str(tmp_path / "lucky"))
        assert (tmp_path / "lucky.out").read_bytes() == garbage


def test_a_message_for_another_key_of_the_same_size_fails_as_decryption(recipient, tmp_path):
    where, kx, _ = recipient
    message = _encrypt(where, b"secret", "-aes-256-gcm", "-outform", "DER", recipients=("other.pem",))
    (tmp_path / "msg").write_bytes(message)
    result = tokencsp("cms", "decrypt", "--key", kx, "-o", str(tmp_path / "out"), str(tmp_path / "msg"), check=False)
    assert_one_line_error(result, 4, "could not be decrypted")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data", [b"", b"not cms at all\n", b"\x30\x03\x06\x01\x00", b"-----BEGIN CMS-----\n!!\n"])
def test_garbage_is_one_line(recipient, tmp_path, data):
    _, kx, _ = recipient
    (tmp_path / "msg").write_bytes(data)
    result = tokencsp("cms", "decrypt", "--key", kx, "-o", str(tmp_path / "out"), str(tmp_path / "msg"), check=False)
    assert_one_line_error(result, 14, "")
    assert not (tmp_path / "out").exists()


def test_truncated_stream_is_one_line_and_no_output(recipient, tmp_path):
    where, kx, _ = recipient
    message = _encrypt(where, os.urandom(200_000), "-aes-256-gcm", "-stream", "-outform", "DER")
    (tmp_path / "msg").write_bytes(message[: len(message) // 2])
    result = tokencsp("cms", "decrypt", "--key", kx, "-o", str(tmp_path / "out"), str(tmp_path / "msg"), check=False)
    assert_one_line_error(result, 14, "truncated")
    assert not (tmp_path / "out").exists()


def test_cbc_enveloped_data_has_no_integrity(recipient, tmp_path):
    """What --help and docs/CMS.md warn about: a flipped bit away from the padding decrypts, to garbage."""
    where, kx, _ = recipient
    plain = bytes(5000)
    message = bytearray(_encrypt(where, plain, "-aes-256-cbc", "-outform", "DER"))
    message[-100] ^= 1
    (tmp_path / "msg").write_bytes(message)
    out = tokencsp("cms", "decrypt", "--key", kx, str(tmp_path / "msg")).stdout
    assert len(out) == len(plain) and out != plain


def _peak_rss_kib(tmp_path, *args: str) -> int:
    """Run ``tokencsp ARGS`` in a subprocess and return its VmHWM (peak resident set), KiB."""
    import sys

    status = tmp_path / "status"
    probe = ("import atexit, runpy, sys\n"
             f"atexit.register(lambda: open({str(status)!r}, 'w').write(open('/proc/self/status').read()))\n"
             "sys.argv = ['tokencsp'] + sys.argv[1:]; runpy.run_module('tokencsp', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1])


@pytest.mark.parametrize("cipher", ["-aes-256-cbc", "-aes-256-gcm"])
def test_a_streamed_message_opens_in_constant_memory(recipient, tmp_path, cipher):
    """48 MiB of -stream BER: the peak RSS stays within a few MiB of opening a tiny message's."""
    where, kx, _ = recipient
    size = 48 << 20
    big = tmp_path / "big"
    with big.open("wb") as out:
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))
    openssl("cms", "-encrypt", "-binary", "-stream", cipher, "-outform", "DER", "-in", str(big),
             "-out", str(tmp_path / "big.p7m"), str(where / "kx.pem"))
    (tmp_path / "small.p7m").write_bytes(_encrypt(where, b"small", cipher, "-stream", "-outform", "DER"))
    small = _peak_rss_kib(tmp_path, "cms", "decrypt", "--key", kx, "-o", str(tmp_path / "small.out"),
                          str(tmp_path / "small.p7m"))
    large = _peak_rss_kib(tmp_path, "cms", "decrypt", "--key", kx, "-o", str(tmp_path / "big.out"),
                          str(tmp_path / "big.p7m"))
    assert (tmp_path / "big.out").stat().st_size == size
    assert openssl("dgst", "-sha256", str(big)).stdout.split()[-1] == \
        openssl("dgst", "-sha256", str(tmp_path / "big.out")).stdout.split()[-1]
    assert large - small < 16 * 1024, f"peak RSS {large} KiB for 48 MiB vs {small} KiB for 5 bytes"


@pytest.mark.slow
def test_a_512_mib_streamed_message_opens_in_64_mib(recipient, tmp_path):
    """The Done-when figure: 512 MiB of openssl -stream AuthEnvelopedData, opened with -o in <= 64 MiB peak RSS."""
    import hashlib

    where, kx, _ = recipient
    size = 512 << 20
    digest = hashlib.sha256()
    with (tmp_path / "big").open("wb") as out:
        for _ in range(size >> 20):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            out.write(chunk)
    openssl("cms", "-encrypt", "-binary", "-stream", "-aes-256-gcm", "-outform", "DER", "-in", str(tmp_path / "big"),
             "-out", str(tmp_path / "big.p7m"), str(where / "kx.pem"))
    (tmp_path / "big").unlink()
    peak = _peak_rss_kib(tmp_path, "cms", "decrypt", "--key", kx, "-o", str(tmp_path / "big.out"),
                         str(tmp_path / "big.p7m"))
    (tmp_path / "big.p7m").unlink()
    assert (tmp_path / "big.out").stat().st_size == size
    opened = hashlib.sha256()
    with (tmp_path / "big.out").open("rb") as result:
        while chunk := result.read(1 << 20):
            opened.update(chunk)
    assert opened.digest() == digest.digest()
    assert peak <= 64 * 1024, f"peak RSS {peak} KiB opening 512 MiB"


# -- tokencsp cms encrypt -> openssl cms -decrypt ------------------------------------------------


@pytest.fixture(scope="module")
def host_recipient(tmp_path_factory):
    """An RSA key and self-signed certificate made by openssl itself (its private key on the host)."""
    where = tmp_path_factory.mktemp("cms-host")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(where / "key.pem"),
             "-out", str(where / "cert.pem"), "-subj", "/CN=openssl recipient", "-days", "2")
    openssl("pkey", "-in", str(where / "key.pem"), "-pubout", "-out", str(where / "pub.pem"))
    return where


@pytest.mark.parametrize("options", [(), ("--gcm",), ("--oaep",), ("--gcm", "--oaep")], ids=str)
@pytest.mark.parametrize("to", ["cert.pem", "pub.pem"])
def test_openssl_opens_what_tokencsp_encrypts(host_recipient, tmp_path, options, to):
    plain = os.urandom(300_000) + b"tail"
    (tmp_path / "plain").write_bytes(plain)
    tokencsp("cms", "encrypt", "--to", str(host_recipient / to), *options, "-o", str(tmp_path / "msg"),
             str(tmp_path / "plain"))
    args = ["cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(tmp_path / "msg"),
            "-inkey", str(host_recipient / "key.pem")]
    if to == "cert.pem":
        args += ["-recip", str(host_recipient / "cert.pem")]
    assert openssl(*args).stdout == plain
    kind = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(tmp_path / "msg")).stdout
    assert (b"authEnvelopedData" in kind) == ("--gcm" in options)
    assert (b"rsaesOaep" in kind) == ("--oaep" in options)


def test_several_recipients_each_open_it(host_recipient, recipient, tmp_path):
    where, kx, _ = recipient
    (tmp_path / "plain").write_bytes(b"for both")
    tokencsp("cms", "encrypt", "--gcm", "--to", str(host_recipient / "cert.pem"), "--to", str(where / "kx.pem"),
             "-o", str(tmp_path / "msg"), str(tmp_path / "plain"))
    assert openssl("cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "msg"),
                    "-inkey", str(host_recipient / "key.pem"), "-recip", str(host_recipient / "cert.pem")
                    ).stdout == b"for both"
    out = tokencsp("cms", "decrypt", "--key", kx, "--cert", str(where / "kx.pem"), str(tmp_path / "msg")).stdout
    assert out == b"for both"


def test_encrypt_to_a_token_public_key_opens_on_the_token_by_key_identifier(recipient, tmp_path):
    _, kx, _ = recipient
    (tmp_path / "pub.pem").write_bytes(tokencsp("key", "export", kx, "--format", "pem").stdout)
    sealed = tokencsp("cms", "encrypt", "--to", str(tmp_path / "pub.pem"), "--to", str(tmp_path / "pub.pem"),
                      input=b"by ski").stdout
    assert tokencsp("cms", "decrypt", "--key", kx, input=sealed).stdout == b"by ski"


def test_encrypt_to_something_that_is_no_key_is_one_line(tmp_path):
    (tmp_path / "junk").write_bytes(b"junk")
    result = tokencsp("cms", "encrypt", "--to", str(tmp_path / "junk"), "-o", str(tmp_path / "msg"), input=b"x",
                      check=False)
    assert_one_line_error(result, 1, "not a public key")
    assert not (tmp_path / "msg").exists()


def test_cbc_content_decrypts_the_same_whatever_the_pieces():
    """The streaming CBC decryptor (no token): pieces of any size, including empty and one-byte ones,
    give the plaintext of one-shot decryption, and the last block waits for the final padding check."""
    import random

    from asn1crypto import core
    from cryptography.hazmat.primitives import padding as sympadding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from tokencsp import SessionKey
    from tokencsp.blobs import AlgId
    from tokencsp.cms.opening import _Cbc

    rng = random.Random(11)
    for length in (0, 1, 15, 16, 17, 100, 4096, 70_001):
        key, iv, plain = os.urandom(32), os.urandom(16), os.urandom(length)
        padder = sympadding.PKCS7(128).padder()
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
        for _ in range(6):
            cbc = _Cbc(SessionKey.from_bytes(AlgId.CALG_AES_256, key), core.OctetString(iv))
            out, at = bytearray(), 0
            while at < len(ciphertext):
                size = rng.choice((0, 1, 15, 16, 17, 31, 33, 4096, 65536))
                for piece in cbc.update(ciphertext[at:at + size]):
                    out += piece
                at += size
            assert len(out) == len(ciphertext) - 16  # the last block is held back for the padding
            out += cbc.finish()
            assert bytes(out) == plain, length


@pytest.mark.host_side(reason="the subject is the recipient file cms encrypt reads; the token only exports the keys")
def test_encrypt_to_a_signature_keys_publickeyblob_is_one_line(recipient, tmp_path):
    """A CALG_RSA_SIGN PUBLICKEYBLOB is refused as seal and capi encrypt refuse it (its private half can
    never unwrap); the exchange key's CALG_RSA_KEYX blob is taken, named by subjectKeyIdentifier."""
    _, kx, _ = recipient
    tokencsp("key", "export", f"{PREFIX}-ca", "--format", "msblob", "-o", str(tmp_path / "sig.blob"))
    result = tokencsp("cms", "encrypt", "--to", str(tmp_path / "sig.blob"), "-o", str(tmp_path / "msg"), input=b"x",
                      check=False)
    assert_one_line_error(result, 1, "is a signature key (CALG_RSA_SIGN PUBLICKEYBLOB)")
    assert not (tmp_path / "msg").exists()
    tokencsp("key", "export", kx, "--format", "msblob", "-o", str(tmp_path / "kx.blob"))
    sealed = tokencsp("cms", "encrypt", "--to", str(tmp_path / "kx.blob"), input=b"to the blob").stdout
    assert tokencsp("cms", "decrypt", "--key", kx, input=sealed).stdout == b"to the blob"
