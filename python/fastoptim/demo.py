"""python -m fastoptim: train a small model with each rule, fastoptim vs torch.optim.

A 2-layer MLP classifier (tanh hidden layer, softmax cross-entropy) learns labels that a random
"teacher" network gives to Gaussian inputs: no downloads, a fixed seed, the same initial weights
and the same mini-batches for every optimizer. Per rule it trains

* with ``fastoptim.torch.X`` and with ``torch.optim.X(foreach=False)`` on the same torch model
  (when torch is installed): the two loss curves should coincide, since fastoptim is exact to
  torch.optim up to float rounding;
* with ``fastoptim.X`` (the array front) on a NumPy version of the same model (always).

It prints the loss at checkpoints side by side, the largest |difference| from torch.optim, and the
median time of one ``step()`` call per optimizer.

Then one bfloat16 comparison: the same model trained with AdamW on float32 params, on bfloat16
params and grads rounded to nearest-even, with stochastic rounding, and with float32 master
weights (the forward and backward computed in float32 from the bfloat16 params, as autocast
does), with 8-bit moments (``state_dtype="int8"``) on float32 params and on bfloat16 params with
a master copy, plus torch's fused AdamW on the same bfloat16 params: the loss curves side by
side.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastoptim

from . import __version__, _registry
from .bench import ProgressBar

# Options that make a rule learn this task in a few hundred steps: DEFAULT_OPTIONS unless the
# rule is listed (every registered rule is trained; tests/test_demo.py checks that each learns).
DEFAULT_OPTIONS: dict[str, Any] = {"lr": 3e-3}
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adagrad": {"lr": 0.05},
    "adadelta": {"lr": 1.0},
    "rmsprop": {"lr": 1e-3},
    "adamw": {"lr": 3e-3, "weight_decay": 1e-2},
    "sgd_schedulefree": {"lr": 0.5},
}


def demo_rules() -> dict[str, tuple[str, dict[str, Any]]]:
    """rule -> (class name, demo options), for every rule the core registers."""
    return {
        rule: (info["torch_name"], DEMO_OPTIONS.get(rule, DEFAULT_OPTIONS))
        for rule, info in _registry.RULES.items()
    }


SPARK = "▁▂▃▄▅▆▇█"

# The bfloat16 comparison: AdamW with torch's default learning rate (an update of ~1e-3 is below
# half a bfloat16 ulp of most weights here, so that rounding to nearest-even loses some of them).
BF16_OPTIONS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 1e-2}
# (row name, param dtype, fastoptim options)
BF16_RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fp32", "float32", {}),
    ("bf16 nearest-even", "bfloat16", {}),
    ("bf16 stochastic rounding", "bfloat16", {"stochastic_rounding": True}),
    ("bf16 + master weights", "bfloat16", {"master_weights": True}),
    # 8-bit moments (blockwise, torchao's maps) for every tensor: the model's are all below the
    # default min_8bit_size, which would keep them in float32
    ("fp32 + int8 moments", "float32", {"state_dtype": "int8", "min_8bit_size": 0}),
    ("bf16 + master + int8 moments", "bfloat16",
     {"master_weights": True, "state_dtype": "int8", "min_8bit_size": 0}),
)
TORCH_BF16 = "torch fused bf16"
NO_TORCH_LINE = (
    "torch is not installed: no comparison with torch.optim and no bfloat16 table against torch "
    "below. For them: pip install torch==2.13.0 (CPU build, ~190 MB: add --index-url "
    "https://download.pytorch.org/whl/cpu), then python -m fastoptim again."
)


# ---- data and model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    x: np.ndarray  # (samples, inputs)
    y: np.ndarray  # (samples,) int64 class labels
    init: tuple[np.ndarray, ...]  # w1 (hidden, inputs), b1, w2 (classes, hidden), b2
    batches: tuple[np.ndarray, ...]  # sample indices of each step's mini-batch


def make_task(
    steps: int,
    dtype: str = "float32",
    samples: int = 1024,
    inputs: int = 32,
    hidden: int = 64,
    classes: int = 10,
    batch: int = 64,
    seed: int = 0,
) -> Task:
    """Gaussian inputs labelled by a random teacher MLP; a student MLP of the same shape starts
    from small random weights (PyTorch's nn.Linear init ranges). Sizes keep every matmul below
    OpenBLAS's threading threshold (m*n*k < 262144): threads only slow a model this small."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, inputs))
    teacher_w1 = rng.standard_normal((hidden, inputs)) / np.sqrt(inputs)
    teacher_w2 = rng.standard_normal((classes, hidden)) / np.sqrt(hidden)
    logits = np.tanh(x @ teacher_w1.T * 2.0) @ teacher_w2.T
    y = np.argmax(logits + 0.1 * rng.standard_normal(logits.shape), axis=1)
    bound1, bound2 = 1 / np.sqrt(inputs), 1 / np.sqrt(hidden)
    init = (
        rng.uniform(-bound1, bound1, (hidden, inputs)),
        rng.uniform(-bound1, bound1, hidden),
        rng.uniform(-bound2, bound2, (classes, hidden)),
        rng.uniform(-bound2, bound2, classes),
    )
    batches = []
    order: list[int] = []
    while len(batches) < steps:
        if len(order) < batch:
            order += list(rng.permutation(samples))
        batches.append(np.array(order[:batch]))
        del order[:batch]
    cast = np.dtype(dtype)
    return Task(
        x=x.astype(cast),
        y=y.astype(np.int64),
        init=tuple(a.astype(cast) for a in init),
        batches=tuple(batches),
    )


def numpy_loss_and_grads(
    params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, list[np.ndarray]]:
    """Mean softmax cross-entropy of tanh MLP ``params`` on (x, y) and its gradients."""
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1.T + b1)
    logits = h @ w2.T + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    loss = float(-log_prob[rows, y].mean())
    d_logits = np.exp(log_prob)
    d_logits[rows, y] -= 1.0
    d_logits /= len(y)
    d_h = (d_logits @ w2) * (1.0 - h * h)
    grads = [d_h.T @ x, d_h.sum(axis=0), d_logits.T @ h, d_logits.sum(axis=0)]
    return loss, [np.ascontiguousarray(g, dtype=x.dtype) for g in grads]


