"""README's library example runs as written (against the test token instead of the dev token)."""

from __future__ import annotations

import re

from helpers import REPO_ROOT

README = REPO_ROOT / "README.md"


def test_readme_library_examples_run(softhsm_kit, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    assert len(blocks) >= 2, "README lost its sealed-message example"
    namespace: dict = {}
    try:
        for block in blocks:
            code = block.replace('"tokencsp-dev"', '"tokencsp-test-b"').replace('"alice"', '"readme-alice"')
            exec(compile(code, str(README), "exec"), namespace)
    finally:
        from tokencsp import Provider

        with Provider.open(token="tokencsp-test-b") as provider:
            if "readme-alice" in [k.name for k in provider.list_keys()]:
                provider.delete_key("readme-alice")
    assert namespace["key"].key == namespace["session"].key
    assert "message was already accepted once" in capsys.readouterr().out


def test_readme_exit_status_table_is_the_cli_table():
    from tokencsp.cli import ExitStatus

    text = README.read_text()
    table = text[text.index("| status | meaning |"):]
    table = table[:table.index("\n\n")]
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    readme = [(int(status), meaning.strip().replace("`", "")) for status, meaning in rows]
    assert readme == [(int(status), status.description) for status in ExitStatus]
