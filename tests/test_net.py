"""The three-phase exchange over TCP (tokencsp.net, tokencsp.cli.exchange) between two SoftHSM tokens."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tokencsp import cli
from tokencsp.admission import AdmissionPolicy
from tokencsp.errors import ConfigError, TokenCSPError
from tokencsp.net import NetConfig, Receiver, _Channel, _run_session, send_files
from tokencsp.threephase import (
    Close,
    Data,
    FrameTooLarge,
    HandshakeComplete,
    PeerAborted,
    PeerAuthenticationFailed,
    PeerDisconnected,
    PhaseTimeout,
    ProtocolError,
    RecordError,
    Role,
    ThreePhase,
    TruncatedSession,
    TrustSet,
    UnknownPeer,
    frame,
)

FAST = NetConfig(phase_timeout=0.5, idle_timeout=0.5, chunk_size=1024)
CALM = NetConfig(phase_timeout=10.0, idle_timeout=10.0)


# -- fixtures ----------------------------------------------------------------------------

KEY_PREFIX = "net"  # the `keys` fixture (conftest) makes net-alice, net-bob, net-mallory


@pytest.fixture(scope="module")
def pubs(keys):
    return {name: pair.public_key() for name, pair in keys.items()}


@pytest.fixture(scope="module")
def trust(pubs):
    return TrustSet({"alice": pubs["alice"], "bob": pubs["bob"]})


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.fixture(autouse=True)
def no_leaks(tokens):
    before = _sockets()
    yield
    for _ in range(50):  # closed transports are released on the next loop turns / GC
        if _sockets() <= before:
            break
        time.sleep(0.02)
    assert _sockets() <= before, "a socket was leaked"
    assert [p.session_object_count() for p in tokens] == [0, 0], "a token object was leaked"


def run(coro_factory, limit: float = 30.0):
    """asyncio.run, then check that the coroutine left no task behind."""
    async def main():
        async with asyncio.timeout(limit):
            result = await coro_factory()
        for _ in range(3):
            await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"leaked tasks: {leftover}"
        return result
    return asyncio.run(main())


def make_files(directory: Path, spec: dict[str, bytes]) -> list[str]:
    directory.mkdir(exist_ok=True)
    paths = []
    for name, content in spec.items():
        (directory / name).write_bytes(content)
        paths.append(str(directory / name))
    return paths


def assert_nothing_partial(out_dir: Path, spec: dict[str, bytes], must_have=None, peer: str = "alice") -> list[str]:
    """Files land in out_dir/<peer>/ only, each complete; returns the names present."""
    entries = os.listdir(out_dir)
    assert set(entries) <= {peer}, f"unexpected entries in the out-dir: {entries}"
    present = sorted(os.listdir(out_dir / peer)) if entries else []
    for name in present:
        assert name in spec, f"unexpected file {name} (a partial temp file?)"
        assert (out_dir / peer / name).read_bytes() == spec[name]
    if must_have is not None:
        assert present == sorted(must_have)
    return present


async def receiver_and(keys, pubs, trust, out_dir, body, config=CALM, **kw):
    """Start bob's listener, run ``body(port, receiver)``, close the listener."""
    receiver = Receiver(keys["bob"], trust, str(out_dir), name="bob", config=config, local_public=pubs["bob"], **kw)
    async with receiver:
        _, port = await receiver.start()
        return await body(port, receiver)


async def send_as(keys, pubs, trust, port, paths, config=CALM, who="alice", **kw):
    return await send_files(keys[who], trust, "bob", "127.0.0.1", port, paths, config=config,
                            name=kw.pop("name", "alice"), local_public=kw.pop("local_public", pubs[who]), **kw)


# -- the happy path ----------------------------------------------------------------------

def test_multi_file_transfer_bytes_identical(tmp_path, keys, pubs, trust):
    spec = {"empty.bin": b"", "one.txt": b"x", "big.bin": os.urandom(300_000), "ünï code.txt": "héllo".encode()}
    paths = make_files(tmp_path / "src", spec)
    out = tmp_path / "out"
    out.mkdir()
    progress = []

    async def body(port, receiver):
        sent = await send_as(keys, pubs, trust, port, paths, progress=lambda *a: progress.append(a))
        (result,) = await receiver.wait_for(1)
        return sent, result

    sent, result = run(lambda: receiver_and(keys, pubs, trust, out, body))
    assert sent == list(spec) and result.ok and result.peer == "alice" and result.files == list(spec)
    assert_nothing_partial(out, spec, must_have=spec)
    assert progress[-1] == ("ünï code.txt", 6, 6) and ("big.bin", 300_000, 300_000) in progress


