"""The provider against a real SoftHSM token: key containers, SIMPLEBLOB import, failures, threads."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import cbc_bad_padding, import_like_softhsm2_util, kept_substitute
from tokencsp import Provider, SessionKey
from tokencsp.blobs import AlgId, PrivateKeyBlob, PublicKeyBlob, SimpleBlob
from tokencsp.errors import (
    SESSION_KEY_IMPORT_FAILED,
    BlobFormatError,
    ConfigError,
    DecryptionError,
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    ModuleLoadError,
    PinError,
    SessionKeyImportError,
    TokenNotFoundError,
    TokenOperationError,
    UnsupportedAlgorithm,
)
from tokencsp.testing import selected_backend

ALGS = ["aes128", "aes192", "aes256", "3des", "3des112"]


@pytest.fixture(scope="module")
def provider(softhsm_kit):
    with Provider.open() as opened:
        yield opened


@pytest.fixture(scope="module")
def exchange_key(provider):
    pair = provider.generate_exchange_key("test-kx")
    yield pair
    provider.delete_key("test-kx")


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _traced_calls(caplog) -> list[str]:
    """The PKCS#11 functions of tokencsp.token.trace's debug lines, in order."""
    return [r.getMessage().split(":")[0] for r in caplog.records if r.name == "tokencsp.token"]


@pytest.mark.parametrize("lookup", ["exchange_key", "key"])
def test_a_key_lookup_reads_the_keys_attributes_once(provider, exchange_key, caplog, lookup):
    """The KeyInfo the lookup read is what the import path comes from: the key is searched for once
    (its private object, then its public half), not again for the first import's facts."""
    caplog.set_level(logging.DEBUG, logger="tokencsp.token")
    key = getattr(provider, lookup)("test-kx")
    assert key.import_path.value == "unwrap"
    assert _traced_calls(caplog) == ["C_FindObjects", "C_FindObjects"]
    caplog.clear()
    assert key.info().name == "test-kx"  # info() still asks the token, as it always did
    assert _traced_calls(caplog) == ["C_FindObjects", "C_FindObjects"]


def test_generated_exchange_key_is_sensitive_never_extractable_local(provider, exchange_key):
    info = exchange_key.info()
    assert info.name == "test-kx"
    assert info.bits == 2048
    assert info.usage.value == "exchange"
    assert info.sensitive and info.always_sensitive
    assert not info.extractable and info.never_extractable
    assert info.local
    assert info.can_unwrap and not info.can_sign and not info.can_decrypt
    assert info.has_public
    assert len(info.id) == 16


def test_public_blob_matches_token_public_key(exchange_key):
    blob = PublicKeyBlob.from_bytes(exchange_key.public_blob())
    assert blob.alg_id is AlgId.CALG_RSA_KEYX
    assert blob.modulus == exchange_key.public_key().public_numbers().n
    assert blob.bitlen == 2048
    assert exchange_key.public_blob()[:20].hex() == "0602000000a40000525341310008000001000100"
    pem = serialization.load_pem_public_key(exchange_key.public_pem())
    der = serialization.load_der_public_key(exchange_key.public_der())
    assert pem.public_numbers() == der.public_numbers() == exchange_key.public_key().public_numbers()


@pytest.mark.parametrize("oaep", [False, True], ids=["pkcs1", "oaep"])
@pytest.mark.parametrize("alg", ALGS)
def test_simpleblob_import_on_token_recovers_session_key(provider, exchange_key, alg, oaep):
    sender = SessionKey.generate(alg)
    ciphertext = sender.encrypt(b"the message" * 10)
    blob = sender.export_simpleblob(exchange_key.public_blob(), oaep=oaep)
    received = exchange_key.import_simpleblob(blob, oaep=oaep)
    assert received.alg == sender.alg
    assert received.key == sender.key
    assert received.decrypt(ciphertext) == b"the message" * 10
    assert provider.session_object_count() == 0


def test_signature_key_cannot_receive_session_keys(provider):
    pair = provider.generate_signature_key("test-sig")
    try:
        info = pair.info()
        assert info.can_sign and not info.can_unwrap
        assert info.usage.value == "signature"
        assert PublicKeyBlob.from_bytes(pair.public_blob()).alg_id is AlgId.CALG_RSA_SIGN
        with pytest.raises(KeyNotFoundError, match="not an exchange key"):
            provider.exchange_key("test-sig")
        with pytest.raises(InvalidKeyError):
            SessionKey.generate("aes128").export_simpleblob(pair.public_blob())
    finally:
        provider.delete_key("test-sig")


@pytest.mark.parametrize("bits", [3072, 4096])
def test_larger_keys(provider, bits):
    pair = provider.generate_exchange_key(f"test-{bits}", bits=bits)
    try:
        assert pair.info().bits == bits
        key = SessionKey.generate("aes256")
        assert pair.import_simpleblob(key.export_simpleblob(pair.public_blob(), oaep=True), oaep=True).key == key.key
    finally:
        provider.delete_key(f"test-{bits}")


def test_key_sizes_policy(provider):
    with pytest.raises(UnsupportedAlgorithm, match="legacy"):
        provider.generate_exchange_key("test-1024", bits=1024)
    with pytest.raises(UnsupportedAlgorithm):
        provider.generate_exchange_key("test-2000", bits=2000)
    pair = provider.generate_exchange_key("test-1024", bits=1024, legacy=True)
    try:
        assert pair.info().bits == 1024
    finally:
        provider.delete_key("test-1024")
    assert "test-1024" not in [k.name for k in provider.list_keys()]


