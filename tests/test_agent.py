"""``tokencsp agent`` (docs/AGENT.md): a real agent process on the test token, real commands through it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import assert_one_line_error, tokencsp
from tokencsp import agentwire
from tokencsp.agentclient import AgentUnavailable, status_of
from tokencsp.errors import AgentError

ON = {"TOKENCSP_AGENT": "on"}


# -- the codec (pure) ---------------------------------------------------------------------------


def test_codec_round_trip_and_frames_split_anywhere():
    body = agentwire.encode(agentwire.Op.IMPORT, b"rx", b"implicit", bytes(range(256)), b"1")
    wire = agentwire.frame(body, agentwire.MAX_REQUEST) * 3
    reader = agentwire.FrameReader(agentwire.MAX_REQUEST)
    bodies = []
    for i in range(0, len(wire), 7):
        bodies += reader.feed(wire[i:i + 7])
    assert bodies == [body] * 3 and reader.pending == 0
    message = agentwire.decode(bodies[0], agentwire.Op)
    assert message.code is agentwire.Op.IMPORT and message.fields == (b"rx", b"implicit", bytes(range(256)), b"1")


@pytest.mark.parametrize("body", [b"", b"\x05", b"\x63\x00", b"\x05\x09", b"\x05\x01\x00\x00\x00\x05abc",
                                  b"\x05\x01\x00\x00", b"\x05\x00extra"])
def test_codec_refuses_malformed_bodies(body):
    with pytest.raises(AgentError):
        agentwire.decode(body, agentwire.Op)


def test_an_oversized_frame_is_refused_from_its_length_alone():
    reader = agentwire.FrameReader(agentwire.MAX_REQUEST)
    with pytest.raises(AgentError, match="over the"):
        reader.feed((agentwire.MAX_REQUEST + 1).to_bytes(4, "big"))
    with pytest.raises(AgentError):
        agentwire.frame(bytes(agentwire.MAX_REQUEST + 1), agentwire.MAX_REQUEST)


# -- a real agent -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory, softhsm_kit):
    home = tmp_path_factory.mktemp("agent-keys")
    tokencsp("key", "generate", "agent-rx")
    tokencsp("key", "generate", "agent-signer", "--usage", "signature")
    for name in ("agent-rx", "agent-signer"):
        tokencsp("key", "export", name, "-o", str(home / f"{name}.pub"))
    yield home
    for name in ("agent-rx", "agent-signer"):
        tokencsp("key", "delete", name, "--yes", check=False)


class Agent:
    def __init__(self, directory, *extra, env=None):
        directory.mkdir(mode=0o700, exist_ok=True)
        self.socket = str(directory / "agent.sock")
        self.env = {"TOKENCSP_AGENT_SOCK": self.socket, **ON}
        self.process = subprocess.Popen([sys.executable, "-m", "tokencsp", "agent", "--socket", self.socket, *extra],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        while True:
            try:
                self.status()
                return
            except AgentUnavailable:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"agent did not start: {self.process.communicate()}") from None
                time.sleep(0.1)

    def status(self):
        return status_of(self.socket)

    def count(self, op):
        return self.status()["requests"].get(op, 0)

    def run(self, *args, env=None, check=True, input=None):
        return tokencsp(*args, env={**self.env, **(env or {})}, check=check, input=input)

    def stop(self):
        if self.process.poll() is None:
            tokencsp("agent", "stop", "--socket", self.socket, check=False)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.communicate()


@pytest.fixture
def agent(tmp_path, keys):
    running = Agent(tmp_path / "run")
    yield running
    _out, err = running.stop()
    assert b"Traceback" not in err, err


def test_start_status_stop(tmp_path, keys):
    running = Agent(tmp_path / "run")
    status = running.status()
    assert status["pid"] == running.process.pid and status["logged_in"] and status["logins"] == 1
    assert os.stat(running.socket).st_mode & 0o777 == 0o600
    shown = json.loads(tokencsp("agent", "status", "--socket", running.socket).stdout)
    assert shown["token"] == status["token"]
    stopped = tokencsp("agent", "stop", "--socket", running.socket)
    assert f"pid {running.process.pid}" in stopped.stderr.decode()
    assert running.process.wait(30) == 0
    assert not os.path.exists(running.socket)
    err = running.process.communicate()[1].decode()
    assert "listening on" in err and "Traceback" not in err
    assert_one_line_error(tokencsp("agent", "stop", "--socket", running.socket, check=False), 3, "no agent answers")
    # SIGTERM (systemd's stop) ends it cleanly too: logged out, socket removed.
    again = Agent(tmp_path / "run")
    again.process.send_signal(signal.SIGTERM)
    assert again.process.wait(30) == 0
    assert not os.path.exists(again.socket)


def test_doctor_reports_the_agent_it_would_use(tmp_path, keys):
    def agent_line(env):
        result = tokencsp("doctor", "--replay-db", str(tmp_path / "db"), env=env, check=False)
        return [line for line in result.stdout.decode().splitlines() if line.startswith("agent: ")]

    running = Agent(tmp_path / "run")
    try:
        assert agent_line(running.env) == [f"agent: ok: running at {running.socket} (pid {running.process.pid}, "
                                           f"token {running.status()['token']!r}, logged in)"]
        assert agent_line({**running.env, "TOKENCSP_AGENT": "off"})[0].startswith("agent: ok: off (TOKENCSP_AGENT=off")
    finally:
        running.stop()
    gone = agent_line(running.env)
    assert len(gone) == 1 and gone[0].startswith(f"agent: ok: not running (no agent at {running.socket}"), gone


def test_daemon_mode_detaches_and_serves(keys, tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    sock = str(run / "agent.sock")
    started = tokencsp("agent", "--daemon", "--socket", sock)
    assert f"listening on {sock}" in started.stderr.decode()
    pid = status_of(sock)["pid"]
    stopped = False
    try:
        assert pid != os.getpid()
        tokencsp("key", "list", env={"TOKENCSP_AGENT_SOCK": sock, **ON})
        assert status_of(sock)["requests"]["list"] == 1
        tokencsp("agent", "stop", "--socket", sock)
        stopped = True
        assert not os.path.exists(sock)
    finally:  # a failed assertion must not leave a detached agent running after the suite
        if not stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_format_2_message_is_signed_twice_through_the_agent(agent, keys, tmp_path):
    """docs/FORMAT.md 9.5: the prefix signature and the trailer, both by the token key behind the agent;
    the trailer covers the payload, so a changed trailer is refused on stdout with nothing written."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    backup = tmp_path / "backup.pem"  # a second recipient: only agent-rx opens here
    backup.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    before = agent.count("sign")
    sealed = tmp_path / "m2.tcsp"
    agent.run("seal", "--to", str(keys / "agent-rx.pub"), "--to", str(backup), "--sign-with", "agent-signer",
              "-o", str(sealed), input=b"two signatures")
    assert agent.count("sign") == before + 2
    opener = ["open", "--key", "agent-rx", "--trust", str(keys / "agent-signer.pub"), "--replay-db",
              str(tmp_path / "db")]
    bad = tmp_path / "bad.tcsp"
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 1  # the trailer's last byte
    bad.write_bytes(bytes(data))
    assert_one_line_error(agent.run(*opener, str(bad), check=False), 31, "sender signature does not verify")
    opened = agent.run(*opener, str(sealed))  # the refused copy did not spend it
    assert opened.stdout == b"two signatures" and b"signature verified" in opened.stderr


