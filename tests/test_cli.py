"""The ``tokencsp`` command end to end, as a user runs it, against the test token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import assert_one_line_error, cbc_bad_padding, import_like_softhsm2_util, kept_substitute, tokencsp
from tokencsp import SessionKey, blobs
from tokencsp.blobs import PrivateKeyBlob


@pytest.fixture(scope="module")
def cli_key(softhsm_kit):
    tokencsp("key", "generate", "cli-kx")
    yield "cli-kx"
    tokencsp("key", "delete", "--yes", "cli-kx", check=False)


def test_help_lists_commands_and_exit_codes():
    out = tokencsp("--help").stdout.decode()
    for word in ("key", "blob", "capi", "exit status", "TOKENCSP_PIN"):
        assert word in out
    assert "--pin " not in out


def test_generate_list_export(cli_key, tmp_path):
    listing = json.loads(tokencsp("key", "list", "--json").stdout)
    entry = next(k for k in listing if k["name"] == cli_key)
    assert entry["sensitive"] and not entry["extractable"] and entry["never_extractable"] and entry["local"]
    assert entry["usage"] == "exchange" and entry["bits"] == 2048
    assert cli_key in tokencsp("key", "list").stdout.decode()

    blob = tokencsp("key", "export", cli_key).stdout
    assert blob[:20].hex() == "0602000000a40000525341310008000001000100"
    pem_file = tmp_path / "pub.pem"
    tokencsp("key", "export", cli_key, "--format", "pem", "-o", str(pem_file))
    der = tokencsp("key", "export", cli_key, "--format", "der").stdout
    pem_key = serialization.load_pem_public_key(pem_file.read_bytes())
    assert pem_key.public_numbers() == serialization.load_der_public_key(der).public_numbers()
    assert pem_key.public_numbers().n == blobs.PublicKeyBlob.from_bytes(blob).modulus


def test_openssl_reads_exported_publickeyblob(cli_key, tmp_path):
    path = tmp_path / "pub.blob"
    tokencsp("key", "export", cli_key, "-o", str(path))
    out = subprocess.run(["openssl", "rsa", "-pubin", "-inform", "MSBLOB", "-in", str(path), "-modulus", "-noout"],
                         capture_output=True, check=True).stdout.decode()
    assert int(out.strip().split("=")[1], 16) == blobs.PublicKeyBlob.from_bytes(path.read_bytes()).modulus


@pytest.mark.parametrize("alg,oaep", [("aes256", False), ("aes128", True), ("3des", False), ("3des112", True),
                                      ("aes192", False)])
def test_capi_encrypt_then_decrypt_on_token(cli_key, tmp_path, alg, oaep):
    pub = tmp_path / "pub.blob"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * (1 << 20) + 5))  # crosses the CLI's 1 MiB chunking
    flags = ["--oaep"] if oaep else []
    tokencsp("capi", "encrypt", "--to", str(pub), "--alg", alg, *flags, "--blob-out", str(tmp_path / "sb"),
             "-o", str(tmp_path / "ct"), str(plain))
    info = json.loads(tokencsp("blob", "inspect", str(tmp_path / "sb"), "--json").stdout)
    assert info["type"] == "SIMPLEBLOB" and info["recipient_bits"] == 2048
    block = 8 if "des" in alg else 16
    assert (tmp_path / "ct").stat().st_size == (plain.stat().st_size // block + 1) * block
    tokencsp("capi", "decrypt", "--key", cli_key, "--blob", str(tmp_path / "sb"), *flags, "-o", str(tmp_path / "pt"),
             str(tmp_path / "ct"))
    assert (tmp_path / "pt").read_bytes() == plain.read_bytes()
    # stdin/stdout work too
    out = tokencsp("capi", "decrypt", "--key", cli_key, "--blob", str(tmp_path / "sb"), *flags,
                   input=(tmp_path / "ct").read_bytes()).stdout
    assert out == plain.read_bytes()


def test_capi_output_decrypts_with_independent_host_key(cli_key, tmp_path):
    """The sender side with a PEM recipient; the receiver is a plain cryptography key (no token)."""
    software = rsa.generate_private_key(65537, 2048)
    pem = tmp_path / "r.pem"
    pem.write_bytes(software.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    ct = tokencsp("capi", "encrypt", "--to", str(pem), "--alg", "aes128", "--blob-out", str(tmp_path / "sb"),
                  input=b"hello").stdout
    from cryptography.hazmat.primitives.asymmetric import padding

    simple = blobs.SimpleBlob.from_bytes((tmp_path / "sb").read_bytes())
    key = SessionKey.from_bytes(simple.alg_id, software.decrypt(simple.encrypted_key, padding.PKCS1v15()))
    assert key.decrypt(ct) == b"hello"


def test_import_private_blob_and_pem(tmp_path, softhsm_kit):
    software = rsa.generate_private_key(65537, 2048)
    (tmp_path / "k.blob").write_bytes(PrivateKeyBlob.from_private_key(software).to_bytes())
    out = tokencsp("key", "import", "cli-imp", "--private-blob", str(tmp_path / "k.blob")).stdout.decode()
    assert "cli-imp" in out and "exchange" in out
    tokencsp("key", "delete", "--yes", "cli-imp")
    (tmp_path / "k.pem").write_bytes(software.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.TraditionalOpenSSL,
                                                            serialization.NoEncryption()))
    out = tokencsp("key", "import", "cli-imp", "--pem", str(tmp_path / "k.pem"), "--usage", "signature").stdout
    assert b"signature" in out
    tokencsp("key", "delete", "--yes", "cli-imp")
    assert b"cli-imp" not in tokencsp("key", "list").stdout


# -- failures: one line, non-zero, nothing left behind -----------------------------------------


def _bad_blob_payloads(pub: Path, blob: bytes) -> tuple[bytes, bytes]:
    """(fails, accepted): CBC payloads that a bad ``blob``'s substitute -- the key every tokencsp process of
    this user decrypts it with -- rejects at the padding, and decrypts to ``b"garbage but padded"``."""
    substitute = kept_substitute(blobs.PublicKeyBlob.from_bytes(pub.read_bytes()).to_public_key(),
                                 blobs.SimpleBlob.from_bytes(blob))
    return (cbc_bad_padding(blobs.AlgId.CALG_AES_256, substitute),
            SessionKey.from_bytes(blobs.AlgId.CALG_AES_256, substitute).encrypt(b"garbage but padded"))


def test_tampered_blob_one_line_no_output_file(cli_key, tmp_path):
    pub = tmp_path / "pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), "-o", str(tmp_path / "ct"),
             input=b"secret")
    blob = bytearray((tmp_path / "sb").read_bytes())
    blob[30] ^= 1
    (tmp_path / "bad").write_bytes(bytes(blob))
    (tmp_path / "ct").write_bytes(_bad_blob_payloads(pub, bytes(blob))[0])
    result = tokencsp("capi", "decrypt", "--key", cli_key, "--blob", str(tmp_path / "bad"), "-o",
                      str(tmp_path / "out"), str(tmp_path / "ct"), check=False)
    assert_one_line_error(result, 4, "could not be decrypted", hint="add --oaep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "ct", "pub", "sb"]


def test_corrupted_ciphertext_leaves_no_plaintext_file(cli_key, tmp_path):
    pub = tmp_path / "pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), "-o", str(tmp_path / "ct"),
             input=os.urandom(5000))
    ct = bytearray((tmp_path / "ct").read_bytes())
    ct[-17] ^= 0xFF  # the last plaintext byte, the pad length 8, becomes 0xF7: never valid
    (tmp_path / "ct").write_bytes(bytes(ct))
    result = tokencsp("capi", "decrypt", "--key", cli_key, "--blob", str(tmp_path / "sb"), "-o",
                      str(tmp_path / "out"), str(tmp_path / "ct"), check=False)
    assert_one_line_error(result, 4, "could not be decrypted", hint="add --oaep")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokencsp-")]


def test_capi_decrypt_fails_alike_for_a_bad_blob_and_a_bad_ciphertext(cli_key, tmp_path):
    """Issue 9 finding 10: which part was bad (key blob: a PKCS#1 oracle; ciphertext) is not told.

    A bad blob decrypts with its substitute like any key: one line for a bad padding, and accepted
    garbage where the padding is valid -- exactly what a good blob whose key the ciphertext was not
    made with gives (here: a good blob carrying the substitute itself).  No 1-in-256 luck involved.
    """
    pub = tmp_path / "pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), "-o", str(tmp_path / "ct"),
             input=os.urandom(3000))
    blob, ct = bytearray((tmp_path / "sb").read_bytes()), bytearray((tmp_path / "ct").read_bytes())
    blob[30] ^= 1
    ct[-17] ^= 0xFF  # 3000 bytes: the pad length 8 becomes 0xF7
    fails, accepted = _bad_blob_payloads(pub, bytes(blob))
    substitute = kept_substitute(blobs.PublicKeyBlob.from_bytes(pub.read_bytes()).to_public_key(),
                                 blobs.SimpleBlob.from_bytes(bytes(blob)))
    twin = SessionKey.from_bytes(blobs.AlgId.CALG_AES_256, substitute).export_simpleblob(pub.read_bytes())
    for name, data in (("bad-sb", bytes(blob)), ("bad-ct", bytes(ct)), ("fails", fails), ("accepted", accepted),
                       ("twin-sb", twin)):
        (tmp_path / name).write_bytes(data)

    def run(sb: str, data: str) -> subprocess.CompletedProcess[bytes]:
        return tokencsp("capi", "decrypt", "--key", cli_key, "--blob", str(tmp_path / sb), "-o", str(tmp_path / "out"),
                        str(tmp_path / data), check=False)

    results = [run(sb, data) for sb, data in (("bad-sb", "fails"), ("sb", "bad-ct"), ("twin-sb", "fails"))]
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == [(4, b"", results[1].stderr)] * 3
    assert_one_line_error(results[0], 4, "could not be decrypted", hint="add --oaep")
    assert not (tmp_path / "out").exists()
    for sb in ("bad-sb", "twin-sb"):
        assert run(sb, "accepted").returncode == 0
        assert (tmp_path / "out").read_bytes() == b"garbage but padded"
        (tmp_path / "out").unlink()


@pytest.mark.parametrize("data,needle", [
    (b"\x01\x02", "truncated"),
    (b"\x05\x02\x00\x00\x10\x66\x00\x00\x00\xa4\x00\x00" + bytes(256), "bType"),
    (b"\x01\x03\x00\x00\x10\x66\x00\x00\x00\xa4\x00\x00" + bytes(256), "bVersion"),
    (b"\x06\x02\x00\x00\x00\xa4\x00\x00RSA2" + bytes(8), "magic"),
])
def test_bad_blob_files(tmp_path, data, needle):
    path = tmp_path / "b"
    path.write_bytes(data)
    assert_one_line_error(tokencsp("blob", "inspect", str(path), check=False), 1, needle)


def test_token_errors(tmp_path, softhsm_kit, cli_key):
    assert_one_line_error(tokencsp("key", "list", env={"TOKENCSP_PIN": "wrong-pin", "TOKENCSP_TOKEN":
                                                        "tokencsp-test-b"}, check=False), 3, "PIN incorrect",
                          hint="token 'tokencsp-test-b' says")
    assert_one_line_error(tokencsp("key", "list", "--token", "absent", check=False), 3, "no token",
                          hint="tokens there: " + ", ".join(map(repr, sorted(softhsm_kit.labels))))  # + any pool
    assert_one_line_error(tokencsp("--module", str(tmp_path / "nope.so"), "key", "list", check=False), 3,
                          "module not found", hint="sudo apt-get install softhsm2")
    assert_one_line_error(tokencsp("capi", "decrypt", "--key", "absent-key", "--blob", "/dev/null", check=False),
                          1, "truncated")
    (tmp_path / "sb").write_bytes(SessionKey.generate("aes128").export_simpleblob(
        rsa.generate_private_key(65537, 2048).public_key()))
    assert_one_line_error(tokencsp("capi", "decrypt", "--key", "absent-key", "--blob", str(tmp_path / "sb"),
                                   check=False), 3, "absent-key", hint="'tokencsp key list' shows the keys")


def test_pin_sources(tmp_path, softhsm_kit, cli_key):
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_kit.user_pin + "\n")
    pin_file.chmod(0o600)
    env = {"TOKENCSP_PIN": ""}
    assert b"cli-kx" in tokencsp("--pin-file", str(pin_file), "key", "list", env=env).stdout
    uri = f"pkcs11:token=tokencsp-test-a?pin-source=file:{pin_file}"
    assert b"cli-kx" in tokencsp("key", "list", "--uri", uri, env=env).stdout
    # No PIN anywhere and no terminal: a clear error, not a hang.
    assert_one_line_error(tokencsp("key", "list", env=env, check=False), 3, "no PIN")


def test_missing_input_file_and_unwritable_output(tmp_path, cli_key):
    pub = tmp_path / "pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    assert_one_line_error(tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"),
                                   str(tmp_path / "missing"), check=False), 1, "cannot read")
    assert not (tmp_path / "sb").exists()
    assert_one_line_error(tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out",
                                   str(tmp_path / "no-dir" / "sb"), input=b"x", check=False), 1, "cannot write")


def test_key_audit_flags_weak_keys(tmp_path, softhsm_kit, cli_key):
    """A key made by another tool (as softhsm2-util --import makes it: 1024 bits, sign+unwrap+decrypt) is flagged."""
    import_like_softhsm2_util("tokencsp-test-b", softhsm_kit.user_pin, rsa.generate_private_key(65537, 1024),
                              "audit-weak", b"\x77")
    try:
        result = tokencsp("key", "audit", "--token", "tokencsp-test-b", "--json", "--strict", check=False)
        assert result.returncode == 5
        report = {entry["name"]: entry for entry in json.loads(result.stdout)}
        messages = " ".join(f["message"] for f in report["audit-weak"]["findings"] if f["level"] == "warning")
        assert "1024-bit" in messages and "signs and unwraps" in messages
        ok = tokencsp("key", "audit", "--json").stdout
        entry = next(e for e in json.loads(ok) if e["name"] == cli_key)
        assert [f for f in entry["findings"] if f["level"] == "warning"] == []
    finally:
        tokencsp("key", "delete", "--yes", "audit-weak", "--token", "tokencsp-test-b")


def test_generate_oaep_only(tmp_path, softhsm_kit, token_has_allowed_mechanisms):
    if not token_has_allowed_mechanisms:  # opencryptoki 3.8: refused, and no key is left behind
        before = tokencsp("key", "list").stdout
        result = tokencsp("key", "generate", "cli-oaep", "--oaep-only", check=False)
        assert_one_line_error(result, 3, "cannot restrict a key to OAEP (it has no CKA_ALLOWED_MECHANISMS)")
        assert tokencsp("key", "list").stdout == before
        return
    tokencsp("key", "generate", "cli-oaep", "--oaep-only")
    try:
        pub = tmp_path / "pub"
        tokencsp("key", "export", "cli-oaep", "-o", str(pub))
        tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), "-o", str(tmp_path / "ct"),
                 input=b"x")
        # The token refuses the v1.5 blob: the CLI decrypts with its substitute, which this payload fails.
        (tmp_path / "ct").write_bytes(_bad_blob_payloads(pub, (tmp_path / "sb").read_bytes())[0])
        result = tokencsp("capi", "decrypt", "--key", "cli-oaep", "--blob", str(tmp_path / "sb"), str(tmp_path / "ct"),
                          check=False)
        assert_one_line_error(result, 4, "could not be decrypted", hint="add --oaep")
        assert b"oaep-only" in tokencsp("key", "list").stdout
    finally:
        tokencsp("key", "delete", "--yes", "cli-oaep")


def test_uri_object_names_the_key(cli_key, tmp_path, softhsm_kit):
    pub = tmp_path / "pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    tokencsp("capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), "-o", str(tmp_path / "ct"),
             input=b"via uri")
    uri = f"pkcs11:token=tokencsp-test-a;object={cli_key}"
    out = tokencsp("capi", "decrypt", "--uri", uri, "--blob", str(tmp_path / "sb"), str(tmp_path / "ct")).stdout
    assert out == b"via uri"
    no_key = tokencsp("capi", "decrypt", "--blob", str(tmp_path / "sb"), str(tmp_path / "ct"), check=False)
    assert_one_line_error(no_key, 2, "--key")


def test_pin_prompt_on_a_terminal(softhsm_kit, cli_key):
    """No PIN in the environment or a file: on a terminal tokencsp asks, without echo, and never shows it."""
    import pty
    import select

    env = {k: v for k, v in os.environ.items() if k != "TOKENCSP_PIN"}
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        os.execve(sys.executable, [sys.executable, "-m", "tokencsp", "key", "list"], env)
    seen = b""
    try:
        while b"PIN:" not in seen:
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, f"no prompt: {seen!r}"
            seen += os.read(fd, 1024)
        os.write(fd, softhsm_kit.user_pin.encode() + b"\n")
        while True:
            ready, _, _ = select.select([fd], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"Token 'tokencsp-test-a'" in seen.split(b"PIN:", 1)[0]  # the prompt names the token
    assert cli_key.encode() in seen
    assert softhsm_kit.user_pin.encode() not in seen.split(b"PIN:", 1)[1].split(cli_key.encode())[0]


@pytest.mark.softhsm_only(reason="initialises a token in a SoftHSM store of its own")
def test_token_init_and_list_without_pins_on_argv(softhsm_kit, tmp_path):
    """In a SoftHSM store of its own (the suite's store must keep exactly its two tokens)."""
    (tmp_path / "tokens").mkdir()
    (tmp_path / "softhsm2.conf").write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n"
                                            "objectstore.backend = file\nlog.level = ERROR\n")
    store = {"SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf")}
    label = "cli-init"
    env = {**store, "TOKENCSP_SO_PIN": softhsm_kit.so_pin, "TOKENCSP_PIN": "5678"}
    result = tokencsp("token", "init", "--label", label, env=env)
    assert f"initialised token '{label}'" in result.stderr.decode()
    listing = json.loads(tokencsp("token", "list", "--json", env=store).stdout)
    assert [entry["label"] for entry in listing] == [label]
    # the new token works with its own PIN, in a new process
    out = tokencsp("key", "generate", "on-new-token", "--token", label, env={**store, "TOKENCSP_PIN": "5678"}).stdout
    assert b"on-new-token" in out
    assert_one_line_error(tokencsp("token", "init", "--label", label, env=env, check=False), 3, "already exists")
    no_so = tokencsp("token", "init", "--label", label + "x", env={**store, "TOKENCSP_SO_PIN": ""}, check=False)
    assert_one_line_error(no_so, 3, "no SO PIN")


