"""``make demo``: the whole CryptoAPI exchange on the dev token, step by step, through the CLI.

Runs the same ``tokencsp`` commands a user would type, in a scratch
directory, and prints each command and what it produced.  Re-running is
safe: the demo's key container is replaced each time.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

KEY = "demo-exchange"
CARD = "demo-card"
SIGNER = "demo-signer"
ALICE, BOB = "demo-alice", "demo-bob"
MESSAGE = b"Attack at dawn. -- a message for the token holder\n"


def run(*args: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "tokencsp", *args]
    print(f"\n$ tokencsp {shlex.join(args)}")
    result = subprocess.run(command, capture_output=True)
    if show and result.stdout:
        sys.stdout.write(result.stdout.decode(errors="replace"))
    if result.stderr:
        sys.stdout.write(result.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        sys.exit(f"demo failed: tokencsp {shlex.join(args)} exited {result.returncode}")
    return result


def hexdump(label: str, data: bytes, limit: int = 64) -> None:
    shown = data[:limit].hex(" ")
    more = f" ... ({len(data)} bytes)" if len(data) > limit else f" ({len(data)} bytes)"
    print(f"  {label}: {shown}{more}")


def main() -> int:
    if not os.environ.get("TOKENCSP_TOKEN"):
        sys.exit("demo: TOKENCSP_TOKEN is not set; run it with `make demo`")
    with tempfile.TemporaryDirectory(prefix="tokencsp-demo-") as scratch:
        work = Path(scratch)
        plain, cipher, blob, pub = (work / n for n in ("message.txt", "message.enc", "session.blob", "receiver.pub"))
        plain.write_bytes(MESSAGE)

        print("== Receiver: an exchange key pair generated on the token (private half never leaves it)")
        if KEY.encode() in run("key", "list", show=False).stdout:
            run("key", "delete", "--yes", KEY)
        run("key", "generate", KEY, "--bits", "2048")
        run("key", "list", "--json")

        print("\n== Receiver: export the public key as a CryptoAPI PUBLICKEYBLOB")
        run("key", "export", KEY, "--format", "msblob", "-o", str(pub))
        hexdump("PUBLICKEYBLOB", pub.read_bytes())
        run("blob", "inspect", str(pub))

        print("\n== Sender (no token): new AES-256 session key, SIMPLEBLOB to the receiver, CryptEncrypt")
        run("capi", "encrypt", "--to", str(pub), "--alg", "aes256", "--blob-out", str(blob), "-o", str(cipher),
            str(plain))
        hexdump("SIMPLEBLOB", blob.read_bytes())
        run("blob", "inspect", str(blob))
        hexdump("ciphertext", cipher.read_bytes())

        print("\n== Receiver: C_UnwrapKey on the token, CryptDecrypt on the host")
        result = run("capi", "decrypt", "--key", KEY, "--blob", str(blob), str(cipher))
        if result.stdout != MESSAGE:
            sys.exit("demo failed: the recovered plaintext differs from the message")
        print("  plaintext recovered: identical to the message sent")

        print("\n== A tampered SIMPLEBLOB: one uniform error, as a wrong key gives (CryptoAPI's CBC has no integrity)")
        tampered = bytearray(blob.read_bytes())
        tampered[-1] ^= 0x01
        (work / "tampered.blob").write_bytes(bytes(tampered))
        out = work / "tampered-output.txt"
        bad = run("capi", "decrypt", "--key", KEY, "--blob", str(work / "tampered.blob"), "-o", str(out),
                  str(cipher), check=False)
        if out.exists() and out.read_bytes() == MESSAGE:
            sys.exit("demo failed: a tampered blob recovered the message")
        if bad.returncode != 0 and out.exists():
            sys.exit("demo failed: a refused decrypt left an output file")
        if bad.returncode == 0:
            # Implicit rejection: a bad blob imports a stable wrong key, and about 1 time in 256 its CBC
            # padding happens to be valid (docs/SECURITY.md: capi payloads have no integrity).
            print("  the wrong key's padding happened to be valid: garbage written, not the message "
                  "(about 1 run in 256; use 'seal' for authenticated messages)")
        else:
            print(f"  exit status {bad.returncode}; no output file")

        card_key(work)
        sealed_messages(work)
        cms_interop(work)
        three_phase(work)
    print("\ndemo complete")
    return 0


# As card tooling makes a key exchange key (PIV, OpenSC): CKA_DECRYPT, no CKA_UNWRAP, its own label and id.
CARD_TOOL = """\
import os
from tokencsp import config
from tokencsp.token import open_token
from tokencsp.token.cardstyle import generate_card_style_key
token = open_token(config.find_module(), config.resolve_pin(), label=os.environ["TOKENCSP_TOKEN"])
try:
    print("card-style key, CKA_ID", generate_card_style_key(token, "demo-card").hex())
finally:
    token.close()