def test_open_batch_capi_key_list_export_and_sign_go_through_the_agent(agent, keys, tmp_path):
    before = agent.status()["requests"]
    sealed = tmp_path / "m.tcsp"
    agent.run("seal", "--to", str(keys / "agent-rx.pub"), "--sign-with", "agent-signer", "-o", str(sealed),
              input=b"through the agent")
    assert agent.count("sign") == before.get("sign", 0) + 1
    opened = agent.run("open", "--key", "agent-rx", "--trust", str(keys / "agent-signer.pub"), "--replay-db",
                       str(tmp_path / "db"), str(sealed))
    assert opened.stdout == b"through the agent" and b"signature verified" in opened.stderr
    assert agent.count("import") == before.get("import", 0) + 1

    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    files = [tmp_path / "in" / f"b{i}.tcsp" for i in range(3)]
    for i, path in enumerate(files):
        agent.run("seal", "--to", str(keys / "agent-rx.pub"), "-o", str(path), input=b"batch %d" % i)
    agent.run("open", "--key", "agent-rx", "--replay-db", str(tmp_path / "db"), "--out-dir", str(tmp_path / "out"),
              *map(str, files))
    assert [(tmp_path / "out" / f"b{i}").read_bytes() for i in range(3)] == [b"batch 0", b"batch 1", b"batch 2"]
    assert agent.count("import") == before.get("import", 0) + 4

    blob, cipher = tmp_path / "k.blob", tmp_path / "c.bin"
    agent.run("capi", "encrypt", "--to", str(keys / "agent-rx.pub"), "--blob-out", str(blob), "-o", str(cipher),
              input=b"capi payload")
    assert agent.run("capi", "decrypt", "--key", "agent-rx", "--blob", str(blob), str(cipher)).stdout == b"capi payload"
    assert agent.count("import") == before.get("import", 0) + 5

    listed = agent.run("key", "list").stdout.decode()
    direct = agent.run("key", "list", env={"TOKENCSP_AGENT": "off"}).stdout.decode()
    assert listed == direct and "agent-rx" in listed
    assert agent.count("list") == before.get("list", 0) + 1
    exported = agent.run("key", "export", "agent-rx", "-o", str(tmp_path / "rx.pub")).returncode == 0
    assert exported and (tmp_path / "rx.pub").read_bytes() == (keys / "agent-rx.pub").read_bytes()