def test_pin_value_on_the_command_line_is_refused(softhsm_kit, cli_key):
    """Finding 9.5: argv is world-readable in /proc/PID/cmdline; pin-value stays allowed in TOKENCSP_URI."""
    uri = f"pkcs11:token=tokencsp-test-a?pin-value={softhsm_kit.user_pin}"
    env = {"TOKENCSP_PIN": ""}
    for argv in (["key", "list", "--uri", uri], ["--uri", uri, "key", "list"]):
        result = tokencsp(*argv, env=env, check=False)
        assert_one_line_error(result, 2, "pin-value")
        err = result.stderr.decode()
        assert "pin-source" in err and "TOKENCSP_URI" in err and "TOKENCSP_PIN" in err, err
        assert result.stdout == b""
    assert b"cli-kx" in tokencsp("key", "list", env={**env, "TOKENCSP_URI": uri}).stdout


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_pin_file_others_can_read_is_refused(softhsm_kit, cli_key, tmp_path, mode):
    """As ssh refuses a private key others can read; a mode check is a stat(), so it holds as root too."""
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_kit.user_pin + "\n")
    pin_file.chmod(mode)
    env = {"TOKENCSP_PIN": ""}
    for argv in (["--pin-file", str(pin_file), "key", "list"],
                 ["key", "list", "--uri", f"pkcs11:token=tokencsp-test-a?pin-source=file:{pin_file}"]):
        result = tokencsp(*argv, env=env, check=False)
        assert_one_line_error(result, 1, f"chmod 600 {pin_file}")
        assert f"{mode:04o}" in result.stderr.decode() and softhsm_kit.user_pin not in result.stderr.decode()
    pin_file.chmod(0o600)
    assert b"cli-kx" in tokencsp("--pin-file", str(pin_file), "key", "list", env=env).stdout


