"""python -m fastoptim bench: every rule x workload x thread count, fastoptim against torch.optim;
then the mixed-precision section (``--section mixed`` alone): AdamW in each storage layout.

For each cell (rule, workload, threads) the contenders (fastoptim.torch, fastoptim's array front,
torch.optim fused/foreach/for-loop, and a same-traffic roofline) all step the *same* param, grad
and state buffers (state re-initialised per cell; each contender keeps its own step counter), so
memory stays at one copy per workload and every contender sees the same cache and page state.
Contenders run interleaved in rounds (A B C ... then B C ... A, rotating), each round's sample is
the mean step time of a block of steps lasting at least ``--min-time``, and the reported time is
the median over rounds. A round during which other processes used the CPU (busy jiffies in
/proc/stat beyond this process's own CPU time) is flagged and redone, up to ``--max-redo`` extra
rounds per cell; the median uses clean rounds when there are any.

Modules, one concern each:

* ``workloads``   rules, option variants, workload shapes, state plans, the shared buffers;
* ``contenders``  what runs: an optimizer (or the roofline, ``fastoptim._roofline``) per contender;
* ``measurement`` timing rounds, busy-CPU detection from /proc, medians;
* ``report``      derived figures, table, JSON, chart, machine facts, and the pieces every
                  table is made of;
* ``progress``    the progress bar;
* ``mixed``       the mixed-precision section: layouts (bf16/fp16 params, bf16 state, fp32
                  master copies), their buffers and contenders (torch fused / for-loop, torch's
                  three-pass offload, DeepSpeedCPUAdam when importable);
* ``mixed_report`` its layout table, measured table and the summary of the issue's ratios;
* ``cli``         arguments, the loops over both sections' cells, ``main``.

Imports go one way: ``cli`` uses every module, ``mixed_report`` uses ``report`` and ``mixed``,
``mixed`` uses ``contenders``, ``measurement`` and ``workloads``.
"""

from __future__ import annotations

from .cli import build_parser, main, run_cells, run_mixed_cells
from .contenders import (
    CONTENDERS,
    TORCH_CONTENDERS,
    build_contender,
    roofline_table,
    torch_fused,
)
from .measurement import (
    CellResult,
    Contender,
    CpuSnapshot,
    OtherUse,
    Settings,
    Summary,
    measure_cell,
    other_cpu_use,
    read_cpu_jiffies,
    read_own_jiffies,
    summarize,
    take_snapshot,
)
from .mixed import (
    DEFAULT_LAYOUTS,
    LAYOUTS,
    MIXED_CONTENDERS,
    Layout,
    LayoutBuffers,
    LayoutState,
    MixedCell,
    build_mixed_contender,
    layout_state,
)
from .mixed_report import format_layouts, format_mixed_table, format_summary, summary
from .progress import ProgressBar
from .report import derive, format_table, machine_info, write_chart
from .workloads import (
    RULES,
    VARIANTS,
    Buffers,
    StatePlan,
    Workload,
    gpt2_small_shapes,
    make_workload,
    applied_variants,
    parse_count,
    rule_options,
    state_plan,
    tiny_mlp_shapes,
)

__all__ = [
    "CONTENDERS",
    "DEFAULT_LAYOUTS",
    "LAYOUTS",
    "MIXED_CONTENDERS",
    "Layout",
    "LayoutBuffers",
    "LayoutState",
    "MixedCell",
    "build_mixed_contender",
    "format_layouts",
    "format_mixed_table",
    "format_summary",
    "layout_state",
    "run_mixed_cells",
    "summary",
    "RULES",
    "TORCH_CONTENDERS",
    "VARIANTS",
    "Buffers",
    "CellResult",
    "Contender",
    "CpuSnapshot",
    "OtherUse",
    "ProgressBar",
    "Settings",
    "StatePlan",
    "Summary",
    "Workload",
    "build_contender",
    "build_parser",
    "derive",
    "format_table",
    "gpt2_small_shapes",
    "machine_info",
    "main",
    "make_workload",
    "measure_cell",
    "other_cpu_use",
    "parse_count",
    "read_cpu_jiffies",
    "read_own_jiffies",
    "roofline_table",
    "rule_options",
    "applied_variants",
    "run_cells",
    "state_plan",
    "summarize",
    "take_snapshot",
    "tiny_mlp_shapes",
    "torch_fused",
    "write_chart",
]