_LOADED = """
import runpy, sys
sys.argv = ["tokencsp"] + sys.argv[1:]
try:
    runpy.run_module("tokencsp", run_name="__main__")
except SystemExit as done:
    code = done.code
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("pkcs11", "asn1crypto", "tokencsp")),
      file=sys.stderr)
sys.exit(code)
"""


def test_open_through_the_agent_loads_no_token_side_module(agent, keys, tmp_path):
    """The client of an open through the agent (docs/PERFORMANCE.md, agent latency): no python-pkcs11, no
    asn1crypto, none of tokencsp's token, provider or deadline modules -- the agent holds all of that."""
    sealed, out = tmp_path / "m.tcsp", tmp_path / "out"
    agent.run("seal", "--to", str(keys / "agent-rx.pub"), "-o", str(sealed), input=b"light client")
    before = agent.count("import")
    result = subprocess.run([sys.executable, "-c", _LOADED, "open", "-q", "--key", "agent-rx", "--replay-db",
                             str(tmp_path / "db"), "-o", str(out), str(sealed)],
                            capture_output=True, env={**os.environ, **agent.env}, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert out.read_bytes() == b"light client" and agent.count("import") == before + 1
    loaded = err[err.index("LOADED"):]
    assert "'tokencsp.agentclient'" in loaded  # it did go through the agent
    for module in ("pkcs11", "asn1crypto", "tokencsp.token", "tokencsp.provider", "tokencsp.implicit",
                   "tokencsp.calibration", "tokencsp.deadline"):
        assert f"'{module}" not in loaded, (module, loaded)


def test_refusals_through_the_agent_are_the_direct_ones(agent, keys, tmp_path):
    """A bad key blob gets the same one line and status through the agent as without it (implicit rejection)."""
    sealed = tmp_path / "m.tcsp"
    agent.run("seal", "--to", str(keys / "agent-rx.pub"), "-o", str(sealed), input=b"x" * 100)
    data = bytearray(sealed.read_bytes())
    from tokencsp import envelope

    with sealed.open("rb") as f:
        pre = envelope.read_header(f)
    at = bytes(data).index(pre.key_blob) + 40  # inside the RSA ciphertext of the key blob
    data[at] ^= 1
    sealed.write_bytes(bytes(data))
    blob, cipher = tmp_path / "k.blob", tmp_path / "c.bin"
    agent.run("capi", "encrypt", "--to", str(keys / "agent-rx.pub"), "--blob-out", str(blob), "-o", str(cipher),
              input=b"capi payload")
    bad = bytearray(blob.read_bytes())
    bad[-20] ^= 1
    blob.write_bytes(bytes(bad))
    before = agent.count("import")
    results = {}
    for mode in ("on", "off"):
        env = {"TOKENCSP_AGENT": mode}
        results[mode] = (
            assert_one_line_error(agent.run("open", "--key", "agent-rx", "--replay-db", str(tmp_path / f"db{mode}"),
                                            "-o", str(tmp_path / "o"), str(sealed), env=env, check=False), 10),
            agent.run("capi", "decrypt", "--key", "agent-rx", "--blob", str(blob), "-o", str(tmp_path / "p"),
                      str(cipher), env=env, check=False))
    assert results["on"][0] == results["off"][0]
    # A bad CryptoAPI blob decrypts with its substitute like any wrong key: the one DecryptionError,
    # or (when the CBC padding happens to be valid) garbage, through the agent as without it.
    failures = [r for r in (results["on"][1], results["off"][1]) if r.returncode != 0]
    assert all(r.returncode == 4 for r in failures)
    assert len({r.stderr for r in failures}) <= 1
    assert agent.count("import") == before + 2  # the two "on" runs, and only those, used the agent
    assert not (tmp_path / "o").exists()


def test_a_key_named_by_id_alone_goes_through_the_agent(agent, keys, tmp_path):
    """``--uri pkcs11:token=T;id=%..`` (no object=, no --key) selects the key through the agent as it does
    directly: key list and export, open and capi decrypt use the agent (its request counts grow), and a
    missing id or an object=/id= pair naming two keys is the direct path's line and status."""
    infos = {k["name"]: k for k in json.loads(agent.run("key", "list", "--json", env={"TOKENCSP_AGENT": "off"}).stdout)}
    token = agent.status()["token"]
    rx_id, signer_id = ("".join(f"%{b:02x}" for b in bytes.fromhex(infos[n]["id"])) for n in ("agent-rx", "agent-signer"))
    by_id = f"pkcs11:token={token};id={rx_id}"

    before = agent.status()["requests"]
    listed = agent.run("key", "list", "--json", "--uri", by_id).stdout
    assert [k["name"] for k in json.loads(listed)] == ["agent-rx"]
    assert listed == agent.run("key", "list", "--json", "--uri", by_id, env={"TOKENCSP_AGENT": "off"}).stdout
    agent.run("key", "export", "--uri", by_id, "-o", str(tmp_path / "rx.pub"))
    assert (tmp_path / "rx.pub").read_bytes() == (keys / "agent-rx.pub").read_bytes()
    assert agent.count("public") == before.get("public", 0) + 1

    sealed = tmp_path / "m.tcsp"
    agent.run("seal", "--to", str(keys / "agent-rx.pub"), "-o", str(sealed), input=b"chosen by id")
    opened = agent.run("open", "--uri", by_id, "--replay-db", str(tmp_path / "db"), str(sealed))
    assert opened.stdout == b"chosen by id"
    blob, cipher = tmp_path / "k.blob", tmp_path / "c.bin"
    agent.run("capi", "encrypt", "--to", str(keys / "agent-rx.pub"), "--blob-out", str(blob), "-o", str(cipher),
              input=b"capi by id")
    assert agent.run("capi", "decrypt", "--uri", by_id, "--blob", str(blob), str(cipher)).stdout == b"capi by id"
    assert agent.count("import") == before.get("import", 0) + 2  # both imports were the agent's

    for uri, status, needle, hint in (
            (f"pkcs11:token={token};id=%00%01", 3, "no private key id 0001", "key list"),
            (f"pkcs11:token={token};object=agent-rx;id={signer_id}", 2, "key 'agent-rx' has id", None)):
        through = agent.run("key", "export", "--uri", uri, "-o", str(tmp_path / "x"), check=False)
        direct = agent.run("key", "export", "--uri", uri, "-o", str(tmp_path / "x"), check=False,
                           env={"TOKENCSP_AGENT": "off"})
        assert_one_line_error(through, status, needle, hint=hint)
        assert (through.returncode, through.stderr) == (direct.returncode, direct.stderr)
    assert agent.count("list") > before.get("list", 0) + 1  # the id was looked up in the agent's key list


def test_a_uri_the_agent_cannot_confirm_opens_the_token_itself(agent, keys, tmp_path):
    """``slot-id=``/``model=``/``manufacturer=`` with ``id=``: STATUS cannot confirm them, so the command never
    takes key id X on the agent's token for the one on the token the URI names: it opens the token itself,
    with the direct path's outcome (here: no such slot or token), and the agent sees no key request."""
    infos = {k["name"]: k for k in json.loads(agent.run("key", "list", "--json", env={"TOKENCSP_AGENT": "off"}).stdout)}
    rx_id = "".join(f"%{b:02x}" for b in bytes.fromhex(infos["agent-rx"]["id"]))
    token = agent.status()["token"]
    before = agent.status()["requests"]
    for uri in (f"pkcs11:slot-id=987654;id={rx_id}", f"pkcs11:model=no-such-model;id={rx_id}",
                f"pkcs11:token={token};manufacturer=no-such-maker;id={rx_id}"):
        through = agent.run("key", "export", "--uri", uri, "-o", str(tmp_path / "x"), check=False)
        direct = agent.run("key", "export", "--uri", uri, "-o", str(tmp_path / "x"), check=False,
                           env={"TOKENCSP_AGENT": "off"})
        assert through.returncode != 0 and not (tmp_path / "x").exists(), (uri, through)
        assert (through.returncode, through.stderr) == (direct.returncode, direct.stderr), uri
    after = agent.status()["requests"]
    assert all(after.get(op, 0) == before.get(op, 0) for op in ("list", "public", "import")), (before, after)


def test_tokencsp_agent_off_and_a_missing_key_through_the_agent(agent, keys, tmp_path):
    before = agent.status()["requests"]
    agent.run("key", "list", env={"TOKENCSP_AGENT": "off"})
    assert agent.status()["requests"].get("list", 0) == before.get("list", 0)
    missing = agent.run("key", "export", "no-such-key", "-o", str(tmp_path / "x"), check=False)
    direct = agent.run("key", "export", "no-such-key", "-o", str(tmp_path / "x"), env={"TOKENCSP_AGENT": "off"},
                       check=False)
    assert_one_line_error(missing, 3, "no-such-key", hint="key list")
    assert (missing.returncode, missing.stderr) == (direct.returncode, direct.stderr)


def test_fallback_when_the_socket_is_gone_or_stale(keys, tmp_path):
    run = tmp_path / "run"
    env = {"TOKENCSP_AGENT_SOCK": str(run / "agent.sock"), **ON}
    assert tokencsp("key", "list", env=env).returncode == 0  # no directory, no socket: direct
    running = Agent(run)
    running.process.send_signal(signal.SIGKILL)
    running.process.wait()
    assert os.path.exists(running.socket)  # stale: nobody listens
    listed = tokencsp("-v", "key", "list", env=env)
    assert b"agent-rx" in listed.stdout and b"opening the token directly" in listed.stderr
    again = Agent(run)  # a new agent replaces the stale socket
    try:
        tokencsp("key", "list", env=env)
        assert again.count("list") == 1
    finally:
        again.stop()


def test_a_socket_directory_open_to_others_is_refused(keys, tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    result = tokencsp("agent", "--socket", str(run / "agent.sock"), check=False)
    assert_one_line_error(result, 3, "open to other users")
    assert not (run / "agent.sock").exists()
    # A client does not talk to a live agent whose directory was opened up afterwards.
    os.chmod(run, 0o700)
    running = Agent(run)
    try:
        os.chmod(run, 0o755)
        listed = tokencsp("-v", "key", "list", env=running.env)
        assert b"open to other users" in listed.stderr and b"agent-rx" in listed.stdout
        os.chmod(run, 0o700)
        assert running.count("list") == 0
    finally:
        os.chmod(run, 0o700)
        running.stop()


@pytest.fixture
def reachable_agent(keys):
    """An agent in a directory right under /tmp, which uid nobody can traverse (pytest's tmp_path is 0700)."""
    import pathlib
    import shutil
    import tempfile

    base = pathlib.Path(tempfile.mkdtemp(prefix="tokencsp-agent-", dir="/tmp"))
    running = Agent(base / "run")
    yield running
    running.stop()
    shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child under another uid")
def test_a_different_uid_is_refused(reachable_agent):
    agent = reachable_agent
    # Let uid nobody reach the socket at all, so that only the agent's SO_PEERCRED check stands in the way.
    os.chmod(os.path.dirname(os.path.dirname(agent.socket)), 0o711)
    os.chmod(os.path.dirname(agent.socket), 0o711)
    os.chmod(agent.socket, 0o666)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(agent.socket)
            sock.sendall(agentwire.frame(agentwire.encode(agentwire.Op.LIST), agentwire.MAX_REQUEST))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            os.write(writer, data)
        except BaseException as exc:  # noqa: BLE001 -- reported to the parent
            os.write(writer, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    os.chmod(os.path.dirname(agent.socket), 0o700)
    os.chmod(agent.socket, 0o600)
    assert not answer.startswith(b"child failed"), answer
    bodies = agentwire.FrameReader(agentwire.MAX_RESPONSE).feed(answer)
    assert len(bodies) == 1, answer
    message = agentwire.decode(bodies[0], agentwire.Kind)
    assert message.code is agentwire.Kind.ERROR and b"another uid" in message.fields[1]
    assert agent.count("list") == 0  # the request was never read


def test_pin_held_for_ttl_then_asked_once(keys, tmp_path):
    running = Agent(tmp_path / "run", "--ttl", "3s")
    try:
        sealed = tmp_path / "m.tcsp"
        tokencsp("seal", "--to", str(keys / "agent-rx.pub"), "-o", str(sealed), input=b"ttl")
        no_pin = {k: v for k, v in os.environ.items() if k != "TOKENCSP_PIN"}
        no_pin.update(running.env)

        def run(*args, pin=None):
            env = dict(no_pin, **({"TOKENCSP_PIN": pin} if pin else {}))
            return subprocess.run([sys.executable, "-m", "tokencsp", *args], env=env, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=300)
        # Within the ttl no PIN is needed: the agent holds the login.
        assert run("key", "list").returncode == 0
        deadline = time.monotonic() + 60
        while running.status()["logged_in"]:
            assert time.monotonic() < deadline, "the login did not expire"
            time.sleep(0.2)
        assert_one_line_error(run("key", "list"), 3, "PIN")  # no PIN anywhere, no terminal
        wrong = run("key", "list", pin="99999999")  # a wrong PIN does not log the agent in
        err = wrong.stderr.decode()
        assert wrong.returncode == 3 and "Traceback" not in err, err
        assert err.startswith("tokencsp: error: ") and "PIN" in err.splitlines()[0], err
        assert not running.status()["logged_in"]
        opened = run("open", "--key", "agent-rx", "--replay-db", str(tmp_path / "db"), str(sealed),
                     pin=os.environ["TOKENCSP_PIN"])
        assert opened.returncode == 0 and opened.stdout == b"ttl", opened.stderr
        status = running.status()
        assert status["logged_in"] and status["logins"] == 2
        assert run("key", "list").returncode == 0  # held again: no PIN needed
    finally:
        running.stop()


def test_an_agent_that_breaks_during_an_import_is_a_token_error_not_a_bad_message(agent, keys, tmp_path):
    """A relay that forwards to the real agent but drops the connection on IMPORT: the open fails as the
    token's problem (exit 3), never as a tampered message (exit 10), and writes nothing."""
    import threading

    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(mode=0o700)
    relay_path = str(relay_dir / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(relay_path)
    server.listen(4)

    def relay(client):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(agent.socket)
        requests, responses = agentwire.FrameReader(agentwire.MAX_REQUEST), agentwire.FrameReader(agentwire.MAX_RESPONSE)
        with client, upstream:
            while data := client.recv(65536):
                for body in requests.feed(data):
                    if agentwire.decode(body, agentwire.Op).code is agentwire.Op.IMPORT:
                        return  # the agent "dies" in the middle of the import
                    upstream.sendall(agentwire.frame(body, agentwire.MAX_REQUEST))
                    answer = []
                    while not answer:
                        answer = responses.feed(upstream.recv(65536))
                    client.sendall(agentwire.frame(answer[0], agentwire.MAX_RESPONSE))

    def accept():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        sealed = tmp_path / "m.tcsp"
        agent.run("seal", "--to", str(keys / "agent-rx.pub"), "-o", str(sealed), input=b"x")
        result = tokencsp("open", "--key", "agent-rx", "--replay-db", str(tmp_path / "db"), "-o",
                          str(tmp_path / "out"), str(sealed), env={"TOKENCSP_AGENT_SOCK": relay_path, **ON},
                          check=False)
        assert_one_line_error(result, 3, "agent")
        assert not (tmp_path / "out").exists()
    finally:
        server.close()
