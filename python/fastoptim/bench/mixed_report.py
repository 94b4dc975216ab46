"""What the mixed-precision section shows: figures derived from a cell's medians, the layout
table (streams, bytes moved per element, bytes of state per param), the measured table, and the
summary of the ratios issue 8 sets targets for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import report
from .mixed import BASELINES, MIXED_CONTENDERS, MixedCell
from .report import fmt, render_table, row_order, short_name

FRONTS = ("fastoptim.torch", "fastoptim.arrays")  # the first one measured speaks for fastoptim

# (what, numerator layout, denominator layout, denominator contender, target): a fastoptim row
# over another row of the same workload and thread count; None: a fastoptim row there too
RATIOS: tuple[tuple[str, str, str, str | None, float | None], ...] = (
    ("pure bf16 vs torch fused bf16", "bf16", "bf16", "torch.fused", 1.5),
    ("fp32 params + bf16 moments vs fp32 AdamW", "fp32-bf16state", "fp32", None, 1.3),
    (
        "fp32 params + bf16 moments vs torch fused fp32",
        "fp32-bf16state",
        "fp32",
        "torch.fused",
        None,
    ),
    ("offload (one pass) vs torch three-pass", "offload", "offload", "torch.3pass", 1.5),
    ("fp16 offload vs torch three-pass", "fp16-offload", "fp16-offload", "torch.3pass", None),
    ("fp32 AdamW vs torch fused fp32", "fp32", "fp32", "torch.fused", None),
    ("pure fp16 vs torch fused fp16", "fp16", "fp16", "torch.fused", None),
    ("pure bf16 vs torch for-loop bf16", "bf16", "bf16", "torch.forloop", None),
    ("pure bf16 vs DeepSpeedCPUAdam (bf16 moments)", "bf16", "bf16", "deepspeed", None),
    (
        "bf16 + fp32 state vs DeepSpeedCPUAdam (fp32 moments)",
        "bf16-fp32state",
        "bf16-fp32state",
        "deepspeed",
        None,
    ),
    ("bf16 stochastic rounding vs nearest-even", "bf16-sr", "bf16", None, None),
)
ROOFLINE_TARGET = 90.0


def _median(cell: MixedCell, name: str) -> float | None:
    entry = cell.contenders.get(name)
    return entry["median_ms"] if entry and entry["median_ms"] else None


def reference(cell: MixedCell) -> str | None:
    """The torch row the cell's 'x torch' column divides by: fused, else the three-pass."""
    return next((n for n in ("torch.fused", "torch.3pass") if _median(cell, n)), None)


def derive_mixed(cell: MixedCell) -> None:
    """report.derive's figures, and per row: the layout's traffic per second at its speed,
    the roofline's G elem/s, and its speed-up over every torch / DeepSpeed row of the cell."""
    report.derive(cell)
    roof = _median(cell, "roofline")
    for entry in cell.contenders.values():
        ms = entry["median_ms"]
        if not ms:
            continue
        entry["roofline_gelem_per_s"] = cell.elements / (roof * 1e-3) / 1e9 if roof else None
        entry["layout_gbytes_per_s"] = (
            entry["gelem_per_s"] * cell.bytes_per_element if cell.bytes_per_element else None
        )
        entry["speedup_vs"] = {
            b: _median(cell, b) / ms for b in BASELINES if _median(cell, b) is not None
        }


def front_of(*cells: MixedCell) -> str | None:
    """The fastoptim front measured in every one of ``cells`` (fastoptim.torch first)."""
    return next((f for f in FRONTS if all(_median(c, f) for c in cells)), None)


def summary(cells: Sequence[MixedCell], verdicts: bool = True) -> list[dict[str, Any]]:
    """The issue's ratios and every layout's % of its roofline, per workload and thread count,
    each with its target (None: shown for information) and whether it is met (None throughout
    without ``verdicts``: a smoke run judges nothing)."""
    by_key = {(c.layout, c.workload, c.threads): c for c in cells}
    groups = list(dict.fromkeys((c.workload, c.workload_label, c.threads) for c in cells))
    rows: list[dict[str, Any]] = []
    for workload, label, threads in groups:
        for what, num_layout, den_layout, den_name, target in RATIOS:
            num = by_key.get((num_layout, workload, threads))
            den = by_key.get((den_layout, workload, threads))
            if num is None or den is None:
                continue
            front = front_of(num) if den_name else front_of(num, den)
            other = den_name or front
            if front is None or other is None or not _median(den, other):
                continue
            num_ms, den_ms = _median(num, front), _median(den, other)
            value = den_ms / num_ms
            rows.append(
                {
                    "check": what,
                    "workload": workload,
                    "workload_label": label,
                    "threads": threads,
                    "fastoptim": front,
                    "fastoptim_ms": num_ms,
                    "versus": other,
                    "versus_ms": den_ms,
                    "value": value,
                    "unit": "x",
                    "target": target,
                    "met": None if target is None or not verdicts else value >= target,
                }
            )
        for c in cells:
            if (c.workload, c.threads) != (workload, threads):
                continue
            front = front_of(c)
            pct = c.contenders[front].get("pct_of_roofline") if front else None
            if pct is None:
                continue
            rows.append(
                {
                    "check": f"{c.layout}: % of roofline",
                    "workload": workload,
                    "workload_label": label,
                    "threads": threads,
                    "fastoptim": front,
                    "fastoptim_ms": _median(c, front),
                    "versus": "roofline",
                    "versus_ms": _median(c, "roofline"),
                    "value": pct,
                    "unit": "%",
                    "target": ROOFLINE_TARGET,
                    "met": pct >= ROOFLINE_TARGET if verdicts else None,
                }
            )
    return rows


