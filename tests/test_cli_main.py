"""``tokencsp.cli.main`` in process: injected streams, the one exit-status table, module structure."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from tokencsp import errors
from tokencsp.cli import ExitStatus, main
from tokencsp.cli._status import status_for

CLI_DIR = Path(__file__).resolve().parent.parent / "tokencsp" / "cli"


def run(*argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err,
                stdin=io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    out.flush()
    return code, out.buffer.getvalue(), err.getvalue()


def test_everything_goes_to_the_injected_streams(tmp_path, capsys):
    from tokencsp.blobs import AlgId, PlaintextKeyBlob

    blob = tmp_path / "k.blob"
    blob.write_bytes(PlaintextKeyBlob(AlgId.CALG_AES_128, bytes(16)).to_bytes())
    code, out, err = run("blob", "inspect", str(blob))
    assert code == 0 and b"type: PLAINTEXTKEYBLOB" in out and err == ""
    code, out, err = run("blob", "inspect", "-", stdin=b"\x01\x02")  # "-" is the injected stdin
    assert code == ExitStatus.ERROR and out == b"" and err.startswith("tokencsp: error: ") and "truncated" in err
    code, out, err = run("--help")
    assert code == 0 and b"exit status:" in out and err == ""
    code, out, err = run("--version")
    assert code == 0 and out == b"tokencsp 0.1.0\n"
    code, out, err = run("key", "frobnicate")
    assert code == ExitStatus.USAGE and out == b"" and "tokencsp: error: " in err
    assert capsys.readouterr() == ("", "")  # nothing reached the real sys.stdout/sys.stderr


def test_help_epilog_is_the_exit_status_table():
    _, out, _ = run("--help")
    text = out.decode()
    for status in ExitStatus:
        assert f"{int(status):3d}  {status.description}\n" in text


@pytest.mark.parametrize("error,status", [
    (errors.ConfigError("x"), 1), (errors.InputError("x"), 1), (errors.ReplayCacheError("x"), 1),
    (errors.PinError("x"), 3), (errors.KeyNotFoundError("x"), 3), (errors.ModuleLoadError("x"), 3),
    (errors.SessionKeyImportError(), 4), (errors.DecryptionError("x"), 4),
    (errors.AuthenticationFailed(), 10), (errors.TruncatedMessage(), 11), (errors.NotForThisKey(), 12),
    (errors.EnvelopeFormatError(), 13), (errors.Pkcs1Refused(), 16), (errors.ReplayedMessage(), 20), (errors.MessageTooOld(), 21),
    (errors.MessageFromFuture(), 22), (errors.SerialNotIncreasing(), 23), (errors.UntrustedSender(), 30),
    (errors.BadSignature(), 31), (errors.SignatureRequired(), 32), (errors.ReplayError(), 1),
    (errors.ProtocolError("x"), 40), (errors.FrameTooLarge("x"), 40), (errors.PeerAborted(1, "x"), 40),
    (errors.PeerAuthenticationFailed("x"), 41), (errors.TruncatedSession("x"), 41), (errors.UnknownPeer("x"), 42),
    (errors.PhaseTimeout("x"), 43), (KeyboardInterrupt(), 130),
])
def test_each_error_keeps_its_exit_status(error, status):
    assert status_for(error) == status


def test_cli_modules_write_only_through_the_console():
    for path in CLI_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{path.name}:{node.lineno} calls print"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys":
                assert node.attr not in ("stdout", "stderr", "stdin") or path.name == "main.py", \
                    f"{path.name}:{node.lineno} uses sys.{node.attr}"


def test_no_command_module_imports_the_cli_package_back():
    """The old cycle: cli_seal/cli_exchange imported ``_provider`` from ``tokencsp.cli``."""
    for path in CLI_DIR.glob("*.py"):
        if path.name in ("__init__.py", "main.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                if target == ".":  # ``from . import _log``: sibling modules only, nothing from __init__
                    siblings = {p.stem for p in CLI_DIR.glob("*.py")} - {"__init__", "main"}
                    assert {alias.name for alias in node.names} <= siblings, f"{path.name} imports from ."
                    continue
                assert target not in ("..cli", "tokencsp.cli", ".main"), f"{path.name} imports {target}"


@pytest.mark.parametrize("state", ["empty", "unusable"])
@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["open", "--help"], ["seal", "--help"]])
def test_building_the_parser_writes_nothing(tmp_path, state, argv):
    """`tokencsp --version` used to mkdir ~/.local/state/tokencsp (the --replay-db help), and a failing
    mkdir was a traceback. A file where the state dir's parent should be makes mkdir fail even as root."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    if state == "empty":
        xdg = tmp_path / "state"
        xdg.mkdir()
    else:
        (tmp_path / "file").write_text("")
        xdg = tmp_path / "file" / "state"
    env = {k: v for k, v in os.environ.items() if k != "TOKENCSP_REPLAY_DB"}
    env.update(HOME=str(home), XDG_STATE_HOME=str(xdg))
    result = subprocess.run([sys.executable, "-m", "tokencsp", *argv], capture_output=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert list(home.iterdir()) == []
    if state == "empty":
        assert list(xdg.iterdir()) == []


_PROBE = """
import runpy, sys
sys.argv = ["tokencsp"] + sys.argv[1:]
try:
    runpy.run_module("tokencsp", run_name="__main__")
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pkcs11", "asn1crypto") or m == "tokencsp.token")
print("HEAVY", heavy, file=sys.stderr)
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("tokencsp", "cryptography", "asyncio", "logging")),
      file=sys.stderr)
sys.exit(code)
"""


def test_commands_without_a_token_never_import_pkcs11(tmp_path):
    """Fast start: python-pkcs11 (and asn1crypto under it) cost ~50 ms; seal to a file key needs neither."""
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pub = tmp_path / "r.pem"
    pub.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "plain").write_bytes(b"hello")
    sealed = tmp_path / "m.tcsp"
    runs = [["--version"], ["--help"], ["seal", "--to", str(pub), "-o", str(sealed), str(tmp_path / "plain")],
            ["inspect", str(sealed)],
            ["capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), "-o", str(tmp_path / "ct"),
             str(tmp_path / "plain")],
            ["blob", "inspect", str(tmp_path / "sb")]]
    for argv in runs:
        result = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, timeout=60)
        err = result.stderr.decode()
        assert result.returncode == 0, (argv, err)
        assert "HEAVY []" in err, (argv, err)
        assert "'logging" not in err[err.index("LOADED"):], (argv, err)  # only -v needs it
        if argv == ["--version"]:  # lazy subcommands: nothing but the parser
            loaded = err[err.index("LOADED"):]
            for module in ("cryptography", "asyncio", "tokencsp.envelope", "tokencsp.net", "tokencsp.replay"):
                assert f"'{module}" not in loaded, loaded


