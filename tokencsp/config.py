"""Where the module, the token and the PIN come from.

Pure apart from reading the environment, PIN files, p11-kit's registry and
the terminal: no PKCS#11 here.  Precedence everywhere: explicit argument,
then RFC 7512 URI, then environment variable, then default; an argument and
a URI attribute that disagree are refused (:class:`SelectionConflict`).
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import p11kit, pkcs11uri
from .errors import ConfigError, ModuleLoadError, PinError, SelectionConflict, TokenCSPError
from .keyinfo import PinStatus

__all__ = [
    "SOFTHSM_MODULE_PATHS",
    "TokenSelector",
    "env_number",
    "find_module",
    "pin_prompt",
    "read_pin_file",
    "resolve_login_pin",
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

N = TypeVar("N", int, float)


def env_number(name: str, kind: Callable[[str], N], default: N, *, what: str,
               error: type[TokenCSPError] = ConfigError,
               environ: Mapping[str, str] = os.environ) -> N:
    """The number in the variable ``name`` (``kind``: int or float), ``default`` when it is unset or
    empty; a value ``kind`` cannot read is ``error``: "NAME must be WHAT, not 'VALUE'"."""
    raw = environ.get(name)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise error(f"{name} must be {what}, not {raw!r}") from None


def find_module(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """Path of the PKCS#11 module: the argument, $TOKENCSP_MODULE, or SoftHSM2 where distros put it.

    ``p11-kit-proxy`` (when no such file is here) is p11-kit's proxy module,
    which shows the tokens of every module registered with p11-kit.
    """
    path = explicit or environ.get(ENV_MODULE)
    if path:
        if not Path(path).is_file():
            if path in (p11kit.PROXY_NAME, p11kit.PROXY_NAME + ".so"):
                return p11kit.proxy_module()
            hint = f" (a module registered with p11-kit is --module-name {path})" if "/" not in path else ""
            raise ModuleLoadError(f"PKCS#11 module not found: {path}{hint}")
        return path
    for candidate in SOFTHSM_MODULE_PATHS:
        if Path(candidate).is_file():
            return candidate
    raise ModuleLoadError(
        f"no PKCS#11 module given and SoftHSM2 not found; set {ENV_MODULE} or pass --module"
    )


@dataclass(frozen=True)
class TokenSelector:
    """Which module, token and object to use, after every source has been consulted.

    Every RFC 7512 attribute has a field: the token and slot ones select the
    token (``tokencsp.token.admin``), the library ones must match the module,
    the object ones select the key (``Provider``).
    """

    module: str | None = None
    token_label: str | None = None
    token_serial: str | None = None
    object_label: str | None = None
    pin_source: str | None = None  # never in repr: __repr__ below leaves both out
    pin_value: str | None = None
    token_manufacturer: str | None = None
    token_model: str | None = None
    slot_id: int | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: tuple[int, int] | None = None
    object_id: bytes | None = None
    object_type: str | None = None
    module_name: str | None = None

    def __repr__(self) -> str:  # never the PIN
        shown = {k: v for k, v in self.__dict__.items() if v is not None and k not in ("pin_value", "pin_source")}
        return f"TokenSelector({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def names_object(self) -> bool:
        return any(v is not None for v in (self.object_label, self.object_id, self.object_type))


def _agree(option: str, given: str | None, attribute: str, in_uri: object, source: str) -> None:
    if given is not None and in_uri is not None and given != in_uri:
        raise SelectionConflict(f"{option} {given!r} contradicts {attribute}={in_uri!r} in {source}")


def resolve_selector(
    module: str | None = None,
    token: str | None = None,
    serial: str | None = None,
    uri: str | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    module_name: str | None = None,
    key: str | None = None,
) -> TokenSelector:
    """Arguments, then the URI (``uri`` or $TOKENCSP_URI), then TOKENCSP_* variables.

    An argument and a URI attribute that name different things (``--token a``
    with ``token=b``, ``--key x`` with ``object=y``, ``--module`` with another
    ``module-path``, ``module-path`` with another ``module-name``...) are a
    :class:`SelectionConflict`: neither is silently preferred.
    """
    source = "the --uri" if uri else ENV_URI
    uri = uri or environ.get(ENV_URI)
    parsed = pkcs11uri.parse(uri) if uri else pkcs11uri.Pkcs11Uri()
    _agree("--token", token, "token", parsed.token, source)
    _agree("--serial", serial, "serial", parsed.serial, source)
    _agree("--key", key, "object", parsed.object, source)
    _agree("--module-name", module_name, "module-name", parsed.module_name, source)
    chosen = _module(module, module_name, parsed, source)
    names_token = bool(token or serial) or any(
        v is not None for v in (parsed.token, parsed.serial, parsed.slot_id, parsed.slot_description))
    return TokenSelector(
        module=chosen or environ.get(ENV_MODULE),
        token_label=token or parsed.token or (None if names_token else environ.get(ENV_TOKEN)),
        token_serial=serial or parsed.serial,
        object_label=key or parsed.object,
        pin_source=parsed.pin_source,
        pin_value=parsed.pin_value,
        token_manufacturer=parsed.manufacturer,
        token_model=parsed.model,
        slot_id=parsed.slot_id,
        slot_description=parsed.slot_description,
        slot_manufacturer=parsed.slot_manufacturer,
        library_manufacturer=parsed.library_manufacturer,
        library_description=parsed.library_description,
        library_version=parsed.library_version,
        object_id=parsed.id,
        object_type=parsed.type,
        module_name=module_name or parsed.module_name,
    )


def _module(module: str | None, module_name: str | None, parsed: pkcs11uri.Pkcs11Uri, source: str) -> str | None:
    """The module path from --module, --module-name, module-path= or module-name=; all that are given must agree."""
    named: list[tuple[str, str]] = []
    if module:
        named.append((f"--module {module}", find_module(module, {})))
    if module_name:
        named.append((f"--module-name {module_name}", p11kit.resolve_module_name(module_name)))
    if parsed.module_path:
        named.append((f"module-path={parsed.module_path} in {source}", find_module(parsed.module_path, {})))
    if parsed.module_name and not module_name:
        named.append((f"module-name={parsed.module_name} in {source}", p11kit.resolve_module_name(parsed.module_name)))
    for what, path in named[1:]:
        if os.path.realpath(path) != os.path.realpath(named[0][1]):
            raise SelectionConflict(f"{what} ({path}) contradicts {named[0][0]} ({named[0][1]})")
    return named[0][1] if named else None


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


def _pin_source_path(source: str) -> str:
    """RFC 7512 section 2.4 pin-source: a ``file:`` URI or an absolute path; a command is refused."""
    if source.startswith("|"):
        raise ConfigError("pin-source=|COMMAND is not supported (tokencsp runs no command for a PIN): "
                          "use pin-source=file:PATH")
    if source.startswith("file:"):
        source = source[len("file:"):]
        if source.startswith("//"):
            source = source[2:]
            if not source.startswith("/"):  # file://host/path: only the local host
                raise ConfigError(f"pin-source=file://{source}: only a local file (file:/PATH) is supported")
        return source
    scheme, colon, _ = source.partition(":")
    if colon and scheme.isalpha() and "/" not in scheme:
        raise ConfigError(f"pin-source={source}: only file: is supported")
    return source


def resolve_pin(
    pin: str | Callable[[], str] | None = None,
    pin_file: str | os.PathLike[str] | None = None,
    selector: TokenSelector | None = None,
    environ: Mapping[str, str] = os.environ,
    interactive: bool | None = None,
    prompt: str = "Token user PIN: ",
) -> str:
    """The user PIN from the first source that has one; a prompt only on a terminal."""
    found = _pin_from_sources(pin, pin_file, selector, environ)
    if found is not None:
        return found
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive:
        entered = getpass.getpass(prompt)
        if entered:
            return entered
    raise PinError(f"no PIN: set {ENV_PIN}, use --pin-file, or run on a terminal to be prompted")


def _pin_from_sources(pin: str | Callable[[], str] | None, pin_file: str | os.PathLike[str] | None,
                      selector: TokenSelector | None, environ: Mapping[str, str]) -> str | None:
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
            return read_pin_file(_pin_source_path(selector.pin_source))
    if environ.get(ENV_PIN):
        return environ[ENV_PIN]
    return None


def pin_prompt(status: PinStatus) -> str:
    """The prompt for a token's user PIN: which token, and what its flags say about the tries left."""
    if status.final_try:
        tries = " (final try: one more wrong PIN locks it)"
    elif status.count_low:
        tries = " (a wrong PIN was entered since the last login: fewer tries left)"
    else:
        tries = ""
    return f"Token {status.label!r}{tries}, user PIN: "