def test_bad_uri_on_the_command_line_is_a_usage_error():
    result = tokencsp("key", "list", "--uri", "pkcs11:tokn=x", check=False)
    assert_one_line_error(result, 2, "unsupported PKCS#11 URI attribute")


@pytest.fixture
def net_args(cli_key, tmp_path):
    pub = tmp_path / "peer.pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    (tmp_path / "f").write_bytes(b"x")
    return ["--key", cli_key], str(pub), str(tmp_path / "f")


def test_listen_on_a_port_in_use_or_a_bad_host_is_one_line(net_args, tmp_path):
    import socket

    key_args, pub, _ = net_args
    key_args = [*key_args, "--trust", pub]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        result = tokencsp("listen", *key_args, "--port", port, "--out-dir", str(tmp_path), "--once", check=False)
        assert_one_line_error(result, 44, f"cannot listen on 127.0.0.1:{port}: ")
        assert "in use" in result.stderr.decode()
    result = tokencsp("listen", *key_args, "--host", "no-such-host.invalid", "--port", "0", "--out-dir",
                      str(tmp_path), "--once", check=False)
    assert_one_line_error(result, 44, "cannot listen on no-such-host.invalid:0: ")


def test_send_to_a_closed_port_is_not_a_protocol_error(net_args):
    import socket

    key_args, pub, path = net_args
    with socket.socket() as bound:  # bound but not listening: the kernel refuses the connection
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        result = tokencsp("send", *key_args, "--to", pub, "--connect", f"127.0.0.1:{port}", path, check=False)
    assert_one_line_error(result, 44, f"cannot connect to 127.0.0.1:{port}: Connect")


