"""How fast AdamW can be on this CPU when memory is not the limit: the exact arithmetic alone
(one square root and two divisions per element, torch's order; ``fastoptim._roofline``), next to
fastoptim's AdamW step on cache-resident tensors per storage layout (the array front, one tensor
of --size elements, stepped repeatedly). A layout whose memory roofline is above the arithmetic
rate cannot reach that roofline with torch's exact arithmetic on that many threads.

    python bench/arithmetic_ceiling.py [--threads 1,2] [--size 32768] [--rounds 7]

Prints G elements/s (medians of --rounds) with the machine, SIMD level and date.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import fastoptim
import numpy as np
from fastoptim import _roofline

try:
    import ml_dtypes
except ImportError:  # bfloat16 layouts need it
    ml_dtypes = None

# name: (param and grad dtype, state_dtype, stochastic rounding)
LAYOUTS = {
    "fp32": ("float32", None, False),
    "pure bf16": ("bfloat16", None, False),
    "pure bf16 + stochastic rounding": ("bfloat16", None, True),
    "fp32 params + bf16 moments": ("float32", "bfloat16", False),
}


def _dtype(name: str):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def step_rate(layout: tuple, size: int, rounds: int) -> float:
    dtype, state_dtype, stochastic = layout
    rng = np.random.default_rng(0)
    p = rng.standard_normal(size).astype(np.float32).astype(_dtype(dtype))
    g = (rng.standard_normal(size) * 1e-3).astype(np.float32).astype(_dtype(dtype))
    settings = {"stochastic_rounding": True} if stochastic else {}
    if state_dtype is not None:
        settings["state_dtype"] = _dtype(state_dtype)
    opt = fastoptim.AdamW([p], lr=1e-3, **settings)
    steps = max(1, int(2e7 // size))  # ~10 ms a round
    for _ in range(steps):
        opt.step([g])
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            opt.step([g])
        rates.append(size * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--size", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}")
    print(f"G elements/s, median of {args.rounds} rounds; steps on one tensor of {args.size} "
          f"elements (cache-resident)\n")
    width = max(len(n) for n in LAYOUTS) + 2
    print("what".ljust(width) + "".join(f"{t} thread{'s' if t > 1 else ''}".rjust(12)
                                        for t in threads))
    saved = fastoptim.get_num_threads()
    try:
        row = [statistics.median(_roofline.arithmetic_rate(t) for _ in range(args.rounds))
               for t in threads]
        print("exact arithmetic alone".ljust(width) + "".join(f"{r / 1e9:12.3f}" for r in row))
        for name, layout in LAYOUTS.items():
            if layout[0] == "bfloat16" or layout[1] == "bfloat16":
                if ml_dtypes is None:
                    print(f"{name}: skipped (pip install ml_dtypes)")
                    continue
            cells = []
            for t in threads:
                fastoptim.set_num_threads(t)
                # one thread below the serial threshold: keep every thread busy
                cells.append(step_rate(layout, max(args.size, 16384 * t + 64), args.rounds))
            print(f"AdamW step, {name}".ljust(width) + "".join(f"{r / 1e9:12.3f}" for r in cells))
    finally:
        fastoptim.set_num_threads(saved)


if __name__ == "__main__":
    main()
