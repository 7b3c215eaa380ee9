"""What ``make bench`` writes: bench/results/<date>.json, the figures block of docs/PERFORMANCE.md,
and a chart of the ratios (matplotlib, the optional ``bench`` extra)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "GOALS", "evaluate", "write_chart", "write_doc", "write_json"]

BEGIN = "<!-- bench:begin (tools/bench.py rewrites this block) -->"
END = "<!-- bench:end -->"
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Goal:
    text: str  # as issue 13 states it
    pick: Callable[[Rows], list[dict[str, Any]]]  # the rows it is judged on
    holds: Callable[[dict[str, Any]], bool | None]  # None: the row has no figure for it
    show: Callable[[dict[str, Any]], str]


def _rows(section: str, contender: str | None = None, operation: str | None = None) -> Callable[[Rows], Rows]:
    def pick(rows: Rows) -> Rows:
        return [row for row in rows if row["section"] == section
                and (contender is None or row["contender"] == contender)
                and (operation is None or operation in row["operation"])]
    return pick


def _ratio_at_least(limit: float) -> Callable[[dict[str, Any]], bool | None]:
    return lambda row: None if row["ratio"] is None else row["ratio"] >= limit


def _ratio_at_most(limit: float) -> Callable[[dict[str, Any]], bool | None]:
    return lambda row: None if row["ratio"] is None else row["ratio"] <= limit


def _show_ratio(row: dict[str, Any]) -> str:
    return f"{row['operation']}: {row['reference']} = {row['ratio']:.2f}"


def _age_rows(rows: Rows) -> Rows:
    largest = max((row["operation"] for row in rows if row["section"] == "files" and "MiB" in row["operation"]),
                  key=lambda op: int(op.split()[1]), default=None)
    if largest is None:
        return []
    size = " ".join(largest.split()[1:3])
    return [row for row in rows if row["section"] == "files" and row["contender"] == "age"
            and f" {size} " in f" {row['operation']} "]


def _tokencsp_rss(rows: Rows) -> Rows:
    return [row for row in rows if row["section"] == "files" and row["contender"] == "tokencsp"]


GOALS = (
    Goal("open 1 KiB, whole process, cold <= 6x `python -c pass`",
         _rows("latency", "tokencsp open (cold)"), _ratio_at_most(6.0), _show_ratio),
    Goal("open 1 KiB through the agent <= 2.5x `python -c pass`",
         _rows("latency", "tokencsp open (agent)"), _ratio_at_most(2.5), _show_ratio),
    Goal("largest seal and open >= 1.5x age (to a file and to /dev/null)",
         _age_rows, _ratio_at_least(1.5), _show_ratio),
    Goal("peak RSS <= 64 MiB for any size",
         _tokencsp_rss, lambda row: None if row["rss_mib"] is None else row["rss_mib"] <= 64,
         lambda row: f"{row['operation']}: {row['rss_mib']:.1f} MiB"),
    Goal("batch open >= 0.6x the bare single-thread unwrap loop (aim 0.9x)",
         _rows("batch", "tokencsp open --out-dir"), _ratio_at_least(0.6), _show_ratio),
    Goal("open >= 0.9x seal in process",
         lambda rows: [row for row in _rows("in process")(rows) if row["contender"].startswith("open")],
         _ratio_at_least(0.9), lambda row: f"{row['contender']}: {row['reference']} = {row['ratio']:.2f}"),
    Goal("seal >= 0.8x raw AES-GCM encrypt in process",
         lambda rows: [row for row in _rows("in process", "seal")(rows) if row["ratio"] is not None],
         _ratio_at_least(0.8), _show_ratio),
    Goal("CryptEncrypt/CryptDecrypt >= 0.9x raw CBC on the same buffers",
         lambda rows: [row for row in _rows("capi")(rows) if row["ratio"] is not None
                       and "reused" not in row["contender"]],
         _ratio_at_least(0.9), _show_ratio),
    Goal("import rate >= 0.9x the bare loop (1 thread)",
         _rows("imports", "tokencsp, 1 thread"), _ratio_at_least(0.9), _show_ratio),
    Goal("import rate >= 1.7x the bare loop with 2 threads",
         _rows("imports", "tokencsp, 2 threads"), _ratio_at_least(1.7), _show_ratio),
    Goal("handshakes/s >= 0.8x the RSA floor",
         _rows("three-phase", "tokencsp handshake"), _ratio_at_least(0.8), _show_ratio),
)


def evaluate(rows: Rows) -> list[tuple[str, str, str]]:
    """(goal, figures, verdict) per goal: "met", "missed" or "not measured"."""
    out = []
    for goal in GOALS:
        picked = goal.pick(rows)
        verdicts = [goal.holds(row) for row in picked]
        judged = [(row, v) for row, v in zip(picked, verdicts, strict=True) if v is not None]
        if not judged:
            out.append((goal.text, "-", "not measured"))
            continue
        figures = "; ".join(goal.show(row) for row, _ in judged)
        out.append((goal.text, figures, "met" if all(v for _, v in judged) else "missed"))
    return out


def write_json(directory: Path, facts: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = facts["date"].replace(":", "").replace("-", "")
    path = directory / f"{stamp}-{facts['mode']}.json"
    facts = dict(facts, goals=[{"goal": g, "figures": f, "verdict": v} for g, f, v in evaluate(facts["rows"])])
    path.write_text(json.dumps(facts, indent=1) + "\n")
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def figures_block(facts: dict[str, Any], chart: Path | None) -> str:
    m, s = facts["machine"], facts["software"]
    lines = [BEGIN, "",
             f"Run of {facts['date']} (`{facts['mode']}` mode, {facts['seconds']:.0f} s), commit {s.get('commit')}.",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}; load average "
             f"{' / '.join(f'{x:.2f}' for x in m['loadavg_start'])} at the start and "
             f"{' / '.join(f'{x:.2f}' for x in m['loadavg_end'])} at the end (1/5/15 min): the machine was shared "
             "with other work, so read the ratios (each taken between runs of the same round) rather than the "
             "absolute figures.",
             "Software: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "commit" and v) + ".",
             "Padded-import deadlines the bench's keys calibrated at set-up (docs/SECURITY.md; every token "
             f"import waits for its key's): {', '.join(f'{d:.1f} ms' for d in facts.get('deadlines_ms', [])) or '-'}.",
             ""]
    if chart is not None:
        lines += [f"![ratios per operation]({chart.name})", ""]
    lines += ["### Goals (issue 13)", "", "| goal | figures | verdict |", "|---|---|---|"]
    lines += [f"| {g} | {f} | **{v}** |" for g, f, v in evaluate(facts["rows"])]
    section = None
    for row in facts["rows"]:
        if row["section"] != section:
            section = row["section"]
            lines += ["", f"### {section}", "", "| operation | contender | median | peak RSS | ratio (min..max) |",
                      "|---|---|---|---|---|"]
        ratio = "" if row["ratio"] is None else \
            f"{row['reference']} = **{row['ratio']:.2f}** ({row['ratio_min']:.2f}..{row['ratio_max']:.2f})"
        value = f"{_fmt(row['value'], 2 if row['unit'] == 'ms' else 0)} {row['unit']}"
        rss = "-" if row["rss_mib"] is None else f"{row['rss_mib']:.1f} MiB"
        lines.append(f"| {row['operation']} | {row['contender']} | {value} | {rss} | {ratio} |")
    lines += ["", END]
    return "\n".join(lines)


def write_doc(path: Path, facts: dict[str, Any], chart: Path | None) -> None:
    text = path.read_text() if path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + figures_block(facts, chart) + tail)


_OURS = frozenset({"seal", "open", "open, key already imported", "CryptEncrypt", "CryptDecrypt"})


def _ours(first: str) -> bool:
    return first.startswith("tokencsp") or first in _OURS


def write_chart(facts: dict[str, Any], path: Path) -> Path | None:
    """tokencsp's ratio to each peer and floor, one bar each, > 1 where tokencsp does better; None without matplotlib.

    Times are turned round (the floor's time over tokencsp's) so that every bar reads the same way.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [row for row in facts["rows"] if row["ratio"] is not None
            and _ours(row["reference"].split(" / ")[0])]
    if not rows:
        return None

    def better(value: float, row: dict[str, Any]) -> float:
        return 1 / value if row["unit"] == "ms" else value

    labels = [f"{row['operation']}: {row['reference']}" for row in rows]
    mids = [better(row["ratio"], row) for row in rows]
    lows = [min(better(row["ratio_min"], row), better(row["ratio_max"], row)) for row in rows]
    highs = [max(better(row["ratio_min"], row), better(row["ratio_max"], row)) for row in rows]
    sections = list(dict.fromkeys(row["section"] for row in rows))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(13, 0.3 * len(rows) + 1.6))
    ax.barh(range(len(rows)), mids, xerr=[[m - lo for m, lo in zip(mids, lows, strict=True)],
                                          [hi - m for m, hi in zip(mids, highs, strict=True)]],
            color=[colours(sections.index(row["section"]) % 10) for row in rows], capsize=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("tokencsp vs the other: median of per-round ratios, min..max; > 1: tokencsp better")
    ax.set_title(f"make bench, {facts['date']} ({facts['mode']} mode)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(sections))]
    ax.legend(handles, sections, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _main() -> None:  # re-render the page from a saved JSON: python tools/bench_report.py FILE.json
    import sys

    facts = json.loads(Path(sys.argv[1]).read_text())
    doc = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
    write_doc(doc, facts, write_chart(facts, doc.parent / "performance-ratios.png"))
    print(f"wrote {doc} at {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    _main()
