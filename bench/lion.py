"""Lion's step: fastoptim.torch.Lion against the official implementation (lion-pytorch's Lion,
its PyTorch path: four tensor ops per param) and, where deepspeed imports, DeepSpeed's C++
DeepSpeedCPULion (JIT-built on first use), on the same params and grads, with the same-traffic
roofline (fastoptim._roofline: grad read, param and exp_avg read and written, 20 B per float32
element). Medians of --rounds, G elements/s, side by side in one run.

    python bench/lion.py [--threads 1,2] [--rounds 5]

Workloads: one 10M tensor, one 100M tensor, and GPT-2 small's shapes (fastoptim.bench's).
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
import lion_pytorch
import numpy as np
import torch
from fastoptim import _roofline
from fastoptim.bench.workloads import gpt2_small_shapes


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


def deepspeed_lion():
    """DeepSpeedCPULion, or None where deepspeed does not import or cannot build its op."""
    try:
        from deepspeed.ops.lion import DeepSpeedCPULion

        probe = torch.nn.Parameter(torch.zeros(8))
        probe.grad = torch.zeros(8)
        DeepSpeedCPULion([probe]).step()  # builds the op now, outside the timings
        return DeepSpeedCPULion
    except Exception as e:  # noqa: BLE001 - any failure: the column is left out, with why
        print(f"deepspeed: unavailable ({type(e).__name__}: {e})")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="1x10M,1x100M,gpt2")
    args = parser.parse_args()
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | lion-pytorch "
          f"{importlib.metadata.version('lion-pytorch')} | "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}")
    ds_lion = deepspeed_lion()
    contenders = [("fastoptim", fo_torch.Lion), ("official", lion_pytorch.Lion)]
    if ds_lion is not None:
        contenders.append(("deepspeed", ds_lion))
        print(f"deepspeed {importlib.metadata.version('deepspeed')}")
    print("G elements/s, float32, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01; median of "
          f"{args.rounds} steps\n")
    print(f"{'workload':<28}{'threads':>8}{'fastoptim':>11}{'lion-pytorch':>14}"
          + (f"{'deepspeed':>11}" if ds_lion else "") + f"{'roofline':>10}{'x official':>12}"
          + (f"{'x deepspeed':>13}" if ds_lion else "") + f"{'% roofline':>12}")
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
            for label, cls in contenders:
                ps = [torch.nn.Parameter(p.clone()) for p in params]
                for p, g in zip(ps, grads):
                    p.grad = g
                opt = cls(ps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)
                rates[label] = timed(opt.step, args.rounds, elements)
                del opt, ps
            ps = [p.clone() for p in params]
            states = [torch.zeros_like(p) for p in params]
            table = np.array([[p.data_ptr(), g.data_ptr(), m.data_ptr(), 0, 0, p.numel(), 0]
                              for p, g, m in zip(ps, grads, states)], dtype=np.int64)
            rates["roofline"] = timed(
                lambda: _roofline.step(table, ["float32", "float32", "float32"], threads),
                args.rounds, elements)
            ds = "deepspeed" in rates
            print(f"{name:<28}{threads:>8}{rates['fastoptim'] / 1e9:>11.3f}"
                  f"{rates['official'] / 1e9:>14.3f}"
                  + (f"{rates['deepspeed'] / 1e9:>11.3f}" if ds else "")
                  + f"{rates['roofline'] / 1e9:>10.3f}"
                  f"{rates['fastoptim'] / rates['official']:>11.1f}x"
                  + (f"{rates['fastoptim'] / rates['deepspeed']:>12.2f}x" if ds else "")
                  + f"{100 * rates['fastoptim'] / rates['roofline']:>11.1f}%")
            del ps, states


if __name__ == "__main__":
    main()
