"""``--json`` / ``--status-fd N``: one result object per message or file, checked against docs/result.schema.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from helpers import REPO_ROOT, assert_one_line_error, cbc_bad_padding, kept_substitute, tokencsp

SCHEMA = json.loads((REPO_ROOT / "docs" / "result.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def objects(text: bytes | str) -> list[dict]:
    """Every line one JSON object that the schema accepts."""
    lines = (text.decode() if isinstance(text, bytes) else text).splitlines()
    assert lines, "no result object"
    found = [json.loads(line) for line in lines]
    for obj in found:
        VALIDATOR.validate(obj)
    return found


def one(text: bytes | str) -> dict:
    (obj,) = objects(text)
    return obj


def with_status_fd(args, tmp_path, *, input: bytes | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``tokencsp ARGS --status-fd N`` with N an inherited file: (the run, the objects written to N)."""
    path = tmp_path / "status.jsonl"
    with open(path, "w") as status:
        fd = status.fileno()
        run = subprocess.run([sys.executable, "-m", "tokencsp", *args, "--status-fd", str(fd)], input=input,
                             capture_output=True, pass_fds=(fd,), timeout=300)
    text = path.read_text()
    return run, (objects(text) if text else [])


@pytest.fixture(scope="module")
def keys(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("json-keys")
    tokencsp("key", "generate", "json-rx")
    tokencsp("key", "generate", "json-signer", "--usage", "signature")
    for name in ("json-rx", "json-signer"):
        tokencsp("key", "export", name, "-o", str(home / f"{name}.pub"))
    yield home
    for name in ("json-rx", "json-signer"):
        tokencsp("key", "delete", "--yes", name, check=False)


def seal(keys, tmp_path, data: bytes, *extra: str):
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.seal"
    tokencsp("seal", "--to", str(keys / "json-rx.pub"), *extra, "-o", str(out), input=data)
    return out


def test_the_schema_is_valid_and_refuses_what_it_should():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    good = {"schema": 1, "command": "open", "status": "error", "exit_status": 20, "reason": "replayed",
            "error": "message already accepted"}
    VALIDATOR.validate(good)
    for bad in ({**good, "status": "ok"},  # ok with an exit status and a reason
                {**good, "command": "seal"},
                {k: v for k, v in good.items() if k != "reason"},
                {**good, "status": "ok", "exit_status": 0, "reason": None, "error": None}):  # ok open lacks fields
        assert not VALIDATOR.is_valid(bad), bad


def test_open_json_reports_sender_serial_id_and_bytes(keys, tmp_path):
    data = os.urandom(70_000)
    sealed = seal(keys, tmp_path, data, "--sign-with", "json-signer")
    header = one(tokencsp("inspect", str(sealed), "--json").stdout)
    out = tmp_path / "plain"
    result = tokencsp("open", "--key", "json-rx", "--trust", str(keys / "json-signer.pub"), "--replay-db",
                      str(tmp_path / "db"), "-o", str(out), "--json", str(sealed))
    obj = one(result.stdout)
    assert out.read_bytes() == data
    assert obj["command"] == "open" and obj["status"] == "ok" and obj["exit_status"] == 0 and obj["reason"] is None
    assert obj["sender"] == "json-signer" and obj["signature_verified"] is True
    assert obj["bytes"] == len(data) and obj["file"] == str(sealed) and obj["output"] == str(out)
    for field in ("serial", "message_id", "timestamp", "sender_key_id"):
        assert obj[field] == header[field], field
    assert b"signature verified" in result.stderr  # the line for a person stays

    again = tokencsp("open", "--key", "json-rx", "--replay-db", str(tmp_path / "db"), "-o", str(tmp_path / "p2"),
                     "--json", str(sealed), check=False)
    assert again.returncode == 20 and not (tmp_path / "p2").exists()
    failed = one(again.stdout)
    assert failed["status"] == "error" and failed["exit_status"] == 20 and failed["reason"] == "replayed"
    assert failed["file"] == str(sealed) and again.stderr.decode().startswith("tokencsp: error: ")


def test_open_without_trust_names_no_sender(keys, tmp_path):
    sealed = seal(keys, tmp_path, b"hi", "--sign-with", "json-signer")
    obj = one(tokencsp("open", "--key", "json-rx", "--replay-db", str(tmp_path / "db"), "-o", str(tmp_path / "p"),
                       "--json", str(sealed)).stdout)
    assert obj["sender"] is None and obj["signature_verified"] is False and obj["sender_key_id"]


def test_status_fd_keeps_the_plaintext_on_stdout(keys, tmp_path):
    sealed = seal(keys, tmp_path, b"to stdout")
    run, found = with_status_fd(["open", "--key", "json-rx", "--replay-db", str(tmp_path / "db"), str(sealed)],
                                tmp_path)
    assert run.returncode == 0 and run.stdout == b"to stdout"
    (obj,) = found
    assert obj["status"] == "ok" and obj["bytes"] == 9 and obj["output"] is None and obj["sender"] is None
    run, found = with_status_fd(["open", "--key", "json-rx", "--replay-db", str(tmp_path / "db"), str(sealed)],
                                tmp_path)
    assert run.returncode == 20 and run.stdout == b""
    assert [(o["status"], o["exit_status"], o["reason"]) for o in found] == [("error", 20, "replayed")]


def test_json_would_mix_with_plaintext_on_stdout(keys, tmp_path):
    sealed = seal(keys, tmp_path, b"x")
    for args in (["open", "--key", "json-rx", str(sealed)], ["key", "export", "json-rx"],
                 ["capi", "decrypt", "--key", "json-rx", "--blob", str(sealed), str(sealed)],
                 ["cms", "decrypt", "--key", "json-rx", str(sealed)]):
        assert_one_line_error(tokencsp(*args, "--json", check=False), 2, "would mix the results")
    assert_one_line_error(tokencsp("inspect", str(sealed), "--status-fd", "57", check=False), 2,
                          "--status-fd 57: not an open file descriptor")
    assert_one_line_error(tokencsp("inspect", str(sealed), "--status-fd", "x", check=False), 2,
                          "expected a file descriptor number")


def test_each_open_refusal_is_one_object_with_its_reason(keys, tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a message at all" * 10)
    sealed = bytearray(seal(keys, tmp_path, b"secret", "--sign-with", "json-signer").read_bytes())
    sealed[-5] ^= 1
    (tmp_path / "tampered").write_bytes(sealed)
    cases = [(garbage, 13, "malformed", []), (tmp_path / "tampered", 10, "unauthenticated", []),
             (seal(keys, tmp_path, b"x"), 32, "unsigned", ["--trust", str(keys / "json-signer.pub")])]
    for path, status, reason, extra in cases:
        result = tokencsp("open", "--key", "json-rx", "--replay-db", str(tmp_path / "db"), "-o",
                          str(tmp_path / "p"), *extra, "--json", str(path), check=False)
        obj = one(result.stdout)
        assert (result.returncode, obj["exit_status"], obj["reason"]) == (status, status, reason), result.stderr
        assert obj["error"] in result.stderr.decode() and not (tmp_path / "p").exists()


def test_inspect_json_is_one_object(keys, tmp_path):
    sealed = seal(keys, tmp_path, b"abc")
    obj = one(tokencsp("inspect", str(sealed), "--json").stdout)
    assert obj["command"] == "inspect" and obj["signed"] is False and obj["serial"] == 0
    assert obj["file"] == str(sealed) and obj["chunk_size"] > 0
    run, found = with_status_fd(["inspect", str(sealed)], tmp_path)
    assert b"message_id: " + obj["message_id"].encode() in run.stdout  # the text stays on stdout
    assert found == [obj]
    (tmp_path / "junk").write_bytes(b"-----BEGIN PUBLIC KEY-----\n")
    result = tokencsp("inspect", str(tmp_path / "junk"), "--json", check=False)
    obj = one(result.stdout)
    assert result.returncode == 13 and obj["reason"] == "malformed" and "TCSPSEAL" in obj["error"]


def test_capi_and_cms_decrypt_json(keys, tmp_path):
    data = os.urandom(5000)
    (tmp_path / "plain").write_bytes(data)
    tokencsp("capi", "encrypt", "--to", str(keys / "json-rx.pub"), "--oaep", "--blob-out", str(tmp_path / "sb"),
             "-o", str(tmp_path / "ct"), str(tmp_path / "plain"))
    base = ["capi", "decrypt", "--key", "json-rx", "--blob", str(tmp_path / "sb")]
    obj = one(tokencsp(*base, "--oaep", "-o", str(tmp_path / "pt"), "--json", str(tmp_path / "ct")).stdout)
    assert (tmp_path / "pt").read_bytes() == data
    assert obj["bytes"] == len(data) and obj["alg"] == "CALG_AES_256" and obj["file"] == str(tmp_path / "ct")
    # Without --oaep the OAEP blob does not unwrap and the CLI decrypts with its substitute (the key every
    # process of this user derives): a payload whose padding that key rejects fails for certain, not 255/256.
    from tokencsp.blobs import AlgId, SimpleBlob
    from tokencsp.pubkeys import load_public_key

    substitute = kept_substitute(load_public_key((keys / "json-rx.pub").read_bytes()),
                                 SimpleBlob.from_bytes((tmp_path / "sb").read_bytes()))
    (tmp_path / "bad-ct").write_bytes(cbc_bad_padding(AlgId.CALG_AES_256, substitute))
    failed = tokencsp(*base, "-o", str(tmp_path / "pt2"), "--json", str(tmp_path / "bad-ct"), check=False)
    obj = one(failed.stdout)
    assert failed.returncode == 4 and obj["reason"] == "decrypt" and "--oaep" in obj["hint"]

    tokencsp("cms", "encrypt", "--to", str(keys / "json-rx.pub"), "--gcm", "-o", str(tmp_path / "m.cms"),
             str(tmp_path / "plain"))
    obj = one(tokencsp("cms", "decrypt", "--key", "json-rx", "-o", str(tmp_path / "cms.out"), "--json",
                       str(tmp_path / "m.cms")).stdout)
    assert obj["bytes"] == len(data) and obj["authenticated"] is True and (tmp_path / "cms.out").read_bytes() == data
    run, found = with_status_fd(["cms", "decrypt", "--key", "json-rx", str(tmp_path / "plain")], tmp_path)
    assert run.returncode == 14 and [o["reason"] for o in found] == ["cms-malformed"]


def test_key_generate_and_export_json(softhsm_kit, tmp_path):
    try:
        result = tokencsp("key", "generate", "json-gen", "--json")
        obj = one(result.stdout)
        assert obj["name"] == "json-gen" and obj["key"]["name"] == "json-gen" and obj["key"]["bits"] == 2048
        out = tmp_path / "pub.pem"
        exported = one(tokencsp("key", "export", "json-gen", "--format", "pem", "-o", str(out), "--json").stdout)
        assert exported["bytes"] == out.stat().st_size and exported["format"] == "pem"
        from tokencsp.pubkeys import fingerprint, load_public_key

        assert exported["key_id"] == fingerprint(load_public_key(out.read_bytes())).hex()
        again = tokencsp("key", "generate", "json-gen", "--json", check=False)
        obj = one(again.stdout)
        assert again.returncode == 3 and obj["status"] == "error" and obj["reason"] == "token"
    finally:
        tokencsp("key", "delete", "--yes", "json-gen", check=False)
    missing = tokencsp("key", "export", "json-gen", "-o", str(tmp_path / "x"), "--json", check=False)
    assert missing.returncode == 3 and one(missing.stdout)["name"] == "json-gen"


def test_send_and_listen_json(keys, tmp_path):
    tokencsp("key", "generate", "json-bob", "--token", "tokencsp-test-b")
    listener = None
    try:
        tokencsp("key", "export", "json-bob", "--token", "tokencsp-test-b", "-o", str(tmp_path / "bob.pub"))
        (tmp_path / "alice.pub").write_bytes((keys / "json-rx.pub").read_bytes())
        (tmp_path / "a.txt").write_bytes(b"first file")
        (tmp_path / "b.bin").write_bytes(os.urandom(3000))
        listener = subprocess.Popen(
            [sys.executable, "-m", "tokencsp", "listen", "--token", "tokencsp-test-b", "--key", "json-bob", "--name",
             "bob", "--trust", str(tmp_path / "alice.pub"), "--port", "0", "--out-dir", str(tmp_path / "in"),
             "--once", "--json"], stderr=subprocess.PIPE, stdout=subprocess.PIPE)
        line = listener.stderr.readline().decode()
        port = line.split("127.0.0.1:")[1].split()[0]
        sent = one(tokencsp("send", "--key", "json-rx", "--name", "alice", "--to", str(tmp_path / "bob.pub"),
                            "--connect", f"127.0.0.1:{port}", "--json", str(tmp_path / "a.txt"),
                            str(tmp_path / "b.bin")).stdout)
        out, err = listener.communicate(timeout=60)
        assert listener.returncode == 0, err
        got = one(out)
        files = [{"name": "a.txt", "bytes": 10}, {"name": "b.bin", "bytes": 3000}]
        assert got["peer"] == "alice" and got["files"] == files and got["bytes"] == 3010
        assert sent["peer"] == "bob" and sent["bytes"] == 3010
        assert sent["files"] == [{**f, "confirmed": True} for f in files]
        refused = tokencsp("send", "--key", "json-rx", "--name", "alice", "--to", str(tmp_path / "bob.pub"),
                           "--connect", f"127.0.0.1:{port}", "--json", str(tmp_path / "a.txt"), check=False)
        obj = one(refused.stdout)
        assert refused.returncode == 44 and obj["reason"] == "connect" and obj["files"][0]["confirmed"] is False
    finally:
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.wait()
        tokencsp("key", "delete", "--yes", "json-bob", "--token", "tokencsp-test-b", check=False)


def test_batch_open_json_is_one_object_per_file(keys, tmp_path):
    first, second = seal(keys, tmp_path, b"one"), seal(keys, tmp_path, b"second one")
    garbage = tmp_path / "junk.tcsp"
    garbage.write_bytes(b"x" * 100)
    out = tmp_path / "out"
    out.mkdir()
    result = tokencsp("open", "--key", "json-rx", "--replay-db", str(tmp_path / "db"), "--out-dir", str(out),
                      "--json", str(first), str(garbage), str(second), check=False)
    assert result.returncode == 13, result.stderr
    found = objects(result.stdout)
    assert [(o["file"], o["status"], o["exit_status"]) for o in found] == [
        (str(first), "ok", 0), (str(garbage), "error", 13), (str(second), "ok", 0)]
    assert [o["bytes"] for o in found if o["status"] == "ok"] == [3, 10]
    assert found[1]["reason"] == "malformed"
    assert all(os.path.dirname(o["output"]) == str(out) for o in found)
