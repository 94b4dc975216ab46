"""fastoptim.torch as a drop-in for torch.optim: class hierarchy, step(closure), param groups,
zero_grad, LR schedulers, state_dict layout and checkpoints both ways, the article's six lines,
non-contiguous tensors, signatures, autograd version counters, the GIL, import without torch."""

from __future__ import annotations

import copy
import inspect
import io
import os
import subprocess
import sys
import threading
import time

import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import pytest
import torch
from _support import (RICH, RULES, SCALAR_STATE_KEYS, STATE_KEYS, checkpoint_class,
                      has_torch_reference, official_class, ready_to_step,
                      reference_class, reference_flags, reference_type)

# fastoptim's mixed-precision settings: param-group keys torch's groups do not have
PRECISION_KEYS = {"master_weights", "state_dtype", "stochastic_rounding", "seed", "block_size",
                  "min_8bit_size"}


def _torch_groups(groups: list[dict]) -> list[dict]:
    """Param groups without fastoptim's own keys (what torch.optim's groups hold)."""
    return [{k: v for k, v in g.items() if k not in PRECISION_KEYS} for g in groups]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    # Here the gradients come from a model, so they depend on the params and float32 rounding
    # differences feed back into later steps; the rtol 1e-5 / atol 1e-6 bar on fixed gradients
    # is held in test_exactness.py. float64 keeps the full bar.
    return dict(rtol=1e-10, atol=0.0) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)


def _assert_params_close(got: list[torch.Tensor], want: list[torch.Tensor], what: str = "") -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a.detach(), b.detach(), msg=f"{what} param {i}", **_tol(a.dtype))


def _model(dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 1)).to(dtype)


def _data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(32, 4, generator=g, dtype=dtype)
    y = (x[:, :1] * 0.7 - x[:, 1:2] ** 2 + 0.1 * torch.randn(32, 1, generator=g, dtype=dtype))
    return x, y


def _pair(rule: str, dtype: torch.dtype = torch.float64, **kw):
    """Two identical models, one under torch.optim.X(foreach=False), one under fastoptim.torch.X."""
    ref_model, fo_model = _model(dtype), _model(dtype)
    opts = {**RICH[rule], **kw}
    ref = reference_class(rule)(ref_model.parameters(), **opts)
    fo = getattr(fo_torch, rule)(fo_model.parameters(), **opts)
    return ref_model, ref, fo_model, fo


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x, y) -> torch.Tensor:
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


# ---- class hierarchy, closure, groups, zero_grad --------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_is_torch_optimizer_subclass(rule: str) -> None:
    cls = getattr(fo_torch, rule)
    assert issubclass(cls, torch.optim.Optimizer)
    if has_torch_reference(rule):
        assert issubclass(cls, getattr(torch.optim, rule))
    opt = cls([torch.zeros(2, requires_grad=True)])
    assert isinstance(opt, torch.optim.Optimizer)


def test_rmsprop_alias() -> None:
    assert fo_torch.RMSProp is fo_torch.RMSprop
    assert fastoptim.RMSProp is fastoptim.RMSprop
    assert set(fo_torch.__all__) >= {*RULES, "RMSProp"}


@pytest.mark.parametrize("rule", RULES)
def test_signature_equals_torch(rule: str) -> None:
    """The reference's signature (torch's), then fastoptim's mixed-precision settings,
    keyword-only."""
    ours = inspect.signature(getattr(fo_torch, rule)).parameters
    theirs = inspect.signature(reference_type(rule)).parameters
    assert list(ours.values())[:len(theirs)] == list(theirs.values())
    extra = list(ours.values())[len(theirs):]
    assert [(p.name, p.kind, p.default) for p in extra] == [
        (name, inspect.Parameter.KEYWORD_ONLY, default)
        for name, default in (("master_weights", False), ("state_dtype", None),
                              ("stochastic_rounding", False), ("seed", 0), ("block_size", 256),
                              ("min_8bit_size", 4096))]


@pytest.mark.parametrize("rule", RULES)
def test_array_front_signature_matches_torch(rule: str) -> None:
    """Same names, order, kinds and defaults as torch.optim (annotations aside), then the
    mixed-precision settings, keyword-only."""
    ours = inspect.signature(getattr(fastoptim, rule)).parameters
    theirs = inspect.signature(reference_type(rule)).parameters
    assert list(ours) == [*theirs, "master_weights", "state_dtype", "stochastic_rounding", "seed",
                          "block_size", "min_8bit_size"]
    assert all(ours[k].kind == inspect.Parameter.KEYWORD_ONLY for k in PRECISION_KEYS)
    for name in theirs:
        assert ours[name].kind == theirs[name].kind, name
        assert ours[name].default == theirs[name].default, name


@pytest.mark.parametrize("rule", RULES)
def test_step_with_closure_returns_loss(rule: str) -> None:
    x, y = _data()
    ref_model, ref, fo_model, fo = _pair(rule)
    calls, returned = [], []

    def closure_for(model, opt):
        def closure():
            calls.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            returned.append(loss)
            return loss
        return closure

    for _ in range(5):
        want = ref.step(closure_for(ref_model, ref))
        got = fo.step(closure_for(fo_model, fo))
        assert got is returned[-1]
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
    assert all(calls)  # the closure runs with grad enabled, though step is under no_grad
    _assert_params_close(list(fo_model.parameters()), list(ref_model.parameters()))
    assert fo.step() is None