def test_twenty_concurrent_senders(tmp_path, keys, pubs, trust):
    spec = {f"s{i:02d}-{j}.bin": os.urandom(1000 * i + j) for i in range(20) for j in range(2)}
    src = tmp_path / "src"
    make_files(src, spec)
    out = tmp_path / "out"
    out.mkdir()

    async def body(port, receiver):
        sent = await asyncio.gather(*(
            send_as(keys, pubs, trust, port, [str(src / f"s{i:02d}-{j}.bin") for j in range(2)])
            for i in range(20)))
        return sent, await receiver.wait_for(20)

    # All twenty come from one address: raise the per-source admission limits for them.
    crowd = dataclasses.replace(CALM, admission=AdmissionPolicy(per_source=20, per_source_rate=20.0))
    sent, results = run(lambda: receiver_and(keys, pubs, trust, out, body, config=crowd))
    assert all(len(s) == 2 for s in sent)
    assert all(r.ok and r.peer == "alice" for r in results), [r.error for r in results]
    assert_nothing_partial(out, spec, must_have=spec)


def test_sessions_beyond_the_limit_are_closed_unserved(tmp_path, keys, pubs, trust):
    """With max_sessions=2, two slow peers hold the listener; a third connection is closed at once."""
    out = tmp_path / "out"
    out.mkdir()
    limited = dataclasses.replace(CALM, max_sessions=2)

    async def body(port, receiver):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await receiver.wait_active(2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = await asyncio.wait_for(reader.read(1), 5)  # EOF: refused without a byte
        writer.close()
        for _, idle_writer in idle:
            idle_writer.close()
        return closed, receiver.refused

    closed, refused = run(lambda: receiver_and(keys, pubs, trust, out, body, config=limited))
    assert closed == b"" and refused == 1
    assert os.listdir(out) == []


def test_files_are_tied_to_the_authenticated_peer(tmp_path, keys, pubs):
    """Finding 9.8: two trusted peers sending the same file name each get their own file, in out/<peer>/."""
    trust = TrustSet({"alice": pubs["alice"], "mallory": pubs["mallory"], "bob": pubs["bob"]})
    out = tmp_path / "out"
    out.mkdir()
    genuine = make_files(tmp_path / "alice", {"report.txt": b"alice's report"})
    forged = make_files(tmp_path / "mallory", {"report.txt": b"mallory's replacement"})

    async def body(port, receiver):
        await send_as(keys, pubs, trust, port, genuine)
        await send_as(keys, pubs, trust, port, forged, who="mallory", name="mallory")
        return await receiver.wait_for(2)

    results = run(lambda: receiver_and(keys, pubs, trust, out, body))
    assert [(r.peer, r.files, r.ok) for r in results] == [("alice", ["report.txt"], True),
                                                          ("mallory", ["report.txt"], True)]
    assert sorted(os.listdir(out)) == ["alice", "mallory"]
    assert (out / "alice" / "report.txt").read_bytes() == b"alice's report"
    assert (out / "mallory" / "report.txt").read_bytes() == b"mallory's replacement"
    assert os.stat(out / "alice").st_mode & 0o777 == 0o700


def test_peer_directory_must_be_a_plain_directory(tmp_path, keys, pubs, trust):
    """A trusted name that is no single path component is refused up front; a symlink in its place at write time."""
    with pytest.raises(ConfigError, match="cannot be a directory name"):
        Receiver(keys["bob"], TrustSet({"../alice": pubs["alice"]}), str(tmp_path), name="bob")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "alice")
    paths = make_files(tmp_path / "src", {"f.txt": b"x"})

    async def body(port, receiver):
        with pytest.raises(TokenCSPError):
            await send_as(keys, pubs, trust, port, paths)
        return (await receiver.wait_for(1))[0]

    result = run(lambda: receiver_and(keys, pubs, trust, out, body))
    assert "is not a directory" in str(result.error)
    assert os.listdir(tmp_path / "elsewhere") == []


