"""Trust sets load PUBLICKEYBLOB/PEM/DER files by stem and refuse anything else with one ConfigError."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokencsp.blobs import PublicKeyBlob
from tokencsp.errors import ConfigError, UnknownPeer
from tokencsp.pubkeys import fingerprint
from tokencsp.trust import TrustSet


def test_directory_of_key_files(tmp_path):
    keys = {name: rsa.generate_private_key(65537, 2048).public_key() for name in ("alice", "bob", "carol")}
    (tmp_path / "alice.pub").write_bytes(PublicKeyBlob.from_public_key(keys["alice"]).to_bytes())
    (tmp_path / "bob.pem").write_bytes(keys["bob"].public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "carol.der").write_bytes(keys["carol"].public_bytes(serialization.Encoding.DER,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / ".hidden").write_bytes(b"ignored")
    trust = TrustSet.from_paths([tmp_path])
    assert sorted(trust) == ["alice", "bob", "carol"]
    assert trust.by_fingerprint() == {fingerprint(k): k for k in trust.values()}
    assert trust["bob"].public_numbers() == keys["bob"].public_numbers()
    with pytest.raises(UnknownPeer):
        trust.key_for("mallory")


@pytest.mark.parametrize("content", [
    ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    bytes.fromhex("300a300506030b6570030100"),  # unknown SPKI algorithm (found by fuzzing)
    b"not a key at all",
])
def test_unusable_key_file_is_one_config_error(tmp_path, content):
    (tmp_path / "x.pem").write_bytes(content)
    with pytest.raises(ConfigError, match="x.pem"):
        TrustSet.from_paths([tmp_path])


def test_two_files_with_one_name_are_refused(tmp_path):
    key = rsa.generate_private_key(65537, 2048).public_key()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "dup.pub").write_bytes(PublicKeyBlob.from_public_key(key).to_bytes())
    with pytest.raises(ConfigError, match="dup"):
        TrustSet.from_paths([tmp_path / "a", tmp_path / "b"])
