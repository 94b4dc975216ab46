"""fastoptim.torch under torch.distributed: DDP and ZeroRedundancyOptimizer, gloo, 2 processes.

Each test starts two worker processes of this file (``python test_distributed.py SCENARIO RANK
...``) on 127.0.0.1 with a free port, waits for them with a timeout, and compares what they
saved. The workers run with OMP_NUM_THREADS=1: two processes on a small machine would otherwise
each start a thread per core, and OpenMP runtimes (GCC's libgomp in particular) are not
fork-safe once a parallel region has run, so any worker a training script forks (DataLoader
workers, fork-started processes) must not inherit a live thread pool. One thread per process is
the documented setting for multi-process training with fastoptim.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch without gloo"
)

WORLD_SIZE = 2
TIMEOUT = 240  # seconds for both workers together
RTOL, ATOL = 1e-5, 1e-6  # float32 against torch.optim, as for one process
LR, WEIGHT_DECAY = 1e-2, 1e-2
STEPS = 12


# ---- worker side ---------------------------------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 1),
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rank its own shard of a regression problem."""
    gen = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(32, 6, generator=gen)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


def _train(model: torch.nn.Module, opt: Any, rank: int, first: int, steps: int) -> list[float]:
    losses = []
    for step in range(first, first + steps):
        x, y = _batch(rank, step)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # DDP averages the gradients of both ranks here
        opt.step()
        losses.append(loss.item())
    return losses


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _ddp_worker(rank: int) -> dict[str, Any]:
    import fastoptim.torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    ours, reference = DDP(_model()), DDP(_model())
    opt_ours = fastoptim.torch.Adam(ours.parameters(), lr=LR)
    opt_reference = torch.optim.Adam(reference.parameters(), lr=LR, foreach=False)
    losses = _train(ours, opt_ours, rank, 0, STEPS)
    _train(reference, opt_reference, rank, 0, STEPS)
    return {"ours": _params(ours), "reference": _params(reference), "losses": losses}


