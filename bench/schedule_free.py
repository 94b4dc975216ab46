"""Schedule-Free's step: fastoptim.torch's AdamWScheduleFree and SGDScheduleFree against the
official implementation (schedulefree's optimizers, their default foreach path) on the same
params and grads, with the same-traffic roofline (fastoptim._roofline: grad read, param and
each state buffer read and written: AdamW's z and exp_avg_sq, 28 B per float32 element; SGD's
z, 20 B). Medians of --rounds, G elements/s, side by side in one run.

    python bench/schedule_free.py [--threads 1,2] [--rounds 5] [--rules adamw,sgd]

Workloads: one 10M tensor, one 100M tensor, and GPT-2 small's shapes (fastoptim.bench's).
(Named schedule_free.py: a script named schedulefree.py would import itself for the package.)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import statistics
import time

import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import schedulefree
import torch
from fastoptim import _roofline
from fastoptim.bench.workloads import gpt2_small_shapes

# per rule: (fastoptim's class, schedulefree's, options, state buffers)
RULES = {
    "adamw": (fo_torch.AdamWScheduleFree, schedulefree.AdamWScheduleFree,
              dict(lr=2.5e-3, weight_decay=0.01, warmup_steps=100), 2),
    "sgd": (fo_torch.SGDScheduleFree, schedulefree.SGDScheduleFree,
            dict(lr=1.0, weight_decay=0.01, warmup_steps=100), 1),
}


def shapes_of(name: str) -> list[tuple[int, ...]]:
    if name == "1x10M":
        return [(10_000_000,)]
    if name == "1x100M":
        return [(100_000_000,)]
    return gpt2_small_shapes()


def timed(step, rounds: int, elements: int) -> float:
    step()  # state made, caches warm
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        rates.append(elements / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="1x10M,1x100M,gpt2")
    parser.add_argument("--rules", default="adamw,sgd")
    args = parser.parse_args()
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | schedulefree "
          f"{importlib.metadata.version('schedulefree')} | "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}")
    print(f"G elements/s, float32, train mode; median of {args.rounds} steps\n")
    print(f"{'rule':<7}{'workload':<28}{'threads':>8}{'fastoptim':>11}{'schedulefree':>14}"
          f"{'roofline':>10}{'x official':>12}{'% roofline':>12}")
    for rule in args.rules.split(","):
        ours, official, options, slots = RULES[rule]
        for name in args.workloads.split(","):
            shapes = shapes_of(name)
            elements = sum(int(np.prod(s)) for s in shapes)
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(s, generator=gen) for s in shapes]
            grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                fastoptim.set_num_threads(threads)
                rates = {}
                for label, cls in (("fastoptim", ours), ("official", official)):
                    ps = [torch.nn.Parameter(p.clone()) for p in params]
                    # schedulefree divides its grads in place: a copy each, so that both read
                    # the same grads first (the work per step does not depend on the values)
                    for p, g in zip(ps, grads):
                        p.grad = g.clone()
                    opt = cls(ps, **options)
                    opt.train()
                    rates[label] = timed(opt.step, args.rounds, elements)
                    del opt, ps
                ps = [p.clone() for p in params]
                states = [[torch.zeros_like(p) for _ in range(slots)] for p in params]
                table = np.array([[p.data_ptr(), g.data_ptr(),
                                   *(m.data_ptr() for m in s), *([0] * (3 - slots)),
                                   p.numel(), 0]
                                  for p, g, s in zip(ps, grads, states)], dtype=np.int64)
                rates["roofline"] = timed(
                    lambda: _roofline.step(table, ["float32"] * (2 + slots), threads),
                    args.rounds, elements)
                print(f"{rule:<7}{name:<28}{threads:>8}{rates['fastoptim'] / 1e9:>11.3f}"
                      f"{rates['official'] / 1e9:>14.3f}{rates['roofline'] / 1e9:>10.3f}"
                      f"{rates['fastoptim'] / rates['official']:>11.1f}x"
                      f"{100 * rates['fastoptim'] / rates['roofline']:>11.1f}%")
                del ps, states


if __name__ == "__main__":
    main()