def test_names_are_unique_and_lookups_typed(provider, exchange_key):
    with pytest.raises(KeyExistsError):
        provider.generate_exchange_key("test-kx")
    with pytest.raises(KeyNotFoundError):
        provider.exchange_key("no-such-key")
    with pytest.raises(KeyNotFoundError):
        provider.delete_key("no-such-key")
    assert "test-kx" in [k.name for k in provider.list_keys()]


def test_delete_removes_both_halves(tokencsp_provider):
    """On the plugin's empty token (pkcs11_token, either backend) the count is exact: the pair is the token's
    only two objects, and nothing is left after the delete."""
    provider = tokencsp_provider
    assert provider.object_count() == 0
    pair = provider.generate_exchange_key("test-del")
    blob = pair.public_blob()
    assert provider.object_count() == 2
    assert provider.delete_key("test-del") == 2
    assert provider.list_keys() == [] and provider.object_count() == 0
    with pytest.raises(KeyNotFoundError):
        provider.exchange_key("test-del")
    # A key deleted after it was looked up: the next import is a clean typed error.
    again = provider.generate_exchange_key("test-del")
    wrapped = SessionKey.generate("aes128").export_simpleblob(again.public_blob())
    again.import_simpleblob(wrapped)
    assert again.public_blob() != blob
    provider.delete_key("test-del")
    with pytest.raises(KeyNotFoundError):
        again.import_simpleblob(wrapped)
    assert provider.object_count() == 0


def test_import_private_key_blob_from_windows(provider):
    software = rsa.generate_private_key(65537, 2048)
    data = PrivateKeyBlob.from_private_key(software).to_bytes()
    pair = provider.import_private_blob("test-imported-blob", data)
    try:
        info = pair.info()
        assert info.usage.value == "exchange"
        assert info.sensitive and not info.extractable
        assert pair.public_key().public_numbers() == software.public_key().public_numbers()
        key = SessionKey.generate("3des")
        assert pair.import_simpleblob(key.export_simpleblob(software.public_key())).key == key.key
        with pytest.raises(KeyExistsError):
            provider.import_private_blob("another-name", data)
    finally:
        provider.delete_key("test-imported-blob")


def test_import_signature_private_blob_keeps_usage(provider):
    software = rsa.generate_private_key(65537, 2048)
    data = PrivateKeyBlob.from_private_key(software, AlgId.CALG_RSA_SIGN).to_bytes()
    pair = provider.import_private_blob("test-imported-sig", data)
    try:
        assert pair.info().usage.value == "signature"
    finally:
        provider.delete_key("test-imported-sig")


def test_import_pem(provider):
    software = rsa.generate_private_key(65537, 3072)
    pair = provider.import_pem("test-imported-pem", _private_pem(software))
    try:
        assert pair.info().bits == 3072 and not pair.info().extractable
        key = SessionKey.generate("aes192")
        assert pair.import_simpleblob(key.export_simpleblob(software.public_key(), oaep=True), oaep=True).key == key.key
    finally:
        provider.delete_key("test-imported-pem")
    with pytest.raises(InvalidKeyError):
        provider.import_pem("test-bad-pem", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(BlobFormatError):
        provider.import_private_blob("test-bad-blob", b"\x07\x02\x00\x00")


# -- the single uniform failure -----------------------------------------------------------


def _failing_blobs(exchange_key) -> dict[str, tuple[bytes, bool]]:
    """SIMPLEBLOBs that are well-formed but must not yield a key, with the oaep flag to use."""
    good = SessionKey.generate("aes256")
    pkcs1 = good.export_simpleblob(exchange_key.public_blob())
    other = rsa.generate_private_key(65537, 2048).public_key()
    wrong_len = SimpleBlob(AlgId.CALG_AES_256, SimpleBlob.from_bytes(
        SessionKey.generate("aes128").export_simpleblob(exchange_key.public_blob())).encrypted_key).to_bytes()
    flipped = bytearray(pkcs1)
    flipped[20] ^= 0x40
    big_endian = pkcs1[:12] + pkcs1[12:][::-1]
    return {
        "wrong recipient": (good.export_simpleblob(other), False),
        "key length not the ALG_ID's": (wrong_len, False),
        "corrupted ciphertext": (bytes(flipped), False),
        "big-endian ciphertext": (big_endian, False),
        "oaep blob imported as pkcs1": (good.export_simpleblob(exchange_key.public_blob(), oaep=True), False),
        "pkcs1 blob imported as oaep": (pkcs1, True),
        "all zero": (pkcs1[:12] + bytes(256), False),
        "shorter than the modulus": (pkcs1[:12] + pkcs1[12:-2], False),
    }


def test_every_secret_dependent_failure_is_one_error(provider, exchange_key):
    messages = set()
    for name, (blob, oaep) in _failing_blobs(exchange_key).items():
        with pytest.raises(SessionKeyImportError) as caught:
            exchange_key.import_simpleblob(blob, oaep=oaep)
        messages.add(str(caught.value))
        assert caught.value.__cause__ is None and caught.value.__suppress_context__, name
    assert messages == {SESSION_KEY_IMPORT_FAILED}
    assert provider.session_object_count() == 0


@pytest.mark.parametrize("mutate", [
    lambda b: b[:7],
    lambda b: b[:11],
    lambda b: b"\x06" + b[1:],
    lambda b: b[:1] + b"\x03" + b[2:],
    lambda b: b[:4] + b"\x00\xa4" + b[6:],
    lambda b: b[:8] + b"\x00\x24" + b[10:],
    lambda b: b[:12] + b[12:13],
], ids=["truncated header", "no wrap alg", "wrong bType", "wrong version", "RSA alg as session alg",
        "wrong wrap alg", "one byte ciphertext"])
def test_malformed_simpleblob_structure_is_blob_format_error(exchange_key, mutate):
    blob = SessionKey.generate("aes128").export_simpleblob(exchange_key.public_blob())
    with pytest.raises((BlobFormatError, UnsupportedAlgorithm)):
        exchange_key.import_simpleblob(mutate(blob))


# -- opening the token --------------------------------------------------------------------


def test_open_errors_are_typed(softhsm_kit, tmp_path):
    with pytest.raises(ModuleLoadError):
        Provider.open(module=str(tmp_path / "missing.so"), pin="1234")
    with pytest.raises(TokenNotFoundError):
        Provider.open(token="no-such-token", pin="1234")
    with pytest.raises(PinError, match="PIN incorrect"):
        Provider.open(token="tokencsp-test-b", pin="not-the-pin")
    with pytest.raises(ConfigError):
        Provider.open(uri="pkcs11:tokn=typo", pin="1234")
    with pytest.raises(ConfigError):
        Provider.open(pin_file=tmp_path / "absent-pin-file")


def test_open_by_uri_with_pin_source_and_serial(softhsm_kit, tmp_path, exchange_key):
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_kit.user_pin + "\n")
    pin_file.chmod(0o600)  # a PIN file others can read is refused
    uri = f"pkcs11:token=tokencsp-test-a;object=test-kx?pin-source=file:{pin_file}"
    with Provider.open(uri=uri) as provider:
        serial = provider.token_serial
        assert provider.exchange_key("test-kx").public_blob() == exchange_key.public_blob()
    if selected_backend() == "opencryptoki":
        # opencryptoki 3.8 gives every soft token serial "123" (init_tokenInfo): a serial
        # alone names no single token, and saying so is the right answer.
        with pytest.raises(TokenNotFoundError, match="serial"):
            Provider.open(serial=serial, token=None, pin_file=pin_file)
        return
    with Provider.open(serial=serial, token=None, pin_file=pin_file) as provider:
        assert provider.token_label == "tokencsp-test-a"


