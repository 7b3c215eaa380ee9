"""The token layer on real SoftHSM: probed mechanisms, learned unwrap templates, the decrypt
path for card-style keys, the session pool, fork, and the PIN flags (issue 10)."""

from __future__ import annotations

import os
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from tokencsp import config
from tokencsp.blobs import AlgId
from tokencsp.errors import ConfigError, PinError, TokenOperationError, UnwrapRefused
from tokencsp.keyinfo import DecryptMechanism, ImportPath, KeyUsage
from tokencsp.token import open_token, quirks, token_status
from tokencsp.token import token as token_module

TOKEN = "tokencsp-test-a"
# The suite runs on SoftHSM (make test) and on opencryptoki (make test-opencryptoki); where the two
# differ, each test states what each token does (docs/TOKENS.md), measured on both.
BACKEND = os.environ.get("TOKENCSP_TEST_BACKEND", "softhsm")
LEARNED = {"softhsm": "readable", "opencryptoki": "token-defaults"}


@pytest.fixture()
def token(softhsm_kit):
    tok = open_token(config.find_module(), softhsm_kit.user_pin, label=TOKEN)
    yield tok
    tok.close()


def _public(tok, key_id: bytes) -> rsa.RSAPublicKey:
    n, e = tok.public_numbers(key_id)
    return rsa.RSAPublicNumbers(e, n).public_key()


@pytest.fixture()
def exchange(token):
    key_id = token.generate_rsa("caps-kx", 2048, KeyUsage.EXCHANGE)
    yield key_id
    token.delete("caps-kx")


# -- mechanisms and templates --------------------------------------------------------------------


def test_mechanisms_are_read_from_the_token(token):
    rsa_all = {Mechanism.RSA_PKCS, Mechanism.RSA_PKCS_OAEP, Mechanism.RSA_X_509}
    # SoftHSM 2.6.1: RSA_PKCS and OAEP unwrap and decrypt, raw RSA only decrypts;
    # opencryptoki 3.8.1 sets CKF_UNWRAP on raw RSA too.
    expected_unwrap = rsa_all if BACKEND == "opencryptoki" else rsa_all - {Mechanism.RSA_X_509}
    assert token.mechanisms.unwrap == expected_unwrap
    assert token.mechanisms.decrypt == rsa_all


def test_the_quirks_table_names_who_taught_each_entry():
    assert len({v.name for v in quirks.UNWRAP_TEMPLATES}) == len(quirks.UNWRAP_TEMPLATES)
    for variant in quirks.UNWRAP_TEMPLATES:
        assert "CKR_" in variant.taught_by or "last resort" in variant.taught_by
    assert any("SoftHSM 2.6" in v.taught_by for v in quirks.UNWRAP_TEMPLATES)
    assert any("opencryptoki 3.8" in v.taught_by for v in quirks.UNWRAP_TEMPLATES)


def test_the_template_is_learned_with_our_own_blob_and_template_refusals_are_skipped(token, exchange, monkeypatch):
    """A first entry SoftHSM refuses (VALUE_LEN: CKR_ATTRIBUTE_READ_ONLY) is passed over by the probe."""
    monkeypatch.setattr(token_module, "_learned", {})
    refused = quirks.UnwrapTemplate("len-first", {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True,
                                                  Attribute.SENSITIVE: False}, value_len=True, taught_by="test")
    monkeypatch.setattr(token_module, "UNWRAP_TEMPLATES", (refused, *quirks.UNWRAP_TEMPLATES))
    value = os.urandom(32)
    blob = _public(token, exchange).encrypt(value, padding.PKCS1v15())
    assert token.unwrap_secret(exchange, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value
    learned = list(token_module._learned.values())
    assert [(v.name, kt) for v, kt in learned] == [(LEARNED[BACKEND], KeyType.AES)]
    assert token.count_session_objects() == 0


def test_a_callers_blob_is_never_retried_with_another_template(token, exchange, monkeypatch):
    """With a learned template the token refuses, a *valid* blob is simply UnwrapRefused: no per-blob retry,
    so template CKRs can never become a padding oracle."""
    value = os.urandom(32)
    blob = _public(token, exchange).encrypt(value, padding.PKCS1v15())
    assert token.unwrap_secret(exchange, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value  # learns
    # VALUE_LEN (SoftHSM) and EXTRACTABLE/SENSITIVE (opencryptoki) make both tokens refuse this one.
    refused = quirks.UnwrapTemplate("refused", {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True,
                                                Attribute.SENSITIVE: False}, value_len=True, taught_by="test")
    learned = {k: (refused, kt) for k, (_, kt) in token_module._learned.items()}
    monkeypatch.setattr(token_module, "_learned", learned)
    with pytest.raises(UnwrapRefused):
        token.unwrap_secret(exchange, blob, oaep=False, alg_id=AlgId.CALG_AES_256)
    assert all(v is refused for v, _ in token_module._learned.values())  # nothing re-learned from the caller's blob


def test_the_unwrapped_object_is_checked_for_class_and_type(token):
    with token._lease() as lease:
        generic = lease.session.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                               Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                                               Attribute.VALUE: os.urandom(32), Attribute.TOKEN: False,
                                               Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False})
        with pytest.raises(TokenOperationError, match="another class or key type"):
            token_module._checked_value(generic, KeyType.AES)
    assert token.count_session_objects() == 0  # destroyed all the same