# ---- training ------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    losses: list[float] = field(default_factory=list)
    step_us: list[float] = field(default_factory=list)

    @property
    def median_step_us(self) -> float:
        return statistics.median(self.step_us) if self.step_us else float("nan")


def train_arrays(
    task: Task,
    cls_name: str,
    options: dict[str, Any],
    tick: Callable[[], None],
    param_dtype: Any = None,
    name: str = "fastoptim arrays",
) -> Run:
    """``param_dtype`` (a NumPy / ml_dtypes dtype): params and grads stored in it, the model
    computed in the task's dtype from them."""
    params = [a.astype(param_dtype) if param_dtype else a.copy() for a in task.init]
    opt = _registry.ready_to_train(getattr(fastoptim, cls_name)(params, **options))
    run = Run(name)
    for batch in task.batches:
        wide = [p.astype(task.x.dtype) for p in params] if param_dtype else params
        loss, grads = numpy_loss_and_grads(wide, task.x[batch], task.y[batch])
        if param_dtype:
            grads = [g.astype(param_dtype) for g in grads]
        t0 = time.perf_counter_ns()
        opt.step(grads)
        run.step_us.append((time.perf_counter_ns() - t0) / 1e3)
        run.losses.append(loss)
        tick()
    return run


def train_torch(
    task: Task,
    torch: Any,
    make_optimizer: Callable[[list[Any]], Any],
    name: str,
    tick: Callable[[], None],
    param_dtype: Any = None,
) -> Run:
    """``param_dtype`` (a torch dtype): params (so grads) stored in it, the model computed in
    the task's dtype from them."""
    x = torch.from_numpy(task.x)
    y = torch.from_numpy(task.y)
    params = [torch.from_numpy(a.copy()) for a in task.init]
    if param_dtype is not None:
        params = [p.to(param_dtype) for p in params]
    params = [p.requires_grad_() for p in params]
    opt = make_optimizer(params)
    if hasattr(opt, "_info"):  # fastoptim.torch's (torch.optim's have no transforms)
        _registry.ready_to_train(opt)
    run = Run(name)
    for batch in task.batches:
        index = torch.from_numpy(batch)
        xb, yb = x[index], y[index]
        opt.zero_grad()
        # the same tensors when the params have the task's dtype; float32 copies of bfloat16 ones
        w1, b1, w2, b2 = (p.to(x.dtype) for p in params)
        logits = torch.tanh(xb @ w1.T + b1) @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(logits, yb)
        loss.backward()
        t0 = time.perf_counter_ns()
        opt.step()
        run.step_us.append((time.perf_counter_ns() - t0) / 1e3)
        run.losses.append(loss.item())
        tick()
    return run


