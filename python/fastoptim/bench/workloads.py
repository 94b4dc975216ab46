"""What the benchmark steps: the rules and their option variants, the workloads' tensor shapes,
the state a rule's options need, and the one copy of params, grads and state all contenders share.

Per-rule facts come from fastoptim itself: the state slots a group's options use from the core
(``_core.state_slots``), the value each slot starts from from the array front's own optimizer.
What stays here is the benchmark's choice: which options each rule is timed with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import _core, _registry

# SGD is benchmarked with momentum: plain SGD has no state and nobody's bottleneck.
BENCH_OPTIONS: dict[str, dict[str, Any]] = {"sgd": {"lr": 1e-3, "momentum": 0.9}}

# rule key -> (class name shared by torch.optim / fastoptim / fastoptim.torch, benchmark
# options), for every rule the core describes
RULES: dict[str, tuple[str, dict[str, Any]]] = {
    rule: (info["torch_name"], BENCH_OPTIONS.get(rule, {}))
    for rule, info in _registry.RULES.items()
}

# variant -> the options it sets. It applies to every rule that has all of them (the core's
# defaults say which) and whose value it changes; the others it leaves.
VARIANTS: dict[str, dict[str, Any]] = {
    "amsgrad": {"amsgrad": True},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "centered": {"centered": True},
    "momentum": {"momentum": 0.9},
    "no-momentum": {"momentum": 0.0},
    "decoupled": {"weight_decay": 1e-2, "decoupled_weight_decay": True},
    "weight_decay": {"weight_decay": 1e-2},
    "maximize": {"maximize": True},
}


def applied_variants(rule: str, variants: Sequence[str]) -> list[str]:
    """The selected variants that change ``rule``'s options, in order."""
    options = {**_registry.RULES[rule]["defaults"], **RULES[rule][1]}
    applied = []
    for v in variants:
        extra = VARIANTS[v]
        if extra.keys() <= options.keys() and any(options[k] != x for k, x in extra.items()):
            options.update(extra)
            applied.append(v)
    return applied


def rule_options(rule: str, variants: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(row label, constructor options) of a rule under the selected variants."""
    name, base = RULES[rule]
    applied = applied_variants(rule, variants)
    options = dict(base)
    for v in applied:
        options.update(VARIANTS[v])
    return (f"{name}({','.join(applied)})" if applied else name), options


class StatePlan(NamedTuple):
    slots: list[str]  # the tensor state slots these options use, in the core's order
    init: list[float | None]  # the value each slot's buffer is filled with; None: the param's
    group: dict[str, Any]  # the full param group (defaults filled in)


def state_plan(rule: str, options: dict[str, Any]) -> StatePlan:
    """The state a rule needs with these options. Slot names are the core's; each slot starts
    from what fastoptim's own optimizer holds after one step on a zero param with a zero grad
    (Adagrad: its initial_accumulator_value; Adamax: eps; zero elsewhere), so that no rule's
    initial state is written down here; a slot that starts as a copy of the param (Schedule-Free's
    z) is None. ValueError/TypeError for options the rule rejects."""
    import fastoptim

    probe = _registry.ready_to_train(getattr(fastoptim, RULES[rule][0])([np.zeros(1)], **options))
    probe.step([np.zeros(1)])
    group = probe.param_groups[0]
    slots = [s for s in _core.state_slots(probe.rule, group) if s is not None]
    init = [None if s in probe._info["param_copies"] else
            float(np.asarray(probe.state[0][s]).reshape(-1)[0]) for s in slots]
    return StatePlan(slots, init, group)


# ---- workloads -----------------------------------------------------------------------------------


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of GPT-2 small (HF layout, lm_head tied to wte): 148 tensors,
    124,439,808 elements."""
    d, layers, vocab, context = 768, 12, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]  # wte, wpe
    for _ in range(layers):
        ln_1 = [(d,), (d,)]  # weight, bias
        c_attn = [(d, 3 * d), (3 * d,)]  # Conv1D weights are (in, out)
        attn_proj = [(d, d), (d,)]
        ln_2 = [(d,), (d,)]
        c_fc = [(d, 4 * d), (4 * d,)]
        mlp_proj = [(4 * d, d), (d,)]
        shapes += ln_1 + c_attn + attn_proj + ln_2 + c_fc + mlp_proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def tiny_mlp_shapes() -> list[tuple[int, ...]]:
    """300 tensors of 64 and 100 of 64x64 (0.43M elements): Python overhead per tensor."""
    return [(64,)] * 300 + [(64, 64)] * 100