def usage_error(argv: list[str], needle: str, hint: str | None = None) -> None:
    code, out, err = run(*argv)
    lines = err.splitlines()
    assert code == ExitStatus.USAGE and out == b"", err
    assert lines[0].startswith("tokencsp: error: ") and needle in lines[0], err
    assert lines[1:] == ([f"tokencsp: hint: did you mean {hint!r}?"] if hint else []), err


@pytest.mark.parametrize("argv,needle,hint", [
    (["sael"], "invalid choice: 'sael'", "seal"),
    (["key", "genrate", "x"], "invalid choice: 'genrate'", "generate"),
    (["key", "list", "--js"], "unknown option --js", "--json"),  # no abbreviations
    (["open", "--ke", "alice", "m.tcsp"], "unknown option --ke", "--key"),
    (["open", "--keys", "alice", "m.tcsp"], "unknown option --keys", "--key"),  # alice is not the input
    (["key", "list", "stray"], "unexpected argument 'stray'", None),
    (["open", "--key", "k", "--max-age", "5x"], "invalid duration '5x'", None),
    (["open", "--key", "k", "--max-skew=-1m"], "invalid duration", None),
    (["key", "list", "--uri", "pkcs11:tokn=x"], "unsupported PKCS#11 URI attribute", None),
    (["capi", "decrypt", "--blob", "b"], "no key named", None),
    (["open", "m.tcsp"], "no key named", None),
    (["send", "--key", "k", "--to", "p", "--connect", "nocolon", "f"], "expected HOST:PORT", None),
    (["send", "--key", "k", "--to", "p", "--connect", "h:1", "--timeout", "0", "f"], "must be above 0", None),
    (["listen", "--key", "k", "--trust", "p", "--port", "99999", "--out-dir", "d"], "port number", None),
    (["listen", "--key", "k", "--trust", "p", "--port", "1", "--out-dir", "d", "--max-sessions", "0"],
     "at least 1", None),
])
def test_every_usage_error_is_exit_2_and_one_line(argv, needle, hint):
    usage_error(argv, needle, hint)


