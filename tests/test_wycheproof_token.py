"""Every RSA decryption vector of Wycheproof through the token's C_UnwrapKey path.

Each group's private key is imported onto the SoftHSM token; every test runs
through ``ExchangeKey.unwrap_raw`` (the path SIMPLEBLOB imports take).  Valid
cases must recover the message; invalid ones must end in tokencsp's single
``SessionKeyImportError``.  OAEP variants the token does not implement are
found by a capability probe and counted as unsupported, never skipped
silently: a per-file summary line (with each reason) is printed at the end
of the run.  So is an empty message on a token that cannot return one: a
probe with an empty message of our own decides it (opencryptoki 3.8's
PKCS#1 v1.5 unwrap gives one 0x00 byte for it, which an empty message and
a one-byte 0x00 message both become, so no caller can tell them apart).
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

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

HOST_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
               "sha512": hashes.SHA512}

SUMMARY: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def provider(softhsm_kit):
    with Provider.open(token="tokencsp-test-b") as opened:
        yield opened


def _empty_message_refusal(pair, oaep: bool, hash_name: str, label: bytes) -> str | None:
    """None when the token unwraps an empty message of our own to an empty value, else the reason."""
    if oaep:
        algorithm = HOST_HASHES[hash_name]()
        scheme = padding.OAEP(padding.MGF1(algorithm), algorithm, label or None)
    else:
        scheme = padding.PKCS1v15()
    try:
        got = pair.unwrap_raw(pair.public_key().encrypt(b"", scheme), oaep=oaep, oaep_hash=hash_name,
                              oaep_label=label)
    except SessionKeyImportError:
        got = None
    if got == b"":
        return None
    what = "refuses it" if got is None else f"returns {got!r}"
    return f"empty message ({'OAEP' if oaep else 'PKCS#1 v1.5'}): the token {what}"


def _run(provider, path, name, oaep: bool):
    data = json.loads(path.read_text())
    tally = {"passed": 0, "failed": 0, "unsupported": 0, "reasons": set()}
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
            empty_refused: dict[bytes, str | None] = {}
            for case in group["tests"]:
                ct, msg = bytes.fromhex(case["ct"]), bytes.fromhex(case["msg"])
                case_label = bytes.fromhex(case.get("label", ""))
                if oaep:
                    if case_label not in probed:
                        probed[case_label] = mgf_hash == hash_name and pair.supports_oaep(hash_name, case_label)
                    if not probed[case_label]:
                        tally["unsupported"] += 1
                        if mgf_hash != hash_name:
                            why = f"OAEP {hash_name} with MGF1-{mgf_hash}: tokencsp uses MGF1 with the OAEP hash"
                        else:
                            why = (f"OAEP {hash_name}{' with a label' if case_label else ''}, "
                                   f"{group.get('keySize', '?')}-bit key: the token does not unwrap it")
                        tally["reasons"].add(why)
                        continue
                if msg == b"" and case["result"] != "invalid":
                    if case_label not in empty_refused:
                        empty_refused[case_label] = _empty_message_refusal(pair, oaep, hash_name, case_label)
                    if empty_refused[case_label] is not None:
                        tally["unsupported"] += 1
                        tally["reasons"].add(empty_refused[case_label])
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
    total = json.loads((vectors_dir / name).read_text())["numberOfTests"]
    assert tally["passed"] + tally["unsupported"] == total
    # Only the empty message may be beyond a token (case 1, "Message of length 0"), and only with its reason.
    assert tally["unsupported"] <= 1
    assert len(tally["reasons"]) == tally["unsupported"]


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