def test_unauthenticated_handshakes_are_capped_per_source(tmp_path, keys, pubs, trust):
    """Finding 9.13: one source holds at most `per_source` handshakes that have not authenticated."""
    out = tmp_path / "out"
    out.mkdir()
    capped = dataclasses.replace(CALM, admission=AdmissionPolicy(per_source=2, per_source_rate=100.0))
    paths = make_files(tmp_path / "src", {"f.txt": b"data"})

    async def body(port, receiver):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await receiver.wait_active(2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = await asyncio.wait_for(reader.read(1), 5)  # EOF: refused without a byte
        writer.close()
        refused_while_full = receiver.refused
        idle[0][1].close()  # one idle handshake ends: its source may start another
        await receiver.wait_for(1)
        sent = await send_as(keys, pubs, trust, port, paths)
        idle[1][1].close()
        return closed, refused_while_full, sent, await receiver.wait_for(3)

    closed, refused, sent, results = run(lambda: receiver_and(keys, pubs, trust, out, body, config=capped))
    assert closed == b"" and refused == 1
    assert sent == ["f.txt"] and sum(r.ok for r in results) == 1


def test_new_handshakes_are_rate_limited(tmp_path, keys, pubs, trust):
    """A source may start `per_source_rate` handshakes per second; the listener refuses the rest unserved."""
    out = tmp_path / "out"
    out.mkdir()
    slow = dataclasses.replace(CALM, admission=AdmissionPolicy(per_source_rate=0.01))  # one, then one per 100 s

    async def body(port, receiver):
        first = await asyncio.open_connection("127.0.0.1", port)
        await receiver.wait_active(1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = await asyncio.wait_for(reader.read(1), 5)
        writer.close()
        first[1].close()
        return closed, receiver.refused, await receiver.wait_for(1)

    closed, refused, (result,) = run(lambda: receiver_and(keys, pubs, trust, out, body, config=slow))
    assert closed == b"" and refused == 1 and not result.ok


# -- a man in the middle -----------------------------------------------------------------

class Proxy:
    """Forwards frames between sender and listener; can alter, drop, reorder or duplicate one."""

    def __init__(self, upstream: int, action: str | None = None, direction: str | None = None, index: int = -1):
        self.upstream, self.action, self.direction, self.index = upstream, action, direction, index
        self.frames: dict[str, list[bytes]] = {"s2r": [], "r2s": []}
        self.tasks: set[asyncio.Task] = set()
        self.applied = False  # the chosen frame went past and was altered, dropped, duplicated or held

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, c_reader, c_writer):
        self.tasks.add(asyncio.current_task())
        u_reader, u_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pump(c_reader, u_writer, "s2r"), self._pump(u_reader, c_writer, "r2s"),
                             return_exceptions=True)
        for writer in (c_writer, u_writer):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _pump(self, reader, writer, direction):
        held, i = None, 0
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(header, "big"))
                frame_bytes = header + body
                self.frames[direction].append(frame_bytes)
                out = [frame_bytes]
                if direction == self.direction and i == self.index:
                    self.applied = True
                    if self.action == "drop":
                        out = []
                    elif self.action == "duplicate":
                        out = [frame_bytes, frame_bytes]
                    elif self.action == "alter":
                        mid = 4 + len(body) // 2
                        out = [frame_bytes[:mid] + bytes([frame_bytes[mid] ^ 0x01]) + frame_bytes[mid + 1 :]]
                    elif self.action == "reorder":
                        held, out = frame_bytes, []
                elif held is not None:
                    out, held = [frame_bytes, held], None
                i += 1
                for item in out:
                    writer.write(item)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()


# Two files, chunk size 1024: sender -> receiver P1 P3 H D D H CLOSE; receiver -> sender P2 K K CLOSE.
MITM_SPEC = {"first.bin": bytes(range(256)) * 6, "second.bin": b""}
S2R, R2S = 7, 4
MITM_CALM = dataclasses.replace(CALM, chunk_size=FAST.chunk_size)  # same frames as FAST, deadlines far away
MITM_CASES = [(action, direction, i)
              for action in ("alter", "drop", "duplicate", "reorder")
              for direction, count in (("s2r", S2R), ("r2s", R2S))
              for i in range(count)
              if not (action == "reorder" and i == count - 1)]  # nothing follows the last frame to swap with


