"""``make demo``: the whole CryptoAPI exchange on the dev token, step by step, through the CLI.

Runs the same ``tokencsp`` commands a user would type, in a scratch
directory, and prints each command and what it produced.  Re-running is
safe: the demo's key container is replaced each time.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

KEY = "demo-exchange"
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
            run("key", "delete", KEY)
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

        print("\n== A tampered SIMPLEBLOB is refused with one uniform error, nothing written")
        tampered = bytearray(blob.read_bytes())
        tampered[-1] ^= 0x01
        (work / "tampered.blob").write_bytes(bytes(tampered))
        out = work / "should-not-exist.txt"
        bad = run("capi", "decrypt", "--key", KEY, "--blob", str(work / "tampered.blob"), "-o", str(out),
                  str(cipher), check=False)
        if bad.returncode == 0 or out.exists():
            sys.exit("demo failed: a tampered blob was accepted")
        print(f"  exit status {bad.returncode}; no output file")
    print("\ndemo complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