def test_listen_creates_a_missing_out_dir(cli_key, tmp_path):
    tokencsp("key", "generate", "cli-bob", "--token", "tokencsp-test-b")
    listener = None
    try:
        tokencsp("key", "export", cli_key, "-o", str(tmp_path / "alice.pub"))
        tokencsp("key", "export", "cli-bob", "--token", "tokencsp-test-b", "-o", str(tmp_path / "bob.pub"))
        (tmp_path / "report.txt").write_bytes(b"delivered")
        inbox = tmp_path / "new" / "inbox"
        listener = subprocess.Popen(
            [sys.executable, "-m", "tokencsp", "listen", "--token", "tokencsp-test-b", "--key", "cli-bob", "--name",
             "bob", "--trust", str(tmp_path / "alice.pub"), "--port", "0", "--out-dir", str(inbox), "--once"],
            stderr=subprocess.PIPE)
        line = listener.stderr.readline().decode()
        assert "listening on 127.0.0.1:" in line, line
        port = line.split("127.0.0.1:")[1].split()[0]
        tokencsp("send", "--key", cli_key, "--name", "alice", "--to", str(tmp_path / "bob.pub"), "--connect",
                 f"127.0.0.1:{port}", str(tmp_path / "report.txt"))
        assert listener.wait(timeout=60) == 0, listener.stderr.read()
        assert (inbox / "alice" / "report.txt").read_bytes() == b"delivered"  # one directory per peer
        assert inbox.stat().st_mode & 0o777 == 0o700
    finally:
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.wait()
        tokencsp("key", "delete", "--yes", "cli-bob", "--token", "tokencsp-test-b", check=False)