def _mitm_session(tmp_path, keys, pubs, trust, proxy_args, config=MITM_CALM):
    paths = make_files(tmp_path / "src", MITM_SPEC)
    out = tmp_path / "out"
    out.mkdir()

    async def body(port, receiver):
        proxy = Proxy(port, *proxy_args)
        proxy_port = await proxy.start()
        try:
            try:
                sent = await send_as(keys, pubs, trust, proxy_port, paths, config=config)
            except TokenCSPError as exc:
                sent = exc
            (result,) = await receiver.wait_for(1)
        finally:
            await proxy.close()
        return sent, result, proxy

    return out, run(lambda: receiver_and(keys, pubs, trust, out, body, config=config))


def test_clean_run_through_the_proxy_has_the_expected_frames(tmp_path, keys, pubs, trust):
    out, (sent, result, proxy) = _mitm_session(tmp_path, keys, pubs, trust, ())
    assert sent == list(MITM_SPEC) and result.ok
    assert [len(proxy.frames["s2r"]), len(proxy.frames["r2s"])] == [S2R, R2S]
    assert_nothing_partial(out, MITM_SPEC, must_have=MITM_SPEC)


@pytest.mark.host_side(reason="network framing and the protocol state machine; the token part is in test_threephase")
@pytest.mark.parametrize("action,direction,index", MITM_CASES)
def test_man_in_the_middle_aborts_both_sides(tmp_path, keys, pubs, trust, action, direction, index):
    # An altered or duplicated frame is caught by its content: nobody waits for a frame that never
    # comes, so no deadline has to fire, and the 0.5 s ones of FAST only race the token work of a
    # loaded machine (a phase timeout during the handshake ended alter-s2r-4 before frame 4 was
    # ever sent). A dropped or held frame can leave both sides waiting: only FAST's deadlines end that.
    config = MITM_CALM if action in ("alter", "duplicate") else FAST
    out, (sent, result, proxy) = _mitm_session(tmp_path, keys, pubs, trust, (action, direction, index), config)
    if config is MITM_CALM:
        assert proxy.applied, f"the session ended before frame {direction} {index} went past: {sent!r} / {result.error!r}"
    assert isinstance(sent, TokenCSPError), f"the sender did not notice: {sent}"
    assert str(sent)
    # The receiver's last word (its CLOSE), and a copy of its last confirmation, reach the
    # sender only after the sender's own authenticated CLOSE: only the sender can notice them.
    if direction == "r2s" and (index == R2S - 1 or (action, index) == ("duplicate", R2S - 2)):
        assert result.ok and result.files == list(MITM_SPEC)
    else:
        assert isinstance(result.error, TokenCSPError), "the receiver did not notice"
    if action in ("alter", "duplicate") and index >= (2 if direction == "s2r" else 1):
        detector = result.error if direction == "s2r" else sent  # an altered or repeated record
        assert isinstance(detector, (RecordError, ProtocolError)), detector
        if action == "alter":
            assert isinstance(detector, RecordError), detector
    assert_nothing_partial(out, MITM_SPEC)


def test_recorded_session_replayed_to_a_live_listener_is_refused(tmp_path, keys, pubs, trust):
    out, (_, result, proxy) = _mitm_session(tmp_path, keys, pubs, trust, ())
    assert result.ok
    shutil.rmtree(out / "alice")
    recording = b"".join(proxy.frames["s2r"])

    async def body(port, receiver):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(recording)
        await writer.drain()
        answer = await reader.read()  # phase 2 for a fresh B, then ABORT
        writer.close()
        await writer.wait_closed()
        return answer, (await receiver.wait_for(1))[0]

    answer, replayed = run(lambda: receiver_and(keys, pubs, trust, out, body))
    assert isinstance(replayed.error, PeerAuthenticationFailed) and "phase 3" in str(replayed.error)
    assert answer.endswith(frame(b"\x7f\x00")) and answer[4] == 0x02  # the ABORT names no reason: unauthenticated
    assert answer[4:-6] != proxy.frames["r2s"][0][4:]  # a new B: the recording's phase 3 cannot fit
    assert os.listdir(out) == []


# -- wrong keys and names ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["listener-trusts-other-key", "sender-has-wrong-receiver-key", "unknown-peer",
                                  "impostor-sender", "impostor-listener", "sender-uses-other-key"])
