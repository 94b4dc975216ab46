"""The optimizer phase of a training step, side by side: gradient clipping + AdamW step, with and
without torch.amp.GradScaler, fastoptim against torch (clip_grad_norm_ + fused AdamW).

    python bench/train_phase.py [--workloads gpt2,mlp] [--threads 1,2] [--rounds 7] [--json F]

Contenders (float32, the same params and grads for all; each optimizer has its own state):
  torch clip+step       torch.nn.utils.clip_grad_norm_(params, 1.0); torch AdamW(fused=True).step()
  fastoptim clip+step   opt.clip_grad_norm_(1.0); opt.step()         (norm pass + folded clip)
  torch amp             scaler.unscale_(opt); clip_grad_norm_; scaler.step(opt); scaler.update()
  fastoptim amp         opt.clip_grad_norm_(1.0, grad_scaler=scaler); scaler.step(opt); update()
  roofline step         a lean loop moving AdamW's 28 bytes/element (fastoptim._roofline)
Rounds are interleaved (every contender once per round, rotating order); medians are reported.
"Bytes/elem" is what each contender must move at least; "GB/s" is that over its median time,
next to the roofline's bandwidth from the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from datetime import datetime, timezone

import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import torch
from fastoptim import _core, _roofline
from fastoptim.bench import gpt2_small_shapes, tiny_mlp_shapes


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Contender:
    def __init__(self, name: str, step, bytes_per_elem: int) -> None:
        self.name, self.step, self.bytes_per_elem = name, step, bytes_per_elem
        self.times: list[float] = []


def make_contenders(shapes) -> list[Contender]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen) * 0.02) for s in shapes]
    grads = [torch.randn(*s, generator=gen) * 1e-3 for s in shapes]
    scale = 2.0**16
    scaled = [g * scale for g in grads]  # what backward gives under GradScaler

    def set_grads(source) -> None:
        for p, g in zip(params, source):
            p.grad = g

    torch_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)
    fo_opt = fo_torch.AdamW(params, lr=1e-9)
    torch_amp_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)
    fo_amp_opt = fo_torch.AdamW(params, lr=1e-9)
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**9)
    fo_scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**9)
    for scaler in (torch_scaler, fo_scaler):
        scaler.scale(torch.ones(()))  # creates the scale tensor, as scaling a loss does

    def torch_clip_step() -> None:
        set_grads(grads)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch_opt.step()

    def fo_clip_step() -> None:
        set_grads(grads)
        fo_opt.clip_grad_norm_(1.0)
        fo_opt.step()

    scratch = [g.clone() for g in scaled]  # torch's unscale_ rewrites the grads

    def torch_amp() -> None:
        for s, g in zip(scratch, scaled):
            s.copy_(g)  # not timed separately: subtracted below
        set_grads(scratch)
        torch_scaler.unscale_(torch_amp_opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch_scaler.step(torch_amp_opt)
        torch_scaler.update()

    def copy_only() -> None:
        for s, g in zip(scratch, scaled):
            s.copy_(g)

    def fo_amp() -> None:
        set_grads(scaled)
        fo_amp_opt.clip_grad_norm_(1.0, grad_scaler=fo_scaler)
        fo_scaler.step(fo_amp_opt)
        fo_scaler.update()

    # the roofline: AdamW's traffic (param, grad, 2 state buffers), threaded as the core is
    states = [torch.zeros_like(p) for p in params for _ in range(2)]
    table = np.array([[p.data_ptr(), g.data_ptr(), states[2 * i].data_ptr(),
                       states[2 * i + 1].data_ptr(), 0, p.numel(), 0]
                      for i, (p, g) in enumerate(zip(params, grads))], dtype=np.int64)

    def roofline(keep_alive=states) -> None:  # the table points into `states`
        _roofline.step(table, ["float32"] * 4, fastoptim.get_num_threads(),
                       _core.serial_threshold)

    return [
        Contender("torch clip+step", torch_clip_step, 32),
        Contender("fastoptim clip+step", fo_clip_step, 32),
        Contender("torch amp+clip+step", torch_amp, 32),
        Contender("fastoptim amp+clip+step", fo_amp, 32),
        Contender("grad copy (torch amp)", copy_only, 8),
        Contender("roofline step", roofline, 28),
    ]


def measure(contender: Contender, min_time: float) -> float:
    count, start = 0, time.perf_counter()
    while True:
        contender.step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and count >= 3:
            return elapsed / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="gpt2,mlp")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    shapes_of = {"gpt2": ("GPT-2 small", gpt2_small_shapes()), "mlp": ("tiny MLP", tiny_mlp_shapes())}
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"fastoptim {fastoptim.__version__} train-phase bench | {_cpu_name()} | float32 | "
          f"SIMD {fastoptim.simd_level()} | torch {torch.__version__} | {stamp}")
    rows = []
    for key in args.workloads.split(","):
        label, shapes = shapes_of[key]
        elements = sum(math.prod(s) for s in shapes)
        contenders = make_contenders(shapes)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            fastoptim.set_num_threads(threads)
            for c in contenders:
                c.times = []
                c.step()  # warm-up: state allocation
            for r in range(args.rounds):
                order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
                for c in order:
                    c.times.append(measure(c, args.min_time))
            med = {c.name: statistics.median(c.times) for c in contenders}
            med["torch amp+clip+step"] -= med.pop("grad copy (torch amp)")
            roof_bw = 28 * elements / med["roofline step"] / 1e9
            print(f"\n{label} ({len(shapes)} tensors, {elements / 1e6:.1f}M elements), "
                  f"{threads} thread(s); medians of {args.rounds} interleaved rounds")
            print(f"  {'contender':<26} {'ms':>9} {'GB/s':>7} {'vs roofline':>11} "
                  f"{'speed-up':>9}")
            for name, seconds in med.items():
                bytes_moved = (28 if name == "roofline step" else 32) * elements
                bw = bytes_moved / seconds / 1e9
                base = {"fastoptim clip+step": "torch clip+step",
                        "fastoptim amp+clip+step": "torch amp+clip+step"}.get(name)
                speedup = f"{med[base] / seconds:.2f}x" if base else ""
                print(f"  {name:<26} {seconds * 1e3:9.2f} {bw:7.1f} {bw / roof_bw:10.0%} "
                      f"{speedup:>9}")
                rows.append({"workload": label, "threads": threads, "contender": name,
                             "ms": seconds * 1e3, "gb_per_s": bw,
                             "vs_roofline": bw / roof_bw, "speedup": speedup})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": stamp, "cpu": _cpu_name(), "simd": fastoptim.simd_level(),
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