@pytest.mark.parametrize("rule", RULES)
def test_add_param_group_and_zero_grad(rule: str) -> None:
    x, y = _data()
    ref_model, ref, fo_model, fo = _pair(rule)
    extra_ref = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
    extra_fo = torch.nn.Parameter(extra_ref.detach().clone())
    group_opts = dict(lr=0.003, weight_decay=0.2)
    if rule == "Adagrad":
        group_opts["initial_accumulator_value"] = 0.5  # torch ignores it for new state
    for step in range(12):
        if step == 4:
            ref.add_param_group({"params": [extra_ref], **group_opts})
            fo.add_param_group({"params": [extra_fo], **group_opts})
            assert len(fo.param_groups) == 2
            assert fo.param_groups[1].keys() - PRECISION_KEYS == ref.param_groups[1].keys()
        for model, opt, extra in ((ref_model, ref, extra_ref), (fo_model, fo, extra_fo)):
            opt.zero_grad(set_to_none=step % 2 == 0)
            loss = torch.nn.functional.mse_loss(model(x), y) + (extra ** 3).sum() * 0.1
            loss.backward()
            opt.step()
    _assert_params_close(list(fo_model.parameters()) + [extra_fo],
                         list(ref_model.parameters()) + [extra_ref])
    fo.zero_grad()
    assert all(p.grad is None for g in fo.param_groups for p in g["params"])
    fo.zero_grad(set_to_none=False)  # no grads: stays None
    for p in fo_model.parameters():
        p.grad = torch.ones_like(p)
    fo.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in fo_model.parameters())