"""


def card_key(work: Path) -> None:
    print("\n== A smart-card style key (DECRYPT only, no UNWRAP): the same SIMPLEBLOB opens through C_Decrypt")
    if CARD.encode() in run("key", "list", show=False).stdout:
        run("key", "delete", "--yes", CARD)
    print(f"\n$ python3 - <<'EOF'\n{CARD_TOOL}EOF")
    made = subprocess.run([sys.executable, "-c", CARD_TOOL], capture_output=True, text=True)
    sys.stdout.write(made.stdout + made.stderr)
    if made.returncode != 0:
        sys.exit("demo failed: the card-style key was not made")
    listing = run("key", "list").stdout.decode()
    row = next((line.split("\t") for line in listing.splitlines() if line.startswith(CARD + "\t")), None)
    if row is None or row[3] != "decrypt":
        sys.exit("demo failed: the card-style key does not show the decrypt import path")
    pub, blob, cipher = (work / n for n in ("card.pub", "card.blob", "card.enc"))
    run("key", "export", CARD, "-o", str(pub))
    run("capi", "encrypt", "--to", str(pub), "--alg", "aes256", "--blob-out", str(blob), "-o", str(cipher),
        str(work / "message.txt"))
    opened = run("capi", "decrypt", "--key", CARD, "--blob", str(blob), str(cipher))
    if opened.stdout != MESSAGE:
        sys.exit("demo failed: the card-style key did not open the SIMPLEBLOB")
    print("  card-style key opened the SIMPLEBLOB through the decrypt path (raw RSA on the token, "
          "PKCS#1 decoded on the host)")
    run("key", "delete", "--yes", CARD)


def fresh_key(name: str, *extra: str, token: str | None = None) -> None:
    where = ["--token", token] if token else []
    if name.encode() in run("key", "list", *where, show=False).stdout:
        run("key", "delete", "--yes", name, *where)
    run("key", "generate", name, *extra, *where)


def sealed_messages(work: Path) -> None:
    print("\n== Sealed message (docs/FORMAT.md): signed on the sender's token, replay-proof")
    fresh_key(SIGNER, "--usage", "signature")
    run("key", "export", SIGNER, "-o", str(work / f"{SIGNER}.pub"))
    message = work / "sealed.tcsp"
    (work / "letter.txt").write_bytes(MESSAGE)
    run("seal", "--to", str(work / "receiver.pub"), "--sign-with", SIGNER, "-o", str(message),
        str(work / "letter.txt"))
    run("inspect", str(message))
    db = str(work / "replay.sqlite3")
    opened = run("open", "--key", KEY, "--trust", str(work / f"{SIGNER}.pub"), "--replay-db", db, str(message))
    if opened.stdout != MESSAGE:
        sys.exit("demo failed: the sealed message did not open to the letter")
    print("\n== The same message again: the replay cache refuses it")
    replay = run("open", "--key", KEY, "--trust", str(work / f"{SIGNER}.pub"), "--replay-db", db, str(message),
                 check=False)
    if replay.returncode != 20:
        sys.exit("demo failed: a replayed message was not refused")
    print(f"  exit status {replay.returncode} (replayed)")


def cms_interop(work: Path) -> None:
    print("\n== CMS (docs/CMS.md): a certificate for the token key, signed on the token; openssl encrypts to it")
    run("key", "cert", SIGNER, "--signer", SIGNER, "-o", str(work / "ca.pem"))
    run("key", "cert", KEY, "--signer", SIGNER, "--subject", "CN=demo receiver", "-o", str(work / "receiver.pem"))
    (work / "letter.txt").write_bytes(MESSAGE)
    command = ["openssl", "cms", "-encrypt", "-aes-256-gcm", "-binary", "-in", str(work / "letter.txt"),
               "-out", str(work / "letter.p7m"), str(work / "receiver.pem")]
    print(f"\n$ {shlex.join(command)}")
    if subprocess.run(command).returncode != 0:
        sys.exit("demo failed: openssl cms -encrypt")
    opened = run("cms", "decrypt", "--key", KEY, str(work / "letter.p7m"))
    if opened.stdout != MESSAGE:
        sys.exit("demo failed: the CMS message did not open to the letter")
    print("  openssl cms -encrypt output opened on the token")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def three_phase(work: Path) -> None:
    peer_token = os.environ.get("TOKENCSP_PEER_TOKEN")
    if not peer_token:
        print("\n(three-phase part skipped: TOKENCSP_PEER_TOKEN names no second token; `make demo` sets it)")
        return
    print(f"\n== Three-phase exchange (docs/THREEPHASE.md): {ALICE} on {os.environ['TOKENCSP_TOKEN']}, "
          f"{BOB} on {peer_token}")
    fresh_key(ALICE)
    fresh_key(BOB, token=peer_token)
    run("key", "export", ALICE, "-o", str(work / f"{ALICE}.pub"))
    run("key", "export", BOB, "--token", peer_token, "-o", str(work / f"{BOB}.pub"))
    inbox = work / "inbox"
    inbox.mkdir()
    files = [work / "letter.txt", work / "message.enc"]
    port = free_port()
    listen = ["listen", "--token", peer_token, "--key", BOB, "--trust", str(work / f"{ALICE}.pub"),
              "--port", str(port), "--out-dir", str(inbox), "--once"]
    print(f"\n$ tokencsp {shlex.join(listen)} &")
    listener = subprocess.Popen([sys.executable, "-m", "tokencsp", *listen], stderr=subprocess.PIPE)
    try:
        assert listener.stderr is not None  # stderr=PIPE
        ready = listener.stderr.readline()  # "tokencsp: listening on ..." once the socket is bound
        sys.stdout.write(ready.decode(errors="replace"))
        if b"listening on" not in ready:
            sys.exit("demo failed: the listener did not start")
        run("send", "--key", ALICE, "--to", str(work / f"{BOB}.pub"), "--connect", f"127.0.0.1:{port}",
            *map(str, files))
        _, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    sys.stdout.write(err.decode(errors="replace"))
    if listener.returncode != 0 or any((inbox / ALICE / f.name).read_bytes() != f.read_bytes() for f in files):
        sys.exit("demo failed: the three-phase transfer did not deliver identical files")
    print(f"  {len(files)} files delivered byte-identical into the listener's out-dir, under {ALICE}/")


if __name__ == "__main__":
    sys.exit(main())
