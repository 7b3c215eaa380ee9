"""tokencsp.token.errors: one CK_RV map, and blob failures that are always one UnwrapRefused.

The first tests need no token (the classifier is plain data); the last ones
unwrap bad blobs on the real SoftHSM token.
"""

from __future__ import annotations

import inspect
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from pkcs11 import exceptions as p11

from tokencsp import Provider, config
from tokencsp.blobs import AlgId
from tokencsp.errors import (
    KeyNotFoundError,
    PinError,
    SessionKeyImportError,
    TokenError,
    TokenNotFoundError,
    TokenOperationError,
    UnwrapRefused,
)
from tokencsp.token import errors as token_errors
from tokencsp.token import open_token

KEY = "token-errors-rx"

# Written out here on purpose, not imported: if anyone widens the set of
# failures that escape as their own type, this test must be edited too.
STATE_CLASSES = {
    p11.SessionClosed: TokenOperationError,
    p11.SessionHandleInvalid: TokenOperationError,
    p11.UserNotLoggedIn: PinError,
    p11.DeviceRemoved: TokenNotFoundError,
    p11.TokenNotPresent: TokenNotFoundError,
    p11.KeyHandleInvalid: KeyNotFoundError,
    p11.ObjectHandleInvalid: KeyNotFoundError,
    p11.UnwrappingKeyHandleInvalid: KeyNotFoundError,
    p11.WrappingKeyHandleInvalid: KeyNotFoundError,  # opencryptoki 3.8.1's answer for a deleted unwrapping key
}
STATE_CKRS = {0x0B0, 0x0B3, 0x101, 0x032, 0x0E0, 0x060, 0x082, 0x0F0, 0x113, 0x190}


def _all_pkcs11_exceptions() -> list[type[p11.PKCS11Error]]:
    return [cls for _, cls in inspect.getmembers(p11, inspect.isclass) if issubclass(cls, p11.PKCS11Error)]


def test_every_python_pkcs11_exception_is_unwrap_refused_unless_token_state():
    classes = _all_pkcs11_exceptions()
    assert len(classes) > 60 and p11.GeneralError in classes and p11.PKCS11Error in classes
    for cls in classes:
        result = token_errors.classify_blob_failure(cls(), "unwrapping")
        if cls in STATE_CLASSES:
            assert type(result) is STATE_CLASSES[cls], cls
            assert isinstance(result, TokenError) and not isinstance(result, UnwrapRefused)
        else:
            assert type(result) is UnwrapRefused, cls
            assert str(result) == str(UnwrapRefused()), cls  # fixed text, no CKR name


def test_every_raw_ckr_is_unwrap_refused_unless_token_state():
    for rv in [*range(0x000, 0x210), 0x80000000, 0x80000001, 0xFFFFFFFF]:
        result = token_errors.classify_blob_failure(rv, "decrypting")
        if rv in STATE_CKRS:
            assert isinstance(result, TokenError) and not isinstance(result, UnwrapRefused), hex(rv)
        else:
            assert type(result) is UnwrapRefused and str(result) == str(UnwrapRefused()), hex(rv)


def test_unwrap_refused_is_not_a_token_error():
    # Callers that let TokenError through (envelope, CLI exit 3) must never see a blob's failure.
    assert not issubclass(UnwrapRefused, TokenError)


def test_mapping_a_new_code_cannot_make_a_blob_failure_distinguishable(monkeypatch):
    """The uniform error does not rest on the general map's catch-all (issue 8)."""
    row = token_errors._Row(0x005, p11.GeneralError, KeyNotFoundError, "general error")
    monkeypatch.setitem(token_errors._BY_CLASS, p11.GeneralError, row)
    monkeypatch.setitem(token_errors._BY_CKR, 0x005, row)
    assert isinstance(token_errors.map_error(p11.GeneralError(), "x"), KeyNotFoundError)
    assert type(token_errors.classify_blob_failure(p11.GeneralError(), "x")) is UnwrapRefused
    assert type(token_errors.classify_blob_failure(0x005, "x")) is UnwrapRefused


