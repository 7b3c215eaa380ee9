"""The SoftHSM kit that conftest builds: both tokens exist, the env is right,
and no PIN lands in the config file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tokencsp.pytest_plugin import POOL_PREFIX
from tokencsp.testing import OpencryptokiKit, SoftHSMKit, find_softhsm_module

pytestmark = pytest.mark.softhsm_only(reason="tests the SoftHSM kit itself (softhsm2-util, SOFTHSM2_CONF)")


def _show_slots(conf: Path) -> str:
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    proc = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return proc.stdout


def _labels(show_slots: str) -> set[str]:
    return {
        line.split(":", 1)[1].strip()
        for line in show_slots.splitlines()
        if line.strip().startswith("Label:")
    } - {""}


def test_kit_created_both_tokens(softhsm_kit: SoftHSMKit) -> None:
    conf = Path(softhsm_kit.environ()["SOFTHSM2_CONF"])
    assert conf == softhsm_kit.conf_path
    pool = {label for label in softhsm_kit.labels if label.startswith(POOL_PREFIX)}  # a softhsm_token per test
    assert _labels(_show_slots(conf)) == {"tokencsp-test-a", "tokencsp-test-b"} | pool
    assert sorted(softhsm_kit.token_labels()) == sorted({"tokencsp-test-a", "tokencsp-test-b"} | pool)


def test_environ_is_applied_and_complete(softhsm_kit: SoftHSMKit) -> None:
    env = softhsm_kit.environ()
    assert set(env) == {"SOFTHSM2_CONF", "TOKENCSP_MODULE", "TOKENCSP_TOKEN", "TOKENCSP_PIN"}
    assert env["TOKENCSP_TOKEN"] == softhsm_kit.labels[0] == "tokencsp-test-a"
    assert env["TOKENCSP_PIN"] == softhsm_kit.user_pin
    assert Path(env["TOKENCSP_MODULE"]).is_file()
    assert env["TOKENCSP_MODULE"] == softhsm_kit.module == find_softhsm_module()
    for name, value in env.items():
        assert os.environ[name] == value


def test_no_pin_in_config_file(softhsm_kit: SoftHSMKit) -> None:
    text = softhsm_kit.conf_path.read_text()
    assert softhsm_kit.user_pin not in text
    assert softhsm_kit.so_pin not in text
    assert f"directories.tokendir = {softhsm_kit.token_dir}" in text
    # The store is private to this run, never the system token directory.
    assert softhsm_kit.token_dir.is_relative_to(softhsm_kit.directory)
    assert "PIN" not in repr(softhsm_kit) and softhsm_kit.user_pin not in repr(softhsm_kit)


def test_kit_is_idempotent_and_pins_are_private(tmp_path: Path) -> None:
    # Distinctive PINs, so a substring check cannot pass by accident.
    user_pin, so_pin = "u-pin-7391", "so-pin-5528"
    with SoftHSMKit(tmp_path, labels=("kit-x",), user_pin=user_pin, so_pin=so_pin) as kit:
        slots_before = _show_slots(kit.conf_path)
    with SoftHSMKit(tmp_path, labels=("kit-x", "kit-y"), user_pin=user_pin, so_pin=so_pin) as kit:
        assert sorted(kit.token_labels()) == ["kit-x", "kit-y"]
    assert "kit-x" in slots_before
    text = kit.conf_path.read_text()
    assert user_pin not in text and so_pin not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert user_pin.encode() not in data and so_pin.encode() not in data


@pytest.mark.parametrize(
    "labels",
    [(), ("a" * 33,), ("dup", "dup"), (" padded",)],
)
def test_kit_rejects_bad_labels(tmp_path: Path, labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        SoftHSMKit(tmp_path, labels=labels)


def test_kit_rejects_short_pin(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SoftHSMKit(tmp_path, user_pin="123")


def test_add_tokens_and_token_objects(tmp_path: Path) -> None:
    with SoftHSMKit(tmp_path, labels=("kit-first",), user_pin="u-pin-4417") as kit:
        added = kit.add_tokens(["kit second", "kit/third"])
        assert [t.label for t in added] == ["kit second", "kit/third"]
        assert sorted(kit.token_labels()) == ["kit second", "kit-first", "kit/third"]
        assert kit.labels == ("kit-first", "kit second", "kit/third")
        with pytest.raises(ValueError):
            kit.add_tokens(["kit-first"])
        with pytest.raises(KeyError):
            kit.token("no-such-token")
        first = kit.token()
    assert first.label == "kit-first" and first.module == kit.module and first.conf_path == kit.conf_path
    assert first.env["PKCS11_TOKEN_LABEL"] == "kit-first" and first.env["PKCS11_TOKEN_PIN"] == "u-pin-4417"
    assert set(first.env) == {"SOFTHSM2_CONF", "TOKENCSP_MODULE", "TOKENCSP_TOKEN", "TOKENCSP_PIN",
                              "PKCS11_MODULE", "PKCS11_TOKEN_LABEL", "PKCS11_TOKEN_PIN"}
    # RFC 7512: reserved characters in the label are percent-encoded; no PIN in the URI or repr.
    third = added[1]
    assert third.uri.startswith("pkcs11:token=kit%2Fthird?module-path=/"), third.uri
    assert "u-pin-4417" not in third.uri + repr(third)


def test_add_tokens_needs_an_entered_kit(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="entered first"):
        SoftHSMKit(tmp_path).add_tokens(["x"])


def test_both_kits_check_labels_and_pins_alike(tmp_path: Path) -> None:
    """SoftHSMKit and OpencryptokiKit share their checks (tokencsp.testing._TokenKit); constructing an
    OpencryptokiKit touches no token store."""
    for bad in ((), ("a" * 33,), ("dup", "dup"), (" padded",)):
        for kit in (SoftHSMKit, OpencryptokiKit):
            with pytest.raises(ValueError):
                kit(tmp_path, labels=bad)
    with pytest.raises(ValueError, match="user_pin must be 4 to 8 characters"):
        OpencryptokiKit(tmp_path, user_pin="123456789")  # swtok's limit; SoftHSM takes it
    assert SoftHSMKit(tmp_path, user_pin="123456789").user_pin == "123456789"
    unentered = OpencryptokiKit(tmp_path, labels=("x", "y"), user_pin="secret-1")
    assert repr(unentered) == f"OpencryptokiKit(directory={str(tmp_path.resolve())!r}, labels=('x', 'y'))"
    for call in (unentered.environ, unentered.token):
        with pytest.raises(RuntimeError, match=r"^OpencryptokiKit\.\w+\(\) needs the kit entered first$"):
            call()