def test_a_wrong_length_for_the_alg_id_is_unwrap_refused(token, exchange):
    """Shorter and longer alike: a token must not cut or pad the value to the ALG_ID's length
    (opencryptoki 3.8.1 does, given CKA_VALUE_LEN: so no learned template carries it there)."""
    public = _public(token, exchange)
    for size in (24, 40):
        with pytest.raises(UnwrapRefused):
            token.unwrap_secret(exchange, public.encrypt(os.urandom(size), padding.PKCS1v15()), oaep=False,
                                alg_id=AlgId.CALG_AES_256)
    assert token.count_session_objects() == 0


# -- the decrypt path ----------------------------------------------------------------------------


@pytest.fixture()
def card_key(token):
    """A decrypt-only key made the way card tooling makes it: python-pkcs11 directly, foreign label and id."""
    with token._lease() as lease:
        public, private = lease.session.generate_keypair(
            KeyType.RSA, 2048, store=True, label="Key for Key Management", id=b"\x03",
            public_template={Attribute.ENCRYPT: True, Attribute.WRAP: False},
            private_template={Attribute.DECRYPT: True, Attribute.UNWRAP: False, Attribute.SIGN: False,
                              Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    yield b"\x03"
    for obj in (private, public):
        obj.destroy()


def test_a_card_key_is_found_by_label_and_id_and_uses_the_decrypt_path(token, card_key):
    by_label = token.key_info(name="Key for Key Management")
    by_id = token.key_info(key_id=card_key)
    assert by_label == by_id
    assert by_label.import_path is ImportPath.DECRYPT and by_label.usage is KeyUsage.EXCHANGE
    assert by_label.decrypt_mechanisms == (DecryptMechanism.RSA_X_509, DecryptMechanism.RSA_PKCS_OAEP,
                                           DecryptMechanism.RSA_PKCS)
    assert by_label.as_dict()["import_path"] == "decrypt"
    with pytest.raises(Exception, match="cannot unwrap"):
        token.unwrap_secret(card_key, b"\0" * 256, oaep=False)


def test_an_exchange_key_made_by_tokencsp_uses_the_unwrap_path(token, exchange):
    info = token.key_info(key_id=exchange)
    assert info.import_path is ImportPath.UNWRAP and info.decrypt_mechanisms == ()


def test_decrypt_raw_with_each_mechanism(token, card_key):
    public = _public(token, card_key)
    value = os.urandom(32)
    pkcs1 = public.encrypt(value, padding.PKCS1v15())
    raw = token.decrypt_raw(card_key, pkcs1, DecryptMechanism.RSA_X_509)
    assert len(raw) == 256 and raw[:2] == b"\x00\x02" and raw.endswith(b"\x00" + value)
    assert token.decrypt_raw(card_key, pkcs1, DecryptMechanism.RSA_PKCS) == value
    oaep = public.encrypt(value, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    assert token.decrypt_raw(card_key, oaep, DecryptMechanism.RSA_PKCS_OAEP) == value


def test_decrypt_raw_keeps_leading_zeros_of_the_raw_block(token, card_key):
    public = _public(token, card_key).public_numbers()
    small = pow(5, public.e, public.n).to_bytes(256, "big")
    assert token.decrypt_raw(card_key, small, DecryptMechanism.RSA_X_509) == (5).to_bytes(256, "big")


def test_every_bad_blob_on_the_decrypt_path_is_one_unwrap_refused(token, card_key):
    public = _public(token, card_key)
    n = public.public_numbers().n
    oaep = public.encrypt(os.urandom(32), padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    cases = [
        (DecryptMechanism.RSA_PKCS, oaep),  # bad PKCS#1 padding
        (DecryptMechanism.RSA_PKCS_OAEP, public.encrypt(b"x" * 32, padding.PKCS1v15())),  # bad OAEP padding
        (DecryptMechanism.RSA_X_509, (n + 1).to_bytes(256, "big")),  # c >= n
        (DecryptMechanism.RSA_PKCS, os.urandom(100)),  # wrong length
    ]
    for mechanism, blob in cases:
        with pytest.raises(UnwrapRefused) as caught:
            token.decrypt_raw(card_key, blob, mechanism)
        assert str(caught.value) == str(UnwrapRefused()), mechanism
    value = os.urandom(16)  # the session is still usable after each refusal
    assert token.decrypt_raw(card_key, public.encrypt(value, padding.PKCS1v15()), DecryptMechanism.RSA_PKCS) == value


def test_an_always_authenticate_key_gets_a_context_specific_login(token):
    with token._lease() as lease:
        public, private = lease.session.generate_keypair(
            KeyType.RSA, 2048, store=True, label="caps-always-auth", id=b"caps-aa",
            public_template={Attribute.ENCRYPT: True},
            private_template={Attribute.DECRYPT: True, Attribute.UNWRAP: True,
                              Attribute.ALWAYS_AUTHENTICATE: True})
    try:
        info = token.key_info(key_id=b"caps-aa")
        # SoftHSM refuses C_UnwrapKey with such a key (CKR_GENERAL_ERROR): the decrypt path is chosen.
        # opencryptoki 3.8.1 has no context-specific login (CKR_USER_TYPE_INVALID) and does not enforce
        # the attribute: the decrypt goes on (quirks.CONTEXT_LOGIN_UNSUPPORTED).
        assert info.always_authenticate and info.import_path is ImportPath.DECRYPT
        value = os.urandom(32)
        blob = _public(token, b"caps-aa").encrypt(value, padding.PKCS1v15())
        for _ in range(3):  # a login before each operation, not once
            assert token.decrypt_raw(b"caps-aa", blob, DecryptMechanism.RSA_PKCS) == value
        if BACKEND == "softhsm":  # SoftHSM enforces the attribute: python-pkcs11 alone gets CKR_USER_NOT_LOGGED_IN
            with token._lease() as lease, pytest.raises(p11.UserNotLoggedIn):
                lease.session.get_key(id=b"caps-aa", object_class=ObjectClass.PRIVATE_KEY).decrypt(
                    blob, mechanism=Mechanism.RSA_PKCS)
    finally:
        for obj in (private, public):
            obj.destroy()


# -- sessions ------------------------------------------------------------------------------------


def test_the_session_pool_bounds_sessions_and_threads_beyond_it_wait(softhsm_kit, monkeypatch):
    monkeypatch.setenv("TOKENCSP_MAX_SESSIONS", "2")
    tok = open_token(config.find_module(), softhsm_kit.user_pin, label=TOKEN)
    try:
        assert tok.max_sessions == 2
        key_id = tok.generate_rsa("caps-pool", 2048, KeyUsage.EXCHANGE)
        public = _public(tok, key_id)
        failures: list[BaseException] = []
        start = threading.Barrier(8)

        def work() -> None:
            try:
                start.wait()
                for _ in range(10):
                    value = os.urandom(32)
                    blob = public.encrypt(value, padding.PKCS1v15())
                    assert tok.unwrap_secret(key_id, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value
            except BaseException as exc:  # noqa: BLE001 -- collected and asserted below
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert tok.peak_sessions == 2 and len(tok._pool) == 2
        tok.delete("caps-pool")
        assert tok.count_session_objects() == 0
    finally:
        tok.close()


def test_the_default_pool_is_eight(token):
    assert token.max_sessions == 8


def test_a_bad_max_sessions_is_one_config_error(softhsm_kit, monkeypatch):
    for bad in ("0", "many"):
        monkeypatch.setenv("TOKENCSP_MAX_SESSIONS", bad)
        with pytest.raises(ConfigError, match="TOKENCSP_MAX_SESSIONS"):
            open_token(config.find_module(), softhsm_kit.user_pin, label=TOKEN)


def test_a_forked_child_opens_its_own_sessions_and_the_parent_keeps_working(token, exchange):
    """The child works with sessions it opened itself (a new pool; none of the parent's leases) and the
    parent keeps its own.  That the child must re-initialise the module shows only on opencryptoki
    (SoftHSM does not notice a fork): tests/test_fork.py under make test-opencryptoki."""
    public = _public(token, exchange)
    value = os.urandom(32)
    blob = public.encrypt(value, padding.PKCS1v15())
    assert token.unwrap_secret(exchange, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value
    parent_pool, parent_leases = token._pool, list(token._pool._all)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = token.unwrap_secret(exchange, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value
            fresh = token._pool is not parent_pool and not any(
                lease is old for lease in token._pool._all for old in parent_leases)
            code = 0 if ok and fresh else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(code)
    os.close(write_end)
    report = os.read(read_end, 1)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert report == b"\x00" and os.waitstatus_to_exitcode(status) == 0
    assert token.unwrap_secret(exchange, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value
    assert token._pool is parent_pool and token._pool._all == parent_leases


# -- login ---------------------------------------------------------------------------------------


def test_pin_flags_are_surfaced_before_and_after_a_wrong_pin(softhsm_kit):
    module = config.find_module()
    label = "tokencsp-test-b"
    before = token_status(module, label=label)
    assert before.label == label and before.login_required and not before.protected_path
    with pytest.raises(PinError):
        open_token(module, "wrong-pin", label=label)
    after = token_status(module, label=label)
    assert after.count_low and not after.locked  # SoftHSM 2.6 sets CKF_USER_PIN_COUNT_LOW after a failure
    tok = open_token(module, softhsm_kit.user_pin, label=label)
    try:
        assert not tok.pin_status.count_low  # and clears it on success
    finally:
        tok.close()


def test_no_pin_for_a_token_without_a_pin_pad_is_a_pin_error(softhsm_kit):
    with pytest.raises(PinError, match="needs a PIN"):
        open_token(config.find_module(), None, label=TOKEN)

