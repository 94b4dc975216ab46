"""What the benchmark shows: figures derived from a cell's medians, the table (plain or
Markdown), the JSON document, the chart, and the machine they were measured on; and the pieces
every table of the bench is made of (``mixed_report`` uses them too)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .contenders import CONTENDERS, TORCH_CONTENDERS
from .measurement import CellResult


def derive(cell: CellResult) -> None:
    """G elem/s, % of roofline and speed-ups, all from this cell's medians."""
    med = {k: v["median_ms"] for k, v in cell.contenders.items() if v["median_ms"]}
    roof = med.get("roofline")
    fused = med.get("torch.fused")
    torch_best = min((med[k] for k in TORCH_CONTENDERS if k in med), default=None)
    for entry in cell.contenders.values():
        ms = entry["median_ms"]
        if not ms:
            continue
        entry["gelem_per_s"] = cell.elements / (ms * 1e-3) / 1e9
        entry["pct_of_roofline"] = 100.0 * roof / ms if roof else None
        entry["speedup_vs_torch_fused"] = fused / ms if fused else None
        entry["speedup_vs_torch_best"] = torch_best / ms if torch_best else None


# ---- the pieces of every table ----------------------------------------------------------------

# Every contender's name in the tables (both sections); others are shown as they are.
SHORT = {
    "fastoptim.torch": "fastoptim.torch",
    "fastoptim.arrays": "fastoptim arrays",
    "torch.fused": "torch fused",
    "torch.foreach": "torch foreach",
    "torch.forloop": "torch for-loop",
    "torch.3pass": "torch 3-pass",
    "deepspeed": "DeepSpeedCPUAdam",
    "roofline": "roofline",
}


def short_name(name: str) -> str:
    return SHORT.get(name, name)


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """value formatted with spec and suffix, or '-' for no value."""
    return "-" if value is None else format(value, spec) + suffix


def render_table(
    head: list[str], rows: list[list[str]], right: set[int], markdown: bool = False
) -> str:
    """Plain text (columns aligned, those in ``right`` to the right; an empty row is a blank
    line) or a Markdown table (empty rows dropped)."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows if r]
        return "\n".join(lines)
    widths = [max([len(head[i])] + [len(r[i]) for r in rows if r]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) if r else "" for r in rows]
    return "\n".join(out).rstrip()


def row_order(cell: CellResult, known: Sequence[str]) -> list[str]:
    """A cell's contenders in the order of ``known``, then any others, then those that failed."""
    names = [n for n in known if n in cell.contenders]
    return names + [n for n in cell.contenders if n not in known] + sorted(cell.errors)


def round_counts(cells: Sequence[CellResult]) -> tuple[int, int]:
    """(rounds, rounds with other CPU activity) of all cells."""
    return sum(len(c.rounds) for c in cells), sum(1 for c in cells for r in c.rounds if r["busy"])


def rounds_text(entry: dict[str, Any], smoke: bool) -> str:
    """The 'rounds' column: rounds used / measured, and ' busy' when other processes used the
    CPU in every round used. A smoke run screens nothing (it makes no claim), so it shows no
    flag."""
    text = f"{entry['rounds_used']}/{len(entry['samples_ms'])}"
    return text if smoke or entry["clean"] else text + " busy"


# What a smoke run prints instead of verdicts: its numbers come from tiny sizes, 3 rounds and no
# screening for other CPU use, so a target missed there says nothing.
SMOKE_NOTE = (
    "Smoke run (--quick): tiny sizes, 3 rounds, no round screened for other CPU use or redone. "
    "It checks that every contender runs, not how fast; targets are checked only by a full run "
    "(without --quick) on a quiet machine."
)


