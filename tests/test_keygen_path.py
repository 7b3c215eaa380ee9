"""``key generate --usage exchange`` on a token that cannot unwrap makes a decrypt key (issue 10 point 2).

The decision is a pure function of the probed mechanism flags (quirks.exchange_import_path), tested
over capability sets of the tokens docs/TOKENS.md describes; the real path runs on the suite's token
(SoftHSM and opencryptoki unwrap, so their real decision is ``unwrap``), and a key made by the
decrypt branch on it imports a SIMPLEBLOB through the decrypt path.
"""

from __future__ import annotations

import pytest
from pkcs11 import Mechanism

from tokencsp import Provider, SessionKey, config
from tokencsp.blobs import AlgId
from tokencsp.errors import TokenOperationError
from tokencsp.keyinfo import ImportPath, KeyUsage
from tokencsp.provider import ExchangeKey
from tokencsp.token import open_token
from tokencsp.token.quirks import Mechanisms, exchange_import_path

PKCS, OAEP, RAW = Mechanism.RSA_PKCS, Mechanism.RSA_PKCS_OAEP, Mechanism.RSA_X_509


def caps(unwrap=(), decrypt=()) -> Mechanisms:
    return Mechanisms(frozenset(unwrap), frozenset(decrypt))


@pytest.mark.parametrize(("mechanisms", "oaep_only", "path"), [
    (caps({PKCS, OAEP}, {PKCS, OAEP, RAW}), False, ImportPath.UNWRAP),  # SoftHSM 2.6, opencryptoki, CloudHSM
    (caps((), {PKCS, OAEP, RAW}), False, ImportPath.DECRYPT),  # ykcs11
    (caps((), {PKCS}), False, ImportPath.DECRYPT),  # OpenPGP card
    (caps((), {OAEP}), False, ImportPath.DECRYPT),  # Cloud KMS
    (caps({OAEP}, {PKCS}), False, ImportPath.DECRYPT),  # unwraps OAEP only: a PKCS#1 sender needs decrypt
    (caps({OAEP}, ()), True, ImportPath.UNWRAP),
    (caps({PKCS}, {OAEP}), True, ImportPath.DECRYPT),
])
def test_the_exchange_key_kind_follows_the_probed_flags(mechanisms, oaep_only, path):
    assert exchange_import_path(mechanisms, oaep_only) is path


@pytest.mark.parametrize(("mechanisms", "oaep_only"), [(caps(), False), (caps((), {PKCS, RAW}), True)])
def test_a_token_that_can_neither_is_refused(mechanisms, oaep_only):
    with pytest.raises(TokenOperationError, match="neither unwrap"):
        exchange_import_path(mechanisms, oaep_only)


@pytest.fixture()
def token(softhsm_kit):
    tok = open_token(config.find_module(), softhsm_kit.user_pin, label="tokencsp-test-a")
    yield tok
    tok.close()


def test_on_the_real_token_the_decision_is_unwrap(token):
    assert exchange_import_path(token.mechanisms) is ImportPath.UNWRAP
    key_id = token.generate_rsa("path-default", 2048, KeyUsage.EXCHANGE)
    try:
        info = token.key_info(key_id=key_id)
        assert info.import_path is ImportPath.UNWRAP and info.can_unwrap and not info.can_decrypt
    finally:
        token.delete("path-default")


def test_a_decrypt_key_made_by_the_other_branch_opens_a_simpleblob(token):
    key_id = token.generate_rsa("path-decrypt", 2048, KeyUsage.EXCHANGE, import_path=ImportPath.DECRYPT)
    try:
        info = token.key_info(key_id=key_id)
        assert info.import_path is ImportPath.DECRYPT and info.can_decrypt and not info.can_unwrap
        assert info.usage is KeyUsage.EXCHANGE and info.sensitive and not info.extractable
        key = ExchangeKey(token, "path-decrypt", key_id)
        session = SessionKey.generate(AlgId.CALG_AES_256)
        for oaep in (False, True):
            blob = session.export_simpleblob(key.public_key(), oaep=oaep)
            assert key.import_simpleblob(blob, oaep=oaep).key == session.key
    finally:
        token.delete("path-decrypt")


def test_provider_generate_uses_the_decision(softhsm_kit):
    with Provider.open(softhsm_kit.module, "tokencsp-test-a", softhsm_kit.user_pin) as provider:
        pair = provider.generate_exchange_key("path-provider")
        try:
            assert pair.import_path is ImportPath.UNWRAP
        finally:
            provider.delete_key("path-provider")
