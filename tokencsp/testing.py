"""A SoftHSM2 token kit for tests and benchmarks, and the objects the pytest plugin hands out.

:class:`SoftHSMKit` builds a private SoftHSM2 token store in a directory the
caller owns (a temp dir), initialises one token per label over PKCS#11 (in a
child process running tokencsp's ``initialize_token``, the PINs in its
environment, never on a command line) and hands back the environment that
points tokencsp at it::

    with SoftHSMKit(tmp_path, labels=("a", "b")) as kit:
        kit.apply()               # SOFTHSM2_CONF, TOKENCSP_MODULE/TOKEN/PIN
        ...                       # now load the PKCS#11 module

A process sees only the tokens that existed when it initialised the PKCS#11
module, so create every token (and apply the environment) *before* anything
in this process loads the module.  ``tokencsp.pytest_plugin`` does that for
pytest users (docs/TESTING.md).

Subprocess and files only: it must work before the PKCS#11 module is loaded,
and it never loads one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from .config import SOFTHSM_MODULE_PATHS

__all__ = ["MODULE_CANDIDATES", "OCK_MODULE_CANDIDATES", "OpencryptokiKit", "Pkcs11Token", "SoftHSMKit", "SoftHSMToken",
           "find_softhsm_module", "selected_backend"]

#: Where distributions put libsofthsm2.so (softhsm/setup-token.sh has the same list).
MODULE_CANDIDATES: tuple[str, ...] = SOFTHSM_MODULE_PATHS

# Mirrors softhsm/softhsm2.conf.in; kept inline because that template is not
# part of an installed package.
_CONF_TEMPLATE = """\
# SoftHSM v2 configuration written by tokencsp.testing.SoftHSMKit.
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
"""

_INIT_TOKENS = """\
import os, sys
from tokencsp.errors import TokenCSPError
from tokencsp.provider import initialize_token
try:
    for label in sys.argv[1:]:
        initialize_token(label, so_pin=os.environ["TOKENCSP_SO_PIN"], pin=os.environ["TOKENCSP_PIN"],
                         module=os.environ["TOKENCSP_MODULE"])
except TokenCSPError as e:
    sys.exit(f"token {label!r}: {e}")
"""

_EMPTY_TOKEN = """\
import os, sys
from tokencsp.errors import TokenCSPError
from tokencsp.provider import empty_token
try:
    print(empty_token(sys.argv[1], pin=os.environ["TOKENCSP_PIN"], module=os.environ["TOKENCSP_MODULE"]))
except TokenCSPError as e:
    sys.exit(f"token {sys.argv[1]!r}: {e}")
"""

_INSTALL_HINT = ("install SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2; Fedora: dnf install softhsm; "
                 "in a tokencsp checkout `make test` does it)")

# PKCS#11 token labels are CK_UTF8CHAR[32], space padded.
_MAX_LABEL_BYTES = 32
_UTIL_TIMEOUT_S = 60


def find_softhsm_module() -> str | None:
    """Path of libsofthsm2.so: ``$TOKENCSP_MODULE`` if it names a file, else the
    first of :data:`MODULE_CANDIDATES` that exists, else ``None``."""
    from_env = os.environ.get("TOKENCSP_MODULE")
    if from_env and os.path.isfile(from_env):
        return from_env
    for candidate in MODULE_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    return None


def _parse_labels(show_slots_output: str) -> list[str]:
    labels = []
    for line in show_slots_output.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key == "Label":
            label = value.strip()
            if label:  # uninitialised (free) slots have an empty label
                labels.append(label)
    return labels


@dataclass(frozen=True)
class Pkcs11Token:
    """One initialised test token, on SoftHSM or opencryptoki: what a test needs to reach it."""

    module: str
    label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)

    @property
    def uri(self) -> str:
        """RFC 7512 URI of the token, with the module path and no PIN."""
        return f"pkcs11:token={quote(self.label, safe='')}?module-path={quote(self.module, safe='/')}"

    @property
    def env(self) -> dict[str, str]:
        """Variables for a child process (or ``os.environ``): tokencsp's ``TOKENCSP_*`` and
        python-pkcs11's CI convention ``PKCS11_MODULE``/``_TOKEN_LABEL``/``_TOKEN_PIN``."""
        return {
            "TOKENCSP_MODULE": self.module,
            "TOKENCSP_TOKEN": self.label,
            "TOKENCSP_PIN": self.pin,
            "PKCS11_MODULE": self.module,
            "PKCS11_TOKEN_LABEL": self.label,
            "PKCS11_TOKEN_PIN": self.pin,
        }


