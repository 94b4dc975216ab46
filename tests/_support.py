"""Shared machinery for the test suite: option grids, problems, and one runner per front.

A *case* is a frozen description of a training run (rule, param shapes, param groups with their
options, dtype, number of steps, which grads are None when, mid-run lr changes). ``run(case,
front)`` plays it on one front and returns the final params and optimizer state as NumPy
arrays, so every front is compared against the rule's reference on the very same gradients:
``torch.optim.X(..., foreach=False)`` where torch has the rule, else the op-by-op reference of
tests/references.py (the registry's ``reference`` says which).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastoptim import _core

try:
    import torch  # noqa: F401
except ImportError:
    HAVE_TORCH = False
else:
    HAVE_TORCH = True
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")

# The rule registry of the core: every rule's torch name, options and their defaults.
REGISTRY = {info["torch_name"]: info for info in _core.rules()}
RULES = tuple(REGISTRY)


def _state_keys(info: dict[str, Any]) -> set[str]:
    """The keys of one param's saved state, as the rule's reference saves them (the union over
    options): the step where the rule counts one, its scalar slots (NAdam's mu_product), and
    its slots (Schedule-Free's param copy z among them), or, where the reference keeps another
    layout (the registry's "checkpoint": AdEMAMix's bitsandbytes), that layout's entries or
    the key it nests them under."""
    keys = {"step"} if info["has_step"] else set()
    keys |= {name for name, _ in info["scalar_slots"]}
    if info["checkpoint"] is None:
        return keys | {name for name, _ in info["slots"]}
    entries, nest, _ = info["checkpoint"]
    return keys | ({nest} if nest is not None else {name for name, _ in entries})


# State keys the rule's reference (torch.optim where it has the rule) uses per rule.
STATE_KEYS = {rule: _state_keys(info) for rule, info in REGISTRY.items()}

# State entries that are per-param 0-d scalars in torch (float32, or float64 under a float64
# default dtype), not buffers shaped like the param: the step and the scalar slots.
SCALAR_STATE_KEYS = {"step"} | {name for info in REGISTRY.values()
                                 for name, _ in info["scalar_slots"]}

# One option set per rule with most features on (momentum, decay, amsgrad, centered, ...), for
# tests that exercise a front's machinery rather than the option grid.
RICH = {
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
    "Adadelta": dict(lr=0.5, rho=0.8, weight_decay=0.01),
    "RMSprop": dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
    "AdamW": dict(lr=0.01, amsgrad=True, weight_decay=0.05),
    "NAdam": dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01, momentum_decay=0.01,
                  decoupled_weight_decay=True),
    # beta2=0.9: steps 1-5 unrectified, rectified from step 6 on (radam_first_rectified)
    "RAdam": dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.01),
    "Adamax": dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
    "Lion": dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
    # both warm-ups running for the whole of a 50-step run
    "AdEMAMix": dict(lr=0.01, betas=(0.8, 0.99, 0.999), alpha=4.0, t_alpha=60, t_beta3=80,
                     weight_decay=0.05),
    "AdamWScheduleFree": dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, warmup_steps=5,
                              r=0.5, weight_lr_power=1.0),
    "SGDScheduleFree": dict(lr=0.1, momentum=0.8, weight_decay=0.01, warmup_steps=5, r=0.5),
}

# Shapes of the grid problem: one group whose buffers end on every SIMD tail (1, 7, 15, 16, 17).
GRID_SHAPES = ((1,), (7,), (3, 5), (16,), (17,))

SIZES = (1, 7, 15, 16, 17, 1023, 4097, 100003)


def _cycle(values: tuple, i: int) -> Any:
    return values[i % len(values)]


def short_steps(rule: str, steps: int) -> int:
    """The step count of a short run: ``steps``, but at least 7 for RAdam, whose rectified branch
    starts at step 6 at the earliest (a run of 5 would only test its momentum-SGD branch)."""
    return max(steps, 7) if rule == "RAdam" else steps


def radam_rho(beta2: float, step: int) -> tuple[float, float]:
    """(rho_inf, rho_t) as torch.optim.RAdam computes them; a step is rectified iff rho_t > 5."""
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf, rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)


def radam_first_rectified(beta2: float, steps: int = 50) -> int | None:
    """The first rectified step (1-based) within ``steps``, None if every step is unrectified."""
    return next((t for t in range(1, steps + 1) if radam_rho(beta2, t)[1] > 5.0), None)


def _grid(rule: str) -> list[dict[str, Any]]:
    """Every flag on and off (full product), the main hyperparameters at two or more values
    (full product), and secondary values cycled through the combinations."""
    out: list[dict[str, Any]] = []
    if rule == "SGD":
        for i, (momentum, dampening, nesterov, wd, maximize) in enumerate(
            itertools.product((0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.05), (False, True))
        ):
            if nesterov and (momentum == 0 or dampening != 0):
                continue
            out.append(dict(lr=_cycle((0.1, 0.01, 0.37), i), momentum=momentum,
                            dampening=dampening, nesterov=nesterov, weight_decay=wd,
                            maximize=maximize))
        out += [dict(lr=0.05, momentum=1.0), dict(lr=0.05, momentum=0.5, dampening=1.0),
                dict(lr=0.2, momentum=0.3, nesterov=True, weight_decay=0.5)]
    elif rule == "Adagrad":
        for i, (lr_decay, wd, init, eps, maximize) in enumerate(
            itertools.product((0.0, 0.05), (0.0, 0.1), (0.0, 0.3), (1e-10, 1e-3), (False, True))
        ):
            out.append(dict(lr=_cycle((0.01, 0.1, 0.5), i), lr_decay=lr_decay, weight_decay=wd,
                            initial_accumulator_value=init, eps=eps, maximize=maximize))
        out += [dict(lr=0.3, lr_decay=1.0, initial_accumulator_value=2.0, eps=0.0)]
    elif rule == "Adadelta":
        for i, (rho, eps, wd, maximize) in enumerate(
            itertools.product((0.9, 0.5, 0.0, 1.0), (1e-6, 1e-3), (0.0, 0.1), (False, True))
        ):
            out.append(dict(lr=_cycle((1.0, 0.5, 0.1), i), rho=rho, eps=eps, weight_decay=wd,
                            maximize=maximize))
    elif rule == "RMSprop":
        for i, (alpha, wd, momentum, centered, maximize) in enumerate(
            itertools.product((0.99, 0.5), (0.0, 0.1), (0.0, 0.7), (False, True), (False, True))
        ):
            out.append(dict(lr=_cycle((0.01, 0.001, 0.05), i), alpha=alpha,
                            eps=_cycle((1e-8, 1e-2, 1e-4), i // 2), weight_decay=wd,
                            momentum=momentum, centered=centered, maximize=maximize))
        out += [dict(lr=0.01, alpha=0.0), dict(lr=0.01, alpha=0.0, momentum=0.9),
                dict(lr=0.01, alpha=1.0, eps=0.5, centered=True)]
    elif rule in ("Adam", "AdamW"):
        decoupled = (False, True) if rule == "Adam" else (None,)
        decays = (0.0, 0.1) if rule == "Adam" else (0.0, 0.01, 0.2)
        for i, (betas, wd, amsgrad, maximize, dwd) in enumerate(
            itertools.product(((0.9, 0.999), (0.5, 0.9)), decays, (False, True), (False, True),
                              decoupled)
        ):
            opts = dict(lr=_cycle((1e-3, 0.05, 0.2), i), betas=betas,
                        eps=_cycle((1e-8, 1e-3), i // 3), weight_decay=wd, amsgrad=amsgrad,
                        maximize=maximize)
            if dwd is not None:
                opts["decoupled_weight_decay"] = dwd
            out.append(opts)
        out += [dict(lr=0.01, betas=(0.0, 0.0)), dict(lr=0.01, betas=(0.0, 0.5), amsgrad=True),
                dict(lr=0.01, betas=(0.99, 0.0), eps=0.1)]
    elif rule == "NAdam":
        # momentum_decay: 0 (mu constant), torch's default, large (mu_t changes fast); weight
        # decay off, L2, decoupled (NAdamW). 42 entries: test_simd_threads takes every 7th.
        for i, (md, (wd, dwd), maximize, betas) in enumerate(
            itertools.product((0.0, 4e-3, 0.1), ((0.0, False), (0.1, False), (0.1, True)),
                              (False, True), ((0.9, 0.999), (0.5, 0.9)))
        ):
            out.append(dict(lr=_cycle((2e-3, 0.05, 0.2), i), betas=betas,
                            eps=_cycle((1e-8, 1e-3), i // 3), weight_decay=wd, momentum_decay=md,
                            decoupled_weight_decay=dwd, maximize=maximize))
        out += [dict(lr=0.01, betas=(0.0, 0.0)), dict(lr=0.01, betas=(0.99, 0.5), momentum_decay=1.0),
                dict(lr=0.05, betas=(0.0, 0.9), eps=0.1, weight_decay=0.05,
                     decoupled_weight_decay=True),
                dict(lr=0.01, decoupled_weight_decay=True),  # decoupled, but weight_decay=0
                dict(lr=0.1, betas=(0.9, 0.99), eps=1e-6, momentum_decay=0.5),
                dict(lr=0.01, betas=(0.9, 0.5), weight_decay=0.01, maximize=True)]
    elif rule == "RAdam":
        # beta2 0.999 and 0.9: steps 1-5 unrectified, rectified from step 6; 0.7: rho_inf 5.67,
        # rectified only from step 10; 0.6: rho_inf 4 <= 5, never rectified. betas outermost,
        # so that test_simd_threads' every-4th pick meets each of them.
        for i, (betas, maximize, (wd, dwd)) in enumerate(
            itertools.product(((0.9, 0.999), (0.9, 0.9), (0.8, 0.7), (0.5, 0.6)), (False, True),
                              ((0.0, False), (0.1, False), (0.1, True)))
        ):
            out.append(dict(lr=_cycle((1e-3, 0.05, 0.2), i), betas=betas,
                            eps=_cycle((1e-8, 1e-3), i // 4), weight_decay=wd,
                            decoupled_weight_decay=dwd, maximize=maximize))
        out += [dict(lr=0.01, betas=(0.0, 0.0)),  # rho_inf 1
                dict(lr=0.01, betas=(0.9, 2 / 3)),  # rho_inf just below 5: never rectified
                dict(lr=0.01, betas=(0.0, 0.99), eps=0.1),
                dict(lr=0.02, betas=(0.99, 0.9), weight_decay=0.05, decoupled_weight_decay=True)]
    elif rule == "Adamax":
        # 30 entries: test_simd_threads takes every 5th
        for i, (wd, maximize, betas, eps) in enumerate(
            itertools.product((0.0, 0.1), (False, True), ((0.9, 0.999), (0.5, 0.9), (0.0, 0.0)),
                              (1e-8, 1e-3))
        ):
            out.append(dict(lr=_cycle((2e-3, 0.05, 0.2), i), betas=betas, eps=eps,
                            weight_decay=wd, maximize=maximize))
        # eps=0: exp_inf is max(beta2 * exp_inf, |g|) exactly; eps=0.5 dominates small |g|;
        # beta2=0: exp_inf is |g| + eps of this step alone
        out += [dict(lr=0.01, eps=0.0), dict(lr=0.1, betas=(0.9, 0.0)),
                dict(lr=0.01, betas=(0.0, 0.999), weight_decay=0.5),
                dict(lr=0.5, betas=(0.5, 0.5), eps=1e-3, maximize=True),
                dict(lr=0.01, betas=(0.999, 0.999)),
                dict(lr=0.05, betas=(0.99, 0.5), eps=0.5, weight_decay=0.01)]
    elif rule == "Lion":
        # betas at lion-pytorch's default, Adam-like, and the ends of [0, 1]; decay off, small,
        # large (lr * weight_decay up to 0.1)
        for i, (betas, wd) in enumerate(
            itertools.product(((0.9, 0.99), (0.95, 0.98), (0.0, 0.5), (1.0, 0.5), (0.5, 0.2)),
                              (0.0, 0.01, 0.5))
        ):
            out.append(dict(lr=_cycle((5e-3, 0.02, 0.2), i), betas=betas, weight_decay=wd))
        out += [dict(lr=0.05, weight_decay=0.1), dict(lr=0.3, betas=(0.9, 0.9), weight_decay=1.0)]
    elif rule == "AdEMAMix":
        # warm-ups off (None), ending mid-run (20 of 50 steps) and longer than the run; weight
        # decay off and on; betas at bitsandbytes' defaults and short-memory ones
        for i, (t_alpha, t_beta3, wd, betas) in enumerate(
            itertools.product((None, 20, 200), (None, 20, 200), (0.0, 0.05),
                              ((0.9, 0.999, 0.9999), (0.5, 0.9, 0.99)))
        ):
            out.append(dict(lr=_cycle((1e-3, 0.02, 0.1), i), betas=betas,
                            alpha=_cycle((5.0, 0.5, 8.0), i // 2), t_alpha=t_alpha,
                            t_beta3=t_beta3, eps=_cycle((1e-8, 1e-3), i // 3), weight_decay=wd))
        # alpha=0: Adam with bitsandbytes' decay; t=0: no warm-up, as None; beta1=0 and
        # beta3 below beta1; eps large
        out += [dict(lr=0.01, alpha=0.0), dict(lr=0.01, t_alpha=0, t_beta3=0),
                dict(lr=0.01, betas=(0.0, 0.9, 0.99)),
                dict(lr=0.02, betas=(0.99, 0.999, 0.9), t_beta3=30),
                dict(lr=0.05, betas=(0.9, 0.0, 0.999), eps=0.5, t_alpha=10)]
    elif rule == "AdamWScheduleFree":
        # warm-up off, shorter and longer than the run; polynomial weighting off and on; the
        # weights' lr power off, 1 and schedulefree's 2
        for i, (warmup, r, power, wd) in enumerate(
            itertools.product((0, 10, 80), (0.0, 0.75), (0.0, 2.0), (0.0, 0.05))
        ):
            out.append(dict(lr=_cycle((2.5e-3, 0.02, 0.1), i),
                            betas=_cycle(((0.9, 0.999), (0.5, 0.9), (0.95, 0.99)), i),
                            eps=_cycle((1e-8, 1e-3), i), weight_decay=wd, warmup_steps=warmup,
                            r=r, weight_lr_power=power))
        out += [dict(lr=0.01, weight_lr_power=1.0, r=2.0),
                dict(lr=0.05, betas=(0.99, 0.5), eps=0.5, weight_decay=0.5)]
    elif rule == "SGDScheduleFree":
        for i, (warmup, r, power, wd) in enumerate(
            itertools.product((0, 10, 80), (0.0, 0.75), (0.0, 2.0), (0.0, 0.05))
        ):
            out.append(dict(lr=_cycle((1.0, 0.1, 0.02), i), momentum=_cycle((0.9, 0.5, 0.98), i),
                            weight_decay=wd, warmup_steps=warmup, r=r, weight_lr_power=power))
        out += [dict(lr=0.5, momentum=0.1, weight_lr_power=1.0, r=2.0),
                dict(lr=0.05, momentum=0.99, weight_decay=0.5)]
    # else: a rule without a grid yet gets none, which test_registry_coverage names (a KeyError
    # here would stop the collection of every test module instead)
    return out


GRIDS = {rule: _grid(rule) for rule in RULES}


def options_id(options: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "T" if v else "F"
        if isinstance(v, tuple):
            return "(" + ",".join(fmt(x) for x in v) + ")"
        if v is None:
            return "None"
        return f"{v:g}"

    return "-".join(f"{k}={fmt(v)}" for k, v in options.items()) or "defaults"


def freeze(options: dict[str, Any]) -> tuple:
    return tuple(sorted(options.items()))


@dataclass(frozen=True)
class Case:
    rule: str
    shapes: tuple
    groups: tuple  # ((param indices), frozen options) per group
    dtype: str = "float64"
    steps: int = 50
    seed: int = 0
    # (param index, first step, last step) ranges during which that param's grad is None
    none_grads: tuple = ()
    # (before step k, group index, new lr)
    lr_changes: tuple = ()
    grad_scale: float = 1.0

    @staticmethod
    def single(rule: str, options: dict[str, Any], shapes=GRID_SHAPES, **kw: Any) -> Case:
        return Case(rule, tuple(shapes), ((tuple(range(len(shapes))), freeze(options)),), **kw)


def tol(dtype: str) -> dict[str, float]:
    return dict(rtol=1e-10, atol=0.0) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)


@functools.lru_cache(maxsize=64)
def problem(case: Case) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    """Initial params and per-step grads (float64 drawn, then cast), None where asked."""
    rng = np.random.default_rng(case.seed)
    dtype = np.dtype(case.dtype)
    params = [rng.standard_normal(s).astype(dtype) for s in case.shapes]
    grads: list[list[np.ndarray | None]] = []
    for k in range(case.steps):
        row: list[np.ndarray | None] = []
        for i, s in enumerate(case.shapes):
            g = (rng.standard_normal(s) * case.grad_scale).astype(dtype)
            if any(i == j and lo <= k <= hi for j, lo, hi in case.none_grads):
                row.append(None)
            else:
                row.append(g)
        grads.append(row)
    for p in params:
        p.setflags(write=False)
    for row in grads:
        for g in row:
            if g is not None:
                g.setflags(write=False)
    return params, grads


def group_dicts(case: Case, params: list[Any]) -> list[dict[str, Any]]:
    return [dict(opts, params=[params[i] for i in idx]) for idx, opts in
            ((idx, dict(o)) for idx, o in case.groups)]


def param_order(case: Case) -> list[int]:
    """Problem indices in optimizer order (group by group)."""
    return [i for idx, _ in case.groups for i in idx]


def has_torch_reference(rule: str) -> bool:
    """Whether the rule's reference is torch.optim's class of its name (else tests/references.py
    stands in for its official implementation)."""
    return REGISTRY[rule]["reference"] == f"torch.optim.{rule}"


def reference_type(rule: str) -> type:
    """The class reference_class builds from: torch.optim's, or tests/references.py's."""
    if has_torch_reference(rule):
        import torch

        return getattr(torch.optim, rule)
    import references

    return getattr(references, rule)


def official_class(rule: str) -> type:
    """The class users switch from, whose state_dict fastoptim loads and writes: torch.optim's,
    or the official implementation the registry names (the test skips where it is not
    installed)."""
    module, _, name = REGISTRY[rule]["reference"].rpartition(".")
    return getattr(pytest.importorskip(module), name)


def checkpoint_class(rule: str) -> type:
    """The class whose state_dict fastoptim's loads and writes: the official one, unless the
    rule's reference says its official implementation keeps another layout
    (``official_state_dict = False``: AdEMAMix, whose bitsandbytes stacks two slots in one
    buffer), then the reference, which keeps fastoptim's."""
    if getattr(reference_type(rule), "official_state_dict", True):
        return official_class(rule)
    return reference_type(rule)


def reference_flags(rule: str) -> dict[str, Any]:
    """The execution flags the reference runs with: torch's single-tensor implementation
    (foreach=False), none for tests/references.py's classes. A fused class given the same
    flags keeps the same param-group keys."""
    return {"foreach": False} if has_torch_reference(rule) else {}


def reference_class(rule: str) -> Any:
    """The rule's reference optimizer class: torch.optim's with foreach=False (the single-tensor
    implementation), or tests/references.py's for a rule torch lacks."""
    return functools.partial(reference_type(rule), **reference_flags(rule))


def ready_to_step(opt: Any, rule: str) -> Any:
    """``opt`` after the rule's transforms that set its mode flag (Schedule-Free's train():
    its optimizers start in eval mode, where a step raises); returns it. The official classes
    need it (conftest.py does it for fastoptim's and tests/references.py's at construction)."""
    for name, _, to in REGISTRY[rule]["transforms"]:
        if to:
            getattr(opt, name)()
    return opt


def make_optimizer(front: str, rule: str, groups: list[dict[str, Any]]) -> Any:
    """``front``: "reference" (the rule's reference: torch.optim with foreach=False, or
    tests/references.py), "fastoptim.torch", or an array front."""
    import fastoptim

    if front == "reference":
        return reference_class(rule)(groups)
    if front == "fastoptim.torch":
        import fastoptim.torch

        return getattr(fastoptim.torch, rule)(groups)
    return getattr(fastoptim, rule)(groups)


FRONTS = ("fastoptim.torch", "array-numpy", "array-tensor")


def run(case: Case, front: str, grad_mode: str = "fresh") -> dict[str, Any]:
    """Play ``case`` on ``front``; returns {"params": [...], "state": {i: {k: array}}}
    in problem order. ``grad_mode`` (torch fronts): "fresh" assigns a new .grad tensor every
    step, "inplace" copies into the existing one (the cached-plan path of a training loop)."""
    init, grads = problem(case)
    order = param_order(case)
    if front != "array-numpy":
        import torch
    if front in ("reference", "fastoptim.torch"):
        params = [torch.tensor(p).requires_grad_() for p in init]
    elif front == "array-tensor":
        params = [torch.tensor(p) for p in init]
    else:
        params = [p.copy() for p in init]
    opt = make_optimizer(front, case.rule, group_dicts(case, params))
    changes = {}
    for k, gi, lr in case.lr_changes:
        changes.setdefault(k, []).append((gi, lr))
    for k in range(case.steps):
        for gi, lr in changes.get(k, []):
            opt.param_groups[gi]["lr"] = lr
        row = grads[k]
        if front in ("reference", "fastoptim.torch"):
            for p, g in zip(params, row):
                if g is None:
                    p.grad = None
                elif grad_mode == "inplace" and p.grad is not None:
                    p.grad.copy_(torch.tensor(g))
                else:
                    p.grad = torch.tensor(g)
            opt.step()
        elif front == "array-tensor":
            opt.step([None if row[i] is None else torch.tensor(row[i]) for i in order])
        else:
            opt.step([None if row[i] is None else row[i].copy() for i in order])
    return {"params": [to_numpy(p) for p in params], "state": normalized_state(opt, case)}


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().copy()
    return np.array(x, copy=True)


def normalized_state(opt: Any, case: Case) -> dict[int, dict[str, np.ndarray]]:
    """state_dict()["state"] re-keyed by problem index, values as NumPy arrays."""
    order = param_order(case)
    state = opt.state_dict()["state"]
    return {order[k]: flat_entries(s) for k, s in state.items()}


def slot_entries(state: dict[str, Any], rule: str) -> dict[str, Any]:
    """One param's saved state in the rule's slot names (a reference layout's entries, the
    registry's "checkpoint", taken apart as load_state_dict takes them; tests/test_references.py
    checks that layout against the reference's own)."""
    from fastoptim import _checkpoint

    return _checkpoint.from_reference({"state": {0: state}}, REGISTRY[rule])["state"][0]


def flat_entries(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """One param's saved state as NumPy arrays, entries nested by a reference's layout
    (AdEMAMix's bitsandbytes buffers) taken up to the top level."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if isinstance(value, dict):
            out.update(flat_entries(value))
        else:
            out[name] = to_numpy(value)
    return out


@functools.lru_cache(maxsize=512)
def reference(case: Case) -> dict[str, Any]:
    return run(case, "reference")


def assert_close_runs(got: dict[str, Any], want: dict[str, Any], dtype: str, what: str) -> None:
    t = tol(dtype)
    assert len(got["params"]) == len(want["params"])
    for i, (a, b) in enumerate(zip(got["params"], want["params"])):
        assert a.dtype == b.dtype, f"{what}: param {i} dtype {a.dtype} != {b.dtype}"
        np.testing.assert_allclose(a, b, err_msg=f"{what}: param {i}", **t)
    assert set(got["state"]) == set(want["state"]), f"{what}: state keys differ"
    for i in want["state"]:
        gs, ws = got["state"][i], want["state"][i]
        assert set(gs) == set(ws), f"{what}: param {i} state {sorted(gs)} != torch's {sorted(ws)}"
        for name in ws:
            if name == "step":
                assert float(gs[name]) == float(ws[name]), f"{what}: param {i} step"
            else:
                assert gs[name].dtype == ws[name].dtype, f"{what}: param {i} {name} dtype"
                # State buffers can hold O(10..100) values (RMSprop's momentum of g / rms) that
                # cancel to ~0: the absolute part of the float32 bar scales with the buffer.
                scale = max(1.0, float(np.abs(ws[name]).max(initial=0.0)))
                np.testing.assert_allclose(gs[name], ws[name], err_msg=f"{what}: param {i} {name}",
                                           rtol=t["rtol"], atol=t["atol"] * scale)


def assert_equal_runs(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    for i, (x, y) in enumerate(zip(a["params"], b["params"])):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: param {i}")
    assert set(a["state"]) == set(b["state"])
    for i in a["state"]:
        assert set(a["state"][i]) == set(b["state"][i])
        for name in a["state"][i]:
            np.testing.assert_array_equal(a["state"][i][name], b["state"][i][name],
                                          err_msg=f"{what}: param {i} {name}")


# ---- the sampled grids -------------------------------------------------------------------------
# A test marked `grid` (tests/conftest.py) runs on a covering sample of its parametrisation in the
# default session: within each rule, every pair of factor values that occurs together in some
# point of the grid occurs together in a sampled point (pairwise coverage). The other points are
# marked `exhaustive`, which CI runs. Factors are the rule's options (the registry's defaults
# filled in, so an option left out and one given its default value are the same value), dtype,
# front, SIMD level, layout, ...: whatever the test is parametrised by.

# Case fields that pick a random draw rather than a setting.
_NOT_FACTORS = {"seed"}


def _option_factors(rule: str, options: Mapping[str, Any]) -> dict[str, Hashable]:
    return {**REGISTRY[rule]["defaults"], **options}


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def grid_factors(params: Mapping[str, Any]) -> dict[str, Hashable]:
    """The factors of one grid point, from a test's parameters (``item.callspec.params``)."""
    factors: dict[str, Hashable] = {}
    for name, value in params.items():
        if isinstance(value, Case):
            for field in dataclasses.fields(value):
                if field.name not in _NOT_FACTORS and field.name != "groups":
                    factors[field.name] = _hashable(getattr(value, field.name))
            if len(value.groups) == 1:
                factors.update(_option_factors(value.rule, dict(value.groups[0][1])))
            else:
                factors["groups"] = value.groups
        elif (isinstance(value, tuple) and len(value) == 2 and value[0] in REGISTRY
              and isinstance(value[1], dict)):  # a (rule, options) variant
            factors["rule"] = value[0]
            factors.update(_option_factors(*value))
        elif name == "options" and isinstance(value, dict):
            factors.update(_option_factors(params["rule"], value))
        else:
            factors[name] = _hashable(value)
    return {k: _hashable(v) for k, v in factors.items()}


def factor_pairs(point: Mapping[str, Hashable]) -> set[tuple]:
    """What a point covers: each factor value alone, and each pair of factor values."""
    items = sorted(point.items(), key=lambda kv: kv[0])
    out: set[tuple] = {(item,) for item in items}
    out.update(itertools.combinations(items, 2))
    return out


def pairwise_sample(points: Sequence[Mapping[str, Hashable]]) -> list[int]:
    """Indices of a subset of ``points`` covering, within each rule, every factor pair that some
    point covers: greedy (take the point covering most uncovered pairs; the first on ties), so
    the same grid always gives the same sample."""
    by_rule: dict[Hashable, list[int]] = {}
    for i, point in enumerate(points):
        by_rule.setdefault(point.get("rule"), []).append(i)
    chosen: list[int] = []
    for indices in by_rule.values():
        bits: dict[tuple, int] = {}
        masks = []
        for i in indices:
            mask = 0
            for pair in factor_pairs(points[i]):
                mask |= 1 << bits.setdefault(pair, len(bits))
            masks.append(mask)
        uncovered = (1 << len(bits)) - 1
        while uncovered:
            best = max(range(len(indices)), key=lambda k: (masks[k] & uncovered).bit_count())
            chosen.append(indices[best])
            uncovered &= ~masks[best]
    return sorted(chosen)
