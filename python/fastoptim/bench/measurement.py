"""How the benchmark times: blocks of steps in interleaved rounds, rounds during which other
processes used the CPU flagged (from /proc) and redone, medians over the quiet rounds.

Knows nothing about optimizers: a contender here is a name and a step to call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .progress import ProgressBar

# ---- CPU activity of other processes -------------------------------------------------------------


@dataclass(frozen=True)
class CpuSnapshot:
    """Jiffies (USER_HZ ticks): machine-wide busy and total, and this process's own CPU time."""

    busy: int
    total: int
    own: int


def read_cpu_jiffies(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from the aggregate 'cpu' line of /proc/stat.
    busy = user + nice + system + irq + softirq + steal (guest time is already inside user;
    steal counts because a hypervisor running someone else slows us just the same)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("cpu "):
                    v = [int(x) for x in line.split()[1:]] + [0] * 8
                    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                    busy = user + nice + system + irq + softirq + steal
                    return busy, busy + idle + iowait
    except (OSError, ValueError):
        return None
    return None


def read_own_jiffies(path: str = "/proc/self/stat") -> int | None:
    """utime + stime of this process (all threads, including finished ones), in jiffies."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    except (OSError, ValueError, IndexError):
        return None


def take_snapshot(
    stat_path: str = "/proc/stat", self_path: str = "/proc/self/stat"
) -> CpuSnapshot | None:
    cpu = read_cpu_jiffies(stat_path)
    own = read_own_jiffies(self_path)
    if cpu is None or own is None:
        return None
    return CpuSnapshot(busy=cpu[0], total=cpu[1], own=own)


@dataclass(frozen=True)
class OtherUse:
    jiffies: int  # busy jiffies not spent by this process
    capacity: int  # all jiffies of all CPUs in the interval
    busy: bool

    @property
    def fraction(self) -> float:
        return self.jiffies / self.capacity if self.capacity > 0 else 0.0


def other_cpu_use(
    before: CpuSnapshot, after: CpuSnapshot, threshold: float = 0.05, slack: int = 2
) -> OtherUse:
    """CPU time other processes used between two snapshots. Busy when it exceeds ``threshold``
    of the machine's capacity in that interval and ``slack`` jiffies (tick accounting of the
    machine and of this process are each off by up to a tick per CPU)."""
    other = (after.busy - before.busy) - (after.own - before.own)
    capacity = after.total - before.total
    busy = other > max(slack, threshold * capacity)
    return OtherUse(jiffies=max(other, 0), capacity=capacity, busy=busy)


# ---- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    median: float | None  # ms/step
    used: int  # samples the median is taken over
    clean: bool  # True when those samples all come from rounds without other CPU activity


def summarize(samples: Sequence[float], flagged: Sequence[bool]) -> Summary:
    """Median over the rounds without other CPU activity; over all rounds if none was quiet."""
    if len(samples) != len(flagged):
        raise ValueError("one flag per sample expected")
    clean = [s for s, f in zip(samples, flagged) if not f]
    if clean:
        return Summary(statistics.median(clean), len(clean), True)
    if samples:
        return Summary(statistics.median(samples), len(samples), False)
    return Summary(None, 0, False)


# ---- one cell: warm-up, then interleaved rounds --------------------------------------------------


@dataclass
class Contender:
    name: str
    step: Callable[[], Any]
    keep: Any = None  # the optimizer object, kept alive while the contender runs
    # a slow contender (torch's for-loop on 100M bfloat16 elements) may take part in only the
    # first ``max_rounds`` kept rounds of its cell; None: every round
    max_rounds: int | None = None


@dataclass
class Settings:
    rounds: int = 7
    warmup: int = 2
    min_time: float = 0.05  # seconds per contender block
    max_redo: int = 7
    busy_threshold: float = 0.05
    max_block_steps: int = 100_000


@dataclass
class CellResult:
    rule: str
    label: str
    options: dict[str, Any]
    workload: str
    workload_label: str
    elements: int
    tensors: int
    threads: int
    dtype: str
    contenders: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0  # wall time of the cell: building, warm-up and all rounds


def _block(step: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        step()
    return (time.perf_counter_ns() - t0) / n / 1e6


def measure_cell(
    contenders: list[Contender], cell: CellResult, settings: Settings, bar: ProgressBar
) -> None:
    """Warm-up, calibrate the block length, then interleaved rounds with busy detection. Fills
    ``cell.contenders`` (medians and samples), ``cell.rounds`` and ``cell.errors``."""
    live: list[Contender] = []
    steps: dict[str, int] = {}
    for c in contenders:
        try:
            # the fastest warm-up step (state and plans exist by then) sizes the blocks
            once = min(_block(c.step, 1) for _ in range(max(settings.warmup, 1)))
        except Exception as exc:  # noqa: BLE001 - a contender that cannot run is reported
            cell.errors[c.name] = f"{type(exc).__name__}: {exc}"
            continue
        steps[c.name] = int(
            min(
                settings.max_block_steps,
                max(1, math.ceil(settings.min_time * 1e3 / max(once, 1e-6))),
            )
        )
        live.append(c)
    bar.advance(1)
    samples: dict[str, list[float]] = {c.name: [] for c in live}
    flags: dict[str, list[bool]] = {c.name: [] for c in live}  # busy flag of each kept sample
    kept_rounds = 0
    redo_left = settings.max_redo
    index = 0
    while kept_rounds < settings.rounds and live:
        running = [c for c in live if c.max_rounds is None or len(samples[c.name]) < c.max_rounds]
        order = running[index % len(running) :] + running[: index % len(running)]  # rotate
        index += 1
        # a snapshot before and after each contender's block (outside the timed loops)
        snapshots = [take_snapshot()]
        round_ms = {}
        for c in order:
            round_ms[c.name] = _block(c.step, steps[c.name])
            snapshots.append(take_snapshot())
        before, after = snapshots[0], snapshots[-1]
        use = other_cpu_use(before, after, settings.busy_threshold) if before and after else None
        busy = bool(use and use.busy)
        by_block = {
            c.name: other_cpu_use(s0, s1).jiffies if s0 and s1 else None
            for c, s0, s1 in zip(order, snapshots, snapshots[1:])
        }
        kept = not busy or redo_left == 0  # a busy round is redone while the budget lasts
        cell.rounds.append(
            {
                "order": [c.name for c in order],
                "ms_per_step": round_ms,
                "other_cpu_jiffies": None if use is None else use.jiffies,
                "other_cpu_jiffies_by_contender": by_block,
                "capacity_jiffies": None if use is None else use.capacity,
                "busy": busy,
                "kept": kept,
            }
        )
        if not kept:
            redo_left -= 1
            bar.add_total(1)
        else:
            kept_rounds += 1
            for name, ms in round_ms.items():
                samples[name].append(ms)
                flags[name].append(busy)
        bar.advance(1)
    if not live:
        bar.advance(settings.rounds)
    for c in live:
        s = summarize(samples[c.name], flags[c.name])
        cell.contenders[c.name] = {
            "median_ms": s.median,
            "samples_ms": samples[c.name],
            "flagged": list(flags[c.name]),
            "clean": s.clean,
            "rounds_used": s.used,
            "steps_per_round": steps[c.name],
        }
