"""python -m fastoptim bench: every rule x workload x thread count, fastoptim against torch.optim.

For each cell (rule, workload, threads) the contenders

* ``fastoptim.torch``  fastoptim.torch.X stepping torch tensors,
* ``fastoptim.arrays`` fastoptim.X stepping NumPy views of the same memory,
* ``torch.fused``      torch.optim.X(fused=True) where torch has a fused CPU kernel,
* ``torch.foreach``    torch.optim.X(foreach=True),
* ``torch.forloop``    torch.optim.X(foreach=False),
* ``roofline``         ``fastoptim._core.roofline_pointers``: a lean loop in the same build that reads and
                       writes the same arrays as the rule (same bytes per element),

all step the *same* param, grad and state buffers (state re-initialised per cell; each contender
keeps its own step counter), so memory stays at one copy per workload and every contender sees
the same cache and page state. Contenders run interleaved in rounds (A B C ... then B C ... A,
rotating), each round's sample is the mean step time of a block of steps lasting at least
``--min-time``, and the reported time is the median over rounds. A round during which other
processes used the CPU (busy jiffies in /proc/stat beyond this process's own CPU time) is flagged
and redone, up to ``--max-redo`` extra rounds per cell; the median uses clean rounds when there
are any.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import __version__, _core
from ._runtime import openmp_runtime, set_num_threads, simd_level

# ---- rules, options and workloads ----------------------------------------------------------------

# rule key -> (class name shared by torch.optim / fastoptim / fastoptim.torch, benchmark options).
# SGD is benchmarked with momentum: plain SGD has no state and nobody's bottleneck.
RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("SGD", {"lr": 1e-3, "momentum": 0.9}),
    "adagrad": ("Adagrad", {}),
    "adadelta": ("Adadelta", {}),
    "rmsprop": ("RMSprop", {}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
}
# torch 2.13 has fused CPU kernels for these only.
TORCH_FUSED = frozenset({"sgd", "adagrad", "adam", "adamw"})

# variant -> {rule: extra options}; a variant changes the rules it names and leaves the others.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "amsgrad": {"adam": {"amsgrad": True}, "adamw": {"amsgrad": True}},
    "nesterov": {"sgd": {"momentum": 0.9, "nesterov": True}},
    "centered": {"rmsprop": {"centered": True}},
    "momentum": {"sgd": {"momentum": 0.9}, "rmsprop": {"momentum": 0.9}},
    "no-momentum": {"sgd": {"momentum": 0.0}},
    "weight_decay": {r: {"weight_decay": 1e-2} for r in RULES},
    "maximize": {r: {"maximize": True} for r in RULES},
}

CONTENDERS = (
    "fastoptim.torch",
    "fastoptim.arrays",
    "torch.fused",
    "torch.foreach",
    "torch.forloop",
    "roofline",
)
TORCH_CONTENDERS = ("torch.fused", "torch.foreach", "torch.forloop")


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of GPT-2 small (HF layout, lm_head tied to wte): 148 tensors,
    124,439,808 elements."""
    d, layers, vocab, context = 768, 12, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]  # wte, wpe
    for _ in range(layers):
        ln_1 = [(d,), (d,)]  # weight, bias
        c_attn = [(d, 3 * d), (3 * d,)]  # Conv1D weights are (in, out)
        attn_proj = [(d, d), (d,)]
        ln_2 = [(d,), (d,)]
        c_fc = [(d, 4 * d), (4 * d,)]
        mlp_proj = [(4 * d, d), (d,)]
        shapes += ln_1 + c_attn + attn_proj + ln_2 + c_fc + mlp_proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def tiny_mlp_shapes() -> list[tuple[int, ...]]:
    """300 tensors of 64 and 100 of 64x64 (0.43M elements): Python overhead per tensor."""
    return [(64,)] * 300 + [(64, 64)] * 100


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def _count_text(n: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div:
            value = n / div
            return f"{value:.0f}{unit}" if value == round(value) else f"{value:.3g}{unit}"
    return str(n)


def parse_count(text: str) -> int:
    """'10m' -> 10_000_000, '2.5k' -> 2500, '4097' -> 4097."""
    t = text.strip().lower().replace("_", "")
    factor = {"k": 10**3, "m": 10**6, "g": 10**9}.get(t[-1:], 1)
    if factor != 1:
        t = t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if value < 1 or value != int(value):
        raise ValueError(f"size must be a positive whole number of elements: {text!r}")
    return int(value)


def make_workload(key: str, scale: float = 1.0) -> Workload:
    """'gpt2', 'mlp', or a size ('10m', '100m', '4097'): one tensor of that many elements.
    ``scale`` shrinks every tensor's first dimension (tensor count unchanged)."""
    k = key.strip().lower()
    if k in ("gpt2", "gpt2-small", "gpt-2"):
        shapes, label = gpt2_small_shapes(), "GPT-2 small"
    elif k in ("mlp", "tiny-mlp"):
        shapes, label = tiny_mlp_shapes(), "tiny MLP"
    else:
        shapes, label = [(parse_count(k),)], ""
    if scale != 1.0:
        shapes = [(max(1, round(s[0] * scale)),) + tuple(s[1:]) for s in shapes]
    if not label:
        label = f"1x{_count_text(shapes[0][0])}"
    else:
        label += f" x{scale:g}" if scale != 1.0 else ""
        label += f" ({len(shapes)}x, {_count_text(sum(math.prod(s) for s in shapes))})"
    return Workload(k, label, tuple(shapes))


def rule_options(rule: str, variants: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(row label, constructor options) of a rule under the selected variants."""
    name, base = RULES[rule]
    options = dict(base)
    applied = []
    for v in variants:
        extra = VARIANTS[v].get(rule)
        if extra:
            options.update(extra)
            applied.append(v)
    return (f"{name}({','.join(applied)})" if applied else name), options


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


# ---- progress bar --------------------------------------------------------------------------------


class ProgressBar:
    """A one-line bar on a terminal; on a pipe, a line every 10%."""

    def __init__(
        self, total: int, stream: TextIO | None = None, width: int = 28, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1
        self.label = ""

    def add_total(self, n: int) -> None:
        self.total += n

    def advance(self, n: int = 1, label: str | None = None) -> None:
        self.done = min(self.done + n, self.total)
        if label is not None:
            self.label = label
        self.draw()

    def set_label(self, label: str) -> None:
        self.label = label
        self.draw()

    def _line(self) -> str:
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = time.monotonic() - self.start
        eta = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
        eta_text = "?" if math.isnan(eta) else f"{eta:4.0f}s"
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {frac * 100:5.1f}% {elapsed:5.0f}s eta {eta_text}  {self.label}"

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self.last_draw >= 0.1 or self.done >= self.total:
                self.stream.write("\r\x1b[2K" + self._line()[:150])
                self.stream.flush()
                self.last_draw = now
        else:
            decile = int(self.done * 10 / self.total)
            if decile != self.last_decile or force:
                self.last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        finished = self.done >= self.total
        self.done = self.total
        self.draw(force=self.tty or not finished)
        if self.tty and self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# ---- buffers and contenders ----------------------------------------------------------------------


def _torch_or_none() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


class Buffers:
    """Params and grads of one workload (torch tensors when torch is installed, NumPy views of
    the same memory either way) and up to three shared state buffers."""

    def __init__(
        self, shapes: Sequence[tuple[int, ...]], dtype: str, torch: Any, seed: int = 0
    ) -> None:
        self.torch = torch
        self.shapes = list(shapes)
        self.dtype = np.dtype(dtype)
        if torch is not None:
            tdtype = getattr(torch, dtype)
            gen = torch.Generator().manual_seed(seed)
            self.params = [
                torch.randn(s, dtype=tdtype, generator=gen).requires_grad_() for s in shapes
            ]
            for p in self.params:
                p.grad = torch.randn(p.shape, dtype=tdtype, generator=gen)
            self.param_arrays = [p.detach().numpy() for p in self.params]
            self.grad_arrays = [p.grad.numpy() for p in self.params]
        else:
            rng = np.random.default_rng(seed)
            self.params = []
            self.param_arrays = [rng.standard_normal(s, dtype=self.dtype) for s in shapes]
            self.grad_arrays = [rng.standard_normal(s, dtype=self.dtype) for s in shapes]
        self.states: list[list[Any]] = []  # slot k -> one buffer per param (tensors or arrays)
        self.state_arrays: list[list[np.ndarray]] = []

    def state_buffers(self, count: int, fill: Sequence[float]) -> None:
        """Make sure ``count`` state buffers per param exist, filled with ``fill[k]``."""
        while len(self.states) < count:
            if self.torch is not None:
                bufs = [self.torch.empty_like(p, requires_grad=False) for p in self.params]
                arrays = [b.numpy() for b in bufs]
            else:
                arrays = [np.empty(s, dtype=self.dtype) for s in self.shapes]
                bufs = arrays
            self.states.append(bufs)
            self.state_arrays.append(arrays)
        for k in range(count):
            for a in self.state_arrays[k]:
                a.fill(fill[k])


@dataclass
class Contender:
    name: str
    step: Callable[[], Any]
    keep: Any = None  # the optimizer object, kept alive while the contender runs


def _state_plan(
    rule: str, options: dict[str, Any], cls_name: str
) -> tuple[list[str], list[float], dict[str, Any]]:
    """Slot names this rule uses with these options, their initial values, and the full group."""
    import fastoptim

    probe = getattr(fastoptim, cls_name)([np.zeros(1, np.float32)], **options)
    group = probe.param_groups[0]
    slots = [s for s in _core.state_slots(probe.rule, group) if s is not None]
    init = [
        float(options.get("initial_accumulator_value", 0.0)) if s == "sum" else 0.0 for s in slots
    ]
    return slots, init, group


def roofline_table(
    params: list[np.ndarray], grads: list[np.ndarray], states: list[list[np.ndarray]]
) -> np.ndarray:
    """The (n, 7) int64 pointer table that _core.roofline_pointers reads: param, grad, up to
    three state buffers, element count (and an unused step column). The arrays must outlive it."""
    rows = []
    for p, g, st in zip(params, grads, states):
        slots = [a.ctypes.data for a in st] + [0] * (3 - len(st))
        rows.append([p.ctypes.data, g.ctypes.data, *slots, p.size, 0])
    return np.array(rows, dtype=np.int64).reshape(-1, 7)


def build_contender(
    kind: str, rule: str, options: dict[str, Any], slots: list[str], buffers: Buffers, threads: int
) -> Contender:
    """An optimizer of ``kind`` over the shared buffers, its state pointing at the shared state
    buffers (a fresh step counter of its own)."""
    import fastoptim

    cls_name = RULES[rule][0]
    torch = buffers.torch
    has_step = rule != "sgd"
    if kind == "roofline":
        params, grads = buffers.param_arrays, buffers.grad_arrays
        states = [
            [buffers.state_arrays[k][i] for k in range(len(slots))] for i in range(len(params))
        ]
        table = roofline_table(params, grads, states)
        dtype = str(params[0].dtype)
        return Contender(
            kind, lambda: _core.roofline_pointers(table, len(slots), dtype, threads)
        )
    if kind == "fastoptim.arrays":
        opt = getattr(fastoptim, cls_name)(buffers.param_arrays, **options)
        for i in range(len(buffers.param_arrays)):
            st: dict[str, Any] = {"step": np.array(0.0, np.float32)} if has_step else {}
            for k, slot in enumerate(slots):
                st[slot] = buffers.state_arrays[k][i]
            opt.state[i] = st
        grads = buffers.grad_arrays
        return Contender(kind, lambda: opt.step(grads), opt)
    if torch is None:
        raise RuntimeError("torch is not installed")
    from torch.optim.optimizer import _get_scalar_dtype

    fused = False
    if kind == "fastoptim.torch":
        cls = getattr(importlib.import_module("fastoptim.torch"), cls_name)
        opt = cls(buffers.params, **options)
    else:
        cls = getattr(torch.optim, cls_name)
        if kind == "torch.fused":
            if rule not in TORCH_FUSED:
                raise RuntimeError(f"torch has no fused CPU {cls_name}")
            fused = True
            opt = cls(buffers.params, fused=True, **options)
        else:
            opt = cls(buffers.params, foreach=(kind == "torch.foreach"), **options)
    for i, p in enumerate(buffers.params):
        st = (
            {"step": torch.tensor(0.0, dtype=_get_scalar_dtype(is_fused=fused))} if has_step else {}
        )
        for k, slot in enumerate(slots):
            st[slot] = buffers.states[k][i]
        opt.state[p] = st
    return Contender(kind, opt.step, opt)


# ---- measurement ---------------------------------------------------------------------------------


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
    """Warm-up, calibrate the block length, then interleaved rounds with busy detection."""
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
    flags: list[bool] = []
    redo_left = settings.max_redo
    index = 0
    while len(flags) < settings.rounds and live:
        order = live[index % len(live) :] + live[: index % len(live)]  # rotate A B C, B C A, ...
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
            flags.append(busy)
            for name, ms in round_ms.items():
                samples[name].append(ms)
        bar.advance(1)
    if not live:
        bar.advance(settings.rounds)
    for c in live:
        s = summarize(samples[c.name], flags)
        cell.contenders[c.name] = {
            "median_ms": s.median,
            "samples_ms": samples[c.name],
            "flagged": list(flags),
            "clean": s.clean,
            "rounds_used": s.used,
            "steps_per_round": steps[c.name],
        }
    _derive(cell)


def _derive(cell: CellResult) -> None:
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


# ---- output --------------------------------------------------------------------------------------

_SHORT = {
    "fastoptim.torch": "fastoptim.torch",
    "fastoptim.arrays": "fastoptim arrays",
    "torch.fused": "torch fused",
    "torch.foreach": "torch foreach",
    "torch.forloop": "torch for-loop",
    "roofline": "roofline",
}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def format_table(cells: Sequence[CellResult], markdown: bool = False) -> str:
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
        first = True
        names = [n for n in CONTENDERS if n in cell.contenders]
        names += [n for n in cell.contenders if n not in CONTENDERS] + sorted(cell.errors)
        for name in names:
            lead = [cell.label, cell.workload_label, str(cell.threads)] if first else ["", "", ""]
            first = False
            if name in cell.errors:
                rows.append(
                    lead + [_SHORT.get(name, name), "n/a", "", "", "", "", cell.errors[name][:40]]
                )
                continue
            e = cell.contenders[name]
            mark = "" if e["clean"] else "*"
            is_torch = name in TORCH_CONTENDERS
            rows.append(
                lead
                + [
                    _SHORT.get(name, name),
                    _fmt(e["median_ms"], ".3f", mark),
                    _fmt(e.get("gelem_per_s"), ".3f"),
                    _fmt(e.get("pct_of_roofline"), ".1f", "%"),
                    ""
                    if name == "torch.fused"
                    else _fmt(e.get("speedup_vs_torch_fused"), ".2f", "x"),
                    "" if is_torch else _fmt(e.get("speedup_vs_torch_best"), ".2f", "x"),
                    f"{e['rounds_used']}/{len(e['samples_ms'])}" + ("" if e["clean"] else " busy"),
                ]
            )
        if not markdown:
            rows.append([])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows if r]
        return "\n".join(lines)
    widths = [max([len(head[i])] + [len(r[i]) for r in rows if r]) for i in range(len(head))]
    right = {4, 5, 6, 7, 8}

    def line(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) if r else "" for r in rows]
    return "\n".join(out).rstrip()


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
                label=_SHORT[name],
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


# ---- driver --------------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(default_dir: Path | None = None) -> argparse.ArgumentParser:
    where = default_dir if default_dir is not None else Path(".")
    p = argparse.ArgumentParser(
        prog="python -m fastoptim bench",
        description="Time every optimizer rule x workload x thread count: fastoptim (torch and "
        "array fronts) against torch.optim fused/foreach/for-loop and a same-traffic roofline.",
    )
    p.add_argument("--rules", default=",".join(RULES), help=f"comma list of {', '.join(RULES)}")
    p.add_argument(
        "--workloads",
        default="10m,100m,gpt2,mlp",
        help="comma list: gpt2, mlp, or a size (one tensor: 10m, 100m, 4097, ...)",
    )
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma list of " + ", ".join(CONTENDERS)
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
    p.add_argument(
        "--json", default=str(where / "fastoptim-bench.json"), help="JSON output ('' for none)"
    )
    p.add_argument(
        "--png", default=str(where / "fastoptim-bench.png"), help="chart output ('' for none)"
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke test: tiny sizes (--scale 0.001), 3 rounds, no redo",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, default_dir: Path | None = None) -> int:
    args = build_parser(default_dir).parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.quick:
        args.scale = 1e-3 if args.scale == 1.0 else args.scale
        args.rounds = min(args.rounds, 3)
        args.warmup = 1
        args.min_time = min(args.min_time, 0.002)
        args.max_redo = 0 if args.max_redo is None else args.max_redo
    max_redo = args.rounds if args.max_redo is None else args.max_redo
    rules = _split(args.rules)
    variants = [v for text in args.variant for v in _split(text)]
    contender_names = _split(args.contenders)
    for bad, known, what in (
        (rules, RULES, "rule"),
        (variants, VARIANTS, "variant"),
        (contender_names, CONTENDERS, "contender"),
    ):
        unknown = [x for x in bad if x not in known]
        if unknown:
            print(
                f"unknown {what}(s): {', '.join(unknown)}; expected {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    if variants and not any(rule in VARIANTS[v] for v in variants for rule in rules):
        print("the selected variants change none of the selected rules", file=sys.stderr)
        return 2
    try:
        workloads = [make_workload(w, args.scale) for w in _split(args.workloads)]
        threads = [int(t) for t in _split(args.threads)]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if any(t < 1 for t in threads) or args.rounds < 1:
        print("threads and rounds must be >= 1", file=sys.stderr)
        return 2

    torch = _torch_or_none()
    if torch is None:
        dropped = [c for c in contender_names if c not in ("fastoptim.arrays", "roofline")]
        contender_names = [c for c in contender_names if c not in dropped]
        if dropped:
            print(f"torch is not installed: skipping {', '.join(dropped)}", file=sys.stderr)
    settings = Settings(
        rounds=args.rounds,
        warmup=args.warmup,
        min_time=args.min_time,
        max_redo=max_redo,
        busy_threshold=args.busy_threshold,
    )

    plan = [(rule, *rule_options(rule, variants)) for rule in rules]
    cells_planned = len(workloads) * len(plan) * len(threads)
    bar = ProgressBar(cells_planned * (settings.rounds + 1), enabled=not args.no_progress)
    cells: list[CellResult] = []
    started = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    interrupted = False
    try:
        for workload in workloads:
            bar.set_label(f"allocating {workload.label}")
            buffers = Buffers(workload.shapes, args.dtype, torch)
            try:
                for rule, label, options in plan:
                    slots, init, _group = _state_plan(rule, options, RULES[rule][0])
                    for n in threads:
                        set_num_threads(n)
                        if torch is not None:
                            torch.set_num_threads(n)
                        bar.set_label(f"{label} {workload.label} {n}t")
                        buffers.state_buffers(len(slots), init)
                        cell = CellResult(
                            rule=rule,
                            label=label,
                            options=options,
                            workload=workload.key,
                            workload_label=workload.label,
                            elements=workload.elements,
                            tensors=len(workload.shapes),
                            threads=n,
                            dtype=args.dtype,
                        )
                        cell_start = time.perf_counter()
                        contenders = []
                        for kind in contender_names:
                            if kind == "torch.fused" and rule not in TORCH_FUSED:
                                continue
                            try:
                                contenders.append(
                                    build_contender(kind, rule, options, slots, buffers, n)
                                )
                            except Exception as exc:  # noqa: BLE001 - reported in the table
                                cell.errors[kind] = f"{type(exc).__name__}: {exc}"
                        measure_cell(contenders, cell, settings, bar)
                        del contenders
                        if workload.elements >= 10**6:  # optimizers hold reference cycles
                            gc.collect()
                        cell.elapsed_s = round(time.perf_counter() - cell_start, 3)
                        cells.append(cell)
            finally:
                del buffers
                gc.collect()
    except KeyboardInterrupt:
        interrupted = True
    bar.close()
    elapsed = time.time() - started

    header = (
        f"fastoptim {__version__} bench | {cpu_model()} | {args.dtype} | SIMD {simd_level()} | "
        f"torch {torch.__version__ if torch is not None else 'not installed'} | {date}"
    )
    print(header)
    print(format_table(cells, markdown=args.markdown))
    flagged = sum(1 for c in cells for r in c.rounds if r["busy"])
    total_rounds = sum(len(c.rounds) for c in cells)
    print(
        f"\n{len(cells)} cells, {total_rounds} rounds ({flagged} with other CPU activity, "
        f"redone while the budget lasted), {elapsed:.0f} s. '*' = median over busy rounds only."
    )
    if interrupted:
        print("interrupted: partial results", file=sys.stderr)

    if args.json:
        doc = {
            "fastoptim_version": __version__,
            "date": date,
            "machine": machine_info(),
            "torch_version": None if torch is None else torch.__version__,
            "numpy_version": np.__version__,
            "simd_level": simd_level(),
            "openmp_runtime": openmp_runtime(),
            "dtype": args.dtype,
            "threads": threads,
            "variants": variants,
            "settings": vars(settings),
            "argv": list(sys.argv[1:] if argv is None else argv),
            "elapsed_s": round(elapsed, 1),
            "interrupted": interrupted,
            "results": [vars(c) for c in cells],
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    if args.png and cells:
        path = Path(args.png)
        path.parent.mkdir(parents=True, exist_ok=True)
        if write_chart(cells, path, header):
            print(f"wrote {path}")
        else:
            print("matplotlib is not installed: no chart (pip install matplotlib)")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