def _zero_worker(rank: int) -> dict[str, Any]:
    import fastoptim.torch
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    ours, reference = DDP(_model()), DDP(_model())
    zero_ours = ZeroRedundancyOptimizer(
        ours.parameters(), optimizer_class=fastoptim.torch.AdamW, lr=LR, weight_decay=WEIGHT_DECAY
    )
    zero_reference = ZeroRedundancyOptimizer(
        reference.parameters(),
        optimizer_class=torch.optim.AdamW,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        foreach=False,
    )
    local = zero_ours.optim  # this rank's shard: a fastoptim.torch.AdamW
    out: dict[str, Any] = {
        "local_class": f"{type(local).__module__}.{type(local).__qualname__}",
        "local_params": sum(len(g["params"]) for g in local.param_groups),
        "total_params": len(list(ours.parameters())),
    }
    out["losses"] = _train(ours, zero_ours, rank, 0, STEPS)
    _train(reference, zero_reference, rank, 0, STEPS)
    out["ours"], out["reference"] = _params(ours), _params(reference)

    # Consolidate on rank 0 and hand the checkpoint to both ranks, as a restart would.
    zero_ours.consolidate_state_dict(to=0)
    checkpoint = [zero_ours.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(checkpoint, src=0)
    state_dict = checkpoint[0]
    if rank == 0:  # a copy: torch.optim.load_state_dict keeps the step tensors it is given
        out["state_dict"] = copy.deepcopy(state_dict)

    # Continue from it with plain torch.optim.AdamW; the reference continues under ZeRO.
    resumed = torch.optim.AdamW(ours.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=False)
    resumed.load_state_dict(state_dict)
    _train(ours, resumed, rank, STEPS, STEPS)
    _train(reference, zero_reference, rank, STEPS, STEPS)
    out["resumed"], out["reference_continued"] = _params(ours), _params(reference)
    return out


def _fsdp2_model() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _full(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def _train_clipped(model: torch.nn.Module, opt: Any, rank: int, first: int, steps: int,
                   fused: bool) -> list[float]:
    losses = []
    for step in range(first, first + steps):
        x, y = _batch(rank, step)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if fused:
            norm = opt.clip_grad_norm_(0.05)
        else:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        losses.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
    return losses


def _fsdp2_worker(rank: int) -> dict[str, Any]:
    """FSDP2 (fully_shard) training with fastoptim.torch.AdamW next to torch.optim.AdamW; then
    fastoptim's sharded optimizer state (torch.distributed.checkpoint's state_dict API) loads into
    a torch optimizer, which continues on the reference's trajectory."""
    import fastoptim.torch
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.tensor import DTensor

    ours, reference = _fsdp2_model(), _fsdp2_model()
    opt_ours = fastoptim.torch.AdamW(ours.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    opt_reference = torch.optim.AdamW(reference.parameters(), lr=LR,
                                      weight_decay=WEIGHT_DECAY, foreach=False)
    out: dict[str, Any] = {"losses": _train(ours, opt_ours, rank, 0, STEPS)}
    _train(reference, opt_reference, rank, 0, STEPS)
    out["ours"], out["reference"] = _full(ours), _full(reference)
    out["dtensor_params"] = all(isinstance(p, DTensor) for p in ours.parameters())
    out["fused_plan"] = bool(opt_ours.__dict__.get("_fastoptim_plans"))
    state = opt_ours.state[next(ours.parameters())]
    out["state_is_sharded"] = isinstance(state["exp_avg"], DTensor)

    sharded = get_optimizer_state_dict(ours, opt_ours)
    resumed_model = _fsdp2_model()
    with torch.no_grad():
        for a, b in zip(resumed_model.parameters(), ours.parameters()):
            a.copy_(b)
    resumed = torch.optim.AdamW(resumed_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                                foreach=False)
    set_optimizer_state_dict(resumed_model, resumed, sharded)
    _train(resumed_model, resumed, rank, STEPS, STEPS)
    _train(reference, opt_reference, rank, STEPS, STEPS)
    out["resumed"], out["reference_continued"] = _full(resumed_model), _full(reference)

    # clip_grad_norm_ over sharded grads: the norm is the global one (every rank's shard)
    clipped, clipped_ref = _fsdp2_model(), _fsdp2_model()
    opt_c = fastoptim.torch.AdamW(clipped.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    opt_c_ref = torch.optim.AdamW(clipped_ref.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                                  foreach=False)
    out["clip_norms"] = _train_clipped(clipped, opt_c, rank, 0, 4, fused=True)
    out["clip_norms_ref"] = _train_clipped(clipped_ref, opt_c_ref, rank, 0, 4, fused=False)
    out["clipped"], out["clipped_ref"] = _full(clipped), _full(clipped_ref)
    return out


def _layout_worker(rank: int) -> dict[str, Any]:
    """FSDP2 with every rule whose reference keeps its own checkpoint layout (the registry's
    "checkpoint": AdEMAMix's bitsandbytes layout): the sharded state through
    torch.distributed.checkpoint's state_dict API into a new optimizer, which continues on the
    uninterrupted trajectory."""
    import fastoptim.torch
    from fastoptim import _core
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    out: dict[str, Any] = {}
    for info in _core.rules():
        if info["checkpoint"] is None:
            continue
        cls = getattr(fastoptim.torch, info["torch_name"])
        a, b = _fsdp2_model(), _fsdp2_model()
        opt_a, opt_b = cls(a.parameters(), lr=LR), cls(b.parameters(), lr=LR)
        _train(a, opt_a, rank, 0, STEPS)
        _train(b, opt_b, rank, 0, STEPS)
        sharded = get_optimizer_state_dict(a, opt_a)
        resumed = _fsdp2_model()
        with torch.no_grad():
            for p, q in zip(resumed.parameters(), a.parameters()):
                p.copy_(q)
        opt_r = cls(resumed.parameters(), lr=LR)
        set_optimizer_state_dict(resumed, opt_r, sharded)
        _train(resumed, opt_r, rank, STEPS, STEPS)
        _train(b, opt_b, rank, STEPS, STEPS)
        out[info["torch_name"]] = (sorted(next(iter(sharded["state"].values()))),
                                   _full(resumed), _full(b))
    return out


def _dtensor_worker(rank: int) -> dict[str, Any]:
    """Plain distribute_tensor parameters (Shard(0) and Replicate), no FSDP."""
    import fastoptim.torch
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD_SIZE,))

    def params():
        torch.manual_seed(3)
        w, b = torch.randn(10, 4), torch.randn(4)
        return [torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])),
                torch.nn.Parameter(distribute_tensor(b, mesh, [Replicate()]))]

    ours, reference = params(), params()
    opt_ours = fastoptim.torch.Adam(ours, lr=LR, amsgrad=True)
    opt_reference = torch.optim.Adam(reference, lr=LR, amsgrad=True, foreach=False)
    for step in range(STEPS):
        for ps, opt in ((ours, opt_ours), (reference, opt_reference)):
            for i, p in enumerate(ps):  # the same global grads on every rank, sharded like p
                full = torch.cos(torch.arange(p.numel(), dtype=p.dtype) * (0.3 + step + i))
                p.grad = distribute_tensor(full.reshape(p.shape), mesh, p.placements)
            opt.step()
    return {"ours": [p.full_tensor().detach() for p in ours],
            "reference": [p.full_tensor().detach() for p in reference]}