def test_key_list_names_the_token_and_has_a_header(cli_key):
    lines = tokencsp("key", "list").stdout.decode().splitlines()
    assert lines[0].startswith("token 'tokencsp-test-a', serial "), lines
    assert lines[1].split("\t") == ["NAME", "USAGE", "KEY", "IMPORT", "ID", "ATTRIBUTES", "URI"], lines
    assert any(line.startswith(f"{cli_key}\texchange\tRSA-2048\tunwrap\t") for line in lines[2:]), lines
    audit = tokencsp("key", "audit").stdout.decode().splitlines()
    assert audit[0] == lines[0] and audit[1] == lines[1]


def test_token_list_without_tokens_says_so(tmp_path):
    (tmp_path / "tokens").mkdir()
    (tmp_path / "softhsm2.conf").write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n"
                                            "objectstore.backend = file\nlog.level = ERROR\n")
    result = tokencsp("token", "list", env={"SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf")})
    assert result.stdout == b""
    assert result.stderr.decode().startswith("no initialised token in "), result.stderr


def test_capi_decrypt_hints_at_the_padding_flag(cli_key, tmp_path):
    """A SIMPLEBLOB does not record its padding: a fixed hint, chosen by the flag alone, names the other one."""
    pub = tmp_path / "pub"
    tokencsp("key", "export", cli_key, "-o", str(pub))
    for given, other in ((["--oaep"], []), ([], ["--oaep"])):
        tokencsp("capi", "encrypt", "--to", str(pub), *given, "--blob-out", str(tmp_path / "sb"), "-o",
                 str(tmp_path / "ct"), input=b"x")
        # Imported with the other padding the blob does not unwrap: a payload its substitute fails.
        (tmp_path / "ct").write_bytes(_bad_blob_payloads(pub, (tmp_path / "sb").read_bytes())[0])
        result = tokencsp("capi", "decrypt", "--key", cli_key, "--blob", str(tmp_path / "sb"), *other,
                          str(tmp_path / "ct"), check=False)
        assert_one_line_error(result, 4, "could not be decrypted", "add --oaep" if given else "leave out --oaep")
        assert result.stdout == b""