def test_wrong_keys_and_names_are_refused(tmp_path, keys, pubs, trust, case):
    paths = make_files(tmp_path / "src", {"f.txt": b"secret"})
    out = tmp_path / "out"
    out.mkdir()
    r_trust, r_kw, s_trust, s_kw = trust, {}, trust, {}
    if case == "listener-trusts-other-key":
        r_trust = TrustSet({"alice": pubs["mallory"], "bob": pubs["bob"]})
    elif case == "sender-has-wrong-receiver-key":
        s_trust = TrustSet({"bob": pubs["mallory"]})
    elif case == "unknown-peer":
        s_kw = {"name": "carol"}
    elif case == "impostor-sender":  # mallory's key, alice's name and fingerprint
        s_kw = {"who": "mallory", "name": "alice", "local_public": pubs["alice"]}
    elif case == "sender-uses-other-key":
        s_kw = {"who": "mallory", "name": "alice"}
    r_key = keys["mallory"] if case == "impostor-listener" else keys["bob"]

    async def body(port, receiver):
        with pytest.raises(TokenCSPError) as info:
            await send_as(keys, pubs, s_trust, port, paths, **s_kw)
        return info.value, (await receiver.wait_for(1))[0]

    async def scenario():
        receiver = Receiver(r_key, r_trust, str(out), name="bob", config=CALM, local_public=pubs["bob"], **r_kw)
        async with receiver:
            _, port = await receiver.start()
            return await body(port, receiver)

    sender_error, result = run(scenario)
    expected_receiver = UnknownPeer if case == "unknown-peer" else PeerAuthenticationFailed
    if case in ("impostor-sender", "impostor-listener"):
        # The impostor's token cannot unwrap the honest party's key; implicit rejection
        # hands it a substitute, so the honest side's phase-2/3 MAC check is what fails.
        assert isinstance(sender_error, PeerAuthenticationFailed), sender_error
        assert isinstance(result.error, PeerAborted), result.error
    else:
        assert isinstance(sender_error, PeerAborted), sender_error
        assert sender_error.reason == 0, sender_error  # the same for every refusal before authentication
        assert isinstance(result.error, expected_receiver), result.error
    assert result.files == [] and os.listdir(out) == []


async def _session_as_alice(keys, pubs, trust, port, body, config=CALM):
    """A sender that runs ``body(channel)`` after a genuine handshake (for misbehaving senders)."""
    conn = ThreePhase(Role.INITIATOR, "alice", keys["alice"], trust, peer_name="bob", local_public=pubs["alice"],
                      phase_timeout=config.phase_timeout)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def go(channel: _Channel):
        assert isinstance(await channel.next_event(), HandshakeComplete)
        return await body(channel)
    return await _run_session(conn, reader, writer, config, go)


def _header(name: str, size: int) -> Data:
    raw = name.encode()
    return Data(b"H" + len(raw).to_bytes(2, "big") + raw + size.to_bytes(8, "big"))


@pytest.mark.host_side(reason="network framing and the protocol state machine; the token part is in test_threephase")
@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/b", "a\\b", "..", ".", "", ".hidden", "nul\0x",
                                  "x" * 256])
def test_path_traversal_and_bad_names_refused(tmp_path, keys, pubs, trust, name):
    out = tmp_path / "out"
    out.mkdir()

    async def bad(channel):
        await channel.send(_header(name, 4))
        await channel.send(Data(b"Devil"))
        await channel.next_event()

    async def body(port, receiver):
        with pytest.raises(TokenCSPError):
            await _session_as_alice(keys, pubs, trust, port, bad)
        return (await receiver.wait_for(1))[0]

    result = run(lambda: receiver_and(keys, pubs, trust, out, body))
    assert isinstance(result.error, ProtocolError) and "file name" in str(result.error)
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("misbehaviour,error,message", [
    ("too-long", ProtocolError, "more bytes than"), ("close-mid-file", ProtocolError, "expected file data"),
    ("duplicate-name", ProtocolError, "sent twice"), ("hang-up-mid-file", TruncatedSession, "truncated")])