def format_table(cells: Sequence[CellResult], markdown: bool = False, smoke: bool = False) -> str:
    head = [
        "rule",
        "workload",
        "thr",
        "contender",
        "ms/step",
        "G elem/s",
        "% roofline",
        "x torch fused",
        "x best torch",
        "rounds",
    ]
    rows: list[list[str]] = []
    for cell in cells:
        for j, name in enumerate(row_order(cell, CONTENDERS)):
            lead = [cell.label, cell.workload_label, str(cell.threads)] if j == 0 else ["", "", ""]
            if name in cell.errors:
                rows.append(
                    lead + [short_name(name), "n/a", "", "", "", "", cell.errors[name][:40]]
                )
                continue
            e = cell.contenders[name]
            mark = "" if smoke or e["clean"] else "*"
            is_torch = name in TORCH_CONTENDERS
            rows.append(
                lead
                + [
                    short_name(name),
                    fmt(e["median_ms"], ".3f", mark),
                    fmt(e.get("gelem_per_s"), ".3f"),
                    fmt(e.get("pct_of_roofline"), ".1f", "%"),
                    ""
                    if name == "torch.fused"
                    else fmt(e.get("speedup_vs_torch_fused"), ".2f", "x"),
                    "" if is_torch else fmt(e.get("speedup_vs_torch_best"), ".2f", "x"),
                    rounds_text(e, smoke),
                ]
            )
        rows.append([])
    return render_table(head, rows, {4, 5, 6, 7, 8}, markdown)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for raw in f:
                key, _, value = raw.partition(":")
                if (
                    key.strip() in ("model name", "Model", "Hardware", "cpu model")
                    and value.strip()
                ):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for raw in f:
                if raw.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(raw.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def write_chart(cells: Sequence[CellResult], path: Path, title: str) -> bool:
    """Grouped bars of G elem/s per rule, one panel per (workload, threads); roofline as a tick."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels: dict[tuple[str, int], list[CellResult]] = {}
    for c in cells:
        panels.setdefault((c.workload_label, c.threads), []).append(c)
    workloads = list(dict.fromkeys(k[0] for k in panels))
    threads = sorted({k[1] for k in panels})
    bars = [n for n in CONTENDERS if n != "roofline"]
    colors = {
        "fastoptim.torch": "#1b7837",
        "fastoptim.arrays": "#7fbf7b",
        "torch.fused": "#2166ac",
        "torch.foreach": "#67a9cf",
        "torch.forloop": "#d1e5f0",
    }
    fig, axes = plt.subplots(
        len(threads),
        len(workloads),
        squeeze=False,
        figsize=(max(10.0, 4.2 * len(workloads) + 1), 3.2 * len(threads) + 1.0),
    )
    for (wl, th), group in panels.items():
        ax = axes[threads.index(th)][workloads.index(wl)]
        width = 0.8 / len(bars)
        for j, name in enumerate(bars):
            xs, ys = [], []
            for i, c in enumerate(group):
                value = c.contenders.get(name, {}).get("gelem_per_s")
                if value:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(value)
            ax.bar(
                xs,
                ys,
                width,
                label=short_name(name),
                color=colors[name],
                edgecolor="#333",
                linewidth=0.3,
            )
        for i, c in enumerate(group):
            roof = c.contenders.get("roofline", {}).get("gelem_per_s")
            if roof:
                ax.hlines(
                    roof,
                    i - 0.45,
                    i + 0.45,
                    colors="k",
                    linewidth=1.2,
                    label="roofline" if i == 0 else None,
                )
        ax.set_xticks(
            range(len(group)), [c.label for c in group], rotation=30, fontsize=7, ha="right"
        )
        ax.set_title(f"{wl}, {th} thread{'s' if th > 1 else ''}", fontsize=8)
        ax.set_ylabel("G elem/s", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.text(0.5, 0.005, title, fontsize=8, ha="center", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def header(version: str, dtype: str, simd: str, torch_version: str | None, date: str) -> str:
    """The line above the table (also the chart's caption)."""
    return (
        f"fastoptim {version} bench | {cpu_model()} | {dtype} | SIMD {simd} | "
        f"torch {torch_version if torch_version is not None else 'not installed'} | {date}"
    )


def footer(cells: Sequence[CellResult], elapsed: float, smoke: bool = False) -> str:
    """The line below the table: rounds kept and redone (a smoke run: what it is)."""
    total_rounds, flagged = round_counts(cells)
    if smoke:
        return f"\n{len(cells)} cells, {total_rounds} rounds, {elapsed:.0f} s."
    return (
        f"\n{len(cells)} cells, {total_rounds} rounds ({flagged} with other CPU activity, "
        f"redone while the budget lasted), {elapsed:.0f} s. '*' = median over busy rounds only."
    )


def json_document(cells: Sequence[CellResult], **run: Any) -> dict[str, Any]:
    """The JSON output: the run's facts (``run``: versions, date, machine, settings, ...) in the
    order given, then every cell with every round."""
    return {**run, "results": [vars(c) for c in cells]}
