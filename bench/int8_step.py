"""The step with int8 state against the same step with float32 state, one tensor, the array front.
The two optimizers step in turn (one step each, alternately), so that both see the machine in the
same state; prints the median time per step, ns per element and the ratio, per thread count.

    python bench/int8_step.py [--rule AdamW] [--elements 4194304] [--threads 1,2] [--steps 30]
        [--offload]

--offload: the offload layout instead, bfloat16 params and grads with a float32 master copy
(ml_dtypes' bfloat16 arrays), float32 moments against int8 ones (issue 18's offload row, without
the split master, which is not built).

float32 state moves 28 bytes per element for AdamW (param, grad, two moments: read and write),
int8 state 16 + 8/256 (1-byte moments, a float32 scale per block): at the memory roofline int8
would be up to 1.74x faster (issue 18's goal: 1.6x).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np

import fastoptim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rule", default="AdamW")
    ap.add_argument("--elements", type=int, default=1 << 22)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--offload", action="store_true",
                    help="bfloat16 params and grads with a float32 master copy")
    args = ap.parse_args()
    dtype, extra = np.float32, {}
    if args.offload:
        import ml_dtypes

        dtype, extra = ml_dtypes.bfloat16, {"master_weights": True}
    rule = getattr(fastoptim, args.rule)
    n = args.elements
    rng = np.random.default_rng(0)
    what = "bfloat16 elements, bfloat16 grads, float32 master" if args.offload else "float32 elements"
    print(f"{args.rule}, one tensor of {n:,} {what}; {platform.processor() or platform.machine()},"
          f" SIMD level {fastoptim.simd_level()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{'threads':>7} {'float32 ms':>11} {'int8 ms':>9} {'f32 ns/el':>10} {'i8 ns/el':>9}"
          f" {'int8 / float32':>15}")
    for threads in (int(t) for t in args.threads.split(",")):
        fastoptim.set_num_threads(threads)
        opts, grads = {}, [(rng.standard_normal(n, dtype=np.float32) * 1e-2).astype(dtype)]
        for state in ("float32", "int8"):
            params = [rng.random(n, dtype=np.float32).astype(dtype)]
            opts[state] = rule(params, lr=1e-3, state_dtype=state, **extra)
            for _ in range(3):
                opts[state].step(grads)
        times: dict[str, list[float]] = {"float32": [], "int8": []}
        for _ in range(args.steps):
            for state, opt in opts.items():
                t0 = time.perf_counter()
                opt.step(grads)
                times[state].append(time.perf_counter() - t0)
        f32, i8 = (statistics.median(times[s]) for s in ("float32", "int8"))
        print(f"{threads:>7} {f32 * 1e3:>11.2f} {i8 * 1e3:>9.2f} {f32 / n * 1e9:>10.2f}"
              f" {i8 / n * 1e9:>9.2f} {i8 / f32:>14.2f}x")


if __name__ == "__main__":
    main()