def fixed_cost_shapes() -> list[tuple[int, ...]]:
    """400 one-element tensors: a step's time here is its fixed cost per tensor count (the
    plan check, the per-tensor dispatch, torch's optimizer hooks), with no data to speak of."""
    return [(1,)] * 400


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def _count_text(n: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div:
            value = n / div
            return f"{value:.0f}{unit}" if value == round(value) else f"{value:.3g}{unit}"
    return str(n)


def parse_count(text: str) -> int:
    """'10m' -> 10_000_000, '2.5k' -> 2500, '4097' -> 4097."""
    t = text.strip().lower().replace("_", "")
    factor = {"k": 10**3, "m": 10**6, "g": 10**9}.get(t[-1:], 1)
    if factor != 1:
        t = t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if value < 1 or value != int(value):
        raise ValueError(f"size must be a positive whole number of elements: {text!r}")
    return int(value)


def make_workload(key: str, scale: float = 1.0) -> Workload:
    """'gpt2', 'mlp', 'fixed' (400 one-element tensors), or a size ('10m', '100m', '4097'): one
    tensor of that many elements.
    ``scale`` shrinks every tensor's first dimension (tensor count unchanged)."""
    k = key.strip().lower()
    if k in ("gpt2", "gpt2-small", "gpt-2"):
        shapes, label = gpt2_small_shapes(), "GPT-2 small"
    elif k in ("mlp", "tiny-mlp"):
        shapes, label = tiny_mlp_shapes(), "tiny MLP"
    elif k in ("fixed", "fixed-cost"):
        shapes, label = fixed_cost_shapes(), "fixed cost"
    else:
        shapes, label = [(parse_count(k),)], ""
    if scale != 1.0:
        shapes = [(max(1, round(s[0] * scale)),) + tuple(s[1:]) for s in shapes]
    if not label:
        label = f"1x{_count_text(shapes[0][0])}"
    else:
        label += f" x{scale:g}" if scale != 1.0 else ""
        label += f" ({len(shapes)}x, {_count_text(sum(math.prod(s) for s in shapes))})"
    return Workload(k, label, tuple(shapes))


# ---- the shared buffers --------------------------------------------------------------------------


class Buffers:
    """Params and grads of one workload (torch tensors when torch is installed, NumPy views of
    the same memory either way) and up to three shared state buffers per param."""

    def __init__(
        self, shapes: Sequence[tuple[int, ...]], dtype: str, torch: Any, seed: int = 0
    ) -> None:
        self.torch = torch
        self.shapes = list(shapes)
        self.dtype = np.dtype(dtype)
        if torch is not None:
            tdtype = getattr(torch, dtype)
            gen = torch.Generator().manual_seed(seed)
            self.params = [
                torch.randn(s, dtype=tdtype, generator=gen).requires_grad_() for s in shapes
            ]
            for p in self.params:
                p.grad = torch.randn(p.shape, dtype=tdtype, generator=gen)
            self.param_arrays = [p.detach().numpy() for p in self.params]
            self.grad_arrays = [p.grad.numpy() for p in self.params]
        else:
            rng = np.random.default_rng(seed)
            self.params = []
            self.param_arrays = [rng.standard_normal(s, dtype=self.dtype) for s in shapes]
            self.grad_arrays = [rng.standard_normal(s, dtype=self.dtype) for s in shapes]
        self.states: list[list[Any]] = []  # slot k -> one buffer per param (tensors or arrays)
        self.state_arrays: list[list[np.ndarray]] = []

    def state_buffers(self, count: int, fill: Sequence[float | None]) -> None:
        """Make sure ``count`` state buffers per param exist, filled with ``fill[k]`` (None: a
        copy of the param)."""
        while len(self.states) < count:
            if self.torch is not None:
                bufs = [self.torch.empty_like(p, requires_grad=False) for p in self.params]
                arrays = [b.numpy() for b in bufs]
            else:
                arrays = [np.empty(s, dtype=self.dtype) for s in self.shapes]
                bufs = arrays
            self.states.append(bufs)
            self.state_arrays.append(arrays)
        for k in range(count):
            for a, p in zip(self.state_arrays[k], self.param_arrays):
                if fill[k] is None:
                    a[...] = p
                else:
                    a.fill(fill[k])

    def stream_dtypes(self, state_count: int) -> list[str]:
        """Storage type of each stream a step moves: param, grad, then ``state_count`` slots."""
        streams = [self.param_arrays, self.grad_arrays, *self.state_arrays[:state_count]]
        return [str(arrays[0].dtype) if arrays else str(self.dtype) for arrays in streams]
