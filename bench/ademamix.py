"""AdEMAMix's step: fastoptim.torch.AdEMAMix against the official implementation
(bitsandbytes' AdEMAMix with 32-bit state, its CPU backend: eleven tensor ops per param) on the
same params and grads, with the same-traffic roofline (fastoptim._roofline: grad read; param, m1,
m2 and nu read and written, 36 B per float32 element). Medians of --rounds, G elements/s, side
by side in one run.

    python bench/ademamix.py [--threads 1,2] [--rounds 5]

Workloads: one 10M tensor, one 100M tensor, and GPT-2 small's shapes (fastoptim.bench's).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import statistics
import time

import bitsandbytes
import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import torch
from fastoptim import _roofline
from fastoptim.bench.workloads import gpt2_small_shapes

OPTIONS = dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=10_000, t_beta3=10_000,
               weight_decay=0.01)


def shapes_of(name: str) -> list[tuple[int, ...]]:
    if name == "gpt2":
        return gpt2_small_shapes()
    count, _, size = name.partition("x")  # "1x10M": one tensor of 10M elements
    units = {"K": 1_000, "M": 1_000_000}
    elements = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return [(elements,)] * int(count)


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
    parser.add_argument("--workloads", default="1x10M,1x100M,gpt2",
                        help="comma-separated: <count>x<size>[K|M] or gpt2")
    args = parser.parse_args()
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | bitsandbytes "
          f"{importlib.metadata.version('bitsandbytes')} | "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}")
    print("G elements/s, float32, " + ", ".join(f"{k}={v}" for k, v in OPTIONS.items()) +
          f" (both warm-ups running); median of {args.rounds} steps\n")
    print(f"{'workload':<28}{'threads':>8}{'fastoptim':>11}{'bitsandbytes':>14}{'roofline':>10}"
          f"{'x official':>12}{'% roofline':>12}")
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
            for label, cls in (("fastoptim", fo_torch.AdEMAMix),
                               ("official", bitsandbytes.optim.AdEMAMix)):
                ps = [torch.nn.Parameter(p.clone()) for p in params]
                for p, g in zip(ps, grads):
                    p.grad = g
                opt = cls(ps, **OPTIONS)
                rates[label] = timed(opt.step, args.rounds, elements)
                del opt, ps
            ps = [p.clone() for p in params]
            states = [[torch.zeros_like(p) for _ in range(3)] for p in params]
            table = np.array([[p.data_ptr(), g.data_ptr(), *(m.data_ptr() for m in s), p.numel(),
                               0] for p, g, s in zip(ps, grads, states)], dtype=np.int64)
            rates["roofline"] = timed(
                lambda table=table, threads=threads: _roofline.step(table, ["float32"] * 5,
                                                                     threads),
                args.rounds, elements)
            print(f"{name:<28}{threads:>8}{rates['fastoptim'] / 1e9:>11.3f}"
                  f"{rates['official'] / 1e9:>14.3f}{rates['roofline'] / 1e9:>10.3f}"
                  f"{rates['fastoptim'] / rates['official']:>11.1f}x"
                  f"{100 * rates['fastoptim'] / rates['roofline']:>11.1f}%")
            del ps, states


if __name__ == "__main__":
    main()
