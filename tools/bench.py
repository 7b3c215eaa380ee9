"""``make bench``: tokencsp side by side with its peers and its floors, on a throwaway SoftHSM token.

One run measures, with alternating runs, medians and per-round ratios
(tools/bench_lib.py), and prints one table:

- token import rate vs a bare python-pkcs11 C_UnwrapKey + read + destroy loop
  (1, 2, 4 threads; 2 processes);
- seal/open file to file (1 KiB, 64 MiB, 512 MiB) vs age, gpg -z 0, openssl cms
  with a key on the same token, and cp (the I/O floor), peak RSS of each;
- seal/open in process vs cryptography's raw AES-GCM (the crypto floor);
- CryptEncrypt/CryptDecrypt vs raw AES-CBC on the same buffers;
- whole-process latency of ``tokencsp open`` of 1 KiB vs ``python -c pass``, age, gpg;
- batch opens and opens through ``tokencsp agent`` (when the CLI has them);
- three-phase handshakes/s over loopback vs the RSA operations each needs.

It writes bench/results/<date>.json and the figures block of docs/PERFORMANCE.md
(and docs/performance-ratios.png with the optional matplotlib).  ``--quick`` is
for iterating, ``--tiny`` for the test that checks this code runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import Row, Run, alternate, rate_rows, run_child, time_call
from bench_peers import Peers, ensure_installed, present, versions

if TYPE_CHECKING:
    from tokencsp.provider import ExchangeKey, Provider
    from tokencsp.testing import SoftHSMKit

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "bench_worker.py"
TOKEN_LABEL = "tokencsp-bench"
KX = "bench-kx"  # the receiver's exchange key, made by `tokencsp key generate`
KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Mode:
    name: str
    imports: int  # blobs per import measurement
    import_rounds: int
    sizes: tuple[tuple[int, int], ...]  # (bytes, rounds) file to file
    null_size: int  # the size also measured with output to /dev/null
    inproc: int  # bytes for seal/open in process and CBC
    inproc_rounds: int
    latency_rounds: int
    batch: int  # messages in one batch open
    handshakes: int  # per round
    handshake_rounds: int


MODES = {
    "full": Mode("full", 300, 3, ((KIB, 7), (64 * MIB, 3), (512 * MIB, 3)), 512 * MIB, 256 * MIB, 5, 11, 600, 20, 3),
    "quick": Mode("quick", 60, 2, ((KIB, 3), (16 * MIB, 2)), 16 * MIB, 32 * MIB, 3, 4, 60, 4, 2),
    "tiny": Mode("tiny", 4, 1, ((KIB, 1),), KIB, MIB, 1, 1, 3, 1, 1),
}

PEERS = ("age", "gpg", "openssl cms", "cp")


def _size_name(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class Bench:
    def __init__(self, mode: Mode, scratch: Path, kit: SoftHSMKit, log: Callable[[str], None]) -> None:
        self.mode, self.scratch, self.kit, self.log = mode, scratch, kit, log
        self.rows: list[Row] = []
        self.env = dict(os.environ, **kit.environ(), XDG_STATE_HOME=str(scratch / "state"),
                        TOKENCSP_REPLAY_DB=str(scratch / "replay.sqlite3"))
        self.env.pop("TOKENCSP_AGENT_SOCK", None)
        self.env["TOKENCSP_AGENT"] = "off"  # cold rows never reach an agent; the agent row sets its own
        exe = Path(sys.executable).with_name("tokencsp")
        self.tokencsp = [str(exe)] if exe.exists() else [sys.executable, "-m", "tokencsp"]
        self.pub = scratch / "kx.pub"
        self._counter = 0
        self._agent: subprocess.Popen[bytes] | None = None

    # -- helpers ---------------------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.tokencsp, *args], env=env or self.env, check=True, capture_output=True)

    def seal_many(self, plain: Path, paths: list[Path]) -> None:
        """Seal ``plain`` to the bench key once per path, in this process: the CLI would spend a
        process start on each of hundreds of inputs (what is measured is their opening)."""
        from tokencsp import envelope
        from tokencsp.pubkeys import load_public_key

        public = load_public_key(self.pub.read_bytes())
        data = plain.read_bytes()
        for path in paths:
            path.write_bytes(envelope.seal_bytes(data, public))

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return str(self.scratch / f"{stem}-{self._counter}")

    def add(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        for row in rows:
            self.log(format_row(row))

    def setup(self) -> None:
        self.cli("key", "generate", KX)
        self.cli("key", "export", KX, "-o", str(self.pub))
        # The first open on a key calibrates its deadline and caches it in the state dir: do it
        # here, so every measured process starts as a receiver's second and later opens do.
        probe = self.scratch / "probe"
        probe.write_bytes(b"x")
        self.cli("seal", "--to", str(self.pub), "-o", f"{probe}.tcsp", str(probe))
        self.cli("open", "-q", "--key", KX, "-o", f"{probe}.out", f"{probe}.tcsp")

    # -- token import rate -----------------------------------------------------------

    def _workers(self, args: list[list[str]]) -> Run:
        """Start one worker per argument list, release them together, the slowest one's seconds."""
        children = [subprocess.Popen([sys.executable, str(WORKER), *a], env=self.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True) for a in args]
        try:
            for child in children:
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("a bench worker did not start")
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            seconds = []
            for child in children:
                out, _ = child.communicate(timeout=900)
                if child.returncode:
                    raise RuntimeError(f"a bench worker exited {child.returncode}")
                seconds.append(json.loads(out.strip().splitlines()[-1])["seconds"])
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
        return Run(max(seconds))

    def imports(self) -> None:
        n = self.mode.imports
        self._workers([["tokencsp", KX, "2", "1"]])  # warm the page cache and the state dir
        self.log(f"token imports: {n} OAEP blobs per run, {self.mode.import_rounds} rounds")
        contenders: dict[str, Callable[[int], Run]] = {
            "bare python-pkcs11, 1 thread": lambda _: self._workers([["bare", KX, str(n)]]),
            "tokencsp, 1 thread": lambda _: self._workers([["tokencsp", KX, str(n), "1"]]),
            "tokencsp, 2 threads": lambda _: self._workers([["tokencsp", KX, str(n), "2"]]),
            "tokencsp, 4 threads": lambda _: self._workers([["tokencsp", KX, str(n), "4"]]),
            "tokencsp, 2 processes": lambda _: self._workers([["tokencsp", KX, str(n // 2), "1"]] * 2),
            "bare python-pkcs11, 2 processes": lambda _: self._workers([["bare", KX, str(n // 2)]] * 2),
        }
        runs = alternate(contenders, self.mode.import_rounds)
        self.add(rate_rows("imports", "SIMPLEBLOB import (OAEP)", runs, amount=n, unit="ops/s",
                           subject="tokencsp, 1 thread", against="bare python-pkcs11, 1 thread"))

    # -- seal / open, file to file ---------------------------------------------------

    def _tokencsp_seal(self, src: str, dst: str) -> tuple[list[str], dict[str, str]]:
        return [*self.tokencsp, "seal", "-q", "--to", str(self.pub), "-o", dst, src], self.env

    def _tokencsp_open(self, src: str, dst: str) -> tuple[list[str], dict[str, str]]:
        if dst == os.devnull:  # -o renames a temporary file into place: /dev/null is stdout's job
            return [*self.tokencsp, "open", "-q", "--key", KX, src], self.env
        return [*self.tokencsp, "open", "-q", "--key", KX, "-o", dst, src], self.env

    def files(self, peers: Peers) -> None:
        tools = ["tokencsp", *[tool for tool in PEERS if peers.seal(tool, "a", "b") is not None]]
        for size, rounds in self.mode.sizes:
            self._files(peers, tools, size, rounds, null=False)
            if size == self.mode.null_size:
                self._files(peers, [tool for tool in tools if tool in ("tokencsp", "age")], size, rounds, null=True)

    def _files(self, peers: Peers, tools: list[str], size: int, rounds: int, null: bool) -> None:
        plain = self.scratch / f"plain-{size}"
        if not plain.exists():
            with plain.open("wb") as out:
                for _ in range(max(1, size // (16 * MIB))):
                    out.write(os.urandom(min(size, 16 * MIB)))
        where = "to /dev/null" if null else "file to file"
        self.log(f"seal/open {_size_name(size)} {where}: {', '.join(tools)}; {rounds} rounds")
        seals: dict[str, list[Run]] = {tool: [] for tool in tools}
        opens: dict[str, list[Run]] = {tool: [] for tool in tools}
        for index in range(rounds):
            shift = index % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                sealed, opened = self.fresh(f"sealed-{tool.replace(' ', '_')}"), self.fresh("opened")
                seal = self._tokencsp_seal if tool == "tokencsp" else lambda s, d, t=tool: peers.seal(t, s, d)
                opener = self._tokencsp_open if tool == "tokencsp" else lambda s, d, t=tool: peers.open(t, s, d)
                argv, env = cast(tuple[list[str], dict[str, str]], seal(str(plain), sealed))
                seals[tool].append(run_child(argv, env=env, rss=True))
                sink = os.devnull if null else opened
                argv, env = cast(tuple[list[str], dict[str, str]], opener(sealed, sink))
                stdout = os.devnull if null and tool == "tokencsp" else None
                opens[tool].append(run_child(argv, env=env, stdout=stdout, rss=True))
                if not null and Path(opened).stat().st_size != size:
                    raise RuntimeError(f"{tool} opened {Path(opened).stat().st_size} bytes of {size}")
                for path in (sealed, opened):
                    Path(path).unlink(missing_ok=True)
        label = f"{_size_name(size)} {where}"
        unit = "MB/s" if size >= MIB else "ms"  # a small file measures start-up, not throughput
        self.add(rate_rows("files", f"seal {label}", seals, amount=size, unit=unit, subject="tokencsp"))
        self.add(rate_rows("files", f"open {label}", opens, amount=size, unit=unit, subject="tokencsp"))

    # -- in process: envelope vs raw AES-GCM, CryptEncrypt vs raw CBC --------------------

    def in_process(self, provider: Provider) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from tokencsp import envelope
        from tokencsp.replay import MemoryReplayCache

        size = self.mode.inproc
        data = os.urandom(size)
        receiver = provider.exchange_key(KX)
        public = receiver.public_key()
        sealed = [envelope.seal_bytes(data, public) for _ in range(self.mode.inproc_rounds)]
        imported = _Imported(receiver, sealed)
        aead, nonce, ad = AESGCM(AESGCM.generate_key(256)), os.urandom(12), os.urandom(32)
        chunk = envelope.DEFAULT_CHUNK_SIZE

        def raw_gcm(_: int) -> Run:
            view = memoryview(data)

            def loop() -> None:
                for offset in range(0, size, chunk):
                    aead.encrypt(nonce, view[offset:offset + chunk], ad)
            return time_call(loop)

        def seal(_: int) -> Run:
            return time_call(lambda: envelope.seal(io.BytesIO(data), cast(BinaryIO, _Discard()), public))

        def open_(index: int) -> Run:
            return time_call(lambda: envelope.open_message(io.BytesIO(sealed[index]), cast(BinaryIO, _Discard()),
                                                           receiver, cache=MemoryReplayCache()))

        def open_payload(index: int) -> Run:
            return time_call(lambda: envelope.open_message(io.BytesIO(sealed[index]), cast(BinaryIO, _Discard()),
                                                           imported, cache=MemoryReplayCache()))

        self.log(f"in process: {_size_name(size)} in memory, {self.mode.inproc_rounds} rounds")
        runs = alternate({"seal": seal, "open": open_, "open, key already imported": open_payload,
                          "raw AES-GCM encrypt": raw_gcm}, self.mode.inproc_rounds, warmup=True)
        self.add(rate_rows("in process", f"sealed message {_size_name(size)}, 64 KiB chunks", runs, amount=size,
                           unit="MB/s", subject="seal", against="seal"))
        self.add([row for row in rate_rows("in process", f"sealed message {_size_name(size)}, 64 KiB chunks",
                                           runs, amount=size, unit="MB/s", subject="seal",
                                           against="raw AES-GCM encrypt")
                  if row.contender == "seal"])
        self.cbc(min(size, 64 * MIB))

    def cbc(self, size: int) -> None:
        for alg in ("aes256", "aes128", "3des"):  # 3DES runs at a few % of AES: a sixteenth of the bytes
            self._cbc(alg, size if alg != "3des" else max(KIB, size // 16))

    def _cbc(self, alg: str, n: int) -> None:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

        from tokencsp.session import SessionKey

        data = os.urandom(n)
        key = SessionKey.generate(alg)
        raw_key = bytes(key.key)
        ciphertext = bytes(key.encrypt(data))
        body = ciphertext[:n]  # the whole blocks the raw cipher gets (no padding)
        raw_name = "raw 3DES-CBC" if alg == "3des" else "raw AES-CBC"

        def raw(encrypt: bool, into: bool = False) -> Callable[[int], Run]:
            source = data if encrypt else body
            out = bytearray(len(source) + key.block_size - 1) if into else None

            def go(_: int) -> Run:
                algorithm: BlockCipherAlgorithm = TripleDES(raw_key) if alg == "3des" else algorithms.AES(raw_key)
                cipher = Cipher(algorithm, modes.CBC(bytes(key.block_size)))
                ctx = cipher.encryptor() if encrypt else cipher.decryptor()
                if out is not None:
                    return time_call(lambda: ctx.update_into(source, out))
                return time_call(lambda: ctx.update(source) + ctx.finalize())
            return go

        # The floor the goal names is cryptography's plain update(); update_into a buffer
        # allocated once, outside the timing, is the lower one a caller reusing buffers gets.
        reused = "into a reused buffer"
        runs = alternate({
            "CryptEncrypt": lambda _: time_call(lambda: key.encrypt(data)),
            f"{raw_name} encrypt": raw(True),
            f"{raw_name} encrypt {reused}": raw(True, into=True),
            "CryptDecrypt": lambda _: time_call(lambda: key.decrypt(ciphertext)),
            f"{raw_name} decrypt": raw(False),
            f"{raw_name} decrypt {reused}": raw(False, into=True),
        }, self.mode.inproc_rounds, warmup=True)
        names = list(runs)
        op = f"{alg} {_size_name(n)} in one call"
        for first, subject in ((0, "CryptEncrypt"), (3, "CryptDecrypt")):
            mine = {name: runs[name] for name in names[first:first + 3]}
            self.add(rate_rows("capi", op, mine, amount=n, unit="MB/s", subject=subject))

    # -- whole-process latency -------------------------------------------------------

    def latency(self, peers: Peers) -> None:
        rounds = self.mode.latency_rounds
        plain = self.scratch / "plain-latency"
        plain.write_bytes(os.urandom(KIB))
        # Every open needs its own message: the replay cache remembers.
        sealed = [self.scratch / f"latency-{index}.tcsp" for index in range(rounds)]
        self.seal_many(plain, sealed)
        peer_inputs: dict[str, str] = {}
        for tool in ("age", "gpg", "openssl cms"):
            made = peers.seal(tool, str(plain), str(self.scratch / f"latency.{tool.replace(' ', '_')}"))
            if made is not None:
                run_child(made[0], env=made[1])
                peer_inputs[tool] = str(self.scratch / f"latency.{tool.replace(' ', '_')}")
        out = self.scratch / "latency-out"
        contenders: dict[str, Callable[[int], Run]] = {
            "tokencsp open (cold)": lambda i: run_child(self._tokencsp_open(str(sealed[i]), str(out))[0], env=self.env),
            "python -c pass": lambda _: run_child([sys.executable, "-c", "pass"], env=self.env),
            "tokencsp --version": lambda _: run_child([*self.tokencsp, "--version"], env=self.env),
        }
        for tool, path in peer_inputs.items():
            argv, env = cast(tuple[list[str], dict[str, str]], peers.open(tool, path, str(out)))
            contenders[f"{tool} decrypt"] = _child(argv, env)
        agent = self.agent_contender(sealed, out)
        if agent is not None:
            contenders["tokencsp open (agent)"] = agent
        self.log(f"latency: 1 KiB, whole process, {rounds} rounds")
        runs = alternate(contenders, rounds)
        self.add(rate_rows("latency", "open 1 KiB, whole process", runs, amount=1, unit="ms",
                           subject="tokencsp open (cold)", against="python -c pass"))
        self.stop_agent()

    # -- where a cold open's time goes: python -X importtime ----------------------------

    def profile(self) -> None:
        """Import time per top-level package of ``tokencsp open`` (1 KiB, cold), median of rounds.

        Self times summed per package (the stdlib's modules each under their own name,
        small ones folded into "other"), next to the whole process's wall time.
        """
        rounds = max(3, self.mode.latency_rounds // 2)
        plain = self.scratch / "plain-latency"
        per_round: list[dict[str, float]] = []
        for index in range(rounds):
            sealed = self.scratch / f"profile-{index}.tcsp"
            self.seal_many(plain, [sealed])
            argv = [sys.executable, "-X", "importtime", "-m", "tokencsp", "open", "-q", "--key", KX,
                    "-o", str(self.scratch / "profile-out"), str(sealed)]
            start = time.perf_counter()
            done = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True)
            wall = (time.perf_counter() - start) * 1e3
            totals: dict[str, float] = {"(process wall time)": wall}
            for line in done.stderr.splitlines():
                if not line.startswith("import time:") or "self [us]" in line:
                    continue
                own, _, name = line.split(":", 1)[1].split("|")
                top = name.strip().split(".")[0]
                totals[top] = totals.get(top, 0.0) + int(own) / 1e3
                totals["(all imports)"] = totals.get("(all imports)", 0.0) + int(own) / 1e3
            per_round.append(totals)
        names = {name for totals in per_round for name in totals}
        medians = {name: statistics.median(t.get(name, 0.0) for t in per_round) for name in names}
        big = sorted((n for n in medians if not n.startswith("(")), key=medians.__getitem__, reverse=True)
        shown = [n for n in big if medians[n] >= 0.02 * medians["(all imports)"]][:12]
        rows = []
        for name in ["(process wall time)", "(all imports)", *shown]:
            rows.append(Row("profile", "tokencsp open 1 KiB: -X importtime self time", name, "ms", medians[name],
                            rounds=rounds))
        other = medians["(all imports)"] - sum(medians[n] for n in shown)
        rows.append(Row("profile", "tokencsp open 1 KiB: -X importtime self time", "(other modules)", "ms", other,
                        rounds=rounds))
        self.add(rows)

    # -- H-agent's commands: filled in when they are on main ----------------------------

    def agent_contender(self, sealed: list[Path], out: Path) -> Callable[[int], Run] | None:
        """The latency row through ``tokencsp agent`` (issue 13 point 3), once the CLI has it.

        Starts the agent on a socket in the scratch dir and returns a contender that opens
        the same messages as the cold row with TOKENCSP_AGENT_SOCK set.  Returns None
        (no row) while the command does not exist.
        """
        if not _cli_has(self.tokencsp, ["agent", "--help"], "--socket"):
            self.log("  (no `tokencsp agent` in this tree: no agent row)")
            return None
        socket_dir = Path(tempfile.mkdtemp(prefix="tcsp-agent-"))
        socket_dir.chmod(0o700)
        sock = socket_dir / "agent.sock"
        env = dict(self.env, TOKENCSP_AGENT_SOCK=str(sock))
        env.pop("TOKENCSP_AGENT", None)
        self._agent = subprocess.Popen([*self.tokencsp, "agent", "--socket", str(sock)], env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while subprocess.run([*self.tokencsp, "agent", "status"], env=env, capture_output=True).returncode:
            if time.monotonic() > deadline or self._agent.poll() is not None:
                self.log("  (`tokencsp agent` did not come up: no agent row)")
                self.stop_agent()
                return None
            time.sleep(0.2)
        agent_sealed = [self.scratch / f"agent-{i}.tcsp" for i in range(len(sealed))]
        self.seal_many(self.scratch / "plain-latency", agent_sealed)
        return lambda i: run_child(self._tokencsp_open(str(agent_sealed[i]), str(out))[0], env=env)

    def stop_agent(self) -> None:
        agent = self._agent
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
        self._agent = None

    def batch(self) -> None:
        """``tokencsp open --out-dir DIR FILE...`` (issue 13 point 4) vs the bare unwrap loop, once the CLI has it."""
        if not _cli_has(self.tokencsp, ["open", "--help"], "--out-dir"):
            self.log("batch: no `open --out-dir` in this tree: no batch row")
            return
        n = self.mode.batch
        plain = self.scratch / "plain-latency"
        if not plain.exists():
            plain.write_bytes(os.urandom(KIB))
        self.log(f"batch: {n} x 1 KiB in one process vs the bare unwrap loop, {self.mode.import_rounds} rounds")
        inputs: list[list[str]] = []
        for index in range(self.mode.import_rounds):
            folder = self.scratch / f"batch-in-{index}"
            folder.mkdir()
            paths = [folder / f"m{k}.tcsp" for k in range(n)]
            self.seal_many(plain, paths)
            inputs.append([str(path) for path in paths])

        def batch(index: int) -> Run:
            out = self.scratch / f"batch-out-{index}"
            out.mkdir()
            return run_child([*self.tokencsp, "open", "-q", "--key", KX, "--out-dir", str(out), *inputs[index]],
                             env=self.env)

        runs = alternate({"tokencsp open --out-dir": batch,
                          "bare python-pkcs11, 1 thread": lambda _: self._workers([["bare", KX, str(n)]])},
                         self.mode.import_rounds)
        self.add(rate_rows("batch", f"open {n} x 1 KiB in one process", runs, amount=n, unit="ops/s",
                           subject="tokencsp open --out-dir", against="bare python-pkcs11, 1 thread"))

    # -- three-phase handshakes ------------------------------------------------------

    def handshakes(self, provider: Provider) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        from tokencsp.admission import AdmissionPolicy
        from tokencsp.net import NetConfig, Receiver, send_files
        from tokencsp.trust import TrustSet

        n = self.mode.handshakes
        alice, bob = provider.generate_exchange_key("bench-alice"), provider.generate_exchange_key("bench-bob")
        pubs = {"alice": alice.public_key(), "bob": bob.public_key()}
        trust = TrustSet(pubs)
        # The admission limits guard a listener against strangers; here they would only measure themselves.
        config = NetConfig(admission=AdmissionPolicy(per_source=64, per_source_rate=1e9, total_rate=1e9))
        empty = self.scratch / "handshake.bin"
        empty.write_bytes(b"")
        out = self.scratch / "handshake-out"
        out.mkdir()

        async def sessions(count: int) -> None:
            receiver = Receiver(bob, trust, str(out), name="bob", config=config, local_public=pubs["bob"])
            async with receiver:
                _, port = await receiver.start()
                for _ in range(count):
                    await send_files(alice, trust, "bob", "127.0.0.1", port, [str(empty)], name="alice",
                                     config=config, local_public=pubs["alice"])

        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)

        def floor(_: int) -> Run:
            # Per handshake: two OAEP encryptions on the host, two unwraps on the token.
            start = time.perf_counter()
            for _ in range(2 * n):
                pubs["bob"].encrypt(os.urandom(32), oaep)
            host = time.perf_counter() - start
            return Run(host + self._workers([["bare", KX, str(2 * n)]]).seconds)

        self.log(f"three-phase: {n} handshakes (one empty file each) per round, {self.mode.handshake_rounds} rounds")
        asyncio.run(sessions(1))  # the two new keys calibrate their deadlines (cached per key) here
        runs = alternate({"tokencsp handshake": lambda _: time_call(lambda: asyncio.run(sessions(n))),
                          "RSA floor (2 host OAEP encrypts + 2 bare unwraps)": floor}, self.mode.handshake_rounds)
        self.add(rate_rows("three-phase", "handshakes over loopback", runs, amount=n, unit="ops/s",
                           subject="tokencsp handshake", against="RSA floor (2 host OAEP encrypts + 2 bare unwraps)"))
        for name in ("bench-alice", "bench-bob"):
            provider.delete_key(name)


class _Imported:
    """A receiver whose key import already happened: the payload path alone (what an agent sees)."""

    def __init__(self, receiver: ExchangeKey, sealed: list[bytes]) -> None:
        from tokencsp import envelope

        self._public = receiver.public_key()
        self._keys: dict[bytes, Any] = {}
        for message in sealed:
            pre = envelope.read_header(io.BytesIO(message))
            assert isinstance(pre, envelope.Preamble)  # the benchmark seals to one recipient: format 1
            self._keys[pre.key_blob] = receiver.import_simpleblob(pre.key_blob, oaep=pre.header.oaep).key

    def public_key(self) -> Any:
        return self._public

    def import_simpleblob(self, blob: bytes, oaep: bool = False) -> Any:
        from tokencsp.session import SessionKey

        return SessionKey.from_bytes("aes256", self._keys[blob])


def _deadlines(state: Path) -> list[float]:
    """The padded-import deadlines the bench's keys calibrated (tokencsp.calibration's cache files)."""
    found = []
    for path in sorted(state.glob("tokencsp/deadlines/*.json")):
        try:
            found.append(round(float(json.loads(path.read_text())["deadline"]) * 1e3, 2))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _child(argv: list[str], env: dict[str, str]) -> Callable[[int], Run]:
    return lambda _: run_child(argv, env=env)


def _cli_has(tokencsp: list[str], args: list[str], word: str) -> bool:
    done = subprocess.run([*tokencsp, *args], capture_output=True, text=True)
    return done.returncode == 0 and word in done.stdout


def format_row(row: Row) -> str:
    value = f"{row.value:10.1f} {row.unit:5s}" if row.unit != "ms" else f"{row.value:10.2f} ms   "
    rss = f" {row.rss_mib:6.1f} MiB" if row.rss_mib is not None else " " * 11
    ratio = f"  {row.ratio:5.2f}x ({row.ratio_min:.2f}..{row.ratio_max:.2f}) {row.reference}" if row.ratio else ""
    return f"  {row.operation[:38]:38s} {row.contender[:34]:34s} {value}{rss}{ratio}"


def machine() -> dict[str, Any]:
    def first(path: str, prefix: str) -> str:
        try:
            return next(line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines()
                        if line.startswith(prefix))
        except (OSError, StopIteration):
            return "?"

    cpu = first("/proc/cpuinfo", "model name")
    total = first("/proc/meminfo", "MemTotal").split()[0]
    mem = f"{int(total) // 1024} MiB" if total.isdigit() else "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": os.uname().release,
            "loadavg_start": os.getloadavg()}


def software() -> dict[str, Any]:
    from importlib.metadata import version

    import cryptography
    import pkcs11  # noqa: F401 -- its version below

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    return {"python": sys.version.split()[0], "cryptography": cryptography.__version__,
            "python-pkcs11": version("python-pkcs11"), "tokencsp": version("tokencsp"), "commit": commit,
            **versions()}


def _scratch_root() -> str | None:
    """tmpfs when it has room for the largest files (the disk is not what is measured), else the default."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 6 << 30:
        return str(shm)
    return None


def _compile_once() -> None:
    # A user's install has byte code (pip compiles at install); a tree run with
    # PYTHONDONTWRITEBYTECODE would recompile tokencsp in every measured process.
    import compileall

    compileall.compile_dir(str(REPO / "tokencsp"), quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_const", dest="mode", const="quick", help="small sizes, few rounds")
    parser.add_argument("--tiny", action="store_const", dest="mode", const="tiny",
                        help="one round of everything on tiny inputs (the test that the bench runs)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="JSON directory")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "PERFORMANCE.md",
                        help="the Markdown page whose figures block is rewritten ('-': none)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install missing peers")
    parser.add_argument("--only", action="append", default=[],
                        help="run only these sections (imports, files, inproc, latency, batch, handshakes)")
    args = parser.parse_args(argv)
    mode = MODES[args.mode or "full"]
    started = time.time()
    have = present() if args.no_install else ensure_installed()
    _compile_once()
    from bench_report import write_chart, write_doc, write_json

    from tokencsp.testing import SoftHSMKit

    sections = set(args.only) or {"imports", "files", "inproc", "latency", "batch", "handshakes"}
    facts: dict[str, Any] = {"machine": machine(), "software": software(), "mode": mode.name,
             "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}
    print(f"tokencsp bench ({mode.name}) on {facts['machine']['cpu']}, {facts['machine']['cores']} cores, "
          f"load {' '.join(f'{x:.2f}' for x in facts['machine']['loadavg_start'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tokencsp-bench-", dir=_scratch_root()) as tmp:
        scratch = Path(tmp)
        kit = SoftHSMKit(scratch / "softhsm", labels=(TOKEN_LABEL,))
        kit.__enter__()
        bench = Bench(mode, scratch, kit, lambda line: print(line, flush=True))
        bench.setup()
        peers = Peers(scratch / "peers", bench.env, TOKEN_LABEL, kit.user_pin, str(kit.module), have)
        peers.directory.mkdir()
        peers.setup()
        try:
            if "imports" in sections:
                bench.imports()
            if "files" in sections:
                bench.files(peers)
            if "latency" in sections:
                bench.latency(peers)
                bench.profile()
            if "batch" in sections:
                bench.batch()
            if sections & {"inproc", "handshakes"}:
                os.environ.update(bench.env)
                from tokencsp.provider import Provider

                with Provider.open() as provider:
                    if "inproc" in sections:
                        bench.in_process(provider)
                    if "handshakes" in sections:
                        bench.handshakes(provider)
        finally:
            peers.close()
            bench.stop_agent()
        facts["deadlines_ms"] = _deadlines(scratch / "state")
    facts["machine"]["loadavg_end"] = os.getloadavg()
    facts["seconds"] = round(time.time() - started, 1)
    facts["rows"] = [row.as_dict() for row in bench.rows]
    path = write_json(args.results, facts)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({facts['seconds']:.0f} s)")
    if str(args.doc) != "-":
        chart = write_chart(facts, args.doc.parent / "performance-ratios.png")
        write_doc(args.doc, facts, chart)
        print(f"wrote {args.doc}" + (f" and {chart}" if chart else " (no chart: pip install '.[bench]')"))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
