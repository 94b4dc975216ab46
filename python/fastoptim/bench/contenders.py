"""What the benchmark runs: one optimizer (or the roofline) per contender, all over the same
param, grad and state buffers.

* ``fastoptim.torch``  fastoptim.torch.X stepping torch tensors,
* ``fastoptim.arrays`` fastoptim.X stepping NumPy views of the same memory,
* ``torch.fused``      torch.optim.X(fused=True) where torch's X takes ``fused``,
* ``torch.foreach``    torch.optim.X(foreach=True),
* ``torch.forloop``    torch.optim.X(foreach=False),
* ``roofline``         ``fastoptim._roofline``: a lean loop that reads and writes the same arrays
                       as the rule (the same bytes per element), and nothing else.

Each optimizer starts from state it made itself: a probe of the same class and construction
(fused, foreach, ...) takes one step on a zero param, and its state entries other than the
tensor slots (step counters, NAdam's mu_product) are copied for every param; the slots are the
shared buffers. So the bench needs no list of each rule's state entries or their dtypes.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any

import numpy as np

from .. import _core, _registry
from .measurement import Contender
from .workloads import RULES, Buffers

CONTENDERS = (
    "fastoptim.torch",
    "fastoptim.arrays",
    "torch.fused",
    "torch.foreach",
    "torch.forloop",
    "roofline",
)
TORCH_CONTENDERS = ("torch.fused", "torch.foreach", "torch.forloop")
# what runs without torch
WITHOUT_TORCH = ("fastoptim.arrays", "roofline")


def torch_or_none() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_fused(rule: str, torch: Any) -> bool:
    """Whether torch.optim's class of ``rule`` takes ``fused`` (torch 2.13: SGD, Adagrad, Adam,
    AdamW)."""
    cls = _registry.torch_class(rule, torch)
    return cls is not None and "fused" in inspect.signature(cls).parameters


def listed(kind: str, rule: str, torch: Any) -> bool:
    """Whether a cell of ``rule`` lists contender ``kind``: torch.fused only where torch has a
    fused kernel of the rule (its absence there is no news), except for a rule torch lacks,
    whose torch contenders are all listed, each unavailable."""
    if kind != "torch.fused" or torch is None:
        return True
    return torch_fused(rule, torch) or _registry.torch_class(rule, torch) is None


def roofline_table(
    params: list[np.ndarray], grads: list[np.ndarray], states: list[list[np.ndarray]]
) -> np.ndarray:
    """The (n, 7) int64 pointer table ``fastoptim._roofline.step`` reads: param, grad, up to
    three state buffers, element count (and an unused column). The arrays must outlive it."""
    rows = []
    for p, g, st in zip(params, grads, states):
        slots = [a.ctypes.data for a in st] + [0] * (3 - len(st))
        rows.append([p.ctypes.data, g.ctypes.data, *slots, p.size, 0])
    return np.array(rows, dtype=np.int64).reshape(-1, 7)


def roofline_contender(slots: list[str], buffers: Buffers, threads: int) -> Contender:
    """x += grad over param and the rule's state buffers, each stream in its own storage type,
    on ``threads`` threads and serial below the core's threshold, as the core runs a step."""
    from .. import _roofline

    params, grads = buffers.param_arrays, buffers.grad_arrays
    states = [[buffers.state_arrays[k][i] for k in range(len(slots))] for i in range(len(params))]
    table = roofline_table(params, grads, states)
    dtypes = buffers.stream_dtypes(len(slots))
    serial_below = int(_core.serial_threshold)
    return Contender(
        "roofline", lambda: _roofline.step(table, dtypes, threads, serial_below), keep=table
    )


def _torch_class(kind: str, rule: str, torch: Any) -> tuple[type, dict[str, Any]]:
    """The optimizer class of a torch-tensor contender and the constructor flags that pick its
    implementation."""
    cls_name = RULES[rule][0]
    if kind == "fastoptim.torch":
        fo_cls = getattr(importlib.import_module("fastoptim.torch"), cls_name, None)
        if fo_cls is None:
            raise RuntimeError(f"unavailable: fastoptim.torch has no {cls_name}")
        return fo_cls, {}
    cls = _registry.torch_class(rule, torch)
    if cls is None:
        raise RuntimeError(f"unavailable: torch.optim has no {cls_name}")
    if kind == "torch.fused":
        if not torch_fused(rule, torch):
            raise RuntimeError(f"torch has no fused CPU {cls_name}")
        return cls, {"fused": True}
    if kind in ("torch.foreach", "torch.forloop"):
        return cls, {"foreach": kind == "torch.foreach"}
    raise ValueError(f"unknown contender {kind!r}")


def _started_entries(state: dict[Any, Any], slots: list[str]) -> dict[Any, Any]:
    """The entries of a probe's state that are not tensor slots (step, mu_product, ...)."""
    return {key: value for key, value in state.items() if key not in slots}


def _copied(entries: dict[Any, Any]) -> dict[Any, Any]:
    """A param's own copy: steps are counted in place, so no two params may share a counter."""
    out = {}
    for key, value in entries.items():
        if hasattr(value, "clone"):
            out[key] = value.clone()
        elif isinstance(value, np.ndarray):
            out[key] = value.copy()
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_contender(
    kind: str, rule: str, options: dict[str, Any], slots: list[str], buffers: Buffers, threads: int
) -> Contender:
    """An optimizer of ``kind`` over the shared buffers, its state pointing at the shared state
    buffers (a step counter of its own)."""
    if kind == "roofline":
        return roofline_contender(slots, buffers, threads)
    if kind == "fastoptim.arrays":
        import fastoptim

        cls = getattr(fastoptim, RULES[rule][0])
        probe = _registry.ready_to_train(cls([np.zeros(1, buffers.dtype)], **options))
        probe.step([np.zeros(1, buffers.dtype)])
        started = _started_entries(probe.state[0], slots)
        opt = _registry.ready_to_train(cls(buffers.param_arrays, **options))
        for i in range(len(buffers.param_arrays)):
            st = _copied(started)
            for k, slot in enumerate(slots):
                st[slot] = buffers.state_arrays[k][i]
            opt.state[i] = st
        grads = buffers.grad_arrays
        return Contender(kind, lambda: opt.step(grads), opt)
    torch = buffers.torch
    if torch is None:
        raise RuntimeError("torch is not installed")
    cls, flags = _torch_class(kind, rule, torch)
    zero = torch.zeros(1, dtype=buffers.params[0].dtype, requires_grad=True)
    zero.grad = torch.zeros_like(zero)
    probe = cls([zero], **flags, **options)
    if kind == "fastoptim.torch":
        _registry.ready_to_train(probe)
    probe.step()
    started = _started_entries(probe.state[zero], slots)
    opt = cls(buffers.params, **flags, **options)
    if kind == "fastoptim.torch":
        _registry.ready_to_train(opt)
    for i, p in enumerate(buffers.params):
        st = _copied(started)
        for k, slot in enumerate(slots):
            st[slot] = buffers.states[k][i]
        opt.state[p] = st
    return Contender(kind, opt.step, opt)