def test_ambiguous_label_is_refused(provider, softhsm_kit):
    """Two private keys with one label (as other tools can make): tokencsp refuses to pick one."""
    for key_id in (b"\xa1", b"\xa2"):
        import_like_softhsm2_util("tokencsp-test-a", softhsm_kit.user_pin, rsa.generate_private_key(65537, 2048),
                                  "dup", key_id)
    from pkcs11 import Attribute

    from tokencsp.errors import AmbiguousKeyError
    try:
        with pytest.raises(AmbiguousKeyError):
            provider.exchange_key("dup")
    finally:
        with provider._token._lease() as lease:
            for obj in list(lease.session.get_objects({Attribute.LABEL: "dup"})):
                obj.destroy()


# -- threads ------------------------------------------------------------------------------


def test_concurrent_imports_8_threads_x_500(provider, exchange_key):
    public = exchange_key.public_blob()
    jobs = []
    for _ in range(8):
        batch = []
        for i in range(500):
            key = SessionKey.generate(ALGS[i % len(ALGS)])
            batch.append((key.key, key.export_simpleblob(public, oaep=bool(i % 2)), bool(i % 2)))
        jobs.append(batch)
    errors: list[BaseException] = []
    wrong = []

    def work(batch):
        try:
            for expected, blob, oaep in batch:
                if exchange_key.import_simpleblob(blob, oaep=oaep).key != expected:
                    wrong.append(blob)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(batch,)) for batch in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wrong == []
    assert provider.session_object_count() == 0


