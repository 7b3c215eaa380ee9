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
