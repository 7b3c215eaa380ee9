"""The peers ``make bench`` compares tokencsp with: age, gpg, ``openssl cms`` with the key on the
same SoftHSM token (libp11's pkcs11 engine), ``cp`` and ``python -c pass``.

Missing tools are installed with apt when running as root (age, gnupg,
libengine-pkcs11-openssl, and time for peak RSS; Debian 12's openssl 3.0 has no pkcs11-provider
package, so the engine it is); otherwise their rows say "not installed".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENGINE_PATHS", "Peers", "ensure_installed", "present", "versions"]

APT_PACKAGES = {"age": "age", "gpg": "gnupg", "engine": "libengine-pkcs11-openssl", "time": "time"}
ENGINE_PATHS = ("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so", "/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so",
                "/usr/lib/engines-3/pkcs11.so")
OSSL_KEY = "bench-ossl"  # a card-style key (CKA_DECRYPT) for openssl: tokencsp's keys only unwrap


def _engine() -> str | None:
    return next((path for path in ENGINE_PATHS if os.path.exists(path)), None)


def _have(what: str) -> bool:
    if what == "time":  # GNU time, for the peak RSS (tools/bench_lib.py)
        return os.access("/usr/bin/time", os.X_OK)
    return _engine() is not None if what == "engine" else shutil.which(what) is not None


def present() -> dict[str, bool]:
    return {what: _have(what) for what in APT_PACKAGES}


def ensure_installed(log: bool = True) -> dict[str, bool]:
    """Install the missing peers with apt (root only); which are there afterwards."""
    missing = [APT_PACKAGES[what] for what in APT_PACKAGES if not _have(what)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        if log:
            print(f"installing the peers: apt-get install {' '.join(missing)}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
    elif missing and log:
        print(f"not root: benchmarking without {', '.join(missing)}", file=sys.stderr)
    return present()


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def versions() -> dict[str, str | None]:
    engine = _engine()
    deb = _first_line(["dpkg-query", "-W", "-f", "${Version}", "libengine-pkcs11-openssl"]) if engine else None
    return {
        "age": _first_line(["age", "--version"]) if _have("age") else None,
        "gpg": _first_line(["gpg", "--version"]) if _have("gpg") else None,
        "openssl": _first_line(["openssl", "version"]),
        "libp11 engine": deb,
        "softhsm": _first_line(["softhsm2-util", "--version"]),
    }


@dataclass
class Peers:
    """Key material for each peer in ``directory``, and the command lines to seal/open with them."""

    directory: Path
    env: dict[str, str]  # the SoftHSM kit's environment
    token: str
    pin: str
    module: str
    have: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gnupg = self.directory / "gnupg"
        self.age_key = self.directory / "age.key"
        self.ossl_conf = self.directory / "openssl.cnf"
        self.ossl_cert = self.directory / "ossl.crt"
        self.age_recipient = ""

    # -- set-up ----------------------------------------------------------------------

    def setup(self) -> None:
        if self.have.get("age"):
            subprocess.run(["age-keygen", "-o", str(self.age_key)], check=True, capture_output=True)
            self.age_recipient = subprocess.run(["age-keygen", "-y", str(self.age_key)], check=True,
                                                capture_output=True, text=True).stdout.strip()
        if self.have.get("gpg"):
            self._setup_gpg()
        if self.have.get("engine"):
            self._setup_openssl()

    def _setup_gpg(self) -> None:
        self.gnupg.mkdir(mode=0o700)
        params = ("%no-protection\nKey-Type: RSA\nKey-Length: 2048\nSubkey-Type: RSA\nSubkey-Length: 2048\n"
                  "Name-Real: bench\nName-Email: bench@example.invalid\nExpire-Date: 0\n%commit\n")
        subprocess.run(["gpg", "--homedir", str(self.gnupg), "--batch", "--gen-key"], input=params.encode(),
                       check=True, capture_output=True)

    def _setup_openssl(self) -> None:
        """An RSA-2048 key with CKA_DECRYPT on the same token, and a self-signed certificate for it."""
        engine = _engine()
        self.ossl_conf.write_text(
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
            "[engine_section]\npkcs11 = pkcs11_section\n"
            f"[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {engine}\nMODULE_PATH = {self.module}\ninit = 0\n")
        script = ("import os, pkcs11\nfrom pkcs11 import KeyType, MechanismFlag as F\n"
                  "lib = pkcs11.lib(os.environ['TOKENCSP_MODULE'])\n"
                  "with lib.get_token(token_label=os.environ['TOKENCSP_TOKEN']).open("
                  "user_pin=os.environ['TOKENCSP_PIN'], rw=True) as s:\n"
                  f"    s.generate_keypair(KeyType.RSA, 2048, label={OSSL_KEY!r}, store=True,"
                  " capabilities=F.DECRYPT | F.SIGN | F.ENCRYPT | F.VERIFY)\n")
        subprocess.run([sys.executable, "-c", script], env=self.env, check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine",
                        "-key", self.ossl_uri, "-subj", "/CN=bench-ossl", "-days", "30",
                        "-out", str(self.ossl_cert)], env=self.ossl_env, check=True, capture_output=True)

    def close(self) -> None:
        if self.gnupg.exists() and shutil.which("gpgconf"):
            subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "gpg-agent"], check=False,
                           capture_output=True)

    @property
    def ossl_uri(self) -> str:
        # The PIN in the URI: a throwaway bench token; openssl has no other non-interactive way.
        return f"pkcs11:token={self.token};object={OSSL_KEY};type=private?pin-value={self.pin}"

    @property
    def ossl_env(self) -> dict[str, str]:
        return dict(self.env, OPENSSL_CONF=str(self.ossl_conf))

    # -- commands: (argv, env) reading ``src`` and writing ``dst`` -----------------------

    def seal(self, tool: str, src: str, dst: str) -> tuple[list[str], dict[str, str]] | None:
        if tool == "age" and self.have.get("age"):
            return ["age", "-e", "-r", self.age_recipient, "-o", dst, src], self.env
        if tool == "gpg" and self.have.get("gpg"):
            return ["gpg", "--homedir", str(self.gnupg), "--batch", "--yes", "--quiet", "--trust-model", "always",
                    "-z", "0", "-r", "bench@example.invalid", "-o", dst, "-e", src], self.env
        if tool == "openssl cms" and self.have.get("engine"):
            return ["openssl", "cms", "-encrypt", "-binary", "-stream", "-aes-256-gcm", "-recip", str(self.ossl_cert),
                    "-keyopt", "rsa_padding_mode:oaep", "-outform", "DER", "-in", src, "-out", dst], self.env
        if tool == "cp":
            return ["cp", src, dst], self.env
        return None

    def open(self, tool: str, src: str, dst: str) -> tuple[list[str], dict[str, str]] | None:
        if tool == "age" and self.have.get("age"):
            return ["age", "-d", "-i", str(self.age_key), "-o", dst, src], self.env
        if tool == "gpg" and self.have.get("gpg"):
            return ["gpg", "--homedir", str(self.gnupg), "--batch", "--yes", "--quiet", "-o", dst, "-d", src], self.env
        if tool == "openssl cms" and self.have.get("engine"):
            return ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-engine", "pkcs11", "-keyform",
                    "engine", "-inkey", self.ossl_uri, "-recip", str(self.ossl_cert), "-in", src, "-out", dst], \
                self.ossl_env
        if tool == "cp":
            return ["cp", src, dst], self.env
        return None
