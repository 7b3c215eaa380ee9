"""The rules of docs/ARCHITECTURE.md that keep the security properties, checked on the source.

Each test reads tokencsp/ with ``ast`` (no import of the package is needed), so a rule that is
broken fails here, whatever the rest of the suite covers:

- exactly one subpackage imports ``pkcs11`` (tokencsp/token/);
- no import cycle between tokencsp modules, function-level imports included;
- every module belongs to a layer and imports only from the layers below it;
- the pure modules (byte formats, host crypto, sans-IO protocols) import no I/O module;
- the wheel ships no benchmark, stress or timing-audit module;
- ``tokencsp --version`` writes nothing anywhere.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "tokencsp"

#: The one home of ``pkcs11`` (docs/ARCHITECTURE.md, rule 1).
PKCS11_HOME = "tokencsp.token"

#: Layers, bottom first, and which layers each may import (its own included).  A new top-level
#: module needs a line here and in docs/ARCHITECTURE.md; modules inside a subpackage take the
#: subpackage's layer.
LAYER_OF = {
    "errors": "errors",
    "_wire": "formats", "blobs": "formats", "session": "formats", "pubkeys": "formats",
    "keyinfo": "formats", "keyaudit": "formats", "rsadecode": "formats", "certs": "formats",
    "legacy": "formats", "pkcs11uri": "formats",
    "config": "host", "fileio": "host", "progress": "host", "deadline": "host", "p11kit": "host",
    "replay": "state", "trust": "state", "calibration": "state",
    "envelope": "protocols", "threephase": "protocols", "transfer": "protocols", "admission": "protocols",
    "net": "protocols", "cms": "protocols",
    "token": "token",
    "implicit": "facade", "provider": "facade", "batch": "facade", "agent": "facade", "agentclient": "facade",
    "agentwire": "protocols",
    "testing": "testing", "pytest_plugin": "testing",
    "cli": "cli", "__main__": "cli",
    "__init__": "api",
}
MAY_IMPORT = {
    "errors": {"errors"},
    "formats": {"errors", "formats"},
    "host": {"errors", "formats", "host"},
    "state": {"errors", "formats", "host", "state"},
    "protocols": {"errors", "formats", "host", "state", "protocols"},
    "token": {"errors", "formats", "host", "token"},
    "facade": {"errors", "formats", "host", "state", "protocols", "token", "facade"},
    "testing": {"errors", "formats", "host", "state", "protocols", "facade", "testing"},
    "cli": {"errors", "formats", "host", "state", "protocols", "facade", "cli", "api"},
    "api": {"errors", "formats", "host", "state", "protocols", "facade", "api"},
}

#: Pure modules: bytes in, bytes or objects out; no files, sockets, processes, clock or token.
#: Those that exist are checked (others are splitting packages into these right now).
PURE = ("tokencsp.errors", "tokencsp._wire", "tokencsp.blobs", "tokencsp.session", "tokencsp.pubkeys",
        "tokencsp.keyinfo", "tokencsp.keyaudit", "tokencsp.rsadecode", "tokencsp.envelope._format", "tokencsp.envelope._format2", "tokencsp.envelope.format",
        "tokencsp.threephase.*", "tokencsp.transfer", "tokencsp.admission", "tokencsp.certs", "tokencsp.cms.*",
        "tokencsp.legacy", "tokencsp.agentwire", "tokencsp.pkcs11uri")
#: What a pure module may not import.  ``os`` is allowed for ``os.urandom`` only (checked below).
IO_MODULES = frozenset({
    "asyncio", "ctypes", "fcntl", "getpass", "glob", "http", "io", "mmap", "multiprocessing", "pathlib",
    "pkcs11", "select", "selectors", "shutil", "signal", "socket", "socketserver", "sqlite3", "ssl",
    "subprocess", "sys", "tempfile", "threading", "time", "urllib", "psycopg", "tokencsp.token",
    "tokencsp.fileio", "tokencsp.config", "tokencsp.replay", "tokencsp.net", "tokencsp.provider",
})

#: Operational tools that live in tools/ and must not reach the wheel.
TOOLS = ("bench", "stress", "timing_audit", "demo")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (for "from P import n": P.n when that is a module)
    line: int
    runtime: bool  # False under "if TYPE_CHECKING:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = sources()


def _resolve(module: str, path: Path, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package(path) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


DYNAMIC_IMPORTS = frozenset({"importlib.import_module", "import_module", "__import__"})


def imports_of(module: str) -> Iterator[Import]:
    """Every import in ``module`` (also inside functions), and ``importlib.import_module("x")``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    guarded = _type_checking_lines(tree)
    for node in ast.walk(tree):
        runtime = getattr(node, "lineno", 0) not in guarded
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, runtime)
        elif isinstance(node, ast.ImportFrom):
            parent = _resolve(module, path, node.level, node.module)
            for alias in node.names:
                child = f"{parent}.{alias.name}"
                yield Import(module, child if child in MODULES else parent, node.lineno, runtime)
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) in DYNAMIC_IMPORTS and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield Import(module, node.args[0].value, node.lineno, runtime)