def test_key_export_to_a_terminal_only_as_pem(cli_key):
    from test_cli_main import on_a_terminal

    code, shown, err = on_a_terminal(["key", "export", cli_key])
    assert code == 2 and shown == b"" and b"refusing to write binary data to a terminal" in err, err
    code, shown, err = on_a_terminal(["key", "export", cli_key, "--format", "pem"])
    assert code == 0 and b"-----BEGIN PUBLIC KEY-----" in shown, err


def test_sourcing_the_dev_env_puts_tokencsp_on_path(tmp_path, softhsm_kit):
    """After `make demo`, `. .softhsm/env` must be enough to run `tokencsp` (no venv activation)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {"TOKENCSP_PYTHON": sys.executable, "TOKENCSP_TOKEN": "env-test", "TOKENCSP_PIN": "5678",
           "TOKENCSP_SO_PIN": softhsm_kit.so_pin, "PATH": os.environ["PATH"]}
    subprocess.run([str(repo / "softhsm" / "setup-token.sh"), str(tmp_path / "state")], check=True,
                   capture_output=True, env={**os.environ, **env}, timeout=120)
    shell = subprocess.run(["bash", "-c", f". {tmp_path / 'state' / 'env'} && command -v tokencsp && "
                                          "TOKENCSP_PIN=5678 tokencsp key list"],
                           capture_output=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=120)
    assert shell.returncode == 0, shell.stderr
    found, *listing = shell.stdout.decode().splitlines()
    assert Path(found) == Path(sys.executable).parent / "tokencsp"
    assert listing[0].startswith("token 'env-test'")


@pytest.mark.softhsm_only(reason="a SoftHSM store of its own for a distinctive 10-character PIN (opencryptoki swtok: "
                         "PINs of 4-8 characters, a fixed slot table)")
def test_debug_log_never_holds_the_pin_or_the_plaintext(softhsm_kit, tmp_path):
    """-v / TOKENCSP_DEBUG=1 log what was chosen and how long it took; a distinctive PIN and plaintext
    are grepped for in every line (the kit's PIN, 1234, could turn up in a serial or a timing)."""
    (tmp_path / "tokens").mkdir()
    (tmp_path / "softhsm2.conf").write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n"
                                            "objectstore.backend = file\nlog.level = ERROR\n")
    pin, secret = "pin-Qx7w9z", b"plaintext-Zk4vR8 attack at dawn"
    store = {"SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf"), "TOKENCSP_TOKEN": "debug-log",
             "TOKENCSP_URI": "", "TOKENCSP_PIN": pin}
    tokencsp("token", "init", "--label", "debug-log", env={**store, "TOKENCSP_SO_PIN": softhsm_kit.so_pin})
    tokencsp("key", "generate", "dbg", env=store)
    tokencsp("key", "export", "dbg", "-o", str(tmp_path / "dbg.pub"), env=store)
    sealed = tokencsp("seal", "--to", str(tmp_path / "dbg.pub"), "-o", str(tmp_path / "m"), input=secret, env=store)
    assert sealed.returncode == 0
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    db = ["--replay-db", str(tmp_path / "db")]
    runs = [(["-v", "key", "list"], store),
            (["key", "list"], {**store, "TOKENCSP_DEBUG": "1"}),
            (["-v", "--pin-file", str(pin_file), "key", "list"], {**store, "TOKENCSP_PIN": ""}),
            (["-v", "key", "list"], {**store, "TOKENCSP_PIN": "", "TOKENCSP_URI": f"pkcs11:token=debug-log?pin-value={pin}"}),
            (["-v", "open", "--key", "dbg", *db, str(tmp_path / "m")], store),
            (["-v", "key", "list"], {**store, "TOKENCSP_PIN": "wrong-" + pin})]
    calls = "tokencsp: debug: tokencsp.token: "
    for argv, env in runs:
        result = tokencsp(*argv, env=env, check=False)
        err = result.stderr.decode()
        assert "tokencsp: debug: tokencsp.cli: module " in err and "token label 'debug-log'" in err, err
        assert pin not in err and secret.decode() not in err, err
        # One line per PKCS#11 call (function, mechanism, CKR, duration): names and times, never a value.
        assert f"{calls}C_Initialize (CKF_OS_LOCKING_OK): CKR_OK in " in err, err
        assert f"{calls}C_GetMechanismInfo CKM_RSA_PKCS_OAEP: " in err and f"{calls}C_OpenSession: CKR_OK" in err
        assert f"{calls}token 'debug-log', serial " in err and "the only initialised token with label" in err
        if argv[1:3] == ["open", "--key"]:
            assert f"{calls}C_UnwrapKey CKM_RSA_PKCS_OAEP: CKR_OK in " in err, err
            assert f"{calls}C_GetAttributeValue (CLASS, KEY_TYPE, VALUE of the transient key): CKR_OK" in err
            assert f"{calls}C_DestroyObject (transient key): CKR_OK" in err
    assert result.returncode == 3  # the wrong PIN: logged as refused, the PIN itself nowhere
    assert "refused: PinError" in err and f"{calls}C_Login (CKU_USER): CKR_PIN_INCORRECT in " in err
    quiet = tokencsp("key", "list", env=store)
    assert "debug" not in quiet.stderr.decode()
