"""Packaging (issue 15.6): ``python -m build`` makes an sdist and a wheel that install in a clean
venv; PEP 639 metadata; one version source; the man page and the shell completion come from the
parser (a real bash sources the script and completes)."""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import tokencsp
from helpers import REPO_ROOT
from helpers import tokencsp as run_tokencsp
from tokencsp.cli._status import ExitStatus
from tokencsp.cli.main import COMMANDS, build_parser

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                            stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` (the sdist, then the wheel built from that sdist) on a copy of the tree."""
    tree = tmp_path_factory.mktemp("src") / "tokencsp"
    shutil.copytree(REPO_ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".softhsm", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, tree)
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = list(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_the_wheel_carries_pep_639_metadata(dist):
    wheel = zipfile.ZipFile(_one(dist, f"tokencsp-{tokencsp.__version__}-py3-none-any.whl"))
    info = f"tokencsp-{tokencsp.__version__}.dist-info"
    meta = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert tuple(int(p) for p in meta["Metadata-Version"].split(".")) >= (2, 4)
    assert meta["Version"] == tokencsp.__version__
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("License-File") == ["LICENSE"]
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")], "PEP 639: no license classifiers"
    assert {"Typing :: Typed", "Framework :: Pytest", "Topic :: Security :: Cryptography"} <= set(
        meta.get_all("Classifier"))
    assert {"postgres", "test", "lint"} <= set(meta.get_all("Provides-Extra"))
    assert meta["Requires-Python"] == ">=3.11"
    # no public address exists yet (README): a Project-URL here would be made up
    assert meta.get_all("Project-URL") is None and meta["Home-page"] is None
    assert wheel.read(f"{info}/licenses/LICENSE") == (REPO_ROOT / "LICENSE").read_bytes()
    assert "tokencsp = tokencsp.pytest_plugin" in wheel.read(f"{info}/entry_points.txt").decode()
    # the man page, as data: pip puts it under the environment's prefix
    assert wheel.read(f"tokencsp-{tokencsp.__version__}.data/data/share/man/man1/tokencsp.1") == MAN_PAGE.read_bytes()


@pytest.mark.slow
def test_the_sdist_holds_what_the_tests_need(dist):
    with tarfile.open(_one(dist, f"tokencsp-{tokencsp.__version__}.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("LICENSE", "README.md", "Makefile", "pyproject.toml", "docs/CMS.md", "tests/helpers.py",
                   "tests/conftest.py", "softhsm/install-deps.sh", "tools/manpage.py", "tokencsp/py.typed", "man/tokencsp.1"):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_the_wheel_installs_in_a_clean_venv(dist, tmp_path):
    """No system site-packages: the wheel and its declared dependencies alone run the CLI and the plugin."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
         _one(dist, "*.whl"), "pytest", env=env)
    assert _run(venv / "bin" / "tokencsp", "--version", env=env, cwd=tmp_path).stdout == \
        f"tokencsp {tokencsp.__version__}\n"
    probe = ("import importlib.metadata as m\n"
             "(ep,) = [e for e in m.entry_points(group='pytest11') if e.name == 'tokencsp']\n"
             "plugin = ep.load()\n"
             "print(plugin.__name__, plugin.__file__)")
    loaded = _run(venv / "bin" / "python", "-c", probe, env=env, cwd=tmp_path).stdout.split()
    assert loaded[0] == "tokencsp.pytest_plugin" and loaded[1].startswith(str(venv)), loaded
    # pytest itself finds the plugin through the entry point: its fixtures are offered
    fixtures = _run(venv / "bin" / "python", "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", env=env,
                    cwd=tmp_path).stdout
    assert "softhsm_token" in fixtures and "tokencsp_provider" in fixtures
    # the man page is installed under the venv's prefix and renders
    installed = venv / "share" / "man" / "man1" / "tokencsp.1"
    assert installed.read_bytes() == MAN_PAGE.read_bytes()
    assert_man_page_renders(installed)


def test_one_version_source():
    """pyproject takes the version from tokencsp.__version__; the installed metadata and --version agree."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("tokencsp") == tokencsp.__version__
    assert run_tokencsp("--version").stdout.decode() == f"tokencsp {tokencsp.__version__}\n"


# -- the man page ----------------------------------------------------------------------------------


#: The checked-in page (``make man``), which the wheel installs as share/man/man1/tokencsp.1.
MAN_PAGE = REPO_ROOT / "man" / "tokencsp.1"


@pytest.fixture(scope="module")
def manpage() -> Path:
    return MAN_PAGE


def test_the_checked_in_man_page_is_what_the_parser_gives(tmp_path):
    """man/tokencsp.1 is generated; a parser (or version) change without ``make man`` fails here."""
    page = tmp_path / "tokencsp.1"
    _run(sys.executable, REPO_ROOT / "tools" / "manpage.py", "-o", page)
    assert page.read_text() == MAN_PAGE.read_text(), "man/tokencsp.1 is stale: run `make man` and commit it"


def assert_man_page_renders(page: Path) -> None:
    groff = shutil.which("groff")
    assert groff, "groff not found: install groff-base (softhsm/install-deps.sh does)"
    result = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"})
    assert shown.returncode == 0 and "TOKENCSP(1)" in shown.stdout, shown.stderr
    assert "warning" not in shown.stderr


def _leaves(parser, path=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*path, name))


def test_the_man_page_renders_without_warnings(manpage):
    assert_man_page_renders(manpage)


def test_the_man_page_documents_every_command_option_and_exit_status(manpage):
    shown = subprocess.run(["man", "-l", str(manpage)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "400"}).stdout
    for path, parser in _leaves(build_parser(load_all=True)):
        assert f"tokencsp {' '.join(path)}\n" in shown, path
        for action in parser._actions:
            for option in action.option_strings:
                assert option in shown, (path, option)
    for status in ExitStatus:
        assert status.description in shown, status


# -- shell completion --------------------------------------------------------------------------------


def _complete(shell_script: Path, words: list[str], cwd: Path) -> list[str]:
    """COMPREPLY of the script's function for ``words`` (the last one being completed), in a real bash."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (f"source {shell_script}\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
              "_tokencsp_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                            cwd=cwd, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "tokencsp.bash"
    path.write_bytes(run_tokencsp("completion", "bash").stdout)
    return path


def test_bash_completes_ke_to_key(bash_script, tmp_path):
    assert _complete(bash_script, ["tokencsp", "ke"], tmp_path) == ["key"]


def test_bash_completion_follows_the_parser(bash_script, tmp_path):
    (tmp_path / "alice.pem").write_text("")
    assert _complete(bash_script, ["tokencsp", ""], tmp_path) == list(COMMANDS)
    assert _complete(bash_script, ["tokencsp", "key", "import-"], tmp_path) == ["import-cert"]
    assert _complete(bash_script, ["tokencsp", "key", "export", "alice", "--format", ""], tmp_path) == \
        ["msblob", "pem", "der", "cert"]
    assert _complete(bash_script, ["tokencsp", "cms", "decrypt", "--ce"], tmp_path) == ["--cert"]
    assert _complete(bash_script, ["tokencsp", "--token", "key", "ca"], tmp_path) == ["capi"]  # a value, not a command
    assert _complete(bash_script, ["tokencsp", "key", "import-cert", "alice", "al"], tmp_path) == ["alice.pem"]
    assert _complete(bash_script, ["tokencsp", "completion", ""], tmp_path) == ["bash", "zsh"]


def test_bash_registers_the_completion_for_the_command(bash_script, tmp_path):
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", f"source {bash_script}; complete -p tokencsp"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "complete -o default -F _tokencsp_complete tokencsp", result.stderr


# zsh: the native script, driven through a real interactive zsh on a pseudo-terminal (zsh/zpty): each
# line is typed with TAB (complete-word) or ^Xa (a widget inserting every match, _all_matches) where it
# is completed, then run; ``tokencsp`` is a shell function printing the words it got.
_ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty -b z zsh -f -i
zpty -w z "PS1='%% '; unsetopt beep"
zpty -w z "fpath=(${(q)FPATH_DIR} \$fpath); autoload -Uz compinit; compinit -u -D"
[[ -n $SOURCE_SCRIPT ]] && zpty -w z "source ${(q)SOURCE_SCRIPT}"
zpty -w z 'tokencsp() { print -r -- "AR""GS<$*>" }'
zpty -w z "zle -C all-matches complete-word _generic; bindkey '^Xa' all-matches"
zpty -w z "zstyle ':completion:all-matches:*' completer _all_matches _complete"
zpty -w z "zstyle ':completion:all-matches:*' insert true"
zpty -w z 'print -r -- "DEFI""NED<${+functions[_tokencsp]} $_comps[tokencsp]>"'
for line in "${(@f)TCSP_TYPED}"; do zpty -w -n z "$line"$'\n'; done
zpty -w z 'print -r -- DO""NE'
zpty -r z out '*DONE*'
zpty -d z
print -r -- "$out"
"""


def _zsh_complete(script: Path, lines: list[str], cwd: Path, autoload: bool = False) -> tuple[str, list[str]]:
    """What a real zsh with the script runs for each typed line: (``_tokencsp`` defined and its
    ``_comps`` entry, then one argument string per line).  ``autoload``: the script saved as
    ``_tokencsp`` in ``$fpath`` instead of sourced."""
    zsh = shutil.which("zsh")
    assert zsh, "zsh not found: install zsh (softhsm/install-deps.sh does)"
    fpath = cwd / "fpath"
    fpath.mkdir(exist_ok=True)
    if autoload:
        shutil.copy(script, fpath / "_tokencsp")
    env = {**os.environ, "HOME": str(cwd), "FPATH_DIR": str(fpath), "SOURCE_SCRIPT": "" if autoload else str(script),
           "TCSP_TYPED": "\n".join(lines), "TERM": "dumb"}
    result = subprocess.run([zsh, "-f", "-c", _ZSH_DRIVER], capture_output=True, text=True, timeout=120, cwd=cwd,
                            env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.replace("\r", "")
    assert "no matches found" not in out and "command not found" not in out, out
    defined = re.findall(r"DEFINED<([^>]*)>", out)
    assert len(defined) == 1, out
    return defined[0], re.findall(r"ARGS<([^>]*)>", out)


@pytest.fixture(scope="module")
def zsh_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "tokencsp.zsh"
    path.write_bytes(run_tokencsp("completion", "zsh").stdout)
    return path


def test_the_zsh_script_is_native(zsh_script):
    text = zsh_script.read_text()
    assert text.startswith("#compdef tokencsp\n")
    assert "bashcompinit" not in text and "_tokencsp_complete" not in text
    assert "'key:key containers on the token'" in text  # the parser's help as descriptions


@pytest.mark.parametrize("autoload", [False, True], ids=["sourced", "fpath"])
def test_zsh_completes_from_the_parser(zsh_script, tmp_path, autoload):
    (tmp_path / "alice.pem").write_text("")
    defined, ran = _zsh_complete(zsh_script, [
        "tokencsp ke\t",
        "tokencsp \x18a",
        "tokencsp key import-\t",
        "tokencsp key export alice --format \x18a",
        "tokencsp cms decrypt --ce\t",
        "tokencsp --token key ca\t",  # a value, not a command
        "tokencsp key import-cert alice al\t",
        "tokencsp completion \x18a",
    ], tmp_path, autoload=autoload)
    assert defined == "1 _tokencsp", defined
    assert ran == [
        "key",
        " ".join(sorted(COMMANDS)),
        "key import-cert",
        "key export alice --format cert der msblob pem",
        "cms decrypt --cert",
        "--token key capi",
        "key import-cert alice alice.pem",
        "completion bash zsh",
    ], ran