def test_inspect_of_a_non_message_says_so_and_prints_no_none(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tokencsp import envelope

    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello, this is not sealed\n")  # shorter than a header
    for path in (str(text), "/dev/null"):
        code, out, err = run("inspect", path)
        assert code == ExitStatus.MALFORMED and out == b"", err
        assert err == "tokencsp: error: not a tokencsp sealed message (no TCSPSEAL magic)\n"
    sealed = tmp_path / "m.tcsp"
    sealed.write_bytes(envelope.seal_bytes(b"x", rsa.generate_private_key(65537, 2048).public_key()))
    code, out, err = run("inspect", str(sealed))
    assert code == 0 and b"sender_key_id: -\n" in out and b"None" not in out, out
    code, out, err = run("inspect", "-", stdin=sealed.read_bytes()[:100])  # a real message, cut short
    assert code == ExitStatus.MALFORMED and "truncated" in err, err


@pytest.mark.parametrize("command", ["seal", "capi"])
def test_encrypting_to_a_signature_key_is_refused(tmp_path, command):
    """A CALG_RSA_SIGN PUBLICKEYBLOB names a key whose private half cannot unwrap: nothing is written."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tokencsp.blobs import AlgId, PublicKeyBlob

    numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    for alg, refused in ((AlgId.CALG_RSA_SIGN, True), (AlgId.CALG_RSA_KEYX, False)):
        pub = tmp_path / f"{alg.name}.pub"
        pub.write_bytes(PublicKeyBlob(modulus=numbers.n, public_exponent=numbers.e, alg_id=alg).to_bytes())
        out = tmp_path / f"{alg.name}.out"
        argv = (["seal", "--to", str(pub)] if command == "seal"
                else ["capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / f"{alg.name}.sb")])
        code, _, err = run(*argv, "-o", str(out), stdin=b"secret")
        if refused:
            assert code == ExitStatus.ERROR and "signature key (CALG_RSA_SIGN" in err and err.count("\n") == 1, err
            assert not out.exists() and not (tmp_path / f"{alg.name}.sb").exists()
        else:
            assert code == 0 and out.stat().st_size > 0, err


def on_a_terminal(argv: list[str]) -> tuple[int, bytes, bytes]:
    """Run tokencsp with stdout on a pseudo-terminal: (status, what reached the terminal, stderr)."""
    import os
    import pty
    import subprocess
    import sys

    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "tokencsp", *argv], stdout=secondary, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=120)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: nothing more
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    return proc.returncode, shown, proc.stderr


def test_binary_output_to_a_terminal_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pub = tmp_path / "r.pem"
    pub.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "plain").write_bytes(b"secret")
    for argv in (["seal", "--to", str(pub), str(tmp_path / "plain")],
                 ["capi", "encrypt", "--to", str(pub), "--blob-out", str(tmp_path / "sb"), str(tmp_path / "plain")]):
        code, shown, err = on_a_terminal(argv)
        assert code == ExitStatus.USAGE and shown == b"", (argv, err)
        assert err == b"tokencsp: error: refusing to write binary data to a terminal: use -o FILE or redirect stdout\n"
    assert not (tmp_path / "sb").exists()


def test_blob_inspect_says_what_a_non_blob_file_is(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tokencsp import envelope

    key = rsa.generate_private_key(65537, 2048)
    files = {"k.pem": (key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo),
                       "is a PEM file (PUBLIC KEY)"),
             "k.der": (key.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo),
                       "looks like DER"),
             "m.tcsp": (envelope.seal_bytes(b"x", key.public_key()), "is a tokencsp sealed message")}
    for name, (data, needle) in files.items():
        (tmp_path / name).write_bytes(data)
        code, out, err = run("blob", "inspect", str(tmp_path / name))
        assert code == ExitStatus.ERROR and out == b"" and err.count("\n") == 1, err
        assert err.startswith("tokencsp: error: not a CryptoAPI key BLOB: ") and needle in err, err


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "-v"])
@pytest.mark.parametrize("agent", ["off", "none-running"])
def test_a_token_command_resolves_the_token_options_once(softhsm_kit, monkeypatch, tmp_path, verbose, agent):
    """open_provider makes one selector for the agent check, the -v log line and the open (it made up to three)."""
    import tokencsp.config

    resolved = []
    real = tokencsp.config.resolve_selector

    def counted(*args, **kwargs):
        resolved.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokencsp.config, "resolve_selector", counted)  # a counter around the real resolution
    monkeypatch.setenv("TOKENCSP_AGENT", agent if agent == "off" else "")
    monkeypatch.setenv("TOKENCSP_AGENT_SOCK", str(tmp_path / "no-agent" / "agent.sock"))
    code, _out, err = run(*(["-v"] if verbose else []), "key", "list")
    assert code == 0, err
    assert len(resolved) == 1, resolved
    assert ("agent: TOKENCSP_AGENT=off" in err if agent == "off" else "agent: not used" in err) == verbose