def locked_error(status: PinStatus) -> PinError:
    return PinError(f"the user PIN of token {status.label!r} is locked (CKF_USER_PIN_LOCKED): "
                    "the security officer must unlock it")


def resolve_login_pin(
    pin: str | Callable[[], str] | None,
    pin_file: str | os.PathLike[str] | None,
    selector: TokenSelector | None,
    status: PinStatus,
    environ: Mapping[str, str] = os.environ,
    interactive: bool | None = None,
) -> str | None:
    """The PIN to log in to the token whose flags are ``status``, or None for its PIN pad.

    A PIN from an argument, a file, the URI or $TOKENCSP_PIN is used as
    given.  Otherwise a token with a protected authentication path
    (CKF_PROTECTED_AUTHENTICATION_PATH) logs in with no PIN: the reader asks
    for it; a token without CKF_LOGIN_REQUIRED is used without a login.  A
    locked PIN is refused before any prompt; the prompt names the token and
    says when a wrong PIN was entered or this is the final try.
    """
    found = _pin_from_sources(pin, pin_file, selector, environ)
    if found is not None:
        return found
    if status.protected_path or not status.login_required:  # a PIN pad; a token without login (Cloud KMS)
        return None
    if status.locked:
        raise locked_error(status)
    return resolve_pin(None, None, None, environ={}, interactive=interactive, prompt=pin_prompt(status))


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