def test_misbehaving_sender_leaves_nothing_partial(tmp_path, keys, pubs, trust, misbehaviour, error, message):
    out = tmp_path / "out"
    out.mkdir()

    async def bad(channel):
        if misbehaviour == "duplicate-name":
            for _ in range(2):
                await channel.send(_header("dup.txt", 1))
                await channel.send(Data(b"D1"))
                await channel.next_event()
        await channel.send(_header("victim.txt", 10))
        await channel.send(Data(b"D12345"))
        if misbehaviour == "too-long":
            await channel.send(Data(b"D678901"))
        elif misbehaviour == "close-mid-file":
            await channel.send(Close())
        elif misbehaviour == "hang-up-mid-file":
            channel.writer.close()
            raise PeerDisconnected("the test hung up")
        await channel.next_event()

    async def body(port, receiver):
        with pytest.raises(TokenCSPError):
            await _session_as_alice(keys, pubs, trust, port, bad, config=CALM)
        return (await receiver.wait_for(1))[0]

    result = run(lambda: receiver_and(keys, pubs, trust, out, body, config=CALM))
    assert isinstance(result.error, error) and message in str(result.error), result.error
    assert_nothing_partial(out, {"dup.txt": b"1"}, must_have=["dup.txt"] if misbehaviour == "duplicate-name" else [])


# -- frames, deadlines, disconnects ------------------------------------------------------

class RawListener:
    """A fake receiver: ``behaviour(reader, writer)`` per connection."""

    def __init__(self, behaviour) -> None:
        self.behaviour, self.tasks = behaviour, set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc_info) -> None:
        self.server.close()
        await self.server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, reader, writer) -> None:
        self.tasks.add(asyncio.current_task())
        try:
            await self.behaviour(reader, writer)
        finally:
            writer.close()


@pytest.mark.host_side(reason="network framing and the protocol state machine; the token part is in test_threephase")
@pytest.mark.parametrize("behaviour,error", [
    ("oversized", FrameTooLarge), ("silent", PhaseTimeout), ("hang-up", PeerDisconnected),
    ("half-frame", PeerDisconnected), ("garbage", ProtocolError)])
def test_sender_against_a_broken_listener(tmp_path, keys, pubs, trust, behaviour, error):
    paths = make_files(tmp_path / "src", {"f.txt": b"data"})

    async def act(reader, writer):
        await reader.readexactly(4)
        if behaviour == "oversized":
            writer.write((FAST.max_frame + 1).to_bytes(4, "big"))  # and never a body
            await asyncio.sleep(5)
        elif behaviour == "silent":
            await asyncio.sleep(5)
        elif behaviour == "half-frame":
            writer.write(frame(b"\x02" + bytes(100))[:50])
        elif behaviour == "garbage":
            writer.write(frame(b"\x09hello"))
            await asyncio.sleep(5)

    async def scenario():
        async with RawListener(act) as port:
            started = time.monotonic()
            with pytest.raises(error) as info:
                await send_as(keys, pubs, trust, port, paths, config=FAST)
            return info.value, time.monotonic() - started

    exc, elapsed = run(scenario)
    assert elapsed < 3.0 and str(exc)


@pytest.mark.host_side(reason="network framing and the protocol state machine; the token part is in test_threephase")
@pytest.mark.parametrize("behaviour,error", [
    ("oversized", FrameTooLarge), ("silent", PhaseTimeout), ("silent-after-phase1", PhaseTimeout),
    ("hang-up-mid-frame", PeerDisconnected), ("hang-up-after-phase1", PeerDisconnected),
    ("idle-after-handshake", PhaseTimeout), ("eof-after-handshake", TruncatedSession)])
def test_listener_against_a_broken_sender(tmp_path, keys, pubs, trust, behaviour, error):
    out = tmp_path / "out"
    out.mkdir()

    async def body(port, receiver):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        init = ThreePhase(Role.INITIATOR, "alice", keys["alice"], trust, peer_name="bob", local_public=pubs["alice"])
        await asyncio.to_thread(init.start, 0.0)
        m1 = init.data_to_send()
        if behaviour == "oversized":
            writer.write((FAST.max_frame + 1).to_bytes(4, "big"))
        elif behaviour == "hang-up-mid-frame":
            writer.write(m1[:40])
            writer.close()
        elif behaviour != "silent":
            writer.write(m1)
            if behaviour == "hang-up-after-phase1":
                await reader.readexactly(4)
                writer.close()
            elif behaviour in ("idle-after-handshake", "eof-after-handshake"):
                header = await reader.readexactly(4)
                init.receive_data(header + await reader.readexactly(int.from_bytes(header, "big")))
                await asyncio.to_thread(init.next_event, 0.0)
                writer.write(init.data_to_send())
                if behaviour == "eof-after-handshake":
                    writer.write_eof()
        result = (await receiver.wait_for(1))[0]
        elapsed = time.monotonic() - started
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return result, elapsed

    result, elapsed = run(lambda: receiver_and(keys, pubs, trust, out, body, config=FAST))
    assert isinstance(result.error, error), result.error
    assert elapsed < 3.0
    assert os.listdir(out) == []