def bf16_runs(task: Task, torch: Any, tick: Callable[[], None]) -> list[Run]:
    """The bfloat16 comparison's runs (BF16_RUNS, then torch's fused AdamW on bfloat16 params):
    fastoptim.torch when torch is installed, else the array front on ml_dtypes bfloat16 arrays.
    RuntimeError when neither can hold bfloat16."""
    if torch is not None:
        fo_cls = importlib.import_module("fastoptim.torch").AdamW
        runs = [
            train_torch(
                task,
                torch,
                lambda p, o=opts: fo_cls(p, **BF16_OPTIONS, **o),
                name,
                tick,
                getattr(torch, dtype),
            )
            for name, dtype, opts in BF16_RUNS
        ]
        runs.append(
            train_torch(
                task,
                torch,
                lambda p: torch.optim.AdamW(p, fused=True, **BF16_OPTIONS),
                TORCH_BF16,
                tick,
                torch.bfloat16,
            )
        )
        return runs
    try:
        import ml_dtypes
    except ImportError:
        raise RuntimeError("bfloat16 arrays need ml_dtypes (pip install ml_dtypes)") from None
    return [
        train_arrays(
            task,
            "AdamW",
            {**BF16_OPTIONS, **opts},
            tick,
            None if dtype == "float32" else np.dtype(ml_dtypes.bfloat16),
            name,
        )
        for name, dtype, opts in BF16_RUNS
    ]


def bf16_unavailable(torch: Any) -> str:
    """Why the bfloat16 comparison cannot run here ('' when it can): decided before the
    progress bar is made, so that the bar counts only runs that happen."""
    if torch is not None:
        return ""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return "bfloat16 arrays need ml_dtypes (pip install ml_dtypes)"
    return ""


def tail_mean(losses: Sequence[float]) -> float:
    """Mean loss over the last tenth of the steps (at least one): where a curve ends up."""
    n = max(1, len(losses) // 10)
    return float(np.mean(losses[-n:]))


def format_bf16_table(runs: list[Run], steps: int) -> str:
    """The bfloat16 comparison: losses at checkpoints, the curve, the mean loss over the last
    tenth of the steps and its difference from the float32 run, the step time."""
    marks = checkpoints(steps)
    head = ["AdamW", f"step {marks[0]}"] + [str(m) for m in marks[1:]]
    head += ["curve", "last 10%", "vs fp32", "step µs"]
    reference = tail_mean(runs[0].losses)
    rows = []
    for run in runs:
        row = [run.name] + [f"{run.losses[m - 1]:.4f}" for m in marks]
        row.append(sparkline(run.losses))
        end = tail_mean(run.losses)
        diff = round(end - reference, 4) + 0.0  # no "-0.0000"
        row += [f"{end:.4f}", "" if run is runs[0] else f"{diff:+.4f}"]
        row.append(f"{run.median_step_us:.1f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    left = {0, len(head) - 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


# ---- output --------------------------------------------------------------------------------------


def sparkline(values: Sequence[float], width: int = 16) -> str:
    """The curve in ``width`` block characters (each the mean of its slice), scaled to its range."""
    if not values:
        return ""
    edges = np.linspace(0, len(values), min(width, len(values)) + 1).astype(int)
    means = [float(np.mean(values[a:b])) for a, b in itertools.pairwise(edges)]
    lo, hi = min(means), max(means)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((m - lo) / span * len(SPARK)))] for m in means)


def checkpoints(steps: int, count: int = 7) -> list[int]:
    """1-based step numbers at which the table shows the loss."""
    return sorted({round(s) for s in np.linspace(1, steps, min(count, steps))})


