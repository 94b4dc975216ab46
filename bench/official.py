"""The rules torch.optim lacks against their official implementations: for every registered
rule whose reference is not torch.optim (the registry's ``reference``, e.g. lion_pytorch.Lion),
fastoptim.torch's class against that class, DeepSpeed's C++ CPU op where it has one and
deepspeed imports (DeepSpeedCPULion, JIT-built before the timings), and the same-traffic
roofline (fastoptim._roofline: grad read, param and every state buffer read and written), on the
same params and grads with each rule's default options, float32. The contenders take turns step
by step (round r steps each once), so drift in this VM's speed hits all alike; medians of
--rounds, G elements/s.

    python bench/official.py [--rules lion,ademamix,...] [--threads 1,2] [--rounds 9]

Workloads: one 10M tensor, one 100M tensor, and GPT-2 small's shapes (fastoptim.bench's).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import platform
import statistics
import time
from typing import Any, Callable

import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import torch
from fastoptim import _core, _registry, _roofline
from fastoptim.bench.workloads import gpt2_small_shapes

# DeepSpeed's CPU ops of rules torch lacks: a contender where deepspeed imports
DEEPSPEED = {"lion": "deepspeed.ops.lion.DeepSpeedCPULion"}


def shapes_of(name: str) -> list[tuple[int, ...]]:
    return {"1x10M": [(10_000_000,)], "1x100M": [(100_000_000,)]}.get(name) or gpt2_small_shapes()


def load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def distribution(path: str) -> str:
    package = path.split(".")[0]
    names = {"lion_pytorch": "lion-pytorch"}
    try:
        return f"{names.get(package, package)} {importlib.metadata.version(names.get(package, package))}"
    except importlib.metadata.PackageNotFoundError:
        return package


def deepspeed_class(rule: str) -> type | None:
    """DeepSpeed's op of ``rule``, built now, or None (printing why) where it cannot run."""
    if rule not in DEEPSPEED:
        return None
    try:
        cls = load(DEEPSPEED[rule])
        probe = torch.nn.Parameter(torch.zeros(8))
        probe.grad = torch.zeros(8)
        cls([probe]).step()
        return cls
    except Exception as e:  # noqa: BLE001 - any failure: the contender is left out, with why
        print(f"{rule}: deepspeed unavailable ({type(e).__name__}: {str(e)[:100]})")
        return None


def start(cls: type, params: list[torch.Tensor], grads: list[torch.Tensor],
          options: dict[str, Any]) -> Callable[[], Any]:
    """An optimizer of ``cls`` over copies of the params, in training mode, its grads copies
    (schedulefree divides its grads in place; the work per step does not depend on values)."""
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt = cls(ps, **options)
    if hasattr(opt, "train") and "train_mode" in opt.param_groups[0]:
        opt.train()  # schedulefree's optimizers, like fastoptim's, start in eval mode
    return opt.step


def roofline(params: list[torch.Tensor], grads: list[torch.Tensor], slots: int,
             threads: int) -> Callable[[], Any]:
    ps = [p.clone() for p in params]
    states = [[torch.zeros_like(p) for _ in range(slots)] for p in params]
    table = np.array([[p.data_ptr(), g.data_ptr(), *(m.data_ptr() for m in s),
                       *([0] * (3 - slots)), p.numel(), 0]
                      for p, g, s in zip(ps, grads, states)], dtype=np.int64)
    keep = (ps, states, table)
    return lambda: (_roofline.step(table, ["float32"] * (2 + slots), threads), keep)


def rates(steps: dict[str, Callable[[], Any]], rounds: int, elements: int) -> dict[str, float]:
    for step in steps.values():
        step()  # state made, caches warm
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            begin = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - begin)
    return {label: elements / statistics.median(t) for label, t in times.items()}


def main() -> None:
    own = [info for info in _registry.RULES.values()
           if _registry.torch_class(info["name"], torch) is None]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default=",".join(info["name"] for info in own))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--workloads", default="1x10M,1x100M,gpt2")
    args = parser.parse_args()
    chosen = [info for info in own if info["name"] in args.rules.split(",")]
    print(f"fastoptim {fastoptim.__version__} | {platform.processor() or platform.machine()} | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | "
          + " | ".join(dict.fromkeys(distribution(info["reference"]) for info in chosen))
          + " | "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S%z}")
    print(f"G elements/s, float32, each rule's default options; median of {args.rounds} steps, "
          "the contenders stepping in turn\n")
    print(f"{'rule':<20}{'workload':<9}{'threads':>8}{'fastoptim':>11}{'official':>10}"
          f"{'deepspeed':>11}{'roofline':>10}{'x official':>12}{'x deepspeed':>13}"
          f"{'% roofline':>12}")
    for info in chosen:
        rule = info["name"]
        options = {arg: default for arg, default, _, ignored in info["args"] if not ignored}
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        ours = getattr(fo_torch, info["torch_name"])
        group = ours([torch.nn.Parameter(torch.zeros(1))], **options).param_groups[0]
        slots = sum(s is not None for s in _core.state_slots(rule, group))
        official, deepspeed = load(info["reference"]), deepspeed_class(rule)
        for name in args.workloads.split(","):
            shapes = shapes_of(name)
            elements = sum(int(np.prod(s)) for s in shapes)
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(s, generator=gen) for s in shapes]
            grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                fastoptim.set_num_threads(threads)
                steps = {"fastoptim": start(ours, params, grads, options),
                         "official": start(official, params, grads, options)}
                if deepspeed is not None:
                    steps["deepspeed"] = start(deepspeed, params, grads, options)
                steps["roofline"] = roofline(params, grads, slots, threads)
                r = rates(steps, args.rounds, elements)
                del steps
                ds = "deepspeed" in r
                print(f"{info['torch_name']:<20}{name:<9}{threads:>8}{r['fastoptim'] / 1e9:>11.3f}"
                      f"{r['official'] / 1e9:>10.3f}"
                      + (f"{r['deepspeed'] / 1e9:>11.3f}" if ds else f"{'-':>11}")
                      + f"{r['roofline'] / 1e9:>10.3f}{r['fastoptim'] / r['official']:>11.1f}x"
                      + (f"{r['fastoptim'] / r['deepspeed']:>12.2f}x" if ds else f"{'-':>13}")
                      + f"{100 * r['fastoptim'] / r['roofline']:>11.1f}%", flush=True)


if __name__ == "__main__":
    main()