def _worker_main(scenario: str, rank: int, port: int, out_path: str) -> None:
    from datetime import timedelta

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=TIMEOUT // 2),
    )
    try:
        out = {"ddp": _ddp_worker, "zero": _zero_worker, "fsdp2": _fsdp2_worker,
               "dtensor": _dtensor_worker, "layout": _layout_worker}[scenario](rank)
        out["num_threads"] = __import__("fastoptim").get_num_threads()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(out, out_path)


# ---- test side -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(scenario: str, tmp_path: Path) -> list[dict[str, Any]]:
    env = dict(os.environ)
    # One OpenMP thread per process (see the module docstring); gloo on the loopback device only.
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo" if sys.platform == "linux" else "")
    if not env["GLOO_SOCKET_IFNAME"]:
        del env["GLOO_SOCKET_IFNAME"]
    env.pop("FASTOPTIM_SIMD", None)
    port = _free_port()
    outs = [tmp_path / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, scenario, str(rank), str(port), str(outs[rank])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    deadline = time.monotonic() + TIMEOUT
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{scenario}: workers did not finish within {TIMEOUT} s")
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} exited {proc.returncode}:\n{log[-4000:]}"
    return [torch.load(path, weights_only=False) for path in outs]


def assert_same_on_both_ranks(results: list[dict[str, Any]], key: str) -> None:
    for a, b in zip(results[0][key], results[1][key]):
        assert torch.equal(a, b), f"{key}: ranks disagree"


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], what: str) -> None:
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{what}: param {i}")


def test_ddp_adam_matches_torch_and_ranks_agree(tmp_path: Path) -> None:
    results = run_workers("ddp", tmp_path)
    assert [r["num_threads"] for r in results] == [1, 1]  # OMP_NUM_THREADS=1 reached fastoptim
    assert_same_on_both_ranks(results, "ours")
    assert_close(results[0]["ours"], results[0]["reference"], "DDP fastoptim Adam vs torch Adam")
    for r in results:
        assert r["losses"][-1] < r["losses"][0]  # it trained
    initial = [p.detach() for p in _model().parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(results[0]["ours"], initial))


