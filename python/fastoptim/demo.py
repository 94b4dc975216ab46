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

from . import __version__
from .bench import ProgressBar

# rule -> (class name, options that make it learn this task in a few hundred steps)
DEMO_RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("SGD", {"lr": 0.05, "momentum": 0.9}),
    "adagrad": ("Adagrad", {"lr": 0.05}),
    "adadelta": ("Adadelta", {"lr": 1.0}),
    "rmsprop": ("RMSprop", {"lr": 1e-3}),
    "adam": ("Adam", {"lr": 3e-3}),
    "adamw": ("AdamW", {"lr": 3e-3, "weight_decay": 1e-2}),
    "nadam": ("NAdam", {"lr": 3e-3}),
    "radam": ("RAdam", {"lr": 3e-3}),
    "adamax": ("Adamax", {"lr": 3e-3}),
}

SPARK = "▁▂▃▄▅▆▇█"


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
    task: Task, cls_name: str, options: dict[str, Any], tick: Callable[[], None]
) -> Run:
    params = [a.copy() for a in task.init]
    opt = getattr(fastoptim, cls_name)(params, **options)
    run = Run("fastoptim arrays")
    for batch in task.batches:
        loss, grads = numpy_loss_and_grads(params, task.x[batch], task.y[batch])
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
) -> Run:
    x = torch.from_numpy(task.x)
    y = torch.from_numpy(task.y)
    params = [torch.from_numpy(a.copy()).requires_grad_() for a in task.init]
    w1, b1, w2, b2 = params
    opt = make_optimizer(params)
    run = Run(name)
    for batch in task.batches:
        index = torch.from_numpy(batch)
        xb, yb = x[index], y[index]
        opt.zero_grad()
        logits = torch.tanh(xb @ w1.T + b1) @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(logits, yb)
        loss.backward()
        t0 = time.perf_counter_ns()
        opt.step()
        run.step_us.append((time.perf_counter_ns() - t0) / 1e3)
        run.losses.append(loss.item())
        tick()
    return run


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
        "torch.optim; print the loss curves side by side and the step time per rule. Other "
        "commands: python -m fastoptim bench | info.",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--rules", default=",".join(DEMO_RULES), help="comma list of rules")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="train with the array front only, as when torch is not installed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    rules = [r.strip().lower() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in DEMO_RULES]
    if unknown or not rules:
        parser.error(f"unknown rule(s) {', '.join(unknown)}; expected {', '.join(DEMO_RULES)}")
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
    runs_per_rule = 3 if torch is not None else 1
    bar = ProgressBar(len(rules) * runs_per_rule * args.steps, enabled=not args.no_progress)
    results: list[tuple[str, list[Run]]] = []
    started = time.perf_counter()
    for rule in rules:
        cls_name, options = DEMO_RULES[rule]
        label = _rule_label(cls_name, options)
        bar.set_label(cls_name)
        runs = []
        if torch is not None:
            fo_torch = importlib.import_module("fastoptim.torch")
            fo_cls = getattr(fo_torch, cls_name)
            torch_cls = getattr(torch.optim, cls_name)
            runs.append(
                train_torch(
                    task,
                    torch,
                    lambda p, c=fo_cls, o=options: c(p, **o),
                    "fastoptim.torch",
                    bar.advance,
                )
            )
            runs.append(
                train_torch(
                    task,
                    torch,
                    lambda p, c=torch_cls, o=options: c(p, foreach=False, **o),
                    "torch.optim",
                    bar.advance,
                )
            )
        runs.append(train_arrays(task, cls_name, options, bar.advance))
        results.append((label, runs))
    bar.close()
    elapsed = time.perf_counter() - started

    print(format_table(results, args.steps))
    print()
    if torch is not None:
        worst = max(max_abs_diff(runs[0].losses, runs[1].losses) for _, runs in results)
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
    for _, runs in results:
        for run in runs:
            if not np.all(np.isfinite(run.losses)):
                print(f"non-finite loss in {run.name}", file=sys.stderr)
                return 1
    print(f"trained {len(results) * runs_per_rule} runs in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
