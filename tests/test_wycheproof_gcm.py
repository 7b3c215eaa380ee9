"""Wycheproof AES-GCM through the AEAD calls the sealed-message opener makes (``envelope._chunks.Chunker``).

tokencsp uses AES-GCM with 96-bit nonces and 128-bit tags (sealed-message
chunks and three-phase records); every vector of that shape runs through the
opener's own decrypt function, for every key size, on both of its paths
(``decrypt_into`` a reused buffer, and the allocating call of cryptography < 45).  Vectors with other nonce
sizes are counted as not applicable, not skipped silently.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokencsp.envelope._chunks import Chunker


@pytest.mark.parametrize("into", [True, False], ids=["decrypt_into", "allocating"])
def test_wycheproof_aes_gcm_through_the_opener(vectors_dir, into):
    data = json.loads((vectors_dir / "aes_gcm_test.json").read_text())
    passed = failed = not_applicable = 0
    for group in data["testGroups"]:
        for case in group["tests"]:
            if group["ivSize"] != 96 or group["tagSize"] != 128:
                not_applicable += 1
                continue
            aead = AESGCM(bytes.fromhex(case["key"]))
            nonce, aad = bytes.fromhex(case["iv"]), bytes.fromhex(case["aad"])
            sealed = bytes.fromhex(case["ct"]) + bytes.fromhex(case["tag"])
            chunker = Chunker(bytes.fromhex(case["key"]), aad, max(len(sealed), 1))
            chunker._into = into
            opened = chunker.decrypt(nonce, memoryview(sealed))
            plaintext = None if opened is None else bytes(opened)
            if case["result"] == "valid":
                ok = plaintext == bytes.fromhex(case["msg"]) and aead.encrypt(nonce, plaintext, aad) == sealed
            else:
                ok = plaintext is None
            passed, failed = passed + ok, failed + (not ok)
    print(f"aes_gcm_test.json: {passed} passed, {failed} failed, {not_applicable} not applicable (nonce size)")
    assert failed == 0
    assert passed > 0
    assert passed + not_applicable == data["numberOfTests"]
