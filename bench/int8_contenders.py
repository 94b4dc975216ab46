"""8-bit AdamW on CPU against the 8-bit AdamWs users switch from: fastoptim.torch.AdamW8bit,
torchao's AdamW8bit (compiled, as it runs by default, and eager), bitsandbytes' AdamW8bit (its
CPU path), and fastoptim.torch's float32 AdamW beside them. Each contender steps its own copy of
the same float32 params with the same grads (AdamW's defaults, block size 256, every tensor
quantized: min_8bit_size=0 where the class takes it); the contenders take turns step by step,
so drift in this VM's speed hits all alike; medians of --steps, after --warmup steps (torchao's
compilation happens there and is reported apart). A contender that is not installed is left
out with a line saying so.

    python bench/int8_contenders.py [--workloads 50m,gpt2] [--threads 1,2] [--steps 7]
        [--contenders fastoptim.int8,fastoptim.fp32,torchao,torchao.eager,bitsandbytes]

Workloads: "gpt2" (GPT-2 small's 148 tensors, fastoptim.bench's shapes) or one tensor of a
given size ("50m").
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import statistics
import time
import warnings
from typing import Any, Callable

import fastoptim
import fastoptim.torch as fo_torch
import torch
from fastoptim.bench.workloads import gpt2_small_shapes, parse_count

CONTENDERS = ("fastoptim.int8", "fastoptim.fp32", "torchao", "torchao.eager", "bitsandbytes")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def make(kind: str, params: list[torch.nn.Parameter]) -> Callable[[], None]:
    """The step of contender ``kind`` over ``params``; ImportError if it is not installed."""
    if kind == "fastoptim.int8":
        opt = fo_torch.AdamW8bit(params, min_8bit_size=0)
    elif kind == "fastoptim.fp32":
        opt = fo_torch.AdamW(params)
    elif kind in ("torchao", "torchao.eager"):
        from torchao.optim import AdamW8bit

        opt = AdamW8bit(params, block_size=256)
        if kind == "torchao.eager":
            step = opt.step

            def eager() -> None:  # torchao compiles in its step: torch.compile made a no-op
                compile_ = torch.compile
                torch.compile = lambda f, **_: f
                try:
                    step()
                finally:
                    torch.compile = compile_

            return eager
    elif kind == "bitsandbytes":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, min_8bit_size=0)  # blockwise, 256
    else:
        raise ValueError(f"unknown contender {kind!r}; known: {', '.join(CONTENDERS)}")
    return opt.step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="50m,gpt2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    args = ap.parse_args()
    kinds = args.contenders.split(",")
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"8-bit AdamW on CPU, {platform.processor() or platform.machine()}, SIMD level "
          f"{fastoptim.simd_level()}, torch {torch.__version__}, torchao {_version('torchao')}, "
          f"bitsandbytes {_version('bitsandbytes')}, {now:%Y-%m-%d %H:%M} UTC")
    print(f"{'workload':<12} {'thr':>3} {'contender':<15} {'warm-up s':>9} {'median ms':>10}"
          f" {'x fastoptim int8':>17}")
    warnings.filterwarnings("ignore")
    for key in args.workloads.split(","):
        if key == "gpt2":
            label, shapes = "GPT-2 small", gpt2_small_shapes()
        else:  # one tensor of that many elements ("50m")
            label, shapes = f"1x{key.upper()}", [(parse_count(key),)]
        gen = torch.Generator().manual_seed(0)
        init = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
        grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            fastoptim.set_num_threads(threads)
            steps: dict[str, Callable[[], None]] = {}
            warm: dict[str, float] = {}
            for kind in kinds:
                params = [torch.nn.Parameter(p.clone()) for p in init]
                for p, g in zip(params, grads):
                    p.grad = g  # shared, read only
                try:
                    step = make(kind, params)
                except ImportError as error:
                    print(f"{label:<12} {threads:>3} {kind:<15} not installed ({error.name})")
                    continue
                t0 = time.perf_counter()
                for _ in range(args.warmup):
                    step()
                warm[kind] = time.perf_counter() - t0
                steps[kind] = step
            times: dict[str, list[float]] = {kind: [] for kind in steps}
            for _ in range(args.steps):
                for kind, step in steps.items():
                    t0 = time.perf_counter()
                    step()
                    times[kind].append(time.perf_counter() - t0)
            base = statistics.median(times["fastoptim.int8"]) if "fastoptim.int8" in times else None
            for kind, ts in times.items():
                ms = statistics.median(ts) * 1e3
                ratio = f"{ms / (base * 1e3):.2f}x" if base else "-"
                print(f"{label:<12} {threads:>3} {kind:<15} {warm[kind]:>9.1f} {ms:>10.1f}"
                      f" {ratio:>17}", flush=True)
            del steps, times


if __name__ == "__main__":
    main()
