"""Login for real hardware (issue 10 point 5): the PIN pad, CKA_ALWAYS_AUTHENTICATE before each
private-key operation, a prompt that names the token and says what its PIN flags say.

SoftHSM has no PIN pad and never sets CKF_USER_PIN_FINAL_TRY or _LOCKED (it only sets
CKF_USER_PIN_COUNT_LOW after a wrong PIN, slot_mgr/Token.cpp): those decisions are tested as the
pure functions they are, and everything SoftHSM can produce is tested on it.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from tokencsp import config
from tokencsp.errors import PinError
from tokencsp.keyinfo import PinStatus
from tokencsp.token import open_token, token_status
from tokencsp.token.templates import PSS_SHA256

TOKEN = "tokencsp-test-a"
BACKEND = os.environ.get("TOKENCSP_TEST_BACKEND", "softhsm")


def status(**flags: bool) -> PinStatus:
    base = dict(label="card", protected_path=False, count_low=False, final_try=False, locked=False,
                login_required=True)
    return PinStatus(**{**base, **flags})  # type: ignore[arg-type]


# -- the decisions, as pure functions ------------------------------------------------------------


def test_a_pin_pad_logs_in_with_no_pin_unless_one_is_given():
    pad = status(protected_path=True)
    assert config.resolve_login_pin(None, None, None, pad, environ={}, interactive=False) is None
    # a PIN the user gave is still used (some readers take either)
    assert config.resolve_login_pin(None, None, None, pad, environ={"TOKENCSP_PIN": "1234"}) == "1234"
    assert config.resolve_login_pin("5678", None, None, pad, environ={}) == "5678"
    # a token that needs no login (Cloud KMS's library) is not asked for a PIN at all
    assert config.resolve_login_pin(None, None, None, status(login_required=False), environ={},
                                    interactive=False) is None
    # no pad: no PIN is an error off a terminal, not a NULL login
    with pytest.raises(PinError, match="no PIN"):
        config.resolve_login_pin(None, None, None, status(), environ={}, interactive=False)


def test_a_locked_pin_is_refused_before_any_prompt():
    with pytest.raises(PinError, match="'card' is locked"):
        config.resolve_login_pin(None, None, None, status(locked=True), environ={}, interactive=True)


def test_the_prompt_names_the_token_and_the_tries_left():
    assert config.pin_prompt(status()) == "Token 'card', user PIN: "
    assert "a wrong PIN was entered" in config.pin_prompt(status(count_low=True))
    final = config.pin_prompt(status(count_low=True, final_try=True))
    assert "final try: one more wrong PIN locks it" in final and final.endswith("user PIN: ")


# -- on the token --------------------------------------------------------------------------------


def test_a_wrong_pin_makes_the_next_prompt_say_so(softhsm_kit):
    """SoftHSM sets CKF_USER_PIN_COUNT_LOW after a failed C_Login: the prompt built from the real flags says so."""
    module, label = config.find_module(), "tokencsp-test-b"
    assert "wrong PIN" not in config.pin_prompt(token_status(module, label=label))
    with pytest.raises(PinError):
        open_token(module, "wrong-pin", label=label)
    prompt = config.pin_prompt(token_status(module, label=label))
    open_token(module, softhsm_kit.user_pin, label=label).close()
    if BACKEND == "softhsm":
        assert prompt.startswith(f"Token {label!r} (a wrong PIN was entered"), prompt
        # and a good login clears the flag
        assert config.pin_prompt(token_status(module, label=label)) == f"Token {label!r}, user PIN: "


@pytest.fixture()
def token(softhsm_kit):
    tok = open_token(config.find_module(), softhsm_kit.user_pin, label=TOKEN)
    yield tok
    tok.close()


def test_an_always_authenticate_signature_key_signs_with_a_context_login_each_time(token):
    with token._lease() as lease:
        public, private = lease.session.generate_keypair(
            KeyType.RSA, 2048, store=True, label="login-aa-sign", id=b"login-aa-sign",
            public_template={Attribute.VERIFY: True},
            private_template={Attribute.SIGN: True, Attribute.DECRYPT: False, Attribute.UNWRAP: False,
                              Attribute.ALWAYS_AUTHENTICATE: True})
    try:
        assert token.key_info(key_id=b"login-aa-sign").always_authenticate
        n, e = token.public_numbers(b"login-aa-sign")
        verifier = rsa.RSAPublicNumbers(e, n).public_key()
        for data in (b"one", b"two", b"three"):  # a login before each signature, not once
            signature = token.sign_pss_sha256(b"login-aa-sign", data)
            verifier.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        if BACKEND == "softhsm":  # SoftHSM enforces the attribute: a plain C_Sign is CKR_USER_NOT_LOGGED_IN
            with token._lease() as lease, pytest.raises(p11.UserNotLoggedIn):
                lease.session.get_key(id=b"login-aa-sign", object_class=ObjectClass.PRIVATE_KEY).sign(
                    b"x", mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=PSS_SHA256)
        assert token.sign_pss_sha256(b"login-aa-sign", b"after")  # the session still works after that refusal
    finally:
        for obj in (private, public):
            obj.destroy()
