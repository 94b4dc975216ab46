"""One optimizer step of fastoptim.torch and of torch.optim (fused=True) on many small tensors,
timed alone (each optimizer's steps back to back) and interleaved (one fastoptim step, one torch
step, alternately: each finds the caches as the other left them, as in a training loop where
other work runs between steps). Prints medians and ratios.

    python bench/step_alone_interleaved.py [--rule Adam] [--threads 1,2] [--steps 400]

Workloads: 'tiny MLP' (300 tensors of 64 and 100 of 64x64, 0.43M elements) and 'fixed cost'
(400 one-element tensors: the per-step cost with no data: plan check, dispatch, torch's hooks).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

import fastoptim
import fastoptim.torch as fo

# (the shapes are spelled out here, not taken from fastoptim.bench, so that an older fastoptim
# can be measured by the same script)
SHAPES = {"fixed": [(1,)] * 400, "mlp": [(64,)] * 300 + [(64, 64)] * 100}


def _make(cls, shapes, flags):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = cls(params, lr=1e-4, **flags)
    for _ in range(20):  # warm-up: plans built, state made, caches and branch predictors warm
        opt.step()
    return opt


def _timed(step) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def measure(rule: str, workload: str, steps: int) -> dict[str, float]:
    shapes = SHAPES[workload]
    ours = _make(getattr(fo, rule), shapes, {})
    theirs = _make(getattr(torch.optim, rule), shapes, {"fused": True})
    alone_ours = [_timed(ours.step) for _ in range(steps)]
    alone_theirs = [_timed(theirs.step) for _ in range(steps)]
    mixed_ours, mixed_theirs = [], []
    for _ in range(steps):
        mixed_ours.append(_timed(ours.step))
        mixed_theirs.append(_timed(theirs.step))
    med = statistics.median
    return {"fastoptim alone": med(alone_ours), "torch fused alone": med(alone_theirs),
            "fastoptim interleaved": med(mixed_ours), "torch fused interleaved": med(mixed_theirs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule", default="Adam")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workloads", default="fixed,mlp")
    args = parser.parse_args()
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | "
          f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"{'workload':<12} {'thr':>3}  {'fastoptim µs':>13} {'torch µs':>9} {'ratio':>6}   "
          f"{'fastoptim µs':>13} {'torch µs':>9} {'ratio':>6}")
    print(f"{'':<12} {'':>3}  {'alone':>30}   {'interleaved':>30}")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        fastoptim.set_num_threads(threads)
        for workload in args.workloads.split(","):
            r = measure(args.rule, workload, args.steps)
            a, b = r["fastoptim alone"] * 1e6, r["torch fused alone"] * 1e6
            c, d = r["fastoptim interleaved"] * 1e6, r["torch fused interleaved"] * 1e6
            print(f"{workload:<12} {threads:>3}  {a:>13.1f} {b:>9.1f} {b / a:>5.2f}x   "
                  f"{c:>13.1f} {d:>9.1f} {d / c:>5.2f}x")


if __name__ == "__main__":
    main()