# ---- text ------------------------------------------------------------------------------------------


def format_layouts(facts: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """One row per layout: its streams, bytes a step moves per element, state bytes per param."""
    head = ["layout", "what", "param", "grad", "moments", "master", "B/elem moved", "state B/param"]
    rows = []
    for key, f in facts.items():
        if "error" in f:
            rows.append([key, f["label"], f["param"], f["grad"], "n/a", "", "", f["error"][:60]])
            continue
        state = dict(f["state"])
        master = state.pop("master_param", None)
        moments = ",".join(sorted(set(state.values()))) or "-"
        rows.append(
            [
                key,
                f["label"],
                f["param"],
                f["grad"],
                moments,
                master or "-",
                str(f["bytes_per_element"]),
                str(f["state_bytes_per_param"]),
            ]
        )
    return render_table(head, rows, {6, 7}, markdown)


def format_mixed_table(
    cells: Sequence[MixedCell], markdown: bool = False, smoke: bool = False
) -> str:
    head = [
        "layout",
        "workload",
        "thr",
        "contender",
        "ms/step",
        "G elem/s",
        "roofline G elem/s",
        "% roofline",
        "x torch",
        "rounds",
        "note",
    ]
    rows: list[list[str]] = []
    for cell in cells:
        ref = reference(cell)
        for j, name in enumerate(row_order(cell, MIXED_CONTENDERS)):
            lead = [cell.layout, cell.workload_label, str(cell.threads)] if j == 0 else ["", "", ""]
            short = short_name(name)
            if name in cell.errors:
                rows.append(lead + [short, "n/a", "", "", "", "", "", cell.errors[name][:70]])
                continue
            e = cell.contenders[name]
            ratio = None
            if ref and name != ref and name not in ("roofline", "torch.forloop"):
                ratio = e.get("speedup_vs", {}).get(ref)
            rows.append(
                lead
                + [
                    short,
                    fmt(e["median_ms"], ".3f", "" if smoke or e["clean"] else "*"),
                    fmt(e.get("gelem_per_s"), ".3f"),
                    fmt(e.get("roofline_gelem_per_s"), ".3f"),
                    fmt(e.get("pct_of_roofline"), ".1f", "%"),
                    fmt(ratio, ".2f", "x"),
                    report.rounds_text(e, smoke),
                    cell.notes.get(name, ""),
                ]
            )
        rows.append([])
    return render_table(head, rows, {4, 5, 6, 7, 8}, markdown)


def format_summary(
    rows: Sequence[dict[str, Any]], markdown: bool = False, smoke: bool = False
) -> str:
    """The summary as one row per check and one column per (workload, threads): the ratio or %
    of roofline, 'NO' after one that misses its target, '(a)' when the array front speaks for
    fastoptim (the torch front had no row there). A smoke run shows neither targets nor 'NO'."""
    columns = list(dict.fromkeys((r["workload"], r["threads"]) for r in rows))
    checks = list(dict.fromkeys(r["check"] for r in rows))
    by = {(r["check"], r["workload"], r["threads"]): r for r in rows}
    labels = {r["workload"]: r["workload_label"] for r in rows}
    # one tensor: its label (the size after --scale); several: the workload's key (gpt2, mlp)
    short = {w: label if label.startswith("1x") else w for w, label in labels.items()}
    head = ["check"] + ([] if smoke else ["target"])
    head += [f"{short[w]} {t}t" for w, t in columns]
    out = []
    for check in checks:
        first = next(r for r in rows if r["check"] == check)
        unit = first["unit"]
        target = "" if first["target"] is None else f">= {first['target']:g}{unit}"
        line = [check] + ([] if smoke else [target])
        for w, t in columns:
            r = by.get((check, w, t))
            if r is None:
                line.append("-")
                continue
            text = fmt(r["value"], ".1f" if unit == "%" else ".2f", unit)
            text += " (a)" if r["fastoptim"] == "fastoptim.arrays" else ""
            text += " NO" if r["met"] is False and not smoke else ""
            line.append(text)
        out.append(line)
    return render_table(head, out, set(range(1 if smoke else 2, len(head))), markdown)


def footer(cells: Sequence[MixedCell], unavailable: dict[str, str], smoke: bool = False) -> str:
    total, flagged = report.round_counts(cells)
    activity = "" if smoke else f" ({flagged} with other CPU activity)"
    lines = [
        f"{len(cells)} mixed-precision cells, {total} rounds{activity}. "
        "'x torch': the cell's torch fused time (torch 3-pass in offload cells) over the row's; "
        "'% roofline': the roofline of the layout's own stream types over the row's time.",
        "B/elem moved: grad read, param and every state stream (moments, master) read and "
        "written; state B/param: moments + master copy.",
    ]
    lines += [f"{short_name(k)}: {v}" for k, v in unavailable.items()]
    return "\n".join(lines)
