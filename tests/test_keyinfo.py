"""KeyInfo as plain data: ``as_dict`` (key list --json, the agent's PUBLIC/LIST answers) and its inverse ``from_dict``."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest

from tokencsp import Provider
from tokencsp.errors import KeyNotFoundError
from tokencsp.keyinfo import DecryptMechanism, ImportPath, KeyInfo, KeyUsage

# Every field away from its default, so a field from_dict forgot or swapped cannot round-trip.
CARD = KeyInfo(name="card key", id=bytes.fromhex("00ff10"), usage=KeyUsage.EXCHANGE, bits=3072, sensitive=True,
               extractable=False, always_sensitive=False, never_extractable=True, local=False, can_unwrap=False,
               can_decrypt=True, can_sign=False, has_public=False, oaep_only=True, import_path=ImportPath.DECRYPT,
               decrypt_mechanisms=(DecryptMechanism.RSA_X_509, DecryptMechanism.RSA_PKCS_OAEP),
               always_authenticate=True, uri="pkcs11:token=t;id=%00%ff%10;object=card%20key;type=private")
# The other values of the optional fields: no usage, no import path.
NEITHER = dataclasses.replace(CARD, usage=None, import_path=None, decrypt_mechanisms=(), can_sign=True, uri="")


@pytest.mark.parametrize("info", [CARD, NEITHER], ids=["card", "neither"])
def test_from_dict_inverts_as_dict_through_json(info):
    assert KeyInfo.from_dict(json.loads(json.dumps(info.as_dict()))) == info


def test_a_dict_without_uri_is_an_older_agents_and_reads_with_an_empty_uri():
    item = CARD.as_dict()
    del item["uri"]
    assert KeyInfo.from_dict(item) == dataclasses.replace(CARD, uri="")


MISSING = object()


@pytest.mark.parametrize(("field", "value"), [("name", MISSING), ("local", MISSING), ("id", "zz"), ("id", 7),
                                              ("usage", "encrypt"), ("bits", "many"), ("import_path", "copy"),
                                              ("decrypt_mechanisms", ["rsa-raw"]), ("decrypt_mechanisms", 3)])
def test_a_field_of_the_wrong_type_or_value_is_a_value_error(field, value):
    item = {**CARD.as_dict(), field: value}
    if value is MISSING:
        del item[field]
    with pytest.raises(ValueError):
        KeyInfo.from_dict(item)


def test_not_a_dict_is_a_value_error():
    with pytest.raises(ValueError):
        KeyInfo.from_dict(["name"])  # type: ignore[arg-type]


def test_the_tokens_own_key_infos_round_trip(softhsm_kit):
    # The session kit's token, not a fresh one (tokencsp_provider): the pool tokens a fresh one needs
    # would show up in every token listing of the suite.
    with Provider.open() as provider:
        names = {"keyinfo-kx": provider.generate_exchange_key, "keyinfo-sig": provider.generate_signature_key}
        try:
            for name, generate in names.items():
                generate(name)
                info = provider.key(name).info()
                assert info.name == name
                assert KeyInfo.from_dict(json.loads(json.dumps(info.as_dict()))) == info
        finally:
            for name in names:
                with contextlib.suppress(KeyNotFoundError):
                    provider.delete_key(name)