def test_zero_redundancy_adamw_trains_and_checkpoint_loads_into_torch(tmp_path: Path) -> None:
    results = run_workers("zero", tmp_path)
    # Each rank's shard really is stepped by a fastoptim optimizer, and the shards cover all.
    assert {r["local_class"] for r in results} == {"fastoptim.torch.AdamW"}
    assert all(r["local_params"] > 0 for r in results)
    assert sum(r["local_params"] for r in results) == results[0]["total_params"]
    for r in results:
        assert r["losses"][-1] < r["losses"][0]
    assert_same_on_both_ranks(results, "ours")
    assert_close(results[0]["ours"], results[0]["reference"], "ZeRO fastoptim vs torch AdamW")

    state_dict = results[0]["state_dict"]
    assert len(state_dict["state"]) == results[0]["total_params"]
    for state in state_dict["state"].values():
        assert float(state["step"]) == STEPS
        assert {"exp_avg", "exp_avg_sq"} <= set(state)
    # It loads into torch.optim.AdamW (done in the workers too, where training went on from it).
    model = _model()
    plain = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    plain.load_state_dict(state_dict)
    assert plain.param_groups[0]["lr"] == LR
    assert plain.param_groups[0]["weight_decay"] == WEIGHT_DECAY

    assert_same_on_both_ranks(results, "resumed")
    assert_close(
        results[0]["resumed"],
        results[0]["reference_continued"],
        "torch AdamW resumed from fastoptim's ZeRO checkpoint vs ZeRO with torch AdamW",
    )


def test_fsdp2_adamw_matches_torch_and_state_loads_into_torch(tmp_path: Path) -> None:
    results = run_workers("fsdp2", tmp_path)
    for r in results:
        assert r["dtensor_params"] and r["fused_plan"] and r["state_is_sharded"]
        assert r["losses"][-1] < r["losses"][0]
    assert_same_on_both_ranks(results, "ours")
    assert_close(results[0]["ours"], results[0]["reference"], "FSDP2 fastoptim vs torch AdamW")
    assert_same_on_both_ranks(results, "resumed")
    assert_close(results[0]["resumed"], results[0]["reference_continued"],
                 "torch AdamW resumed from fastoptim's sharded FSDP2 state vs torch all along")
    for r in results:  # the global norm, the same on both ranks, as torch's
        assert r["clip_norms"] == pytest.approx(r["clip_norms_ref"], rel=1e-5)
    assert results[0]["clip_norms"] == results[1]["clip_norms"]
    assert_close(results[0]["clipped"], results[0]["clipped_ref"], "FSDP2 clip + AdamW")


def test_fsdp2_state_in_a_reference_layout_resumes(tmp_path: Path) -> None:
    """AdEMAMix's bitsandbytes layout (m1 and m2 stacked, nested) through
    torch.distributed.checkpoint's sharded state_dict API and back, on the same trajectory."""
    results = run_workers("layout", tmp_path)
    from fastoptim import _core

    names = [info["torch_name"] for info in _core.rules() if info["checkpoint"] is not None]
    for r in results:
        assert sorted(k for k in r if k != "num_threads") == sorted(names)
        for name in names:
            keys, resumed, uninterrupted = r[name]
            nest = next(i["checkpoint"][1] for i in _core.rules() if i["torch_name"] == name)
            assert nest in keys, (name, keys)
            for x, y in zip(resumed, uninterrupted):
                assert torch.equal(x, y), name


def test_distribute_tensor_params_match_torch(tmp_path: Path) -> None:
    results = run_workers("dtensor", tmp_path)
    assert_same_on_both_ranks(results, "ours")
    assert_close(results[0]["ours"], results[0]["reference"], "DTensor fastoptim vs torch Adam")


if __name__ == "__main__":
    _worker_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # Results are on disk. Skip interpreter finalization: torch 2.13's gloo teardown sometimes
    # aborts there ("terminate called without an active exception", no Python frame, after
    # destroy_process_group), which would fail a run whose results were already written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