def test_connection_refused_is_a_clean_error(tmp_path, keys, pubs, trust):
    paths = make_files(tmp_path / "src", {"f.txt": b"data"})
    with socket.socket() as s:  # bound and held, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(PeerDisconnected, match="cannot connect"):
            run(lambda: send_as(keys, pubs, trust, port, paths, config=FAST))


def test_listener_close_cancels_sessions_cleanly(tmp_path, keys, pubs, trust):
    out = tmp_path / "out"
    out.mkdir()

    async def body(port, receiver):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await receiver.wait_active(1)  # the session is waiting for phase 1
        await receiver.close()
        assert await reader.read() == frame(b"\x7f\x00")  # ABORT, unspecified
        writer.close()
        await writer.wait_closed()
        return receiver.results

    (result,) = run(lambda: receiver_and(keys, pubs, trust, out, body))
    assert isinstance(result.error, PeerDisconnected)


# -- the commands ------------------------------------------------------------------------

class PerThreadStderr(io.TextIOBase):
    """sys.stderr for commands running in several threads at once: one buffer per thread."""

    def __init__(self) -> None:
        self.buffers: dict[int, io.StringIO] = {}
        self.written = threading.Condition()

    def write(self, text: str) -> int:
        with self.written:
            count = self.buffers.setdefault(threading.get_ident(), io.StringIO()).write(text)
            self.written.notify_all()
        return count

    def isatty(self) -> bool:
        return False

    def _line_with(self, text: str) -> str | None:
        for buf in list(self.buffers.values()):
            for line in buf.getvalue().splitlines():
                if text in line:
                    return line
        return None

    def wait_for(self, text: str, limit: float = 10.0) -> str:
        """The first stderr line (of any thread) that contains ``text``, woken by each write."""
        with self.written:
            found = self.written.wait_for(lambda: self._line_with(text), timeout=limit)
        assert found, f"no {text!r} on stderr"
        return found

    def wait_for_port(self) -> int:
        """The port a listener started with ``--port 0`` bound, from its "listening on HOST:PORT" line."""
        return int(self.wait_for("listening on").split(" as ")[0].rpartition(":")[2])

    def take(self) -> str:
        with self.written:
            return self.buffers.pop(threading.get_ident(), io.StringIO()).getvalue()


@contextlib.contextmanager
def per_thread_stderr():
    """Inside a test body (pytest re-installs its own capture at each phase)."""
    capture, original = PerThreadStderr(), sys.stderr
    sys.stderr = capture
    try:
        yield capture
    finally:
        sys.stderr = original


def tokencsp(*argv: str) -> tuple[int, str]:
    """Run a command in-process through cli.main: (exit code, stderr); inside per_thread_stderr()."""
    code = cli.main(list(argv), stdout=io.StringIO(), stderr=sys.stderr)
    return code, sys.stderr.take()


@pytest.fixture
def exported(tmp_path, keys):
    peers = tmp_path / "keys"
    peers.mkdir()
    (peers / "alice.blob").write_bytes(keys["alice"].public_blob())
    (peers / "bob.pem").write_bytes(keys["bob"].public_pem())
    (peers / "mallory.der").write_bytes(keys["mallory"].public_der())
    return peers


def _listen_in_thread(argv):
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(zip(("code", "err"), tokencsp(*argv))))
    thread.start()
    return thread, outcome


def test_cli_listen_once_and_send(tmp_path, exported):
    with per_thread_stderr() as capture:
        spec = {"a.txt": b"alpha", "b.bin": os.urandom(70_000)}
        paths = make_files(tmp_path / "src", spec)
        out = tmp_path / "out"
        out.mkdir()
        thread, outcome = _listen_in_thread(  # --trust DIR: alice, bob and mallory are trusted
            ["listen", "--token", "tokencsp-test-b", "--key", "net-bob", "--name", "bob", "--trust",
             str(exported), "--port", "0", "--out-dir", str(out), "--once"])
        port = capture.wait_for_port()
        code, err = tokencsp("send", "--token", "tokencsp-test-a", "--key", "net-alice", "--name", "alice",
                             "--to", str(exported / "bob.pem"), "--connect", f"127.0.0.1:{port}", *paths)
        thread.join(20)
        assert code == 0, err
        assert "bob confirmed 2 file(s)" in err
        assert outcome["code"] == 0, outcome["err"]
        assert "received 2 file(s) from alice" in outcome["err"]
        assert_nothing_partial(out, spec, must_have=spec)


