"""What several test modules share: the CLI runner, the one-line-error check, host-only key fakes
and a start barrier for processes that must race.

Import it as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``: rootdir-relative
conftest, no ``__init__.py``).  Nothing here touches the token unless asked (the runner inherits the environment conftest points at
the session's test tokens; ``import_like_softhsm2_util`` opens the token it is given).
"""

from __future__ import annotations

import functools
import hmac
import os
import select
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokencsp import SessionKey, blobs
from tokencsp.blobs import SimpleBlob
from tokencsp.errors import SessionKeyImportError

__all__ = ["OAEP_SHA1", "PSS", "REPO_ROOT", "HostKey", "HostSigner", "assert_one_line_error", "cbc_bad_padding",
           "import_like_softhsm2_util", "kept_substitute", "start_together", "tokencsp"]

REPO_ROOT = Path(__file__).resolve().parent.parent

OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

_ERROR_PREFIX = "tokencsp: error: "


# -- the command line -----------------------------------------------------------------------------


def tokencsp(*args: str, input: bytes | None = None, env: Mapping[str, str] | None = None, check: bool = True,
             cwd: str | Path | None = None, timeout: float = 300, fsize: int | None = None,
             ) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m tokencsp ARGS`` as a user would; stdout and stderr captured as bytes.

    ``env`` is added to (never replaces) this process's environment.  With ``check`` a non-zero exit
    fails the test with the command's stderr.  With ``fsize`` the command runs under RLIMIT_FSIZE of
    that many bytes (a full disk) with SIGXFSZ ignored, so writes fail with EFBIG.
    """
    if fsize is None:
        command = [sys.executable, "-m", "tokencsp", *args]
    else:
        probe = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                 f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))\n"
                 "sys.argv = ['tokencsp'] + sys.argv[1:]; runpy.run_module('tokencsp', run_name='__main__')")
        command = [sys.executable, "-c", probe, *args]
    result = subprocess.run(command, input=input, capture_output=True, env={**os.environ, **(env or {})},
                            cwd=cwd, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"tokencsp {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
    return result


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``openssl ARGS``; a non-zero exit fails the test with its stderr."""
    result = subprocess.run(["openssl", *args], capture_output=True, timeout=300, input=input)
    assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], status: int, needle: str = "",
                          hint: str | None = None) -> str:
    """The CLI's refusal contract: exit ``status``, nothing on stdout, and exactly one stderr line
    ``tokencsp: error: ...`` (containing ``needle``) with no traceback -- followed by exactly one
    ``tokencsp: hint: ...`` line containing ``hint`` when one is expected.  Returns the error line."""
    err = result.stderr.decode(errors="replace")
    assert result.returncode == status, f"exit {result.returncode}, expected {status}: {err}"
    assert result.stdout == b"", f"stdout not empty on a refusal: {result.stdout[:200]!r}; stderr: {err}"
    assert "Traceback" not in err, err
    lines = 1 if hint is None else 2
    assert err.startswith(_ERROR_PREFIX) and err.endswith("\n") and err.count("\n") == lines, \
        f"not exactly one '{_ERROR_PREFIX}...' line{'' if hint is None else ' and one hint'}: {err!r}"
    error, _, rest = err.partition("\n")
    assert needle in error, f"{needle!r} not in {err!r}"
    if hint is not None:
        assert rest.startswith("tokencsp: hint: ") and hint in rest, f"hint {hint!r} not in {err!r}"
    return error


# -- keys made by another tool ----------------------------------------------------------------------


