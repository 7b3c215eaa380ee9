"""Where the module, the token and the PIN come from.

Pure apart from reading the environment, PIN files and the terminal: no
PKCS#11 here.  Precedence everywhere: explicit argument, then RFC 7512 URI,
then environment variable, then default.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from .errors import ConfigError, ModuleLoadError, PinError

__all__ = [
    "SOFTHSM_MODULE_PATHS",
    "TokenSelector",
    "find_module",
    "parse_pkcs11_uri",
    "read_pin_file",
    "resolve_pin",
    "resolve_selector",
    "resolve_so_pin",
]

ENV_MODULE = "TOKENCSP_MODULE"
ENV_TOKEN = "TOKENCSP_TOKEN"
ENV_PIN = "TOKENCSP_PIN"
ENV_SO_PIN = "TOKENCSP_SO_PIN"
ENV_URI = "TOKENCSP_URI"

SOFTHSM_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

# RFC 7512 attributes tokencsp understands; anything else is refused rather
# than silently ignored, since a typo could select the wrong token.
_PATH_ATTRS = {"token", "serial", "manufacturer", "model", "object", "id", "type", "library-description",
               "library-manufacturer", "library-version", "slot-id", "slot-description",
               "slot-manufacturer"}
_QUERY_ATTRS = {"pin-source", "pin-value", "module-path", "module-name"}


def find_module(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """Path of the PKCS#11 module: the argument, $TOKENCSP_MODULE, or SoftHSM2 where distros put it."""
    path = explicit or environ.get(ENV_MODULE)
    if path:
        if not Path(path).is_file():
            raise ModuleLoadError(f"PKCS#11 module not found: {path}")
        return path
    for candidate in SOFTHSM_MODULE_PATHS:
        if Path(candidate).is_file():
            return candidate
    raise ModuleLoadError(
        f"no PKCS#11 module given and SoftHSM2 not found; set {ENV_MODULE} or pass --module"
    )


def parse_pkcs11_uri(uri: str) -> dict[str, str]:
    """Split an RFC 7512 ``pkcs11:`` URI into its decoded attributes."""
    if not uri.startswith("pkcs11:"):
        raise ConfigError("a PKCS#11 URI starts with 'pkcs11:'")
    body = uri[len("pkcs11:"):]
    path, _, query = body.partition("?")
    result: dict[str, str] = {}
    for part, allowed, sep in ((path, _PATH_ATTRS, ";"), (query, _QUERY_ATTRS, "&")):
        for item in filter(None, part.split(sep)):
            name, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"PKCS#11 URI attribute without a value: {name!r}")
            if name not in allowed:
                raise ConfigError(f"unsupported PKCS#11 URI attribute: {name!r}")
            if name in result:
                raise ConfigError(f"PKCS#11 URI attribute given twice: {name!r}")
            result[name] = unquote(value)
    return result


@dataclass(frozen=True)
class TokenSelector:
    """Which module, token and object to use, after every source has been consulted."""

    module: str | None = None
    token_label: str | None = None
    token_serial: str | None = None
    object_label: str | None = None
    pin_source: str | None = None
    pin_value: str | None = None

    def __repr__(self) -> str:
        return (f"TokenSelector(module={self.module!r}, token_label={self.token_label!r}, "
                f"token_serial={self.token_serial!r}, object_label={self.object_label!r})")


def resolve_selector(
    module: str | None = None,
    token: str | None = None,
    serial: str | None = None,
    uri: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TokenSelector:
    uri = uri or environ.get(ENV_URI)
    attrs = parse_pkcs11_uri(uri) if uri else {}
    return TokenSelector(
        module=module or attrs.get("module-path") or environ.get(ENV_MODULE),
        token_label=token or attrs.get("token") or (None if serial or "serial" in attrs else environ.get(ENV_TOKEN)),
        token_serial=serial or attrs.get("serial"),
        object_label=attrs.get("object"),
        pin_source=attrs.get("pin-source"),
        pin_value=attrs.get("pin-value"),
    )


def read_pin_file(path: str | os.PathLike[str]) -> str:
    """The PIN is the file's first line, without its line ending.

    A regular file that group or others may access is refused, as ssh refuses
    such a private key: the PIN would be readable by other local users.
    Pipes and devices (``/dev/stdin``, a ``<(...)`` substitution) are not checked.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            _check_private(handle.fileno(), os.fspath(path))
            line = handle.readline()
    except OSError as exc:
        raise ConfigError(f"cannot read PIN file {os.fspath(path)}: {exc.strerror}") from None
    pin = line.rstrip("\r\n")
    if not pin:
        raise ConfigError(f"PIN file {os.fspath(path)} is empty")
    return pin


def _check_private(fd: int, path: str) -> None:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) and mode & 0o077:
        raise ConfigError(f"PIN file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}): "
                          f"run chmod 600 {path}")


def resolve_pin(
    pin: str | Callable[[], str] | None = None,
    pin_file: str | os.PathLike[str] | None = None,
    selector: TokenSelector | None = None,
    environ: Mapping[str, str] = os.environ,
    interactive: bool | None = None,
    prompt: str = "Token user PIN: ",
) -> str:
    """The user PIN from the first source that has one; a prompt only on a terminal."""
    if callable(pin):
        pin = pin()
    if pin:
        return pin
    if pin_file:
        return read_pin_file(pin_file)
    if selector is not None:
        if selector.pin_value:
            return selector.pin_value
        if selector.pin_source:
            source = selector.pin_source
            if source.startswith("file:"):
                source = source[len("file:"):]
                if source.startswith("//"):
                    source = source[2:]
            return read_pin_file(source)
    if environ.get(ENV_PIN):
        return environ[ENV_PIN]
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive:
        entered = getpass.getpass(prompt)
        if entered:
            return entered
    raise PinError(f"no PIN: set {ENV_PIN}, use --pin-file, or run on a terminal to be prompted")


def resolve_so_pin(so_pin_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ,
                   interactive: bool | None = None) -> str:
    """The security officer PIN (token initialisation only): file, $TOKENCSP_SO_PIN, or a prompt."""
    if so_pin_file:
        return read_pin_file(so_pin_file)
    if environ.get(ENV_SO_PIN):
        return environ[ENV_SO_PIN]
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive:
        entered = getpass.getpass("Token SO PIN: ")
        if entered:
            return entered
    raise PinError(f"no SO PIN: set {ENV_SO_PIN}, use --so-pin-file, or run on a terminal to be prompted")