def format_table(results: list[tuple[str, list[Run]]], steps: int) -> str:
    marks = checkpoints(steps)
    head = ["rule", "optimizer"] + [f"step {marks[0]}"] + [str(m) for m in marks[1:]]
    head += ["curve", "max|diff|", "step µs", "speed-up"]
    rows: list[list[str]] = []
    for label, runs in results:
        reference = next((r for r in runs if r.name == "torch.optim"), None)
        for i, run in enumerate(runs):
            row = [label if i == 0 else "", run.name]
            row += [f"{run.losses[m - 1]:.4f}" for m in marks]
            row.append(sparkline(run.losses))
            if reference is None or run is reference:
                row.append("")
            else:
                row.append(f"{max_abs_diff(run.losses, reference.losses):.1e}")
            row.append(f"{run.median_step_us:.1f}")
            if reference is None or run is reference:
                row.append("")
            else:
                row.append(f"{reference.median_step_us / run.median_step_us:.1f}x")
            rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    left = {0, 1, len(head) - 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    for j, r in enumerate(rows):
        if j and r[0]:
            out.append("")
        out.append(line(r))
    return "\n".join(out)


def max_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if a else 0.0


# ---- driver --------------------------------------------------------------------------------------


def _rule_label(cls_name: str, options: dict[str, Any]) -> str:
    return cls_name + "(" + ", ".join(f"{k}={v:g}" for k, v in options.items()) + ")"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastoptim",
        description="Train a small MLP on synthetic data with each rule under fastoptim and "
        "torch.optim; print the loss curves side by side and the step time per rule; then "
        "AdamW on bfloat16 params (nearest-even, stochastic rounding, master weights) against "
        "float32. Other commands: python -m fastoptim bench | info.",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    all_rules = demo_rules()
    parser.add_argument("--rules", default=",".join(all_rules), help="comma list of rules")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="train with the array front only, as when torch is not installed",
    )
    parser.add_argument(
        "--no-bf16", action="store_true", help="skip the bfloat16 comparison (AdamW)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    rules = [r.strip().lower() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in all_rules]
    if unknown or not rules:
        parser.error(f"unknown rule(s) {', '.join(unknown)}; expected {', '.join(all_rules)}")
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        # A model this small runs fastest on one thread; more only add fork/join (and on a busy
        # machine, waits for a descheduled worker).
        torch.set_num_threads(1)
    if torch is None and not args.no_torch:
        # The first thing a user without torch reads: what the run lacks and the command for it.
        print(NO_TORCH_LINE)
    task = make_task(args.steps, args.dtype)
    params = sum(a.size for a in task.init)
    print(
        f"fastoptim {__version__} demo: MLP {task.init[0].shape[1]}-{task.init[0].shape[0]}-"
        f"{task.init[2].shape[0]} (tanh, cross-entropy, {params:,} params), {len(task.x)} synthetic "
        f"samples, batch {len(task.batches[0])}, {args.steps} steps, {args.dtype}, "
        + (
            f"torch {torch.__version__}"
            if torch is not None
            else "torch not installed: array front only"
        )
    )
    # The torch-model runs of each rule: fastoptim.torch and torch.optim(foreach=False), each
    # where it exists (a rule torch lacks has no torch.optim run).
    torch_makers: dict[str, list[tuple[str, Callable[[Any], Any]]]] = {}
    for rule in rules:
        cls_name, options = all_rules[rule]
        makers: list[tuple[str, Callable[[Any], Any]]] = []
        if torch is not None:
            fo_cls = getattr(importlib.import_module("fastoptim.torch"), cls_name, None)
            torch_cls = _registry.torch_class(rule, torch)
            if fo_cls is not None:
                makers.append(("fastoptim.torch", lambda p, c=fo_cls, o=options: c(p, **o)))
            if torch_cls is not None:
                makers.append(
                    ("torch.optim", lambda p, c=torch_cls, o=options: c(p, foreach=False, **o))
                )
        torch_makers[rule] = makers
    bf16_skipped = "" if args.no_bf16 else bf16_unavailable(torch)
    run_bf16 = not args.no_bf16 and not bf16_skipped
    bf16_count = len(BF16_RUNS) + (torch is not None) if run_bf16 else 0
    total_runs = sum(len(m) + 1 for m in torch_makers.values()) + bf16_count
    bar = ProgressBar(total_runs * args.steps, enabled=not args.no_progress)
    # The label names the run in progress and its place ("run 4/13"): the percentage counts the
    # steps already done, so a bare rule name next to it read as that rule being finished.
    started_runs = 0

    def tick_for(what: str) -> Callable[[], None]:
        nonlocal started_runs
        started_runs += 1
        bar.set_label(f"run {started_runs}/{total_runs}: {what}")
        return bar.advance

    results: list[tuple[str, list[Run]]] = []
    started = time.perf_counter()
    for rule in rules:
        cls_name, options = all_rules[rule]
        runs = [
            train_torch(task, torch, make, name, tick_for(f"{cls_name} {name}"))
            for name, make in torch_makers[rule]
        ]
        runs.append(
            train_arrays(task, cls_name, options, tick_for(f"{cls_name} fastoptim arrays"))
        )
        results.append((_rule_label(cls_name, options), runs))
    bf16: list[Run] = []
    if run_bf16:
        bf16_task = task if args.dtype == "float32" else make_task(args.steps, "float32")
        names = iter([name for name, _, _ in BF16_RUNS] + [TORCH_BF16])
        current: list[Callable[[], None]] = []
        steps_done = 0

        def bf16_tick() -> None:
            # bf16_runs trains its runs one after another through one tick
            nonlocal steps_done
            if steps_done % args.steps == 0:
                current[:] = [tick_for(f"AdamW {next(names)}")]
            steps_done += 1
            current[0]()

        bf16 = bf16_runs(bf16_task, torch, bf16_tick)
    bar.close()
    elapsed = time.perf_counter() - started

    print(format_table(results, args.steps))
    print()
    if torch is not None:
        compared = [
            max_abs_diff(by_name["fastoptim.torch"].losses, by_name["torch.optim"].losses)
            for by_name in ({run.name: run for run in runs} for _, runs in results)
            if {"fastoptim.torch", "torch.optim"} <= by_name.keys()
        ]
        worst = max(compared, default=0.0)
        print(
            f"max |loss difference| fastoptim.torch vs torch.optim(foreach=False), all rules and "
            f"steps: {worst:.2e}"
        )
        print(
            "fastoptim arrays trains a NumPy copy of the model: its difference also holds "
            "NumPy-vs-torch matmul rounding."
        )
        print(
            "step µs: median time of one optimizer.step() call; speed-up: torch.optim's over "
            "this row's (a model this small measures per-call overhead, not bandwidth)."
        )
    if bf16:
        print()
        front = "fastoptim.torch" if torch is not None else "the array front (ml_dtypes)"
        print(
            f"bfloat16: AdamW({_rule_label('', BF16_OPTIONS)[1:-1]}) with {front}. The bf16 "
            "rows keep params, grads and\n(without a master copy) the moments in bfloat16; the "
            "forward and backward run in float32 from them."
        )
        print(format_bf16_table(bf16, args.steps))
        by_name = {run.name: run for run in bf16}
        if TORCH_BF16 in by_name:
            diff = max_abs_diff(by_name["bf16 nearest-even"].losses, by_name[TORCH_BF16].losses)
            print(f"max |loss difference| bf16 nearest-even vs {TORCH_BF16}: {diff:.2e}")
        print(
            "last 10%: mean loss over the last tenth of the steps; vs fp32: its difference from "
            "the float32 run (updates below half a bfloat16 ulp are lost to nearest-even "
            "rounding; stochastic rounding keeps them on average, a master copy in float32)."
        )
    elif bf16_skipped:
        print(f"\nbfloat16 comparison skipped: {bf16_skipped}")
    for run in [run for _, runs in results for run in runs] + bf16:
        if not np.all(np.isfinite(run.losses)):
            print(f"non-finite loss in {run.name}", file=sys.stderr)
            return 1
    print(f"trained {sum(len(runs) for _, runs in results) + len(bf16)} runs in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
