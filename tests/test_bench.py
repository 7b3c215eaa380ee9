"""``make bench`` stays runnable: tools/bench.py in its tiny mode, and what its JSON holds.

Figures are never asserted here (performance goals live in the benchmark and
docs/PERFORMANCE.md, not in timed tests): only that every section ran, that
each row has its fields, and that the page's figures block is rewritten in place.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = [pytest.mark.softhsm, pytest.mark.softhsm_only(
    reason="tools/bench.py builds a SoftHSM store of its own (opencryptoki's two slots are the run's)")]

TOOLS = REPO_ROOT / "tools"
sys.path.insert(0, str(TOOLS))

import bench_lib  # noqa: E402
import bench_report  # noqa: E402

ROW_FIELDS = {"section", "operation", "contender", "unit", "value", "reference", "ratio", "ratio_min", "ratio_max",
              "rounds", "rss_mib", "note", "extra"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    doc = out / "PERFORMANCE.md"
    doc.write_text(f"# prose above\n\n{bench_report.BEGIN}\nold figures\n{bench_report.END}\n\nprose below\n")
    done = subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--tiny", "--no-install",
                           "--results", str(out / "results"), "--doc", str(doc)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (out / "results").glob("*.json")
    return json.loads(result.read_text()), doc.read_text(), done.stdout


def test_the_json_has_machine_versions_date_and_rows(tiny_run):
    facts, _, _ = tiny_run
    assert facts["mode"] == "tiny"
    assert {"cpu", "cores", "memory", "kernel", "loadavg_start", "loadavg_end"} <= set(facts["machine"])
    assert {"python", "cryptography", "python-pkcs11", "tokencsp", "openssl", "softhsm"} <= set(facts["software"])
    assert facts["date"].endswith("Z") and facts["seconds"] > 0
    for row in facts["rows"]:
        assert set(row) == ROW_FIELDS, row
        assert row["value"] > 0 and row["rounds"] >= 1, row
    sections = {row["section"] for row in facts["rows"]}
    assert {"imports", "files", "in process", "capi", "latency", "three-phase"} <= sections
    assert [g["goal"] for g in facts["goals"]] == [goal.text for goal in bench_report.GOALS]


def test_every_comparison_row_names_its_pair(tiny_run):
    facts, _, out = tiny_run
    compared = [row for row in facts["rows"] if row["ratio"] is not None]
    assert compared
    for row in compared:
        assert " / " in row["reference"] and row["ratio_min"] <= row["ratio"] <= row["ratio_max"], row
    # The floors the issue names are there, side by side with tokencsp.
    contenders = {row["contender"] for row in facts["rows"]}
    assert {"bare python-pkcs11, 1 thread", "raw AES-GCM encrypt", "raw AES-CBC encrypt", "python -c pass",
            "cp", "tokencsp open (cold)"} <= contenders
    assert "tokencsp open (cold)" in out


def test_the_page_block_is_rewritten_and_the_prose_kept(tiny_run):
    _, doc, _ = tiny_run
    assert doc.startswith("# prose above") and doc.rstrip().endswith("prose below")
    assert "old figures" not in doc and doc.count(bench_report.BEGIN) == 1
    assert "### Goals (issue 13)" in doc and "load average" in doc


def test_ratios_are_taken_per_round_not_from_medians():
    # Round 1: a 1 s vs b 2 s; round 2 (the machine got slower): a 4 s vs b 4 s.
    runs = {"a": [bench_lib.Run(1.0), bench_lib.Run(4.0)], "b": [bench_lib.Run(2.0), bench_lib.Run(4.0)]}
    rows = {row.contender: row for row in bench_lib.rate_rows("s", "op", runs, amount=1, unit="ops/s", subject="a")}
    assert rows["b"].ratio == pytest.approx(1.5) and (rows["b"].ratio_min, rows["b"].ratio_max) == (1.0, 2.0)
    assert rows["b"].reference == "a / b" and rows["a"].ratio is None
    timed = {row.contender: row for row in bench_lib.rate_rows("s", "op", runs, amount=1, unit="ms", subject="a",
                                                               against="b")}
    assert timed["a"].ratio == pytest.approx(0.75) and timed["a"].value == pytest.approx(2500)


def test_alternate_rotates_the_order():
    order: list[str] = []

    def contender(name):
        return lambda index: order.append(f"{name}{index}") or bench_lib.Run(1.0)

    bench_lib.alternate({"a": contender("a"), "b": contender("b"), "c": contender("c")}, 3)
    assert order == ["a0", "b0", "c0", "b1", "c1", "a1", "c2", "a2", "b2"]
