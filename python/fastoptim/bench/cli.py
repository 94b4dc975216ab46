"""``python -m fastoptim bench``: arguments, the loops over the cells (workloads x rules x thread
counts; workloads x mixed-precision layouts x thread counts), and the outputs."""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._runtime import openmp_runtime, set_num_threads, simd_level
from . import mixed, mixed_report, report
from .contenders import CONTENDERS, WITHOUT_TORCH, build_contender, listed, torch_or_none
from .measurement import CellResult, Contender, Settings, measure_cell
from .progress import ProgressBar
from .workloads import (
    RULES,
    VARIANTS,
    Buffers,
    StatePlan,
    Workload,
    make_workload,
    applied_variants,
    rule_options,
    state_plan,
)

RULES_WORKLOADS = "10m,100m,gpt2,mlp"


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(default_dir: Path | None = None) -> argparse.ArgumentParser:
    where = default_dir if default_dir is not None else Path(".")
    p = argparse.ArgumentParser(
        prog="python -m fastoptim bench",
        description="Time every optimizer rule x workload x thread count: fastoptim (torch and "
        "array fronts) against torch.optim fused/foreach/for-loop and a same-traffic roofline; "
        "then the mixed-precision section: AdamW in each storage layout (bf16/fp16 params, bf16 "
        "state, fp32 master copies) against its own roofline, torch and DeepSpeed.",
    )
    p.add_argument(
        "--section",
        default="all",
        choices=("all", "rules", "mixed"),
        help="what to run: every rule (rules), the mixed-precision AdamW layouts (mixed), or both",
    )
    p.add_argument(
        "--rules",
        default=None,
        help=f"comma list of {', '.join(RULES)} (default: every rule this fastoptim has)",
    )
    p.add_argument(
        "--workloads",
        default=None,
        help="comma list: gpt2, mlp, fixed (400 one-element tensors: the fixed cost per step), or a size (one tensor: 10m, 100m, 4097, ...); default "
        f"{RULES_WORKLOADS} for the rules, {mixed.DEFAULT_WORKLOADS} for the mixed section",
    )
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument(
        "--contenders",
        default=None,
        help="comma list (default: all); rules: "
        + ", ".join(CONTENDERS)
        + "; mixed: "
        + ", ".join(mixed.MIXED_CONTENDERS),
    )
    p.add_argument(
        "--layouts",
        default=None,
        help="mixed section: comma list or 'all' of "
        + ", ".join(mixed.LAYOUTS)
        + " (default: "
        + ",".join(mixed.DEFAULT_LAYOUTS)
        + ")",
    )
    p.add_argument(
        "--slow-rounds",
        type=int,
        default=3,
        help="mixed section: measured rounds of torch's for-loop AdamW (0: as many as --rounds)",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME",
        help="option variant, repeatable or comma list: " + ", ".join(VARIANTS),
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every tensor's first dimension"
    )
    p.add_argument(
        "--rounds", "--repetitions", type=int, default=7, help="measured rounds per cell"
    )
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per contender and cell")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per contender per round")
    p.add_argument(
        "--max-redo",
        type=int,
        default=None,
        help="extra rounds per cell to replace busy ones (default: --rounds)",
    )
    p.add_argument(
        "--busy-threshold",
        type=float,
        default=0.05,
        help="flag a round when other processes used more than this share of all CPUs",
    )
    # No file unless asked for: a run from a user's directory leaves nothing behind.
    # bench/run.py (the published runs) passes its results folder as default_dir.
    p.add_argument(
        "--json",
        default=str(where / "fastoptim-bench.json") if default_dir is not None else "",
        metavar="PATH",
        help="write every cell and round as JSON to PATH (default: no file)",
    )
    p.add_argument(
        "--png",
        default=str(where / "fastoptim-bench.png") if default_dir is not None else "",
        metavar="PATH",
        help="write a chart to PATH (needs matplotlib; default: no file)",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny sizes (--scale 0.001), 3 rounds, no redo; checks that everything "
        "runs and prints no verdicts (targets need a full run on a quiet machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _use_threads(n: int, torch: Any) -> None:
    set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def _measure(
    cell: CellResult,
    kinds: Sequence[str],
    build: tuple[Callable[..., Contender], tuple[Any, ...]],
    settings: Settings,
    bar: ProgressBar,
    derive: Callable[[Any], None],
) -> None:
    """One cell: each contender built as build[0](kind, *build[1]) (one that cannot be is the
    cell's error for it, not fatal), measured, the figures derived, the wall time kept."""
    start = time.perf_counter()
    contenders = []
    function, args = build
    for kind in kinds:
        try:
            contenders.append(function(kind, *args))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            text = str(exc)
            unavailable = text.startswith("unavailable")  # an optional contender, said as is
            cell.errors[kind] = text if unavailable else f"{type(exc).__name__}: {text}"
    measure_cell(contenders, cell, settings, bar)
    derive(cell)
    del contenders
    if cell.elements >= 10**6:  # optimizers hold reference cycles
        gc.collect()
    cell.elapsed_s = round(time.perf_counter() - start, 3)


def run_cells(
    workloads: Sequence[Workload],
    plan: Sequence[tuple[str, str, dict[str, Any], StatePlan]],
    threads: Sequence[int],
    contender_names: Sequence[str],
    dtype: str,
    settings: Settings,
    torch: Any,
    bar: ProgressBar,
    cells: list[CellResult],
) -> None:
    """Every workload x rule x thread count, appended to ``cells`` as each finishes (so that an
    interrupt keeps the finished ones). A workload's buffers are allocated once for all cells."""
    for workload in workloads:
        bar.set_label(f"allocating {workload.label}")
        buffers = Buffers(workload.shapes, dtype, torch)
        try:
            for rule, label, options, state in plan:
                kinds = [k for k in contender_names if listed(k, rule, torch)]
                for n in threads:
                    _use_threads(n, torch)
                    bar.set_label(f"{label} {workload.label} {n}t")
                    buffers.state_buffers(len(state.slots), state.init)
                    cell = CellResult(
                        rule=rule,
                        label=label,
                        options=options,
                        workload=workload.key,
                        workload_label=workload.label,
                        elements=workload.elements,
                        tensors=len(workload.shapes),
                        threads=n,
                        dtype=dtype,
                    )
                    build = (build_contender, (rule, options, state.slots, buffers, n))
                    _measure(cell, kinds, build, settings, bar, report.derive)
                    cells.append(cell)
        finally:
            del buffers
            gc.collect()


def run_mixed_cells(
    workloads: Sequence[Workload],
    layouts: Sequence[str],
    threads: Sequence[int],
    contender_names: Sequence[str],
    settings: Settings,
    torch: Any,
    bar: ProgressBar,
    cells: list[mixed.MixedCell],
    slow_rounds: int | None = 3,
) -> None:
    """The mixed-precision section: every workload x layout x thread count, appended to
    ``cells`` as each finishes. One layout's buffers at a time (freed before the next one's)."""
    for workload in workloads:
        for key in layouts:
            layout = mixed.LAYOUTS[key]
            bar.set_label(f"allocating {layout.key} {workload.label}")
            kinds = [k for k in contender_names if mixed.runs_in(k, layout)]
            buffers = None
            try:
                state = mixed.layout_state(layout, torch)
                buffers = mixed.LayoutBuffers(workload.shapes, layout, state, torch)
                setup_error = ""
            except Exception as exc:  # noqa: BLE001 - every contender of the cell reports it
                state = mixed.LayoutState([], [], [])
                setup_error = f"{type(exc).__name__}: {exc}"
            try:
                for n in threads:
                    _use_threads(n, torch)
                    bar.set_label(f"{layout.key} {workload.label} {n}t")
                    cell = mixed.MixedCell(
                        rule=mixed.RULE,
                        label=layout.label,
                        options={**RULES[mixed.RULE][1], **layout.options},
                        workload=workload.key,
                        workload_label=workload.label,
                        elements=workload.elements,
                        tensors=len(workload.shapes),
                        threads=n,
                        dtype=layout.param,
                        layout=layout.key,
                        grad_dtype=layout.grad,
                        state_slots=list(state.slots),
                        state_dtypes=list(state.dtypes),
                    )
                    if setup_error:
                        cell.errors = dict.fromkeys(kinds, setup_error)
                    else:
                        cell.stream_dtypes = mixed.stream_dtypes(layout, state)
                        cell.state_bytes_per_param = mixed.state_bytes_per_param(state)
                        cell.bytes_per_element = mixed.bytes_per_element(layout, state)
                        buffers.fill()
                        for kind in kinds:
                            note = mixed.contender_note(kind, layout, state, slow_rounds)
                            if note:
                                cell.notes[kind] = note
                    build = (mixed.build_mixed_contender, (layout, state, buffers, n, slow_rounds))
                    built = [] if setup_error else kinds
                    _measure(cell, built, build, settings, bar, mixed_report.derive_mixed)
                    cells.append(cell)
            finally:
                del buffers
                gc.collect()


def main(argv: Sequence[str] | None = None, default_dir: Path | None = None) -> int:
    args = build_parser(default_dir).parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.quick:
        args.scale = 1e-3 if args.scale == 1.0 else args.scale
        args.rounds = min(args.rounds, 3)
        args.warmup = 1
        args.min_time = min(args.min_time, 0.002)
        args.max_redo = 0 if args.max_redo is None else args.max_redo
    max_redo = args.rounds if args.max_redo is None else args.max_redo
    run_rules = args.section in ("all", "rules")
    run_mixed = args.section in ("all", "mixed")
    rules = list(RULES) if args.rules is None else _split(args.rules)
    variants = [v for text in args.variant for v in _split(text)]
    known_contenders = tuple(dict.fromkeys(CONTENDERS + mixed.MIXED_CONTENDERS))
    chosen = known_contenders if args.contenders is None else tuple(_split(args.contenders))
    for bad, known, what in (
        (rules, RULES, "rule"),
        (variants, VARIANTS, "variant"),
        (chosen, known_contenders, "contender"),
    ):
        unknown = [x for x in bad if x not in known]
        if unknown:
            print(
                f"unknown {what}(s): {', '.join(unknown)}; expected {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    if run_rules and variants and not any(applied_variants(rule, variants) for rule in rules):
        print("the selected variants change none of the selected rules", file=sys.stderr)
        return 2
    try:
        layouts = mixed.parse_layouts(args.layouts)
        workloads = (
            [make_workload(w, args.scale) for w in _split(args.workloads or RULES_WORKLOADS)]
            if run_rules
            else []
        )
        mixed_workloads = (
            [
                make_workload(w, args.scale)
                for w in _split(args.workloads or mixed.DEFAULT_WORKLOADS)
            ]
            if run_mixed
            else []
        )
        threads = [int(t) for t in _split(args.threads)]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if any(t < 1 for t in threads) or args.rounds < 1 or args.slow_rounds < 0:
        print("threads and rounds must be >= 1 (--slow-rounds >= 0)", file=sys.stderr)
        return 2
    plan = []
    for rule in rules if run_rules else []:
        label, options = rule_options(rule, variants)
        try:
            plan.append((rule, label, options, state_plan(rule, options)))
        except (TypeError, ValueError) as exc:
            print(f"{label}: {exc}", file=sys.stderr)
            return 2

    contender_names = [c for c in chosen if c in CONTENDERS]
    mixed_names = [c for c in chosen if c in mixed.MIXED_CONTENDERS]
    torch = torch_or_none()
    if torch is None:
        dropped = [c for c in contender_names if c not in WITHOUT_TORCH] if run_rules else []
        dropped += [
            c
            for c in (mixed_names if run_mixed else [])
            if c not in mixed.MIXED_WITHOUT_TORCH and c not in dropped
        ]
        contender_names = [c for c in contender_names if c in WITHOUT_TORCH]
        mixed_names = [c for c in mixed_names if c in mixed.MIXED_WITHOUT_TORCH]
        if dropped:
            print(f"torch is not installed: skipping {', '.join(dropped)}", file=sys.stderr)
    unavailable: dict[str, str] = {}
    if run_mixed and "deepspeed" in mixed_names:
        reason = mixed.deepspeed_missing()
        if reason:
            unavailable["deepspeed"] = reason
            mixed_names.remove("deepspeed")
    settings = Settings(
        rounds=args.rounds,
        warmup=args.warmup,
        min_time=args.min_time,
        max_redo=max_redo,
        busy_threshold=args.busy_threshold,
    )
    slow_rounds = min(args.slow_rounds, args.rounds) or None

    cells_planned = len(workloads) * len(plan) * len(threads)
    cells_planned += mixed.planned_cells(mixed_workloads, layouts, threads)
    bar = ProgressBar(cells_planned * (settings.rounds + 1), enabled=not args.no_progress)
    cells: list[CellResult] = []
    mixed_cells: list[mixed.MixedCell] = []
    started = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    interrupted = False
    try:
        run_cells(
            workloads, plan, threads, contender_names, args.dtype, settings, torch, bar, cells
        )
        run_mixed_cells(
            mixed_workloads,
            layouts,
            threads,
            mixed_names,
            settings,
            torch,
            bar,
            mixed_cells,
            slow_rounds,
        )
    except KeyboardInterrupt:
        interrupted = True
    bar.close()
    elapsed = time.time() - started

    torch_version = None if torch is None else torch.__version__
    dtype_text = args.dtype if run_rules else "mixed precision"
    header = report.header(__version__, dtype_text, simd_level(), torch_version, date)
    print(header)
    if run_rules:
        print(report.format_table(cells, markdown=args.markdown, smoke=args.quick))
        print(report.footer(cells, elapsed, smoke=args.quick))
    facts: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if run_mixed:
        facts = mixed.layout_facts(layouts, torch)
        rows = mixed_report.summary(mixed_cells, verdicts=not args.quick)
        print()
        print("Mixed precision, AdamW: storage layouts (param, grad, moments, master copy)")
        print(mixed_report.format_layouts(facts, markdown=args.markdown))
        print()
        print(
            mixed_report.format_mixed_table(mixed_cells, markdown=args.markdown, smoke=args.quick)
        )
        print()
        print("Mixed precision summary" + ("" if args.quick else " (targets from issue 8)"))
        print(mixed_report.format_summary(rows, markdown=args.markdown, smoke=args.quick))
        print()
        print(mixed_report.footer(mixed_cells, unavailable, smoke=args.quick))
    if args.quick:
        print()
        print(report.SMOKE_NOTE)
    if interrupted:
        print("interrupted: partial results", file=sys.stderr)

    if args.json:
        doc = report.json_document(
            cells,
            fastoptim_version=__version__,
            date=date,
            machine=report.machine_info(),
            torch_version=torch_version,
            numpy_version=np.__version__,
            simd_level=simd_level(),
            openmp_runtime=openmp_runtime(),
            dtype=args.dtype,
            threads=threads,
            variants=variants,
            settings=vars(settings),
            argv=list(sys.argv[1:] if argv is None else argv),
            elapsed_s=round(elapsed, 1),
            interrupted=interrupted,
            sections=[s for s, on in (("rules", run_rules), ("mixed", run_mixed)) if on],
            smoke_run=args.quick,
        )
        if run_mixed:
            doc["mixed_precision"] = {
                "rule": mixed.RULE,
                "layouts": facts,
                "slow_rounds": slow_rounds,
                "unavailable": unavailable,
                "summary": rows,
                "results": [vars(c) for c in mixed_cells],
            }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    if args.png and cells:
        path = Path(args.png)
        path.parent.mkdir(parents=True, exist_ok=True)
        if report.write_chart(cells, path, header):
            print(f"wrote {path}")
        else:
            print("matplotlib is not installed: no chart (pip install matplotlib)")
    return 130 if interrupted else 0
