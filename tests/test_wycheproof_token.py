"""Every RSA decryption vector of Wycheproof through the token's C_UnwrapKey path.

Each group's private key is imported onto the SoftHSM token; every test runs
through ``ExchangeKey.unwrap_raw`` (the path SIMPLEBLOB imports take).  Valid
cases must recover the message; invalid ones must end in tokencsp's single
``SessionKeyImportError``.  OAEP variants the token does not implement are
found by a capability probe and counted as unsupported, never skipped
silently: a per-file summary line is printed at the end of the run.
"""

from __future__ import annotations

import json

import pytest

from tokencsp import Provider
from tokencsp.errors import SessionKeyImportError

PKCS1_FILES = ["rsa_pkcs1_2048_test.json", "rsa_pkcs1_3072_test.json", "rsa_pkcs1_4096_test.json"]
OAEP_FILES = [
    "rsa_oaep_2048_sha1_mgf1sha1_test.json",
    "rsa_oaep_2048_sha256_mgf1sha256_test.json",
    "rsa_oaep_3072_sha256_mgf1sha256_test.json",
    "rsa_oaep_4096_sha256_mgf1sha256_test.json",
    "rsa_oaep_misc_test.json",
]
HASHES = {"SHA-1": "sha1", "SHA-224": "sha224", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512"}

SUMMARY: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def provider(softhsm_kit):
    with Provider.open(token="tokencsp-test-b") as opened:
        yield opened


def _run(provider, path, name, oaep: bool):
    data = json.loads(path.read_text())
    tally = {"passed": 0, "failed": 0, "unsupported": 0}
    failures = []
    imported: dict[str, object] = {}  # groups often share a key: import each once
    try:
        for group in data["testGroups"]:
            pem = group["privateKeyPem"]
            if pem not in imported:
                imported[pem] = provider.import_pem(f"wp-{name}-{len(imported)}", pem.encode(), legacy=True)
            pair = imported[pem]
            hash_name = HASHES.get(group.get("sha", ""), "sha1")
            mgf_hash = HASHES.get(group.get("mgfSha", ""), "sha1")
            probed: dict[bytes, bool] = {}
            for case in group["tests"]:
                ct, msg = bytes.fromhex(case["ct"]), bytes.fromhex(case["msg"])
                case_label = bytes.fromhex(case.get("label", ""))
                if oaep:
                    if case_label not in probed:
                        probed[case_label] = mgf_hash == hash_name and pair.supports_oaep(hash_name, case_label)
                    if not probed[case_label]:
                        tally["unsupported"] += 1
                        continue
                try:
                    got = pair.unwrap_raw(ct, oaep=oaep, oaep_hash=hash_name, oaep_label=case_label)
                    ok = case["result"] != "invalid" and got == msg
                except SessionKeyImportError:
                    ok = case["result"] != "valid"
                tally["passed" if ok else "failed"] += 1
                if not ok:
                    failures.append(case["tcId"])
    finally:
        for pair in imported.values():
            provider.delete_key(pair.name)
    SUMMARY[name] = tally
    assert provider.session_object_count() == 0
    return tally, failures


@pytest.mark.parametrize("name", PKCS1_FILES)
def test_wycheproof_pkcs1_through_token(provider, vectors_dir, name):
    tally, failures = _run(provider, vectors_dir / name, name, oaep=False)
    assert failures == []
    assert tally["passed"] == json.loads((vectors_dir / name).read_text())["numberOfTests"]
    assert tally["unsupported"] == 0


@pytest.mark.parametrize("name", OAEP_FILES)
def test_wycheproof_oaep_through_token(provider, vectors_dir, name):
    tally, failures = _run(provider, vectors_dir / name, name, oaep=True)
    assert failures == []
    total = json.loads((vectors_dir / name).read_text())["numberOfTests"]
    assert tally["passed"] + tally["unsupported"] == total
    if name == "rsa_oaep_2048_sha1_mgf1sha1_test.json":
        # CRYPT_OAEP's own variant: only the labelled cases may be beyond SoftHSM.
        assert tally["passed"] >= 29


def test_sha1_oaep_without_label_is_supported(provider):
    pair = provider.generate_exchange_key("wp-probe")
    try:
        assert pair.supports_oaep("sha1")
    finally:
        provider.delete_key("wp-probe")
