"""One optimizer step of fastoptim.torch and of torch.optim (fused=True) on many small tensors,
timed alone (each optimizer's steps back to back) and interleaved (one fastoptim step, one torch
step, alternately: each finds the caches as the other left them, as in a training loop where
other work runs between steps). Prints medians and ratios.

    python bench/step_alone_interleaved.py [--rule Adam] [--threads 1,2] [--steps 400]
        [--grads kept,new]

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


def _timed(opt, new_grads: list | None) -> float:
    """One step's time. new_grads: a pool of grad sets, one given to the params before each
    step (untimed), as backward after zero_grad() gives new grad tensors every step."""
    if new_grads is not None:
        new_grads.append(new_grads.pop(0))
        for group in opt.param_groups:
            for p, g in zip(group["params"], new_grads[0]):
                p.grad = g
    t = time.perf_counter()
    opt.step()
    return time.perf_counter() - t


def measure(rule: str, workload: str, steps: int, grads: str = "kept") -> dict[str, float]:
    shapes = SHAPES[workload]
    ours = _make(getattr(fo, rule), shapes, {})
    theirs = _make(getattr(torch.optim, rule), shapes, {"fused": True})
    pools = [None, None]
    if grads == "new":
        gen = torch.Generator().manual_seed(1)
        pools = [[[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
                 for _ in range(2)]
    alone_ours = [_timed(ours, pools[0]) for _ in range(steps)]
    alone_theirs = [_timed(theirs, pools[1]) for _ in range(steps)]
    mixed_ours, mixed_theirs = [], []
    for _ in range(steps):
        mixed_ours.append(_timed(ours, pools[0]))
        mixed_theirs.append(_timed(theirs, pools[1]))
    med = statistics.median
    return {"fastoptim alone": med(alone_ours), "torch fused alone": med(alone_theirs),
            "fastoptim interleaved": med(mixed_ours), "torch fused interleaved": med(mixed_theirs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule", default="Adam")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workloads", default="fixed,mlp")
    parser.add_argument("--grads", default="kept,new",
                        help="kept: the same grad tensors every step (zero_grad(set_to_none="
                             "False)); new: new grad tensors before every step (backward after "
                             "zero_grad())")
    args = parser.parse_args()
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | "
          f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"{'workload':<12} {'grads':<5} {'thr':>3}  {'fastoptim µs':>13} {'torch µs':>9} "
          f"{'ratio':>6}   {'fastoptim µs':>13} {'torch µs':>9} {'ratio':>6}")
    print(f"{'':<12} {'':<5} {'':>3}  {'alone':>30}   {'interleaved':>30}")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        fastoptim.set_num_threads(threads)
        for workload in args.workloads.split(","):
            for grads in args.grads.split(","):
                r = measure(args.rule, workload, args.steps, grads)
                a, b = r["fastoptim alone"] * 1e6, r["torch fused alone"] * 1e6
                c, d = r["fastoptim interleaved"] * 1e6, r["torch fused interleaved"] * 1e6
                print(f"{workload:<12} {grads:<5} {threads:>3}  {a:>13.1f} {b:>9.1f} "
                      f"{b / a:>5.2f}x   {c:>13.1f} {d:>9.1f} {d / c:>5.2f}x")


if __name__ == "__main__":
    main()