@pytest.mark.parametrize("rule", RULES)
def test_param_without_grad_is_skipped(rule: str) -> None:
    ref_model, ref, fo_model, fo = _pair(rule)
    x, y = _data()
    for step in range(6):
        for model, opt in ((ref_model, ref), (fo_model, fo)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if step < 3:
                model[2].bias.grad = None  # skipped: no update, no step count
            opt.step()
    _assert_params_close(list(fo_model.parameters()), list(ref_model.parameters()))
    fs, rs = fo.state_dict()["state"], ref.state_dict()["state"]
    assert fs.keys() == rs.keys()
    for k in rs:
        assert fs[k].keys() == rs[k].keys()
        if "step" in rs[k]:
            assert float(fs[k]["step"]) == float(rs[k]["step"])
    if "step" in rs.get(3, {}):
        assert float(fs[3]["step"]) == 3.0


@pytest.mark.parametrize("rule", RULES)
def test_no_grads_at_all_is_a_noop(rule: str) -> None:
    p = torch.nn.Parameter(torch.arange(5.0))
    opt = getattr(fo_torch, rule)([p])
    before = copy.deepcopy(opt.state_dict())
    opt.step()
    assert torch.equal(p.detach(), torch.arange(5.0))
    ref = reference_class(rule)([torch.nn.Parameter(torch.arange(5.0))])
    ref.step()
    assert opt.state_dict()["state"].keys() == ref.state_dict()["state"].keys()
    assert opt.state_dict()["state"].keys() == before["state"].keys()


@pytest.mark.parametrize("rule", RULES)
def test_differentiable_runs_torchs_update(rule: str) -> None:
    """differentiable=True: autograd through the update, by torch's own implementation."""
    if not has_torch_reference(rule):
        pytest.skip(f"{rule}'s reference has no differentiable option")
    results = []
    for cls in (getattr(torch.optim, rule), getattr(fo_torch, rule)):
        w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        p = w * 1.0  # a non-leaf: differentiable optimizers may update it
        opt = cls([p], differentiable=True, **RICH[rule])
        p.grad = torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64, requires_grad=True)
        opt.step()
        p.sum().backward()
        results.append((p.detach().clone(), w.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-12, atol=0)


# The regex torch's own test_fused_error_on_params_on_meta_* (test/test_optim.py) matches with.
TORCH_FUSED_DEVICE_REGEX = "`fused=True` requires all the params to be floating point Tensors"
TORCH_FUSED_RULES = ("SGD", "Adagrad", "Adam", "AdamW")  # the rules torch has fused=True for


def _device_error(cls: type, dtype: torch.dtype, device: str, **kw) -> str:
    p = torch.nn.Parameter(torch.zeros(3, dtype=dtype, device=device))
    p.grad = torch.zeros(3, dtype=dtype, device=device)
    opt = cls([p], **kw)
    with pytest.raises(RuntimeError, match=TORCH_FUSED_DEVICE_REGEX) as info:
        opt.step()
    return str(info.value)


def _split_device_error(message: str) -> tuple[str, str]:
    """(the sentence up to the device list, what follows the list up to fastoptim's note)."""
    head, rest = message.split(" supported devices: ", 1)
    tail = rest.split("] ", 1)[1]
    return head, tail.split(" (fastoptim.torch.", 1)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rule", RULES)
def test_meta_device_gets_torchs_fused_error(rule: str, dtype: torch.dtype) -> None:
    """torch's sentence word for word, first in the message (torch's test matches it with a
    regex); fastoptim's supported device list is ['cpu'] and its name follows in parentheses.
    For the rules torch has fused=True for, the text is torch's own apart from the list."""
    got = _device_error(getattr(fo_torch, rule), dtype, "meta")
    assert got.startswith(TORCH_FUSED_DEVICE_REGEX + " of supported devices: ['cpu'] but "
                          f"{dtype} and meta (fastoptim.torch.{rule} is fused; param 0 on meta")
    if rule in TORCH_FUSED_RULES:
        want = _device_error(getattr(torch.optim, rule), dtype, "meta", fused=True)
        assert _split_device_error(got) == _split_device_error(want)
        assert not want.split("] ", 1)[1].startswith("(")  # torch's ends where ours adds a note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", TORCH_FUSED_RULES)
def test_cuda_device_gets_torchs_fused_error(rule: str) -> None:
    got = _device_error(getattr(fo_torch, rule), torch.float32, "cuda")
    assert got.startswith(TORCH_FUSED_DEVICE_REGEX + " of supported devices: ['cpu'] but "
                          "torch.float32 and cuda (")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rule", RULES)
def test_half_precision_params_are_fused(rule: str, dtype: torch.dtype,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16/float16 params run the fused kernels (torch's own update is never called),
    state in the param's dtype, close to torch's float32 update (exactness to within one ulp
    of the rounded float32 step: test_mixed_precision_torch.py)."""
    grads = [torch.cos(torch.arange(19.0) * (k + 1)).to(dtype) for k in range(5)]
    q = torch.nn.Parameter(torch.linspace(-1, 1, 19).to(dtype).float())
    ref = reference_class(rule)([q], **RICH[rule])
    for g in grads:
        q.grad = g.float()
        ref.step()
    fused = getattr(fo_torch, rule)
    monkeypatch.setattr(fused._torch_class(fused), "step",
                        lambda *a, **k: pytest.fail("torch's own update ran"))
    p = torch.nn.Parameter(torch.linspace(-1, 1, 19).to(dtype))
    opt = getattr(fo_torch, rule)([p], **RICH[rule])
    for g in grads:
        p.grad = g
        opt.step()
    assert all(v.dtype == dtype for k, v in opt.state[p].items()
               if k not in ("step", "mu_product"))
    bits = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    torch.testing.assert_close(p.detach().float(), q.detach(), rtol=8 * bits, atol=8 * bits)


def test_integer_params_get_torchs_error() -> None:
    p = torch.zeros(3, dtype=torch.int32)
    opt = fo_torch.Adam([p])
    p.grad = torch.ones(3, dtype=torch.int32)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.optim raises
        opt.step()
    assert torch.count_nonzero(p) == 0


# ---- LR schedulers ----------------------------------------------------------------------------

S = torch.optim.lr_scheduler
# rules with "momentum" or "betas" in their defaults: OneCycleLR and CyclicLR can cycle them
CYCLES_MOMENTUM = ("SGD", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Adamax")
SCHEDULERS = {
    "StepLR": lambda o, r: S.StepLR(o, step_size=4, gamma=0.5),
    "MultiStepLR": lambda o, r: S.MultiStepLR(o, milestones=[3, 7, 12], gamma=0.3),
    "ExponentialLR": lambda o, r: S.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o, r: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda o, r: S.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
    "LambdaLR": lambda o, r: S.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "MultiplicativeLR": lambda o, r: S.MultiplicativeLR(o, lambda e: 0.93),
    "LinearLR": lambda o, r: S.LinearLR(o, start_factor=0.2, total_iters=6),
    "ConstantLR": lambda o, r: S.ConstantLR(o, factor=0.5, total_iters=5),
    "PolynomialLR": lambda o, r: S.PolynomialLR(o, total_iters=15, power=2.0),
    "SequentialLR": lambda o, r: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=4), S.ExponentialLR(o, gamma=0.85)],
        milestones=[4]),
    "ChainedScheduler": lambda o, r: S.ChainedScheduler(
        [S.ExponentialLR(o, gamma=0.95), S.StepLR(o, step_size=5, gamma=0.5)]),
    "OneCycleLR": lambda o, r: S.OneCycleLR(
        o, max_lr=0.05, total_steps=20, cycle_momentum=r in CYCLES_MOMENTUM),
    "CyclicLR": lambda o, r: S.CyclicLR(
        o, base_lr=0.001, max_lr=0.05, step_size_up=3,
        cycle_momentum=r in CYCLES_MOMENTUM),
    "ReduceLROnPlateau": lambda o, r: S.ReduceLROnPlateau(o, factor=0.5, patience=0,
                                                          threshold=0.5),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("rule", RULES)
def test_lr_scheduler_same_trajectory(rule: str, name: str) -> None:
    x, y = _data()
    ref_model, ref, fo_model, fo = _pair(rule)
    ref_sched, fo_sched = SCHEDULERS[name](ref, rule), SCHEDULERS[name](fo, rule)
    lrs = []
    for _ in range(20):
        losses = [_train_step(ref_model, ref, x, y), _train_step(fo_model, fo, x, y)]
        for sched, loss in zip((ref_sched, fo_sched), losses):
            if name == "ReduceLROnPlateau":
                sched.step(loss)
            else:
                sched.step()
        assert [g["lr"] for g in fo.param_groups] == pytest.approx(
            [g["lr"] for g in ref.param_groups], rel=1e-12)
        for key in ("momentum", "betas"):
            if key in ref.param_groups[0]:
                assert fo.param_groups[0][key] == pytest.approx(ref.param_groups[0][key],
                                                                rel=1e-12)
        lrs.append(fo.param_groups[0]["lr"])
        _assert_params_close(list(fo_model.parameters()), list(ref_model.parameters()), name)
    assert len(set(lrs)) > 1, "the schedule never changed the lr: the test would prove nothing"
    if name in ("OneCycleLR", "CyclicLR") and rule in ("SGD", "Adam"):
        key = "momentum" if rule == "SGD" else "betas"
        assert key in fo.param_groups[0]


# ---- state_dict and checkpoints ---------------------------------------------------------------

# Hand-picked cases beside each rule's two generated ones (VARIANTS, below).
EXTRA_VARIANTS = [
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, maximize=True)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01,
                   maximize=True)),
    ("NAdam", dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.01, momentum_decay=0.1)),
    # the default beta2 0.999 (generated): rectified from step 6, before the checkpoint at
    # step 8; beta2 0.7: from step 10, so the optimizer that loaded the checkpoint makes the
    # switch
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.7), weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, betas=(0.9, 0.6), weight_decay=0.01, maximize=True)),  # never
    ("Adamax", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, maximize=True)),
    ("Lion", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.1)),
    # warm-ups running across the checkpoint at step 8
    ("AdEMAMix", dict(lr=0.02, betas=(0.5, 0.9, 0.99), alpha=2.0, t_alpha=12, t_beta3=10,
                      weight_decay=0.1)),
    ("AdamWScheduleFree", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.1, warmup_steps=10,
                               r=0.5)),
    ("SGDScheduleFree", dict(lr=0.2, momentum=0.5, weight_decay=0.1, warmup_steps=10, r=1.0)),
]
# Every registered rule twice: at its RICH lr with the defaults otherwise, and with its RICH
# options; then the hand-picked cases.
VARIANTS = [*(variant for rule in RULES
              for variant in ((rule, dict(lr=RICH[rule]["lr"])), (rule, dict(RICH[rule])))),
            *EXTRA_VARIANTS]


def _variant_id(v) -> str:
    return v[0] + "-" + "-".join(f"{k}={w}" for k, w in v[1].items())


def _compare_state_dicts(got: dict, want: dict, exact: bool = False) -> None:
    """fastoptim's state dict ``got`` against torch's ``want`` (its groups in torch's keys,
    state within tolerance); ``exact``: two of fastoptim's, groups and state bit for bit."""
    assert got.keys() == want.keys()
    groups = got["param_groups"] if exact else _torch_groups(got["param_groups"])
    assert groups == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for k, ws in want["state"].items():
        gs = got["state"][k]
        assert gs.keys() == ws.keys(), f"param {k}: {sorted(gs)} != {sorted(ws)}"
        _compare_entries(gs, ws, exact)


def _compare_entries(gs: dict, ws: dict, exact: bool = False) -> None:
    for name, w in ws.items():
        g = gs[name]
        if isinstance(w, dict):  # the reference layout's nested buffers (AdEMAMix)
            assert isinstance(g, dict) and g.keys() == w.keys(), name
            _compare_entries(g, w, exact)
        elif not isinstance(w, torch.Tensor):  # its int step
            assert type(g) is type(w) and g == w, name
        else:
            assert isinstance(g, torch.Tensor)
            assert g.dtype == w.dtype and g.shape == w.shape, name
            if exact:
                assert torch.equal(g, w), name
            else:
                torch.testing.assert_close(g, w, **_tol(w.dtype))


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_state_dict_layout_is_torchs(variant) -> None:
    rule, opts = variant
    x, y = _data()
    ref_model, fo_model = _model(), _model()
    ref = reference_class(rule)(ref_model.parameters(), **opts)
    extra = reference_flags(rule)
    fo = getattr(fo_torch, rule)(fo_model.parameters(), **opts, **extra)
    _compare_state_dicts(fo.state_dict(), ref.state_dict())  # before any step
    for _ in range(3):
        _train_step(ref_model, ref, x, y)
        _train_step(fo_model, fo, x, y)
    sd = fo.state_dict()
    _compare_state_dicts(sd, ref.state_dict())
    used = {k for s in sd["state"].values() for k in s}
    assert used <= STATE_KEYS[rule]
    # a snapshot does not move with later steps
    frozen = copy.deepcopy(sd)
    _train_step(fo_model, fo, x, y)
    for k, s in sd["state"].items():
        _compare_entries(s, frozen["state"][k], exact=True)


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.grid
@pytest.mark.parametrize("via_bytes", [True, False], ids=["torch.save-BytesIO", "in-memory"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("direction", ["torch->fastoptim", "fastoptim->torch"])
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_checkpoint_continues_on_same_trajectory(variant, direction: str, dtype,
                                                 via_bytes: bool) -> None:
    rule, opts = variant
    x, y = _data(dtype)
    # the uninterrupted reference run: 16 steps of torch.optim
    ref_model = _model(dtype)
    ref = reference_class(rule)(ref_model.parameters(), **opts)
    # the interrupted run: 8 steps with one library, checkpoint (model + optimizer through
    # torch.save/torch.load into a BytesIO), 8 more with the other
    official = checkpoint_class(rule)
    first_cls = official if direction == "torch->fastoptim" else getattr(fo_torch, rule)
    second_cls = getattr(fo_torch, rule) if direction == "torch->fastoptim" else official
    extra = reference_flags(rule)
    m1 = _model(dtype)
    o1 = ready_to_step(first_cls(m1.parameters(), **opts, **extra), rule)
    for _ in range(8):
        _train_step(ref_model, ref, x, y)
        _train_step(m1, o1, x, y)
    # torch's load_state_dict casts every state tensor but "step" to its param's dtype: NAdam's
    # float32 mu_product becomes float64 for float64 params (and is multiplied in float64 from
    # then on). The reference goes through the same load, so both continue with the same dtypes.
    ref.load_state_dict(ref.state_dict())
    ckpt = {"model": m1.state_dict(), "opt": o1.state_dict()}
    if via_bytes:
        ckpt = _roundtrip(ckpt)
    m2 = _model(dtype, seed=99)  # different init, overwritten by the checkpoint
    m2.load_state_dict(ckpt["model"])
    o2 = second_cls(m2.parameters(), **opts, **extra)
    o2.load_state_dict(ckpt["opt"])
    _compare_state_dicts(o2.state_dict(), ref.state_dict())
    for _ in range(8):
        _train_step(ref_model, ref, x, y)
        _train_step(m2, o2, x, y)
    _assert_params_close(list(m2.parameters()), list(ref_model.parameters()), direction)
    _compare_state_dicts(o2.state_dict(), ref.state_dict())


def _assert_arrays_are(got: dict, want: dict) -> None:
    """An array front's saved state is the torch one's with arrays for tensors (nested dicts
    and an int step, as the rule's reference layout has them, alike)."""
    assert got.keys() == want.keys()
    for name, v in want.items():
        if isinstance(v, dict):
            _assert_arrays_are(got[name], v)
        elif isinstance(v, torch.Tensor):
            assert isinstance(got[name], np.ndarray), name
            np.testing.assert_array_equal(got[name], v.numpy())
        else:
            assert type(got[name]) is type(v) and got[name] == v, name


def _as_tensors(state: dict) -> dict:
    return {k: _as_tensors(v) if isinstance(v, dict) else
            torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_torch_state_dict_into_array_front_and_back(variant) -> None:
    """torch.optim's state_dict loads into the array front (which continues on the same
    trajectory); the array front's state_dict has torch's structure with NumPy arrays, and
    converted to tensors it loads back into torch.optim."""
    rule, opts = variant
    g = torch.Generator().manual_seed(3)
    shapes = [(3, 4), (5,), (1,)]
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
             for _ in range(12)]
    ref_params = [p.clone().requires_grad_() for p in init]
    ref = reference_class(rule)(ref_params, **opts)

    def ref_step(k):
        for p, gr in zip(ref_params, grads[k]):
            p.grad = gr.clone()
        ref.step()

    for k in range(6):
        ref_step(k)
    arrays = [p.detach().numpy().copy() for p in ref_params]
    arr = getattr(fastoptim, rule)(arrays, **opts)
    arr.load_state_dict(_roundtrip(ref.state_dict()))
    sd = arr.state_dict()
    want = ref.state_dict()
    assert sd.keys() == want.keys()
    assert _torch_groups(sd["param_groups"]) == want["param_groups"]
    assert sd["state"].keys() == want["state"].keys()
    for i, s in want["state"].items():
        _assert_arrays_are(sd["state"][i], s)
    for k in range(6, 9):
        ref_step(k)
        arr.step([gr.numpy() for gr in grads[k]])
    for a, p in zip(arrays, ref_params):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-10)
    # and back: NumPy state as tensors into a fresh torch.optim, which continues like ref (which
    # reloads its own state too: torch's load makes NAdam's mu_product float64 for float64 params)
    ref.load_state_dict(ref.state_dict())
    back_params = [torch.tensor(a, requires_grad=True) for a in arrays]
    back = reference_class(rule)(back_params, **opts)
    sd = arr.state_dict()
    sd["state"] = {i: _as_tensors(s) for i, s in sd["state"].items()}
    back.load_state_dict(sd)
    for k in range(9, 12):
        ref_step(k)
        for p, gr in zip(back_params, grads[k]):
            p.grad = gr.clone()
        back.step()
    for b, p in zip(back_params, ref_params):
        torch.testing.assert_close(b.detach(), p.detach(), rtol=1e-10, atol=0)


# ---- state_dict hooks ---------------------------------------------------------------------------
# torch's register_state_dict_pre/post_hook and register_load_state_dict_pre/post_hook run around
# all of the front's work, each once: a state_dict post-hook sees what state_dict returns (a
# rule's reference layout: AdEMAMix's bitsandbytes), a load pre-hook the dict given, and what
# it returns or leaves is what is converted, checked and loaded.

def _stepped(rule: str, steps: int = 3) -> torch.optim.Optimizer:
    """fastoptim.torch's optimizer of ``rule`` (RICH options) after ``steps`` steps."""
    x, y = _data()
    model = _model()
    opt = getattr(fo_torch, rule)(model.parameters(), **RICH[rule])
    for _ in range(steps):
        _train_step(model, opt, x, y)
    return opt


def _snapshot(opt: torch.optim.Optimizer) -> tuple:
    params = [p for g in opt.param_groups for p in g["params"]]
    return ([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
            [{k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
              for k, v in opt.state[p].items()} for p in params])


def _assert_same_snapshot(got: tuple, want: tuple) -> None:
    assert got[0] == want[0], "param groups changed"
    for i, (gs, ws) in enumerate(zip(got[1], want[1])):
        assert gs.keys() == ws.keys(), f"param {i}: {sorted(gs)} != {sorted(ws)}"
        _compare_entries(gs, ws, exact=True)


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_post_hook_sees_what_state_dict_returns(rule: str) -> None:
    opt = _stepped(rule)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(
        lambda o, sd: calls.append(("post", sd, copy.deepcopy(sd))))
    returned = opt.state_dict()
    assert [c if isinstance(c, str) else c[0] for c in calls] == ["pre", "post"]
    _, seen, as_seen = calls[1]
    assert seen is returned
    _compare_state_dicts(returned, as_seen, exact=True)  # unchanged after the hook
    # the reference's layout, every entry of it (the RICH options use every slot)
    assert {name for s in returned["state"].values() for name in s} == STATE_KEYS[rule]


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_post_hook_returning_a_dict_replaces_it(rule: str) -> None:
    opt = _stepped(rule)
    calls = []

    def wrap(o, sd):
        calls.append("wrap")
        return {"wrapped": sd}

    opt.register_state_dict_post_hook(wrap)
    opt.register_state_dict_post_hook(lambda o, sd: calls.append(("next", sorted(sd))))
    returned = opt.state_dict()
    assert calls == ["wrap", ("next", ["wrapped"])]
    assert list(returned) == ["wrapped"]
    _compare_state_dicts(returned["wrapped"], opt.state_dict()["wrapped"], exact=True)
    assert {name for s in returned["wrapped"]["state"].values() for name in s} == STATE_KEYS[rule]


@pytest.mark.parametrize("rule", RULES)
def test_load_state_dict_pre_hook_sees_the_dict_given_and_what_it_returns_loads(rule: str) -> None:
    source = _stepped(rule)
    sd = source.state_dict()
    saved = copy.deepcopy(sd)
    opt = _stepped(rule, steps=1)
    calls = []

    def pre(o, given):
        # torch's shallow copy of the dict given, in the layout given (the reference's)
        assert given is not sd and given.keys() == sd.keys()
        assert all(given[k] is sd[k] for k in sd)
        calls.append("pre")
        return dict(given, param_groups=[dict(g, lr=0.125) for g in given["param_groups"]])

    def post(o):
        calls.append("post")
        assert [g["lr"] for g in o.param_groups] == [0.125]  # loaded before

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(post)
    opt.load_state_dict(sd)
    assert calls == ["pre", "post"]
    _compare_state_dicts(sd, saved, exact=True)  # the dict given is left as it was
    # loaded as that dict given without hooks is
    plain = _stepped(rule, steps=1)
    plain.load_state_dict(dict(saved, param_groups=[dict(g, lr=0.125)
                                                    for g in saved["param_groups"]]))
    _compare_state_dicts(opt.state_dict(), plain.state_dict(), exact=True)


@pytest.mark.parametrize("how", ["returned", "edited-in-place"])
@pytest.mark.parametrize("rule", RULES)
def test_load_state_dict_pre_hook_cannot_pass_a_malformed_dict(rule: str, how: str) -> None:
    """A pre-hook's dict is checked like any other: param 0's first state buffer of another
    shape raises the front's error, nothing changed and no post-hook run."""
    sd = _stepped(rule).state_dict()
    opt = _stepped(rule, steps=1)
    before = _snapshot(opt)
    calls = []

    def pre(o, given):
        calls.append("pre")
        state = {k: dict(v) for k, v in given["state"].items()}
        # a buffer where the state saves it (the reference's layout nests AdEMAMix's)
        holder = state[0]
        nest = next((k for k, v in holder.items() if isinstance(v, dict)), None)
        if nest is not None:
            holder = state[0][nest] = dict(holder[nest])
        name = next(k for k, v in holder.items()
                    if isinstance(v, torch.Tensor) and k not in SCALAR_STATE_KEYS)
        holder[name] = torch.zeros(5, dtype=holder[name].dtype)
        if how == "returned":
            return dict(given, state=state)
        given["state"] = state
        return None

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    with pytest.raises((ValueError, TypeError), match=r"param 0\b"):
        opt.load_state_dict(sd)
    assert calls == ["pre"]
    _assert_same_snapshot(_snapshot(opt), before)


@pytest.mark.parametrize("rule", [rule for rule in RULES if has_torch_reference(rule)])
def test_state_dict_hooks_run_as_torch_optims(rule: str) -> None:
    """The same hooks on torch.optim's class and on fastoptim.torch's: the same calls in the
    same order (prepend too), handed the same dicts, a returned dict replacing theirs."""
    def play(cls) -> list:
        x, y = _data()
        model = _model()
        opt = cls(model.parameters(), **RICH[rule], **reference_flags(rule))
        for _ in range(2):
            _train_step(model, opt, x, y)
        log = []
        opt.register_state_dict_pre_hook(lambda o: log.append("pre"))
        opt.register_state_dict_pre_hook(lambda o: log.append("pre-first"), prepend=True)

        def post_extra(o, sd):
            log.append(("post", sorted(sd), sorted(sd["state"])))
            return {**sd, "extra": 1}

        seen = []
        opt.register_state_dict_post_hook(post_extra)
        opt.register_state_dict_post_hook(lambda o, sd: seen.append(sd))
        returned = opt.state_dict()
        log.append(("returned", sorted(returned), returned is seen[0]))

        def load_pre(o, given):
            log.append(("load-pre", given is returned, given["state"] is returned["state"],
                        sorted(given)))
            return {k: v for k, v in given.items() if k != "extra"} | {
                "param_groups": [dict(g, lr=0.25) for g in given["param_groups"]]}

        opt.register_load_state_dict_pre_hook(load_pre)
        opt.register_load_state_dict_post_hook(
            lambda o: log.append(("load-post", [g["lr"] for g in o.param_groups])))
        opt.load_state_dict(returned)
        log.append(("after", sorted(returned)))
        return log

    want = play(reference_type(rule))
    assert [e if isinstance(e, str) else e[0] for e in want] == [
        "pre-first", "pre", "post", "returned", "load-pre", "load-post", "after"]
    assert play(getattr(fo_torch, rule)) == want


# ---- the article's six lines ------------------------------------------------------------------

ARTICLE_LINES = [
    "optim.SGD(model.parameters(), lr=0.01, momentum=0.9)",
    "optim.Adagrad(model.parameters(), lr=0.01)",
    "optim.Adadelta(model.parameters(), lr=1.0)",
    "optim.RMSProp(model.parameters(), lr=0.001, alpha=0.99)",
    "optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999))",
    "optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.01)",
]


@pytest.mark.parametrize("line", ARTICLE_LINES)
def test_article_lines_verbatim(line: str) -> None:
    code = "import fastoptim.torch as optim\noptimizer = " + line + "\n"
    model = _model(torch.float32)
    namespace = {"model": model}
    exec(compile(code, "<article>", "exec"), namespace)  # noqa: S102
    optimizer = namespace["optimizer"]
    assert type(optimizer).__module__ == "fastoptim.torch"
    x, y = _data(torch.float32)
    ref_model = _model(torch.float32)
    ref_ns = {"model": ref_model}
    exec(compile("import torch.optim as optim\noptimizer = " + line.replace("RMSProp", "RMSprop"),
                 "<torch>", "exec"), ref_ns)  # noqa: S102
    losses = []
    for _ in range(60):
        losses.append(float(_train_step(model, optimizer, x, y)))
        _train_step(ref_model, ref_ns["optimizer"], x, y)
    assert losses[-1] < losses[0]
    _assert_params_close(list(model.parameters()), list(ref_model.parameters()), line)


# ---- non-contiguous params and grads ----------------------------------------------------------

def _strided(values: torch.Tensor, axis: int, stride: int, offset: int = 0):
    """A view of a larger zero buffer holding ``values`` every ``stride`` along ``axis``;
    returns (view, buffer)."""
    shape = list(values.shape)
    shape[axis] *= stride
    full = torch.zeros(shape, dtype=values.dtype)
    index = [slice(None)] * values.dim()
    index[axis] = slice(offset, None, stride)
    view = full[tuple(index)]
    view.copy_(values)
    return view, full


def _transposed(values: torch.Tensor) -> torch.Tensor:
    return values.t().contiguous().t()  # same values, column-major strides


# layout -> (make_param(values) -> (param data, backing buffer or None), make_grad(values))
LAYOUTS = {
    "param-transposed": (lambda v: (_transposed(v), None), lambda v: v.clone()),
    "grad-transposed": (lambda v: (v.clone(), None), _transposed),
    "both-transposed": (lambda v: (_transposed(v), None), _transposed),
    "param-sliced": (lambda v: _strided(v, 1, 2), lambda v: v.clone()),
    "grad-sliced": (lambda v: (v.clone(), None), lambda v: _strided(v, 1, 3, 1)[0]),
    "param-sliced-grad-transposed": (lambda v: _strided(v, 0, 2), _transposed),
    "param-transposed-grad-sliced": (lambda v: (_transposed(v), None),
                                     lambda v: _strided(v, 0, 2, 1)[0]),
    "grad-expanded": (lambda v: (v.clone(), None), lambda v: v[:1].expand_as(v)),
}


@pytest.mark.grid
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reuse_grads", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("rule", RULES)
def test_non_contiguous_params_and_grads(rule: str, layout: str, reuse_grads: bool,
                                         dtype) -> None:
    """Transposed and sliced params and grads, mixed strides between a param and its grad, a
    stride-0 grad: torch's for-loop results, params updated in their own memory, and the
    memory between a sliced param's elements untouched. reuse_grads writes new values into
    the same non-contiguous .grad tensors (the cached-plan path)."""
    make_param, make_grad = LAYOUTS[layout]
    g = torch.Generator().manual_seed(11)
    base = [torch.randn(6, 5, generator=g, dtype=dtype),
            torch.randn(3, 17, generator=g, dtype=dtype)]
    grads = [[torch.randn(b.shape, generator=g, dtype=dtype) for b in base] for _ in range(15)]
    if "expanded" in layout:  # the reference sees the same (broadcast) values
        grads = [[v[:1].expand_as(v).clone() for v in row] for row in grads]
    ref_params = [torch.nn.Parameter(b.clone()) for b in base]
    ref = reference_class(rule)(ref_params, **RICH[rule])
    made = [make_param(b) for b in base]
    params = [torch.nn.Parameter(data) for data, _ in made]
    buffers = [full for _, full in made]
    ptrs = [p.data_ptr() for p in params]
    strided_param = layout.startswith(("param", "both"))
    strided_grad = "grad" in layout or layout.startswith("both")
    assert all(p.is_contiguous() != strided_param for p in params)
    fo = getattr(fo_torch, rule)(params, **RICH[rule])
    for k in range(15):
        for p, v in zip(ref_params, grads[k]):
            p.grad = v.clone()
        ref.step()
        for p, v in zip(params, grads[k]):
            if reuse_grads and p.grad is not None and "expanded" not in layout:
                p.grad.copy_(v)  # same (non-contiguous) grad tensor, new values
            else:
                p.grad = make_grad(v)
            assert p.grad.is_contiguous() != strided_grad
        fo.step()
    for p, r, ptr, full in zip(params, ref_params, ptrs, buffers):
        torch.testing.assert_close(p.detach(), r.detach(), **_tol(dtype))
        assert p.data_ptr() == ptr  # updated in place, not rebound
        if full is not None:  # the elements between the slices were never written
            assert torch.count_nonzero(full).item() == torch.count_nonzero(p.detach()).item()
            assert full.sum().item() == pytest.approx(p.detach().sum().item(), rel=1e-6)


def test_non_contiguous_state_from_checkpoint() -> None:
    """A loaded state tensor that is not contiguous (e.g. saved from a transposed view) is used
    correctly."""
    ref_p = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64))
    fo_p = torch.nn.Parameter(ref_p.detach().clone())
    ref = torch.optim.Adam([ref_p], foreach=False, lr=0.01)
    fo = fo_torch.Adam([fo_p], lr=0.01)
    ref_p.grad = torch.randn(4, 6, dtype=torch.float64)
    ref.step()
    sd = copy.deepcopy(ref.state_dict())
    for key in ("exp_avg", "exp_avg_sq"):
        sd["state"][0][key] = sd["state"][0][key].t().contiguous().t()
        assert not sd["state"][0][key].is_contiguous()
    fo.load_state_dict(sd)
    with torch.no_grad():
        fo_p.copy_(ref_p)
    for _ in range(5):
        gr = torch.randn(4, 6, dtype=torch.float64)
        ref_p.grad, fo_p.grad = gr.clone(), gr.clone()
        ref.step()
        fo.step()
    torch.testing.assert_close(fo_p.detach(), ref_p.detach(), rtol=1e-10, atol=0)


# ---- autograd version counter -----------------------------------------------------------------

@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("rule", RULES)
def test_step_bumps_version_counter(rule: str, contiguous: bool) -> None:
    base = torch.randn(5, 3)
    p = torch.nn.Parameter(base if contiguous else base.t().contiguous().t())
    opt = getattr(fo_torch, rule)([p], lr=0.1)
    y = (p * p).sum()  # saves p for backward
    p.grad = torch.ones_like(p)
    before = p._version
    opt.step()
    assert p._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# ---- the GIL ----------------------------------------------------------------------------------

@pytest.mark.parametrize("front", ["array", "torch"])
def test_step_releases_the_gil(front: str, restore_threads: None, monkeypatch) -> None:
    """A background Python thread runs while the kernel runs.

    The switch interval is set very high, so the main thread never hands the GIL over on its
    own: the background thread can only run when a C call releases the GIL. The counter is
    read immediately before and after the core call, so any increment in between happened
    inside it. A pure-Python busy loop in the same harness (the control) sees no increment."""
    fastoptim.set_num_threads(1)
    counter = [0]
    stop = threading.Event()
    started = threading.Event()

    def background() -> None:
        started.set()
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.0002)

    n = 2_000_000
    if front == "array":
        w, grad = np.zeros(n, np.float32), np.ones(n, np.float32)
        opt = fastoptim.Adam([w], lr=1e-3)
        name = "step_buffers"

        def do_step():
            opt.step([grad])
    else:
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.ones(n)
        opt = fo_torch.Adam([p], lr=1e-3)
        name = "step_plans"

        def do_step():
            opt.step()

    inside = [0]
    real = getattr(fastoptim._core, name)

    def wrapped(*args, **kwargs):
        before = counter[0]
        real(*args, **kwargs)
        inside[0] += counter[0] - before

    monkeypatch.setattr(fastoptim._core, name, wrapped)
    do_step()  # state allocation outside the measurement
    old_interval = sys.getswitchinterval()
    thread = threading.Thread(target=background, daemon=True)
    try:
        sys.setswitchinterval(30.0)
        thread.start()
        started.wait()
        # control: the harness sees nothing while the main thread holds the GIL
        before = counter[0]
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:
            pass
        control = counter[0] - before
        for _ in range(400):
            do_step()
            if inside[0] >= 3:
                break
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
        thread.join()
    assert control == 0, "harness broken: the background thread ran while the GIL was held"
    assert inside[0] >= 3, "no background progress during the kernel: the GIL is held"


# ---- import without torch ---------------------------------------------------------------------

def test_import_without_torch() -> None:
    code = "\n".join([
        "import sys",
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError",
        "import numpy as np, fastoptim",
        "w = np.zeros(4, np.float32)",
        "opt = fastoptim.Adam([w], lr=0.1)",
        "opt.step([np.ones(4, np.float32)])",
        "assert np.allclose(w, -0.1), w",
        "sd = opt.state_dict(); opt.load_state_dict(sd)",
        "print(fastoptim.simd_level(), fastoptim.get_num_threads())",
        "try:",
        "    import fastoptim.torch",
        "except ImportError:",
        "    print('no-torch-front')",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("no-torch-front")


# ---- the cached plan: one core call per group, rebuilt when anything it points to changes ----

def test_one_core_call_per_step(monkeypatch) -> None:
    """Every group and dtype of a step goes to the core in one call (one batch each), so the
    core validates all of them before it writes any."""
    calls = []
    real = fastoptim._core.step_plans

    def counting(rule, batches, *args, **kwargs):
        calls.append(sorted(types[0] for _, _, types in batches))  # the params' dtypes
        return real(rule, batches, *args, **kwargs)

    monkeypatch.setattr(fastoptim._core, "step_plans", counting)
    small = [torch.nn.Parameter(torch.randn(64)) for _ in range(300)]
    mats = [torch.nn.Parameter(torch.randn(64, 64)) for _ in range(100)]
    doubles = [torch.nn.Parameter(torch.randn(7, dtype=torch.float64)) for _ in range(5)]
    opt = fo_torch.Adam([{"params": small + mats}, {"params": doubles, "lr": 0.1}])
    for _ in range(3):
        for p in small + mats + doubles:
            p.grad = torch.ones_like(p)
        calls.clear()
        opt.step()
        assert calls == [["float32", "float64"]]  # 405 tensors, two batches, one call


RESETS = {
    "state-replaced": lambda opt, ps: setattr(opt, "state", __import__("collections")
                                              .defaultdict(dict)),
    "state-cleared": lambda opt, ps: opt.state.clear(),
    "param-state-emptied": lambda opt, ps: [opt.state.__setitem__(p, {}) for p in ps],
    "param-state-deleted": lambda opt, ps: opt.state.pop(ps[0]),
    "param-data-replaced": lambda opt, ps: setattr(ps[1], "data", torch.full_like(ps[1], 0.5)),
    "load-state-dict": lambda opt, ps: opt.load_state_dict(opt.state_dict()),
}


@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("rule", RULES)
def test_state_reset_mid_run_like_torch(rule: str, reset: str) -> None:
    """Patterns users reset or swap optimizer state with, applied after the plan is cached:
    same trajectory and state as torch.optim, no stale pointers (which would also mean
    writes into freed memory)."""
    def play(make):
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64)) for _ in range(3)]
        opt = make(ps)
        for k in range(8):
            if k == 4:
                RESETS[reset](opt, ps)
            for i, p in enumerate(ps):
                p.grad = torch.cos(torch.arange(15.0, dtype=torch.float64) * (k + i + 1)).view(5, 3)
            opt.step()
        return ps, opt

    ref_ps, ref = play(lambda ps: reference_class(rule)(ps, **RICH[rule]))
    extra = reference_flags(rule)
    fo_ps, fo = play(lambda ps: getattr(fo_torch, rule)(ps, **RICH[rule], **extra))
    _assert_params_close(fo_ps, ref_ps, reset)
    _compare_state_dicts(fo.state_dict(), ref.state_dict())


def test_param_shared_and_reused_grads_after_rebuild() -> None:
    """A plan rebuilt many times (grads toggling between None and tensors) stays right."""
    ref_ps = [torch.nn.Parameter(torch.linspace(-1, 1, 9, dtype=torch.float64)) for _ in range(3)]
    fo_ps = [torch.nn.Parameter(p.detach().clone()) for p in ref_ps]
    ref = torch.optim.RMSprop(ref_ps, foreach=False, **RICH["RMSprop"])
    fo = fo_torch.RMSprop(fo_ps, **RICH["RMSprop"])
    for k in range(12):
        for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
            for i, p in enumerate(ps):
                if (k + i) % 3 == 0:
                    p.grad = None
                elif p.grad is None or k % 2:
                    p.grad = torch.full_like(p, 0.1 * (k - i))
                else:
                    p.grad.fill_(0.2 * (i - k))
            opt.step()
    _assert_params_close(fo_ps, ref_ps)


@pytest.mark.parametrize("rule", RULES)
def test_default_dtype_float64_step_counters(rule: str) -> None:
    """With torch's default dtype set to float64, torch keeps "step" as a float64 tensor; so does
    the drop-in, and the trajectory is the same."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x, y = _data()
        ref_model, ref, fo_model, fo = _pair(rule)
        for _ in range(4):
            _train_step(ref_model, ref, x, y)
            _train_step(fo_model, fo, x, y)
        _compare_state_dicts(fo.state_dict(), {**ref.state_dict(), "param_groups": [
            dict(g, foreach=None) if has_torch_reference(rule) else g
            for g in ref.state_dict()["param_groups"]]})
        _assert_params_close(list(fo_model.parameters()), list(ref_model.parameters()))
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copied_optimizer_is_independent(how: str) -> None:
    """A copy of a stepped optimizer (deepcopy, or torch.save of the whole object) steps its own
    params and state, never the original's through a copied plan."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = fo_torch.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    if how == "deepcopy":
        twin = copy.deepcopy(opt)
    else:
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    q = twin.param_groups[0]["params"][0]
    assert q is not p
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    for _ in range(3):
        q.grad = torch.ones(4)
        twin.step()
    assert torch.equal(p.detach(), before[0])
    assert all(torch.equal(opt.state[p][k], v) for k, v in before[1].items())
    assert float(twin.state[q]["step"]) == 4.0
    assert not torch.equal(q.detach(), p.detach())
