"""Trust sets load PUBLICKEYBLOB/PEM/DER files by stem and refuse anything else with one ConfigError."""

from __future__ import annotations

import os
import subprocess
import sys

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
    with pytest.raises(ConfigError, match=r"x\.pem"):
        TrustSet.from_paths([tmp_path])


def test_two_files_with_one_name_are_refused(tmp_path):
    key = rsa.generate_private_key(65537, 2048).public_key()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "dup.pub").write_bytes(PublicKeyBlob.from_public_key(key).to_bytes())
    with pytest.raises(ConfigError, match="dup"):
        TrustSet.from_paths([tmp_path / "a", tmp_path / "b"])


def _weak_key() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(65537, 1024).public_key()


def test_keys_below_2048_bits_are_never_trusted(tmp_path):
    """Finding 9.9: a 1024-bit peer key is refused wherever a trust set is built, with one clear line."""
    weak = _weak_key()
    with pytest.raises(ConfigError, match=r"'carol': a 1024-bit RSA key is too weak to trust \(at least 2048 bits\)"):
        TrustSet({"carol": weak})
    (tmp_path / "carol.pem").write_bytes(weak.public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "dave.pub").write_bytes(PublicKeyBlob.from_public_key(_weak_key()).to_bytes())
    for path in (tmp_path / "carol.pem", tmp_path / "dave.pub", tmp_path):
        with pytest.raises(ConfigError, match=r"(carol\.pem|dave\.pub): a 1024-bit RSA key is too weak") as info:
            TrustSet.from_paths([path])
        assert "\n" not in str(info.value)
    assert len(TrustSet({"erin": rsa.generate_private_key(65537, 2048).public_key()})) == 1


@pytest.mark.parametrize("command", ["listen", "send", "open"])
def test_cli_refuses_a_weak_trusted_key_before_any_token_work(tmp_path, command):
    """listen --trust, send --to and open --trust all load trust sets: one error line, nothing done."""
    weak = tmp_path / "carol.pem"
    weak.write_bytes(_weak_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    argv = {"listen": ["listen", "--key", "k", "--trust", str(weak), "--port", "0", "--out-dir", str(tmp_path)],
            "send": ["send", "--key", "k", "--to", str(weak), "--connect", "127.0.0.1:9", str(payload)],
            "open": ["open", "--key", "k", "--trust", str(weak), "-o", str(tmp_path / "out"), str(payload)]}[command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENCSP_")}
    env["TOKENCSP_MODULE"] = "/nonexistent/libsofthsm2.so"  # any token work would fail differently
    result = subprocess.run([sys.executable, "-m", "tokencsp", *argv], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("tokencsp: error: "), result.stderr
    assert "carol.pem: a 1024-bit RSA key is too weak to trust (at least 2048 bits)" in result.stderr
    assert not (tmp_path / "out").exists()
