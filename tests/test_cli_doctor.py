"""``tokencsp doctor``: one line per check on a healthy token, and each failure that can be made for real."""

from __future__ import annotations

from helpers import tokencsp
from tokencsp.testing import selected_backend

CHECKS = ["module", "token", "login", "mechanisms", "clock", "replay cache", "agent"]


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, tuple[str, str]], str]:
    result = tokencsp("doctor", *args, env=env, check=False)
    lines = result.stdout.decode().splitlines()
    found = {}
    for line in lines:
        check, outcome, detail = line.split(": ", 2)
        found[check] = (outcome, detail)
    assert list(found) == CHECKS, lines  # one line each, in order
    return result.returncode, found, result.stderr.decode()


def test_healthy_softhsm_token(softhsm_kit, tmp_path):
    status, found, err = doctor("--replay-db", str(tmp_path / "replay.sqlite3"))
    assert status == 0 and err == "", (found, err)
    assert all(outcome == "ok" for outcome, _ in found.values()), found
    assert found["module"][1].startswith(softhsm_kit.module) and "Cryptoki 2." in found["module"][1]
    # The library's own description: SoftHSM's, or opencryptoki's ("IBM, Meta PKCS11 LIBRARY") under make test-opencryptoki.
    assert ("SoftHSM" if selected_backend() == "softhsm" else "Meta PKCS11 LIBRARY") in found["module"][1]
    assert found["token"][1].startswith("'tokencsp-test-a', serial ")
    assert "SIMPLEBLOB PKCS#1 v1.5 (unwrap)" in found["mechanisms"][1] and "CRYPT_OAEP" in found["mechanisms"][1]
    assert str(tmp_path / "replay.sqlite3") in found["replay cache"][1]
    assert found["agent"][1].startswith("off (TOKENCSP_AGENT=off")  # the suite's conftest turns agents off
    assert softhsm_kit.user_pin not in str(found)


def test_missing_module_path(softhsm_kit, tmp_path):
    status, found, _ = doctor("--module", str(tmp_path / "libnothing.so"), "--replay-db", str(tmp_path / "r"))
    assert status == 6
    assert found["module"][0] == "FAIL" and "module not found" in found["module"][1]
    assert "apt-get install softhsm2" in found["module"][1]  # the hint, on the check's own line
    assert [found[c][0] for c in ("token", "login", "mechanisms")] == ["skipped"] * 3
    assert found["clock"][0] == found["replay cache"][0] == "ok"


def test_wrong_token_label(softhsm_kit, tmp_path):
    status, found, _ = doctor("--token", "no-such-label", "--replay-db", str(tmp_path / "r"))
    assert status == 6 and found["module"][0] == "ok"
    assert found["token"][0] == "FAIL" and "no token with label 'no-such-label'" in found["token"][1]
    assert "'tokencsp-test-a', 'tokencsp-test-b'" in found["token"][1]
    assert found["login"][0] == found["mechanisms"][0] == "skipped"


def test_wrong_pin(softhsm_kit, tmp_path):
    status, found, _ = doctor("--token", "tokencsp-test-b", "--replay-db", str(tmp_path / "r"),
                              env={"TOKENCSP_PIN": "wrong-pin-1"})
    assert status == 6 and found["token"][0] == "ok"
    assert found["login"][0] == "FAIL" and "PIN incorrect" in found["login"][1]
    assert "wrong-pin-1" not in str(found)
    assert found["mechanisms"][0] == "skipped"


def test_unwritable_replay_cache(softhsm_kit, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # root can write anywhere, but never below a regular file
    status, found, _ = doctor("--replay-db", str(blocker / "replay.sqlite3"))
    assert status == 6 and found["login"][0] == "ok"
    assert found["replay cache"][0] == "FAIL" and "Not a directory" in found["replay cache"][1]