def top(target: str) -> str:
    return target.split(".")[0]


def within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def layer(module: str) -> str | None:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF.get(key)


# -- rule 1: one home for pkcs11 ---------------------------------------------------------------


def test_exactly_one_subpackage_imports_pkcs11() -> None:
    importers = sorted({(i.module, i.line) for m in MODULES for i in imports_of(m) if top(i.target) == "pkcs11"})
    assert importers, "nothing imports pkcs11: has the token boundary moved? update PKCS11_HOME"
    outside = [f"{m}:{line}" for m, line in importers if not within(m, PKCS11_HOME)]
    assert not outside, f"pkcs11 imported outside {PKCS11_HOME}/ (docs/ARCHITECTURE.md rule 1): {outside}"


#: The one CK_RV -> error map (docs/ARCHITECTURE.md rule 2): the only module that names python-pkcs11's
#: exception classes.  Everywhere else catches the base class and hands it to the map (or to a named
#: set the map module exports, such as STALE_HANDLE).
CKR_MAP = "tokencsp.token.errors"


def _pkcs11_exception_names() -> frozenset[str]:
    from pkcs11 import exceptions

    return frozenset(name for name, value in vars(exceptions).items()
                     if isinstance(value, type) and issubclass(value, exceptions.PKCS11Error)) - {"PKCS11Error"}