@dataclass(frozen=True)
class SoftHSMToken(Pkcs11Token):
    """One initialised token of a :class:`SoftHSMKit`; ``env`` also holds ``SOFTHSM2_CONF``."""

    conf_path: Path

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf_path), **super().env}


class _TokenKit:
    """What :class:`SoftHSMKit` and :class:`OpencryptokiKit` share: labels and PINs checked on
    construction, a context manager that leaves the caller's directory alone, the token lookup and
    the environment that points tokencsp at the first token.  No PINs in ``repr``."""

    #: the PIN lengths the token accepts, for the constructor's check
    _PIN_LENGTHS: range = range(4, 256)

    def __init__(self, directory: Path, labels: Sequence[str], user_pin: str, so_pin: str) -> None:
        if isinstance(labels, str):
            raise TypeError("labels must be a sequence of str, not a str")
        labels = tuple(labels)
        if not labels:
            raise ValueError("at least one token label is required")
        if len(set(labels)) != len(labels):
            raise ValueError("token labels must be unique: tokens are found by label")
        self._check_labels(labels)
        lengths = self._PIN_LENGTHS
        for name, pin in (("user_pin", user_pin), ("so_pin", so_pin)):
            if len(pin) not in lengths:
                raise ValueError(f"{name} must be {lengths.start} to {lengths.stop - 1} characters")
        self.directory = Path(directory).resolve()
        self.labels: tuple[str, ...] = labels
        self.user_pin = user_pin
        self.so_pin = so_pin
        self.module: str | None = None

    @staticmethod
    def _check_labels(labels: Sequence[str]) -> None:
        for label in labels:
            size = len(label.encode("utf-8"))
            if not 0 < size <= _MAX_LABEL_BYTES or label != label.strip():
                raise ValueError(
                    f"token label {label!r} must be 1 to {_MAX_LABEL_BYTES} bytes "
                    "without leading or trailing spaces"
                )

    def __repr__(self) -> str:  # no PINs
        return f"{type(self).__name__}(directory={str(self.directory)!r}, labels={self.labels!r})"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def _entered(self, what: str) -> str:
        """The module path; a RuntimeError naming ``what`` before the kit was entered."""
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__}.{what}() needs the kit entered first")
        return self.module

    def _label(self, label: str | None) -> str:
        """``label``, or the first one when None; KeyError for a label the kit does not hold."""
        label = self.labels[0] if label is None else label
        if label not in self.labels:
            raise KeyError(label)
        return label

    def token_labels(self) -> list[str]:
        """Labels of the initialised tokens in the kit's store."""
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        """The variables that point tokencsp at this kit's first token."""
        return {"TOKENCSP_MODULE": self._entered("environ"), "TOKENCSP_TOKEN": self.labels[0],
                "TOKENCSP_PIN": self.user_pin}

    def apply(self) -> None:
        """Put :meth:`environ` into ``os.environ`` for this process and its children."""
        os.environ.update(self.environ())