def import_like_softhsm2_util(token_label: str, pin: str, key: rsa.RSAPrivateKey, label: str,
                              key_id: bytes) -> None:
    """Put ``key`` on the token as ``softhsm2-util --import`` does (private half may sign, decrypt and
    unwrap; public half may verify, encrypt and wrap; no tokencsp attributes), over PKCS#11 with
    python-pkcs11, so it works on every backend and the PIN is never on a command line."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    from tokencsp import config
    from tokencsp.token import open_token
    from tokencsp.token.templates import int_bytes

    numbers = key.private_numbers()
    common = {Attribute.KEY_TYPE: KeyType.RSA, Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id,
              Attribute.MODULUS: int_bytes(numbers.public_numbers.n),
              Attribute.PUBLIC_EXPONENT: int_bytes(numbers.public_numbers.e)}
    token = open_token(config.find_module(), pin, label=token_label)
    try:
        with token._lease() as lease:
            lease.session.create_object({
                **common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True, Attribute.DECRYPT: True, Attribute.UNWRAP: True,
                Attribute.PRIVATE_EXPONENT: int_bytes(numbers.d), Attribute.PRIME_1: int_bytes(numbers.p),
                Attribute.PRIME_2: int_bytes(numbers.q), Attribute.EXPONENT_1: int_bytes(numbers.dmp1),
                Attribute.EXPONENT_2: int_bytes(numbers.dmq1), Attribute.COEFFICIENT: int_bytes(numbers.iqmp)})
            lease.session.create_object({
                **common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.PRIVATE: False,
                Attribute.VERIFY: True, Attribute.ENCRYPT: True, Attribute.WRAP: True})
    finally:
        token.close()


# -- CryptoAPI payloads under a chosen key (the capi/CMS substitute path, issue 9 finding 10) --------


def cbc_bad_padding(alg: blobs.AlgId, key: bytes, blocks: int = 4) -> bytes:
    """A CBC ciphertext (zero IV) whose final CryptDecrypt under ``key`` always fails its padding check:
    every plaintext block is zero, and a PKCS#5 pad byte is never 0.  With ``key`` a bad blob's
    substitute this makes the failure deterministic instead of 255 times in 256."""
    session = SessionKey.from_bytes(alg, key)
    return session.encrypt(bytes(session.block_size * blocks), final=False)


def kept_substitute(public_key: rsa.RSAPublicKey, blob: SimpleBlob, length: int | None = None) -> bytes:
    """The substitute key every process of this user derives for ``blob`` (the secret the state directory keeps).

    Reads -- or, first, makes -- the key's rejection secret exactly as a ``tokencsp`` process does, so a
    test can know what a CLI run will decrypt a bad blob with.
    """
    from tokencsp.calibration import CalibrationCache
    from tokencsp.implicit import key_fingerprint, substitute_key

    secret = CalibrationCache.default().secret(key_fingerprint(public_key))
    assert secret is not None, "the state directory's rejection secret is not usable"
    return substitute_key(secret, blob, blobs.SESSION_KEY_LENGTHS[blob.alg_id] if length is None else length)


# -- processes that must start at the same moment -------------------------------------------------

_BARRIER_CHILD = """\
import os, runpy, sys
ready, go = int(sys.argv[1]), int(sys.argv[2])
import tokencsp.cli  # the slow part of start-up happens before the barrier
os.write(ready, b"r")
os.close(ready)
os.read(go, 1)  # EOF when the parent closes its end: every child is released at once
os.close(go)
sys.argv = ["tokencsp", *sys.argv[3:]]
runpy.run_module("tokencsp", run_name="__main__", alter_sys=True)
"""


def start_together(args: Sequence[str], count: int, *, timeout: float = 120,
                   **popen: object) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` ``tokencsp ARGS`` processes and release them together.

    Each child imports tokencsp, reports ready on one pipe and blocks on another; only when all
    ``count`` are ready does the parent close the second pipe, so they race for real instead of
    one after another (a start-up takes longer than most of what they race for).
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _BARRIER_CHILD, str(ready_w), str(go_r), *args],
                pass_fds=(ready_w, go_r), stdin=subprocess.DEVNULL, **popen))
        os.close(ready_w)
        ready_w = -1
        seen = b""
        while len(seen) < count:
            readable, _, _ = select.select([ready_r], [], [], timeout)
            if not readable:
                raise AssertionError(f"only {len(seen)} of {count} processes got ready in {timeout} s")
            chunk = os.read(ready_r, count)
            if not chunk:
                raise AssertionError(f"a process exited before the barrier: {_reap(procs)}")
            seen += chunk
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    finally:
        if ready_w >= 0:
            os.close(ready_w)
        os.close(ready_r)
        os.close(go_r)
        os.close(go_w)  # the starting shot
    return procs


def _reap(procs: list[subprocess.Popen[bytes]]) -> list[tuple[int | None, bytes]]:
    out = []
    for proc in procs:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else b""
            out.append((proc.returncode, err))
    return out


# -- host-only keys ------------------------------------------------------------------------------


class HostKey:
    """An exchange key in host memory with :class:`tokencsp.provider.ExchangeKey`'s import contract.

    For tests of the formats and protocols that must run without a token (fuzzing, property tests).
    Malformed blob structure raises what :meth:`SimpleBlob.from_bytes` raises; anything that
    depends on the secret is one :class:`SessionKeyImportError`.  :meth:`import_simpleblob_implicit`
    substitutes an HMAC-derived key as the token-backed key does, so callers take the production
    path rather than a fallback that only test doubles reach.  With ``memo`` the RSA result is
    cached on (ciphertext, oaep): a pure function, and it keeps fuzzers in the parsers.
    """

    def __init__(self, key: rsa.RSAPrivateKey | None = None, *, memo: bool = False) -> None:
        self.key = key if key is not None else rsa.generate_private_key(65537, 2048)
        self._rejection_secret = os.urandom(32)
        self._unwrap = functools.lru_cache(maxsize=4096)(self._unwrap_raw) if memo else self._unwrap_raw
        self.imports = 0

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def _unwrap_raw(self, ciphertext: bytes, oaep: bool) -> bytes | None:
        try:
            return self.key.decrypt(ciphertext, OAEP_SHA1 if oaep else padding.PKCS1v15())
        except ValueError:
            return None

    def import_simpleblob(self, blob: bytes | SimpleBlob, oaep: bool = False) -> SessionKey:
        self.imports += 1
        simple = blob if isinstance(blob, SimpleBlob) else SimpleBlob.from_bytes(blob)
        value = self._unwrap(bytes(simple.encrypted_key), bool(oaep))
        if value is None or len(value) != blobs.SESSION_KEY_LENGTHS[simple.alg_id]:
            raise SessionKeyImportError()
        return SessionKey.from_bytes(simple.alg_id, value)

    def import_simpleblob_implicit(self, blob: bytes | SimpleBlob, oaep: bool = False) -> SessionKey:
        self.imports += 1
        simple = blob if isinstance(blob, SimpleBlob) else SimpleBlob.from_bytes(blob)
        length = blobs.SESSION_KEY_LENGTHS[simple.alg_id]
        value = self._unwrap(bytes(simple.encrypted_key), bool(oaep))
        if value is None or len(value) != length:
            wire = simple.to_bytes()
            stream = b"".join(hmac.new(self._rejection_secret, bytes([i]) + wire, "sha256").digest()
                              for i in range((length + 31) // 32))
            value = stream[:length]
        return SessionKey.from_bytes(simple.alg_id, value)


class HostSigner:
    """A signature key in host memory: RSA-PSS/SHA-256 with a 32-byte salt, as KeyPair.sign makes."""

    def __init__(self, key: rsa.RSAPrivateKey | None = None) -> None:
        self.key = key if key is not None else rsa.generate_private_key(65537, 2048)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, PSS, hashes.SHA256())