def pkcs11_exception_uses(source: str) -> list[int]:
    """Lines of ``source`` that name a python-pkcs11 exception class other than the base PKCS11Error."""
    names = _pkcs11_exception_names()
    tree = ast.parse(source)
    modules: set[str] = set()  # names bound to pkcs11.exceptions (or to pkcs11, which re-exports them)
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pkcs11", "pkcs11.exceptions"):
            for alias in node.names:
                if alias.name == "exceptions":
                    modules.add(alias.asname or alias.name)
                elif alias.name in names:
                    lines.append(node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("pkcs11", "pkcs11.exceptions"):
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names and ast.unparse(node.value) in modules | {
                f"{m}.exceptions" for m in modules}:
            lines.append(node.lineno)
    return sorted(lines)


def test_the_exception_class_finder_finds_one() -> None:
    assert pkcs11_exception_uses("from pkcs11 import exceptions as p11\ntry: f()\nexcept p11.KeyHandleInvalid: pass\n") \
        == [3]
    assert pkcs11_exception_uses("import pkcs11\nx = pkcs11.exceptions.PinIncorrect\ny = pkcs11.KeyHandleInvalid\n") \
        == [2, 3]
    assert pkcs11_exception_uses("from pkcs11.exceptions import SessionClosed\n") == [1]
    assert pkcs11_exception_uses("from pkcs11 import exceptions as p11\nexcept_ = p11.PKCS11Error\n") == []


def test_only_the_ckr_map_names_pkcs11_exception_classes() -> None:
    """A branch on one python-pkcs11 exception class outside token/errors.py is a second CK_RV map, where the
    uniform import error (rule 2) could quietly split; KeyHandleInvalid was mapped in Token.sign so."""
    assert CKR_MAP in MODULES
    assert pkcs11_exception_uses(MODULES[CKR_MAP].read_text()), "the map names no class: has it moved?"
    outside = [f"{m}:{line}" for m, path in MODULES.items() if m != CKR_MAP
               for line in pkcs11_exception_uses(path.read_text())]
    assert not outside, f"python-pkcs11 exception classes named outside {CKR_MAP} (docs/ARCHITECTURE.md rule 2): {outside}"


# -- rule 2: no import cycles ------------------------------------------------------------------


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for i in imports_of(m):
            if i.runtime and i.target in MODULES and i.target != m:
                graph[m].add(i.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles between tokencsp modules (docs/ARCHITECTURE.md rule 2): {found}"


# -- rule 3: layers -----------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    unknown = sorted(m for m in MODULES if layer(m) is None)
    assert not unknown, (f"modules without a layer: {unknown}; add them to docs/ARCHITECTURE.md and LAYER_OF in "
                         "tests/test_architecture.py")


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for m in MODULES:
        mine = layer(m)
        for i in imports_of(m):
            if top(i.target) != "tokencsp" or mine is None:
                continue
            theirs = layer(i.target)
            if theirs is not None and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{m}:{i.line} ({mine}) imports {i.target} ({theirs})")
    assert not wrong, "imports against the layers (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


# -- rule 4: pure modules -------------------------------------------------------------------------


def pure_modules() -> list[str]:
    found = []
    for pattern in PURE:
        if pattern.endswith(".*"):
            found += [m for m in MODULES if within(m, pattern[:-2])]
        elif pattern in MODULES:
            found.append(pattern)
    return sorted(found)


def test_pure_modules_exist() -> None:
    assert {"tokencsp.blobs", "tokencsp.session", "tokencsp.pubkeys"} <= set(pure_modules())


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_imports_no_io(module: str) -> None:
    bad = [f"line {i.line}: {i.target}" for i in imports_of(module)
           if any(within(i.target, io) for io in IO_MODULES)]
    assert not bad, f"{module} is a pure module (docs/ARCHITECTURE.md rule 4) but imports I/O: {bad}"
    tree = ast.parse(MODULES[module].read_text())
    os_uses = {ast.unparse(node) for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"}
    assert os_uses <= {"os.urandom"}, f"{module} is pure but uses {sorted(os_uses - {'os.urandom'})}"
    from_os = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "os"
               for alias in node.names]
    assert set(from_os) <= {"urandom"}, f"{module} is pure but imports {from_os} from os"


# -- rule 5: what ships ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of the tree (a stale build/ would leak old files into it)."""
    tree = tmp_path_factory.mktemp("src") / "tokencsp"
    shutil.copytree(REPO_ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".softhsm", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                             "-w", str(out), str(tree)],
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    built = list(out.glob("tokencsp-*.whl"))
    assert len(built) == 1, built
    return zipfile.ZipFile(built[0])


def test_wheel_holds_the_library_and_no_tools(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert "tokencsp/__init__.py" in names and "tokencsp/token/__init__.py" in names, names
    shipped = [n for n in names if n.endswith(".py")]
    tools = [n for n in shipped if Path(n).stem in TOOLS or n.startswith(("tools/", "tests/"))]
    assert not tools, f"operational tools or tests in the wheel: {tools}"
    missing = sorted(f"{m.replace('.', '/')}" for m in MODULES
                     if not any(n.startswith(m.replace(".", "/")) for n in shipped))
    assert not missing, f"library modules missing from the wheel: {missing}"


# -- rule 6: no side effects before a command runs -------------------------------------------------


def test_version_writes_nothing(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("home", "state", "config", "cache", "runtime", "tmp", "cwd")}
    for d in dirs.values():
        d.mkdir()
    dirs["runtime"].chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TOKENCSP_"))}
    env.update(HOME=str(dirs["home"]), XDG_STATE_HOME=str(dirs["state"]), XDG_CONFIG_HOME=str(dirs["config"]),
               XDG_CACHE_HOME=str(dirs["cache"]), XDG_RUNTIME_DIR=str(dirs["runtime"]), TMPDIR=str(dirs["tmp"]),
               PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-m", "tokencsp", "--version"], capture_output=True, text=True, env=env,
                            cwd=dirs["cwd"], timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.startswith("tokencsp "), result.stdout + result.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p not in dirs.values())
    assert written == [], f"tokencsp --version wrote {written}"
