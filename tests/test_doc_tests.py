"""Every test a document names exists: a security claim in docs names the test that proves it (project rule),
and a renamed or deleted test must not leave a claim pointing at nothing.

Names are read from inline code: ``tests/test_x.py::test_name``, ``tests/test_x.py`` (the file),
``::test_name`` (in the file last named before it) and a bare ``test_name`` (in some test file).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from helpers import REPO_ROOT

TESTS = REPO_ROOT / "tests"
DOCS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])

_CODE = re.compile(r"`([^`\n]+)`")
_REF = re.compile(r"(?:(tests/[\w/]+\.py))?(?:::(test_\w+))?")
_BARE = re.compile(r"test_\w+")
#: Tests of other projects that documents cite by name (not ours to define).
EXTERNAL = {"test_import_private": "Wine's rsaenh tests (docs/CMS.md)"}


@cache
def defined(path: Path) -> frozenset[str]:
    """Test functions a file defines, at module level or in a class."""
    tree = ast.parse(path.read_text(), str(path))
    return frozenset(node.name for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"))


@cache
def everywhere() -> frozenset[str]:
    return frozenset().union(*(defined(p) for p in TESTS.rglob("test_*.py")))


def references(text: str) -> list[tuple[str | None, str | None]]:
    """(file, test) pairs the inline code of ``text`` names, ``::name`` resolved to the last file named."""
    found: list[tuple[str | None, str | None]] = []
    last: str | None = None
    for code in _CODE.findall(text):
        code = code.strip()
        match = _REF.fullmatch(code)
        if match and (match.group(1) or match.group(2)):
            file, test = match.group(1), match.group(2)
            if file:
                last = file
            elif code.startswith("::"):
                file = last
            found.append((file, test))
        elif _BARE.fullmatch(code) and code not in EXTERNAL:
            found.append((None, code))
    return found


def test_the_reference_reader_reads_each_form() -> None:
    text = ("`tests/test_a.py::test_one`, `::test_two`, `tests/test_b.py`, `test_three`, "
            "`tokencsp open`, `test_` prose `x::test_no`")
    assert references(text) == [("tests/test_a.py", "test_one"), ("tests/test_a.py", "test_two"),
                                ("tests/test_b.py", None), (None, "test_three")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_a_document_names_exists(doc: Path) -> None:
    missing = []
    for file, test in references(doc.read_text()):
        if file is not None and not (REPO_ROOT / file).is_file():
            missing.append(file)
        elif test is not None and test not in (defined(REPO_ROOT / file) if file else everywhere()):
            missing.append(f"{file or 'tests/'}::{test}")
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


def test_security_md_names_tests() -> None:
    """The reader is not vacuous on the document whose claims matter most."""
    refs = references((REPO_ROOT / "docs" / "SECURITY.md").read_text())
    assert len([test for _, test in refs if test]) > 40
