"""python -m fastoptim bench: every rule x workload x thread count, fastoptim against torch.optim.

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
* ``report``      derived figures, table, JSON, chart, machine facts;
* ``progress``    the progress bar;
* ``cli``         arguments, the loop over cells, ``main``.
"""

from __future__ import annotations

from .cli import build_parser, main, run_cells
from .contenders import (
    CONTENDERS,
    TORCH_CONTENDERS,
    TORCH_FUSED,
    build_contender,
    roofline_table,
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
    parse_count,
    rule_options,
    state_plan,
    tiny_mlp_shapes,
)

__all__ = [
    "CONTENDERS",
    "RULES",
    "TORCH_CONTENDERS",
    "TORCH_FUSED",
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
    "run_cells",
    "state_plan",
    "summarize",
    "take_snapshot",
    "tiny_mlp_shapes",
    "write_chart",
]
