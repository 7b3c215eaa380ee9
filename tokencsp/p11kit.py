"""p11-kit's module registry: which PKCS#11 module a ``module-name`` names, and the proxy module.

Distributions register modules in ``*.module`` files (pkcs11.conf(5)):
``/usr/share/p11-kit/modules`` (packages; SoftHSM2's ``softhsm2.module``),
``/etc/pkcs11/modules`` (the administrator) and ``~/.config/pkcs11/modules``
(the user).  The name is the file name without ``.module``; the file's
``module:`` line is the module's path, relative to p11-kit's module
directory unless absolute.  As in p11-kit, a user's file overrides the
system's, which overrides the package's, and the user's directory is not read
for root, under ``P11_KIT_NO_USER_CONFIG`` or with ``user-config: none`` in
``/etc/pkcs11/pkcs11.conf``.  Files only: no module is loaded here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ModuleLoadError

__all__ = ["PROXY_NAME", "module_dirs", "proxy_module", "registered_modules", "resolve_module_name"]

PROXY_NAME = "p11-kit-proxy"
PACKAGE_DIR = "/usr/share/p11-kit/modules"
SYSTEM_DIR = "/etc/pkcs11/modules"
USER_DIR = "~/.config/pkcs11/modules"
SYSTEM_CONF = "/etc/pkcs11/pkcs11.conf"
# p11-kit's compiled-in module directory (pkg-config p11-kit-1 --variable p11_module_path), per distribution.
MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/lib/aarch64-linux-gnu/pkcs11", "/usr/lib64/pkcs11",
               "/usr/lib/pkcs11", "/usr/local/lib/pkcs11", "/opt/homebrew/lib/pkcs11")
PROXY_PATHS = ("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/lib/aarch64-linux-gnu/p11-kit-proxy.so",
               "/usr/lib64/p11-kit-proxy.so", "/usr/lib/p11-kit-proxy.so", "/usr/local/lib/p11-kit-proxy.so",
               "/opt/homebrew/lib/p11-kit-proxy.so")


def _read_config(path: Path) -> dict[str, str]:
    """``name: value`` lines of a pkcs11.conf(5) file; ``#`` starts a comment."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields  # p11-kit skips a file it cannot read
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip(), value.strip())
    return fields


def _user_config_allowed(environ: Mapping[str, str]) -> bool:
    if os.geteuid() == 0 or environ.get("P11_KIT_NO_USER_CONFIG"):
        return False
    return _read_config(Path(SYSTEM_CONF)).get("user-config", "merge") != "none"


def module_dirs(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The registry's directories, highest precedence first."""
    dirs = [Path(SYSTEM_DIR), Path(PACKAGE_DIR)]
    if _user_config_allowed(environ):
        dirs.insert(0, Path(os.path.expanduser(USER_DIR)))
    return dirs


def registered_modules(dirs: Sequence[Path] | None = None,
                       module_dir_candidates: Sequence[str] = MODULE_DIRS) -> dict[str, str]:
    """Module name -> module path, for every ``*.module`` file with a ``module:`` line."""
    found: dict[str, str] = {}
    for directory in module_dirs() if dirs is None else dirs:
        try:
            files = sorted(directory.glob("*.module"))
        except OSError:
            continue
        for file in files:
            name = file.name[:-len(".module")]
            if not name or name in found:
                continue
            module = _read_config(file).get("module")
            if module:
                found[name] = _absolute(module, module_dir_candidates)
    return found


def _absolute(module: str, candidates: Sequence[str]) -> str:
    if os.path.isabs(module):
        return module
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, module)):
            return os.path.join(directory, module)
    existing = [d for d in candidates if os.path.isdir(d)]
    return os.path.join(existing[0] if existing else candidates[0], module)


def resolve_module_name(name: str, dirs: Sequence[Path] | None = None) -> str:
    """The path of the module registered as ``name`` (``p11-kit-proxy`` is the proxy itself)."""
    if name == PROXY_NAME:
        return proxy_module()
    modules = registered_modules(dirs)
    if name in modules:
        return modules[name]
    where = ", ".join(str(d) for d in (module_dirs() if dirs is None else dirs))
    known = ", ".join(sorted(modules)) or "none"
    raise ModuleLoadError(f"no PKCS#11 module named {name!r} is registered with p11-kit (in {where}; "
                          f"registered: {known})")


def proxy_module() -> str:
    """p11-kit-proxy.so, which shows every registered module's tokens as one module."""
    for path in PROXY_PATHS + tuple(os.path.join(d, "p11-kit-proxy.so") for d in MODULE_DIRS):
        if os.path.isfile(path):
            return path
    raise ModuleLoadError("p11-kit-proxy.so not found: install p11-kit-modules (Debian/Ubuntu) or p11-kit")