def test_cli_listen_once_is_used_up_only_by_an_authenticated_session(tmp_path, exported):
    """Finding 9.7: a bare connect-and-close and a refused handshake do not end `listen --once`."""
    with per_thread_stderr() as capture:
        spec = {"a.txt": b"alpha"}
        paths = make_files(tmp_path / "src", spec)
        out = tmp_path / "out"
        out.mkdir()
        thread, outcome = _listen_in_thread(
            ["listen", "--token", "tokencsp-test-b", "--key", "net-bob", "--name", "bob", "--trust",
             str(exported / "alice.blob"), "--port", "0", "--out-dir", str(out), "--once", "--timeout", "5"])
        port = capture.wait_for_port()
        with socket.create_connection(("127.0.0.1", port)):
            pass  # connect and close at once
        capture.wait_for("session with unauthenticated peer")
        code, err = tokencsp("send", "--token", "tokencsp-test-a", "--key", "net-alice", "--name", "carol",
                             "--to", str(exported / "bob.pem"), "--connect", f"127.0.0.1:{port}", *paths)
        assert code == 40, err  # an unknown name: refused
        code, err = tokencsp("send", "--token", "tokencsp-test-a", "--key", "net-alice", "--name", "alice",
                             "--to", str(exported / "bob.pem"), "--connect", f"127.0.0.1:{port}", *paths)
        thread.join(20)
        assert code == 0, err
        assert outcome["code"] == 0, outcome["err"]
        assert "received 1 file(s) from alice" in outcome["err"]
        assert outcome["err"].count("session with unauthenticated peer") == 2, outcome["err"]
        assert_nothing_partial(out, spec, must_have=spec)


def test_cli_refusal_is_one_line_and_non_zero(tmp_path, exported):
    with per_thread_stderr() as capture:
        paths = make_files(tmp_path / "src", {"a.txt": b"alpha"})
        out = tmp_path / "out"
        out.mkdir()
        thread, outcome = _listen_in_thread(
            ["listen", "--token", "tokencsp-test-b", "--key", "net-bob", "--name", "bob", "--trust",
             str(exported / "mallory.der"), "--port", "0", "--out-dir", str(out), "--once", "--timeout", "2"])
        port = capture.wait_for_port()
        code, err = tokencsp("send", "--token", "tokencsp-test-a", "--key", "net-alice", "--name", "alice",
                             "--to", str(exported / "bob.pem"), "--connect", f"127.0.0.1:{port}", *paths)
        # The sender only hears the receiver's (unauthenticated) ABORT: a protocol error, 40;
        # the listener reports why it refused and, with --once, waits on for an authenticated sender.
        assert code == 40 and err.startswith("tokencsp: error: ") and err.count("\n") == 1, err
        refusal = capture.wait_for("session with unauthenticated peer")
        assert "not in the trust set" in refusal, refusal
        code, err = tokencsp("send", "--token", "tokencsp-test-a", "--key", "net-mallory", "--name", "mallory",
                             "--to", str(exported / "bob.pem"), "--connect", f"127.0.0.1:{port}", *paths)
        thread.join(20)
        assert code == 0, err
        assert outcome["code"] == 0 and "received 1 file(s) from mallory" in outcome["err"], outcome


def test_cli_argument_errors(tmp_path, exported):
    with per_thread_stderr():
        code, err = tokencsp("send", "--key", "net-alice", "--to", str(exported / "bob.pem"), "--connect", "nocolon",
                             str(exported / "bob.pem"))
        assert code == 2 and "HOST:PORT" in err
        code, err = tokencsp("listen", "--key", "net-bob", "--trust", str(exported / "alice.blob"), "--port", "1",
                             "--out-dir", str(exported / "alice.blob"))  # a file; a missing dir is created
        assert code == 1 and "not a directory" in err
        from tokencsp.cli._common import Console
        from tokencsp.cli.exchange import progress_printer
        # progress only when stderr is a terminal
        assert progress_printer(Console(io.StringIO(), sys.stderr, io.StringIO())) is None