class SoftHSMKit(_TokenKit):
    """A private SoftHSM2 token store with one initialised token per label.

    Entering the kit writes ``directory/softhsm2.conf`` and
    ``directory/tokens`` and initialises every label that is not there yet,
    so re-entering on the same directory is harmless. Leaving it removes
    nothing: the directory belongs to the caller.
    """

    def __init__(
        self,
        directory: Path,
        labels: Sequence[str] = ("tokencsp-test",),
        user_pin: str = "1234",
        so_pin: str = "12345678",
    ) -> None:
        super().__init__(directory, labels, user_pin, so_pin)  # SoftHSM's PIN lengths: 4 to 255
        self.token_dir = self.directory / "tokens"
        self.conf_path = self.directory / "softhsm2.conf"

    def __enter__(self) -> SoftHSMKit:
        util = shutil.which("softhsm2-util")
        if util is None:
            raise RuntimeError(f"softhsm2-util not found on PATH; {_INSTALL_HINT}")
        module = find_softhsm_module()
        if module is None:
            raise RuntimeError(
                "libsofthsm2.so not found (looked at $TOKENCSP_MODULE and "
                f"{', '.join(MODULE_CANDIDATES)}); {_INSTALL_HINT}"
            )
        self.module = module

        self.token_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(_CONF_TEMPLATE.format(tokendir=self.token_dir))

        self._init_tokens(label for label in self.labels if label not in set(self.token_labels()))
        missing = set(self.labels) - set(self.token_labels())
        if missing:
            raise RuntimeError(f"tokens {sorted(missing)} were not created")
        return self

    def add_tokens(self, labels: Iterable[str]) -> tuple[SoftHSMToken, ...]:
        """Initialise more tokens in the entered kit's store.  Only processes that load the
        PKCS#11 module afterwards see them."""
        self._entered("add_tokens")
        new = tuple(labels)
        self._check_labels(new)
        clash = set(new) & set(self.labels)
        if clash:
            raise ValueError(f"tokens {sorted(clash)} exist already")
        self._init_tokens(new)
        self.labels += new
        return tuple(self.token(label) for label in new)

    def token(self, label: str | None = None) -> SoftHSMToken:
        """The token ``label`` (default: the first) of the entered kit."""
        module = self._entered("token")
        return SoftHSMToken(module, self._label(label), self.user_pin, self.so_pin, self.conf_path)

    def token_labels(self) -> list[str]:
        """Labels of the initialised tokens in this kit's store, as
        ``softhsm2-util --show-slots`` reports them."""
        return _parse_labels(self._run_util("--show-slots", what="listing slots"))

    def environ(self) -> dict[str, str]:
        """The variables that point tokencsp at this kit's first token, SoftHSM's config with them."""
        return {"SOFTHSM2_CONF": str(self.conf_path), **super().environ()}

    def _init_tokens(self, labels: Iterable[str]) -> None:
        # All in one child process, so that this one has not loaded the module yet (SoftHSM adds a
        # free slot after each C_InitToken); the PINs travel in its environment, the labels on argv.
        todo = list(labels)
        if not todo:
            return
        env = dict(os.environ, SOFTHSM2_CONF=str(self.conf_path), TOKENCSP_MODULE=str(self.module),
                   TOKENCSP_SO_PIN=self.so_pin, TOKENCSP_PIN=self.user_pin)
        timeout = _UTIL_TIMEOUT_S + 2 * len(todo)
        try:
            proc = subprocess.run([sys.executable, "-c", _INIT_TOKENS, *todo], env=env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"initialising {len(todo)} tokens timed out after {timeout} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"initialising tokens {todo} failed: {proc.stderr.strip()}")

    def _run_util(self, *args: str, what: str) -> str:
        env = dict(os.environ, SOFTHSM2_CONF=str(self.conf_path))
        try:
            proc = subprocess.run(
                ["softhsm2-util", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=_UTIL_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError as e:
            raise RuntimeError(f"softhsm2-util not found on PATH; {_INSTALL_HINT}") from e
        except subprocess.TimeoutExpired:
            # `from None`: TimeoutExpired's message holds the argv, PINs included.
            raise RuntimeError(
                f"softhsm2-util timed out {what} after {_UTIL_TIMEOUT_S} s"
            ) from None
        if proc.returncode != 0:
            # Never echo the command line: it may hold PINs.
            detail = (proc.stderr or proc.stdout).strip()
            raise RuntimeError(
                f"softhsm2-util failed {what} (exit {proc.returncode}): {detail}"
            )
        return proc.stdout


# --- opencryptoki -----------------------------------------------------------

#: Where distributions put opencryptoki's PKCS#11 library.
OCK_MODULE_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib/s390x-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib64/opencryptoki/libopencryptoki.so",
    "/usr/lib/opencryptoki/libopencryptoki.so",
)

#: The test backends the suite can run on (``$TOKENCSP_TEST_BACKEND``).
TEST_BACKENDS = ("softhsm", "opencryptoki")

# Written by opencryptoki/run-in-namespace.sh into its private token store.
_OCK_STORE = Path("/var/lib/opencryptoki")
_OCK_SANDBOX_MARK = ".tokencsp-sandbox"
_OCK_HINT = ("run pytest inside opencryptoki/run-in-namespace.sh from tokencsp's repository (as root; "
             "`make test-opencryptoki` there)")
# swtok's limits (pkcsconf -t: "PIN Length: 4-8"); a fresh token's SO PIN.
_OCK_PIN_LENGTHS = range(4, 9)
OCK_DEFAULT_SO_PIN = "87654321"


def selected_backend(environ: Mapping[str, str] | None = None) -> str:
    """The token implementation the test suite runs on: ``$TOKENCSP_TEST_BACKEND``
    (``softhsm`` when unset, ``opencryptoki`` under run-in-namespace.sh)."""
    value = (os.environ if environ is None else environ).get("TOKENCSP_TEST_BACKEND") or "softhsm"
    if value not in TEST_BACKENDS:
        raise ValueError(f"TOKENCSP_TEST_BACKEND={value!r}: expected one of {', '.join(TEST_BACKENDS)}")
    return value


def _parse_pkcsconf_labels(output: str) -> list[str]:
    """Labels of the initialised tokens in ``pkcsconf -t`` output (a blank
    swtok reports the placeholder label and no TOKEN_INITIALIZED flag)."""
    labels: list[str] = []
    label = None
    for line in output.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        if key == "Label":
            label = value.strip()
        elif key == "Flags" and label is not None:
            if "TOKEN_INITIALIZED" in value:
                labels.append(label)
            label = None
    return labels


class OpencryptokiKit(_TokenKit):
    """opencryptoki soft tokens for tests, with :class:`SoftHSMKit`'s surface.

    Only works inside ``opencryptoki/run-in-namespace.sh``, which runs
    pkcsslotd on a private, throwaway token store with three blank soft tokens;
    entering the kit initialises one token per label (``tokencsp token init``
    in a child process: C_InitToken with the fresh SO PIN 87654321, then
    C_InitPIN, PINs in the environment) and refuses any other store, so a
    test run can never re-initialise a real opencryptoki token.
    ``directory`` (the caller's) only holds test state.
    """

    _PIN_LENGTHS = _OCK_PIN_LENGTHS  # swtok refuses others (CKR_PIN_LEN_RANGE)

    def __init__(
        self,
        directory: Path,
        labels: Sequence[str] = ("tokencsp-test",),
        user_pin: str = "1234",
        so_pin: str = OCK_DEFAULT_SO_PIN,
    ) -> None:
        super().__init__(directory, labels, user_pin, so_pin)

    def __enter__(self) -> OpencryptokiKit:
        sandbox = os.environ.get("TOKENCSP_OCK_SANDBOX")
        mark = _OCK_STORE / _OCK_SANDBOX_MARK
        try:
            marked = mark.read_text().strip()
        except OSError:
            marked = None
        if not sandbox or marked != sandbox:
            raise RuntimeError(f"{_OCK_STORE} is not a private test store (no {mark} matching "
                               f"$TOKENCSP_OCK_SANDBOX); {_OCK_HINT}")
        module = os.environ.get("TOKENCSP_OCK_MODULE")
        if not module:
            module = next((c for c in OCK_MODULE_CANDIDATES if os.path.isfile(c)), None)
        if not module or not os.path.isfile(module):
            raise RuntimeError(f"libopencryptoki.so not found; {_OCK_HINT}")
        self.module = module
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = set(self.token_labels())
        for label in self.labels:
            if label not in existing:
                self._init_token(label)
        missing = set(self.labels) - set(self.token_labels())
        if missing:
            raise RuntimeError(f"tokens {sorted(missing)} were not created")
        return self

    def token_labels(self) -> list[str]:
        """Labels of the initialised tokens, as ``pkcsconf -t`` reports them."""
        try:
            proc = subprocess.run(["pkcsconf", "-t"], capture_output=True, text=True, timeout=_UTIL_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            raise RuntimeError(f"pkcsconf not found on PATH; {_OCK_HINT}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pkcsconf -t timed out after {_UTIL_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"pkcsconf -t failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        return _parse_pkcsconf_labels(proc.stdout)

    def token(self, label: str | None = None) -> Pkcs11Token:
        """The token ``label`` (default: the first) of the entered kit."""
        module = self._entered("token")
        return Pkcs11Token(module, self._label(label), self.user_pin, self.so_pin)

    def empty(self, label: str) -> int:
        """Destroy every object on the token ``label`` (logged in as the user, in a child process, as
        token init is); returns how many there were.  What the plugin's ``pkcs11_token`` does before
        each test, since opencryptoki's fixed slot table cannot give a fresh token per test."""
        token = self.token(label)
        env = dict(os.environ, TOKENCSP_MODULE=token.module, TOKENCSP_PIN=token.pin)
        try:
            proc = subprocess.run([sys.executable, "-c", _EMPTY_TOKEN, label], env=env, capture_output=True,
                                  text=True, timeout=_UTIL_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"emptying opencryptoki token {label!r} timed out after {_UTIL_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"emptying opencryptoki token {label!r} failed: {proc.stderr.strip()}")
        return int(proc.stdout)

    def _init_token(self, label: str) -> None:
        env = dict(os.environ, TOKENCSP_MODULE=str(self.module), TOKENCSP_SO_PIN=self.so_pin,
                   TOKENCSP_PIN=self.user_pin)
        proc = subprocess.run([sys.executable, "-m", "tokencsp", "token", "init", "--label", label], env=env,
                              capture_output=True, text=True, timeout=_UTIL_TIMEOUT_S, stdin=subprocess.DEVNULL,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"initialising opencryptoki token {label!r} failed: {proc.stderr.strip()}")