def test_one_table_for_exceptions_and_raw_codes():
    for exc, rv in [(p11.PinIncorrect(), 0x0A0), (p11.PinLocked(), 0x0A4), (p11.TokenNotPresent(), 0x0E0),
                    (p11.KeyHandleInvalid(), 0x060)]:
        by_class, by_rv = token_errors.map_error(exc, "ctx"), token_errors.map_rv(rv, "ctx")
        assert type(by_class) is type(by_rv) and str(by_class) == str(by_rv)
    assert str(token_errors.map_rv(0x0A0, "login refused")) == "login refused: PIN incorrect"
    unknown = token_errors.map_rv(0x1234, "C_Something")
    assert type(unknown) is TokenOperationError and "0x1234" in str(unknown)


# -- on the token ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver(softhsm_kit):
    with Provider.open(token="tokencsp-test-a", pin=softhsm_kit.user_pin) as provider:
        key = provider.generate_exchange_key(KEY)
        try:
            yield provider, key
        finally:
            provider.delete_key(KEY)


@pytest.fixture()
def token(softhsm_kit):
    tok = open_token(config.find_module(), softhsm_kit.user_pin, label="tokencsp-test-a")
    yield tok
    tok.close()


def _bad_blobs(public) -> dict[str, bytes]:
    n = public.public_numbers().n
    size = (public.key_size + 7) // 8
    # a valid RSA value whose plaintext is random: bad PKCS#1 padding (SoftHSM: CKR_GENERAL_ERROR)
    bad_padding = pow(int.from_bytes(os.urandom(size - 1), "big"), public.public_numbers().e, n).to_bytes(size, "big")
    return {
        "bad padding": bad_padding,
        "ciphertext >= n": (n + 1).to_bytes(size, "big"),
        "short": os.urandom(size - 7),
        "oaep for pkcs1": public.encrypt(os.urandom(32), padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)),
    }


def test_bad_blobs_on_softhsm_are_one_unwrap_refused(receiver, token):
    provider, key = receiver
    for what, blob in _bad_blobs(key.public_key()).items():
        with pytest.raises(UnwrapRefused) as caught:
            token.unwrap_secret(key.key_id, blob, oaep=False, alg_id=AlgId.CALG_AES_256)
        assert str(caught.value) == str(UnwrapRefused()), what
        with pytest.raises(SessionKeyImportError):
            key.unwrap_raw(blob, oaep=False, alg_id=AlgId.CALG_AES_256)
    assert token.count_session_objects() == 0 and provider.session_object_count() == 0


def test_a_good_blob_unwraps_through_the_same_path(receiver, token):
    _, key = receiver
    value = os.urandom(32)
    blob = key.public_key().encrypt(value, padding.PKCS1v15())
    assert token.unwrap_secret(key.key_id, blob, oaep=False, alg_id=AlgId.CALG_AES_256) == value


def test_a_closed_session_is_not_a_blob_failure(receiver, token):
    _, key = receiver
    blob = key.public_key().encrypt(os.urandom(32), padding.PKCS1v15())
    token.unwrap_secret(key.key_id, blob, oaep=False, alg_id=AlgId.CALG_AES_256)  # caches the key handle
    with token._lease() as lease:  # behind the Token's back: the cached key names a dead session
        lease.session.close()
    with pytest.raises(TokenOperationError, match="session"):
        token.unwrap_secret(key.key_id, blob, oaep=False, alg_id=AlgId.CALG_AES_256)
    with pytest.raises(TokenOperationError, match="session"):  # with implicit rejection as well
        token.unwrap_secret(key.key_id, blob, oaep=False, alg_id=AlgId.CALG_AES_256, fallback=b"\0" * 32)