def test_signature_key_signs_pss_sha256_on_token(provider):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pair = provider.generate_signature_key("test-signer")
    try:
        signature = pair.sign(b"header bytes")
        pair.public_key().verify(signature, b"header bytes",
                                 padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        from cryptography.exceptions import InvalidSignature
        with pytest.raises(InvalidSignature):
            pair.public_key().verify(signature, b"other bytes",
                                     padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    finally:
        provider.delete_key("test-signer")


def test_exchange_key_cannot_sign(exchange_key):
    with pytest.raises(InvalidKeyError, match="not a signature key"):
        exchange_key.sign(b"data")


def test_oaep_only_key_refuses_pkcs1_blobs(provider, exchange_key, token_has_allowed_mechanisms):
    if token_has_allowed_mechanisms:  # SoftHSM 2.6
        pair = provider.generate_exchange_key("test-oaep-only", oaep_only=True)
        try:
            assert pair.info().oaep_only
            key = SessionKey.generate("aes256")
            assert pair.import_simpleblob(key.export_simpleblob(pair.public_blob(), oaep=True), oaep=True).key == key.key
            with pytest.raises(SessionKeyImportError):
                pair.import_simpleblob(key.export_simpleblob(pair.public_blob()))
            assert provider.session_object_count() == 0
        finally:
            provider.delete_key("test-oaep-only")
    else:  # opencryptoki 3.8: no key at all rather than one that still answers PKCS#1 v1.5
        before = provider.object_count()
        with pytest.raises(TokenOperationError, match=re.escape(
                "cannot restrict a key to OAEP (it has no CKA_ALLOWED_MECHANISMS)")):
            provider.generate_exchange_key("test-oaep-only", oaep_only=True)
        assert provider.object_count() == before and provider.session_object_count() == 0
    assert not provider.exchange_key("test-kx").info().oaep_only
    with pytest.raises(InvalidKeyError, match="exchange keys"):
        provider.generate_key("test-sig-oaep", usage="signature", oaep_only=True)


def test_implicit_rejection_gives_a_stable_wrong_key(provider, exchange_key):
    good = SessionKey.generate("aes256")
    blob = good.export_simpleblob(exchange_key.public_blob())
    assert exchange_key.import_simpleblob_implicit(blob).key == good.key
    for name, (bad, oaep) in _failing_blobs(exchange_key).items():
        first = exchange_key.import_simpleblob_implicit(bad, oaep=oaep)
        second = exchange_key.import_simpleblob_implicit(bad, oaep=oaep)
        assert first.key == second.key, name
        assert len(first.key) == 32 and first.key != good.key, name
    assert provider.session_object_count() == 0


# -- implicit rejection, the deadline and its floor (issue 9: findings 1, 10, 13) ---------


def _probe_by_unwrap(pair):
    """A probe through the public unwrap, for ImplicitRejection objects of the tests' own."""
    def probe(blob: SimpleBlob, oaep: bool) -> None:
        with contextlib.suppress(SessionKeyImportError):
            pair.unwrap_raw(blob.encrypted_key, oaep)
    return probe


def _cheap_rejects(count: int) -> list[bytes]:
    """SIMPLEBLOBs whose RSA ciphertext is >= n: the token refuses them before any RSA work."""
    return [SimpleBlob(AlgId.CALG_AES_256, b"\xff" * 255 + bytes([i % 256])).to_bytes() for i in range(count)]


def test_a_flood_of_cheap_rejects_leaves_the_deadline_unchanged(provider):
    """Finding 1: 600 such blobs used to pull the learned deadline below a real unwrap.

    Only the key's own calibrations move the deadline, and only up: on a loaded machine an import
    may overrun and make one due (tokencsp.implicit), so "unchanged" is asserted unless one ran.
    """
    pair = provider.generate_exchange_key("test-flood")
    try:
        good = SessionKey.generate("aes256")
        assert pair.import_simpleblob_implicit(good.export_simpleblob(pair.public_blob())).key == good.key
        deadline, calibrations = pair.rejection.padder.deadline, pair.rejection.calibrations
        assert deadline > 0
        for blob in _cheap_rejects(600):
            pair.import_simpleblob_implicit(blob)
        after = pair.rejection.padder.deadline
        assert after == deadline or (after > deadline and pair.rejection.calibrations > calibrations)
        if pair.rejection.padder.overruns == 0:
            assert (after, pair.rejection.calibrations) == (deadline, calibrations)
        assert pair.rejection.padder.padded == 601
    finally:
        provider.delete_key("test-flood")
    assert provider.session_object_count() == 0


def test_every_import_path_ends_at_the_deadline(provider, exchange_key):
    """No timing measured: the padder ran once per import and the call returned no earlier than it said."""
    good = SessionKey.generate("aes256")
    blob = good.export_simpleblob(exchange_key.public_blob())
    bad = _failing_blobs(exchange_key)["corrupted ciphertext"][0]
    padder = exchange_key.rejection.padder

    def padded_once(call) -> None:
        before = padder.padded
        start = time.perf_counter()
        call()
        end = time.perf_counter()
        assert padder.padded == before + 1
        assert padder.last_padded_until >= start + padder.deadline
        assert end >= padder.last_padded_until

    padded_once(lambda: exchange_key.import_simpleblob_implicit(blob))
    padded_once(lambda: exchange_key.import_simpleblob_implicit(bad))
    padded_once(lambda: exchange_key.import_simpleblob(blob))
    padded_once(lambda: exchange_key.import_simpleblob_deferred(blob))
    padded_once(lambda: exchange_key.import_simpleblob_deferred(bad))

    def refused() -> None:
        with pytest.raises(SessionKeyImportError):
            exchange_key.import_simpleblob(bad)
    padded_once(refused)


def test_sealed_open_takes_the_padded_implicit_import(provider, exchange_key):
    """Fails when tokencsp.open bypasses ExchangeKey.import_simpleblob_implicit (e.g. a fallback path)."""
    import tokencsp
    from tokencsp.errors import AuthenticationFailed
    from tokencsp.replay import MemoryReplayCache

    public = exchange_key.public_key()
    rejection = exchange_key.rejection
    padded, implicit = rejection.padder.padded, rejection.imports["implicit"]
    assert tokencsp.open(tokencsp.seal(b"hello", public), exchange_key, cache=MemoryReplayCache()) == b"hello"
    assert (rejection.padder.padded, rejection.imports["implicit"]) == (padded + 1, implicit + 1)
    garbage = SimpleBlob(AlgId.CALG_AES_256, b"\x00" + os.urandom(255)).to_bytes()
    forged = tokencsp.seal(b"hello", public, key_blob=garbage, session_key=os.urandom(32))
    with pytest.raises(AuthenticationFailed):
        tokencsp.open(forged, exchange_key, cache=MemoryReplayCache())
    assert (rejection.padder.padded, rejection.imports["implicit"]) == (padded + 2, implicit + 2)


def test_three_phase_takes_the_padded_implicit_import_on_both_sides(keys):
    """Both unwraps of a handshake (A at the responder, B at the initiator) take the implicit path."""
    from tokencsp.threephase import HandshakeComplete, Role, ThreePhase, TrustSet

    alice, bob = keys["alice"], keys["bob"]
    trust = TrustSet({"alice": alice.public_key(), "bob": bob.public_key()})
    before = (alice.rejection.imports["implicit"], bob.rejection.imports["implicit"])
    init = ThreePhase(Role.INITIATOR, "alice", alice, trust, peer_name="bob", local_public=alice.public_key())
    resp = ThreePhase(Role.RESPONDER, "bob", bob, trust, local_public=bob.public_key())
    init.start(0.0)
    resp.start(0.0)
    resp.receive_data(init.data_to_send())
    resp.next_event(0.0)
    init.receive_data(resp.data_to_send())
    assert isinstance(init.next_event(0.0), HandshakeComplete)
    resp.receive_data(init.data_to_send())
    assert isinstance(resp.next_event(0.0), HandshakeComplete)
    assert (alice.rejection.imports["implicit"], bob.rejection.imports["implicit"]) == (before[0] + 1, before[1] + 1)


def test_an_over_long_unwrapped_key_is_refused_not_truncated(provider, exchange_key):
    from cryptography.hazmat.primitives.asymmetric import padding

    for alg, inside in ((AlgId.CALG_AES_128, 32), (AlgId.CALG_AES_256, 48), (AlgId.CALG_3DES_112, 24)):
        value = os.urandom(inside)
        blob = SimpleBlob(alg, exchange_key.public_key().encrypt(value, padding.PKCS1v15())).to_bytes()
        with pytest.raises(SessionKeyImportError):
            exchange_key.import_simpleblob(blob)
        implicit = exchange_key.import_simpleblob_implicit(blob)
        assert implicit.key not in value  # not a slice of what the token unwrapped: the substitute
        assert implicit.key == exchange_key.import_simpleblob_implicit(blob).key
        deferred = exchange_key.import_simpleblob_deferred(blob)
        assert deferred.key == implicit.key == exchange_key.rejection.substitute(SimpleBlob.from_bytes(blob))
        with pytest.raises(DecryptionError):
            deferred.decrypt(cbc_bad_padding(alg, deferred.key))
    assert provider.session_object_count() == 0


def test_capi_import_failure_and_bad_cbc_padding_are_one_error(provider, exchange_key):
    """Finding 10: a bad blob decrypts with its substitute exactly as a good blob carrying an unknown key.

    One error for a bad CBC padding, whatever the blob; where the padding happens to be valid under the
    substitute the output is accepted garbage, as it is under any key the ciphertext was not made with.
    (A bad blob that always failed was an oracle at ~256x cost: an unknown key gives valid padding
    for 1 ciphertext in 256.)  Deterministic: the ciphertexts are made under the substitute itself.
    """
    from tokencsp.implicit import CAPI_DECRYPT_FAILED, DeferredSessionKey

    sender = SessionKey.generate("aes256")
    plaintext = b"sixteen bytes.. " * 10
    ciphertext = sender.encrypt(plaintext)
    blob = sender.export_simpleblob(exchange_key.public_blob())
    received = exchange_key.import_simpleblob_deferred(blob)
    assert received.decrypt(ciphertext[:-32], final=False) + received.decrypt(ciphertext[-32:]) == plaintext
    bad_padding = bytearray(ciphertext)
    bad_padding[-17] ^= 1  # the last plaintext byte, a full pad block's 0x10, becomes 0x11: never valid
    messages = set()

    def fails(key, data: bytes) -> None:
        assert type(key) is DeferredSessionKey
        assert len(key.decrypt(data[:-16], final=False)) == len(data) - 16  # nothing fails early
        with pytest.raises(DecryptionError) as caught:
            key.decrypt(data[-16:])
        assert type(caught.value) is DecryptionError and caught.value.__cause__ is None
        messages.add(str(caught.value))

    fails(exchange_key.import_simpleblob_deferred(blob), bytes(bad_padding))
    for name, (bad, oaep) in _failing_blobs(exchange_key).items():
        substitute = exchange_key.rejection.substitute(SimpleBlob.from_bytes(bad))
        key = exchange_key.import_simpleblob_deferred(bad, oaep=oaep)
        assert key.key == substitute, name  # the substitute path, not a failure flag
        # A good blob that carries the substitute as its key: every ciphertext ends the same way.
        twin_blob = SessionKey.from_bytes(AlgId.CALG_AES_256, substitute).export_simpleblob(exchange_key.public_blob())
        refused = cbc_bad_padding(AlgId.CALG_AES_256, substitute)
        lucky = SessionKey.from_bytes(AlgId.CALG_AES_256, substitute).encrypt(plaintext)
        for key_blob, key_oaep in ((bad, oaep), (twin_blob, False)):
            fails(exchange_key.import_simpleblob_deferred(key_blob, oaep=key_oaep), refused)
            assert exchange_key.import_simpleblob_deferred(key_blob, oaep=key_oaep).decrypt(lucky) == plaintext, name
        garbage = exchange_key.import_simpleblob_deferred(bad, oaep=oaep)
        ok_padding = SessionKey.from_bytes(AlgId.CALG_AES_256, substitute).encrypt(b"x")  # valid under the substitute
        assert garbage.decrypt(ok_padding) == b"x"
    assert messages == {CAPI_DECRYPT_FAILED}
    assert provider.session_object_count() == 0


def test_calibration_comes_from_own_probes_and_is_cached_per_key(provider, softhsm_kit):
    """Finding 13: the first object calibrates and records the floor; the next one trusts it, in or out of process."""
    from tokencsp.calibration import CalibrationCache, KeyPlace
    from tokencsp.implicit import PROBES_PER_KIND

    pair = provider.generate_exchange_key("test-calib")
    try:
        blob = SessionKey.generate("aes256").export_simpleblob(pair.public_blob())
        pair.import_simpleblob_implicit(blob)
        first = pair.rejection
        assert first.probes == 4 * PROBES_PER_KIND
        cache = CalibrationCache.default()
        assert cache.directory.is_relative_to(os.environ["XDG_STATE_HOME"])
        # Keyed by where the imports run: the module's real path, the token's serial, the key.
        assert first.place == KeyPlace(os.path.realpath(softhsm_kit.module), provider.token_serial, first.fingerprint)
        assert cache.load(first.place).deadline == first.padder.deadline
        assert cache.load(KeyPlace(first.place.module, "another-token", first.fingerprint)) is None

        def settled(rejection) -> float:
            # An import that overran (a loaded machine) marks the entry stale, so that the next process
            # re-calibrates; that wiring is checked here, then the mark cleared for the next step.
            entry = cache.load(first.place)
            assert entry.stale == (rejection.padder.overruns > 0)
            if entry.stale:
                cache.store(first.place, entry.deadline)
            return entry.deadline

        deadline = settled(first)
        again = provider.exchange_key("test-calib")  # a fresh object has no in-memory state
        again.import_simpleblob_implicit(blob)
        assert again.rejection.probes == 0 and again.rejection.padder.deadline == deadline
        settled(again.rejection)

        code = ("import sys; from tokencsp import Provider\n"
                "with Provider.open() as p:\n"
                "    k = p.exchange_key('test-calib'); k.import_simpleblob_implicit(bytes.fromhex(sys.argv[1]))\n"
                "    print(k.rejection.probes, repr(k.rejection.padder.deadline))\n")
        out = subprocess.run([sys.executable, "-c", code, blob.hex()], capture_output=True, text=True, check=True,
                             env=dict(os.environ), timeout=120).stdout.split()
        assert out == ["0", repr(deadline)]

        # The floor: a higher recorded deadline is kept, and own probes never take it lower.
        high = max(deadline * 3, 0.25)  # above what probes give even on a loaded machine
        assert cache.store(first.place, high) == high
        third = provider.exchange_key("test-calib")
        third.import_simpleblob_implicit(blob)
        assert third.rejection.padder.deadline == high
        assert third.rejection.calibrate(third._import_or_substitute) == high
        assert third.rejection.probes == 4 * PROBES_PER_KIND
        assert cache.load(first.place).deadline == high
    finally:
        provider.delete_key("test-calib")


def test_a_bad_blob_stands_for_one_substitute_in_every_process(provider, exchange_key):
    """A rejection secret per process would let one query be replayed: a CBC payload that a bad blob's substitute
    happened to pad correctly would fail in the next process, where a good blob's key gives the same outcome
    every time.  The secret is kept per key in the state directory (tokencsp.calibration)."""
    from tokencsp.calibration import CalibrationCache

    bad, oaep = _failing_blobs(exchange_key)["corrupted ciphertext"]
    here = exchange_key.import_simpleblob_deferred(bad, oaep=oaep).key
    assert exchange_key.rejection.secret == CalibrationCache.default().secret(exchange_key.rejection.fingerprint)
    assert provider.exchange_key("test-kx").import_simpleblob_deferred(bad, oaep=oaep).key == here  # a new object
    code = ("import sys; from tokencsp import Provider\n"
            "with Provider.open() as p:\n"
            "    print(p.exchange_key('test-kx').import_simpleblob_deferred(bytes.fromhex(sys.argv[1])).key.hex())\n")
    out = subprocess.run([sys.executable, "-c", code, bad.hex()], capture_output=True, text=True, check=True,
                         env=dict(os.environ), timeout=120).stdout.strip()
    assert out == here.hex()
    assert kept_substitute(exchange_key.public_key(), SimpleBlob.from_bytes(bad)) == here


def test_recalibration_is_periodic_and_only_raises(exchange_key):
    from tokencsp.implicit import PROBES_PER_KIND, ImplicitRejection

    rejection = ImplicitRejection(exchange_key.public_key(), recalibrate_every=2)
    probe = _probe_by_unwrap(exchange_key)
    deadlines = []
    for _ in range(5):
        rejection.run(lambda: None, probe)
        deadlines.append(rejection.padder.deadline)
    assert rejection.probes == 2 * 4 * PROBES_PER_KIND  # calls 1 and 4
    assert deadlines == sorted(deadlines) and deadlines[0] > 0
    assert rejection.cache is None


# -- the decrypt path: card-style keys (CKA_DECRYPT, not CKA_UNWRAP; issue 10) -------------


@pytest.fixture(scope="module")
def card_keys(provider, token_has_allowed_mechanisms):
    """Card-style keys as card tooling makes them: raw RSA allowed (the preferred path), raw RSA only
    (so only the host can judge the padding), and no raw RSA (C_Decrypt with the token's padding).

    The last two need CKA_ALLOWED_MECHANISMS; a token without it (opencryptoki 3.8) refuses to make
    them, and the fixture holds that refusal (checked by :func:`card`) instead of the key."""
    from tokencsp.errors import TokenOperationError
    from tokencsp.keyinfo import DecryptMechanism as M
    from tokencsp.token.cardstyle import generate_card_style_key

    made = {"card": None, "card-raw-only": [M.RSA_X_509], "card-no-raw": [M.RSA_PKCS, M.RSA_PKCS_OAEP]}
    keys: dict[str, object] = {}
    before = provider.object_count()
    for label, allowed in made.items():
        if allowed is not None and not token_has_allowed_mechanisms:
            with pytest.raises(TokenOperationError, match="attribute type invalid") as refused:
                generate_card_style_key(provider._token, label, allowed=allowed)
            assert provider.object_count() == before + 2  # only "card"'s pair: nothing left by the refusal
            keys[label] = refused.value
            continue
        generate_card_style_key(provider._token, label, allowed=allowed)
        keys[label] = provider.exchange_key(label)
    yield keys
    for label, key in keys.items():
        if not isinstance(key, Exception):
            provider.delete_key(label)
    assert provider.session_object_count() == 0


CARDS = ["card", "card-raw-only", "card-no-raw"]


def card(card_keys, label: str):
    """The card key ``label``, or None when this token could not restrict its mechanisms (the
    fixture checked that refusal: CKR_ATTRIBUTE_TYPE_INVALID for CKA_ALLOWED_MECHANISMS)."""
    key = card_keys[label]
    if isinstance(key, Exception):
        assert label != "card" and f"generating card-style key {label!r}: attribute type invalid" == str(key), key
        return None
    return key


def test_a_card_key_is_an_exchange_key_on_the_decrypt_path(provider, card_keys):
    from tokencsp.keyinfo import DecryptMechanism, ImportPath

    for label in CARDS:
        key = card(card_keys, label)
        if key is None:
            continue
        info = key.info()
        assert info.can_decrypt and not info.can_unwrap, label
        assert key.import_path is ImportPath.DECRYPT, label
        assert isinstance(provider.key(label), type(key)), label
    assert card_keys["card"].info().decrypt_mechanisms[0] is DecryptMechanism.RSA_X_509  # raw RSA preferred
    if card(card_keys, "card-raw-only") is not None:
        assert card_keys["card-raw-only"].info().decrypt_mechanisms == (DecryptMechanism.RSA_X_509,)
    if card(card_keys, "card-no-raw") is not None:
        assert DecryptMechanism.RSA_X_509 not in card_keys["card-no-raw"].info().decrypt_mechanisms


@pytest.mark.parametrize("label", CARDS)
@pytest.mark.parametrize("oaep", [False, True], ids=["pkcs1", "oaep"])
@pytest.mark.parametrize("alg", ALGS)
def test_card_key_imports_on_every_path(card_keys, label, alg, oaep):
    key = card(card_keys, label)
    if key is None:  # this token cannot make that key (CKA_ALLOWED_MECHANISMS): the fixture checked the refusal
        return
    sender = SessionKey.generate(alg)
    ciphertext = sender.encrypt(b"the message" * 10)
    blob = sender.export_simpleblob(key.public_blob(), oaep=oaep)
    assert key.import_simpleblob(blob, oaep=oaep).key == sender.key
    assert key.import_simpleblob_implicit(blob, oaep=oaep).key == sender.key
    assert key.import_simpleblob_deferred(blob, oaep=oaep).decrypt(ciphertext) == b"the message" * 10


@pytest.mark.parametrize("label", CARDS)
def test_a_bad_blob_is_refused_by_a_card_key_as_by_an_unwrap_key(provider, exchange_key, card_keys, label):
    from tokencsp.implicit import CAPI_DECRYPT_FAILED

    key = card(card_keys, label)
    if key is None:  # this token cannot make that key (CKA_ALLOWED_MECHANISMS): the fixture checked the refusal
        return
    for name, (blob, oaep) in _failing_blobs(key).items():
        with pytest.raises(SessionKeyImportError) as caught:
            key.import_simpleblob(blob, oaep=oaep)
        assert str(caught.value) == SESSION_KEY_IMPORT_FAILED and caught.value.__cause__ is None, name
        assert caught.value.__suppress_context__, name
        first = key.import_simpleblob_implicit(blob, oaep=oaep)
        assert first.key == key.import_simpleblob_implicit(blob, oaep=oaep).key, name
        assert first.key == key.rejection.substitute(SimpleBlob.from_bytes(blob)), name
        deferred = key.import_simpleblob_deferred(blob, oaep=oaep)
        assert deferred.key == first.key, name
        with pytest.raises(DecryptionError, match=re.escape(CAPI_DECRYPT_FAILED)):
            deferred.decrypt(cbc_bad_padding(AlgId.CALG_AES_256, first.key))
    # An over-long key and a ciphertext >= n, too.
    from cryptography.hazmat.primitives.asymmetric import padding

    long_blob = SimpleBlob(AlgId.CALG_AES_128, key.public_key().encrypt(os.urandom(32), padding.PKCS1v15())).to_bytes()
    for bad in (long_blob, _cheap_rejects(1)[0]):
        with pytest.raises(SessionKeyImportError):
            key.import_simpleblob(bad)
    assert provider.session_object_count() == 0


def test_sealed_open_and_capi_decrypt_with_a_card_key(provider, exchange_key, card_keys, tmp_path):
    """The decrypt path behind tokencsp.open and `tokencsp capi decrypt`: the same line and status as an unwrap key."""
    import tokencsp
    from tokencsp.errors import AuthenticationFailed
    from tokencsp.replay import MemoryReplayCache

    key = card_keys["card"]
    implicit = key.rejection.imports["implicit"]
    assert tokencsp.open(tokencsp.seal(b"hello", key.public_key()), key, cache=MemoryReplayCache()) == b"hello"
    garbage = SimpleBlob(AlgId.CALG_AES_256, b"\x00" + os.urandom(255)).to_bytes()
    with pytest.raises(AuthenticationFailed):
        tokencsp.open(tokencsp.seal(b"x", key.public_key(), key_blob=garbage, session_key=os.urandom(32)), key,
                      cache=MemoryReplayCache())
    assert key.rejection.imports["implicit"] == implicit + 2

    def capi_decrypt(name: str, receiver, tamper: bool, lucky: bool = False) -> subprocess.CompletedProcess[bytes]:
        session = SessionKey.generate("aes256")
        blob = bytearray(session.export_simpleblob(receiver.public_blob()))
        ciphertext = session.encrypt(b"card payload")
        if tamper:
            blob[30] ^= 1
            # What the CLI process will decrypt with: the substitute of the secret the state directory keeps.
            substitute = kept_substitute(receiver.public_key(), SimpleBlob.from_bytes(bytes(blob)))
            ciphertext = SessionKey.from_bytes(AlgId.CALG_AES_256, substitute).encrypt(b"card payload") if lucky \
                else cbc_bad_padding(AlgId.CALG_AES_256, substitute)
        (tmp_path / f"{name}.sb").write_bytes(bytes(blob))
        (tmp_path / f"{name}.ct").write_bytes(ciphertext)
        return subprocess.run([sys.executable, "-m", "tokencsp", "capi", "decrypt", "--key", name, "--blob",
                               str(tmp_path / f"{name}.sb"), str(tmp_path / f"{name}.ct")],
                              capture_output=True, env=dict(os.environ), timeout=120)

    good = capi_decrypt("card", key, tamper=False)
    assert (good.returncode, good.stdout) == (0, b"card payload"), good.stderr
    card_bad, unwrap_bad = capi_decrypt("card", key, tamper=True), capi_decrypt("test-kx", exchange_key, tamper=True)
    assert card_bad.returncode == unwrap_bad.returncode == 4
    assert card_bad.stderr == unwrap_bad.stderr  # the error line and the flag-only hint, byte for byte
    assert card_bad.stderr.startswith(b"tokencsp: error: the message could not be decrypted")
    # Valid padding under the substitute: accepted, as under any key the ciphertext was not made with.
    for name, receiver in (("card", key), ("test-kx", exchange_key)):
        accepted = capi_decrypt(name, receiver, tamper=True, lucky=True)
        assert (accepted.returncode, accepted.stdout) == (0, b"card payload"), accepted.stderr
    assert b"Traceback" not in card_bad.stderr

    def cli_open(name: str, receiver, key_blob: bytes | None) -> subprocess.CompletedProcess[bytes]:
        sealed = tmp_path / f"{name}-{key_blob is None}.seal"
        sealed.write_bytes(tokencsp.seal(b"sealed to a card", receiver.public_key(), key_blob=key_blob,
                                         session_key=None if key_blob is None else os.urandom(32)))
        return subprocess.run([sys.executable, "-m", "tokencsp", "open", "--key", name, "--replay-db",
                               str(tmp_path / f"{name}.db"), str(sealed)], capture_output=True, env=dict(os.environ),
                              timeout=120)

    good = cli_open("card", key, None)
    assert (good.returncode, good.stdout) == (0, b"sealed to a card"), good.stderr
    card_bad, unwrap_bad = cli_open("card", key, garbage), cli_open("test-kx", exchange_key, garbage)
    assert card_bad.returncode == unwrap_bad.returncode == 10 and card_bad.stdout == unwrap_bad.stdout == b""
    assert card_bad.stderr == unwrap_bad.stderr and card_bad.stderr.count(b"\n") == 1, card_bad.stderr
    assert card_bad.stderr.startswith(b"tokencsp: error: ") and b"Traceback" not in card_bad.stderr


def test_the_pin_buffer_is_zeroed_after_login(softhsm_kit, monkeypatch):
    """SECURITY.md: C_Login gets the PIN in a ctypes buffer that is zeroed afterwards (in a finally)."""
    import ctypes

    from tokencsp.token import _ctypes

    made: list[ctypes.Array[ctypes.c_char]] = []
    real = ctypes.create_string_buffer

    def recording(init, size=None):
        buffer = real(init) if size is None else real(init, size)
        made.append(buffer)
        return buffer

    monkeypatch.setattr(_ctypes.ctypes, "create_string_buffer", recording)
    with Provider.open(token="tokencsp-test-b", pin=softhsm_kit.user_pin) as opened:
        assert opened.token_label == "tokencsp-test-b"
    pins = [b for b in made if len(b) == len(softhsm_kit.user_pin) + 1]
    assert pins and all(b.raw == bytes(len(b)) for b in pins)
