"""Mixed precision on the torch front (fastoptim.torch): bfloat16/float16 params stepped by the
fused kernels, master weights, bfloat16/float32 state, 16-bit grads of float32 params,
stochastic rounding, and their checkpoints.

The reference for 16-bit storage is an *emulation* built from torch alone: every step upcasts
the param and its state to float32, runs one torch.optim.X(foreach=False) float32 step and
rounds the results back to the storage dtype (state too), nearest-even. That is torch's
``fused=True`` semantics for bfloat16 (math in float32, each store rounded once).

How close "within one ulp" is measured: a trajectory that once rounds the other way (a float32
result within an ulp or two of a rounding boundary) keeps that absolute difference while the
value moves, so where a param later shrinks towards zero the same difference is many ulps of
its final value. The bar is therefore one ulp of the largest magnitude the element had along
the emulated run (its "peak"), and only a small fraction of the elements may differ at all.
"""

from __future__ import annotations

import copy
import io
import math

import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import pytest
import torch
from _support import GRIDS, REGISTRY, RICH, RULES, has_torch_reference, reference_class

N = 4099  # a SIMD tail at every level
STEPS = 20
HALVES = (torch.bfloat16, torch.float16)
SCALARS = ("step", "mu_product", "rounding_step")  # per-param counters and scalars
# (explicit mantissa bits, smallest normal exponent) of the 16-bit types
_FORMAT = {torch.bfloat16: (7, -126), torch.float16: (10, -14)}
# grid entries per rule in the exactness test: RICH and every third entry of _support's grid
EXACT_GRID = {rule: [RICH[rule], *GRIDS[rule][::3]] for rule in RULES}


def _torch_fuses_multiply_adds() -> bool:
    """Whether torch's float32 ``add(alpha=)`` here is one fused multiply-add, as its vectorized
    CPU kernels (AVX2, AVX-512) compute it and fastoptim's kernels follow; torch's scalar
    kernels (ATEN_CPU_CAPABILITY=default) round the product first."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(N, generator=g), torch.randn(N, generator=g)
    fused = (a.double() + float(np.float32(-0.1)) * b.double()).float()
    return torch.equal(a.add(b, alpha=-0.1), fused)


# The one-ulp bars compare against torch's float32 ops, whose rounding is fastoptim's only where
# torch fuses its multiply-adds; with torch's scalar kernels the reference itself moves (the same
# tests then see 1.25 to 3 ulps where a float32 result sits near a rounding boundary).
needs_torch_fma = pytest.mark.skipif(
    not _torch_fuses_multiply_adds(),
    reason="torch's CPU kernels here do not fuse multiply-adds (ATEN_CPU_CAPABILITY=default); "
           "fastoptim follows torch's vectorized kernels, which do")


# ---- the emulation and comparisons -------------------------------------------------------------

def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at |x| (float64; subnormal spacing below the normal range)."""
    mantissa, emin = _FORMAT[dtype]
    exponent = torch.floor(torch.log2(x.double().abs().clamp(min=1e-300)))
    return torch.pow(2.0, exponent.clamp(min=emin) - mantissa)


def problem(dtype: torch.dtype, seed: int = 0, n: int = N, steps: int = STEPS):
    """Params ~ N(0, 1) and ``steps`` grads ~ N(0, 1), drawn in float32, rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(n, generator=g).to(dtype)
    return p0, [torch.randn(n, generator=g).to(dtype) for _ in range(steps)]


def _round_state(opt: torch.optim.Optimizer, p: torch.Tensor, dtype: torch.dtype | None) -> None:
    if dtype is None:
        return
    for key, value in opt.state[p].items():
        if key not in SCALARS and isinstance(value, torch.Tensor):
            value.copy_(value.to(dtype).float())


def emulate(rule: str, options: dict, p0: torch.Tensor, grads: list[torch.Tensor],
            param_dtype: torch.dtype | None, state_dtype: torch.dtype | None):
    """torch.optim.X(foreach=False) in float32, the param rounded to ``param_dtype`` and the
    state to ``state_dtype`` after every step (None: kept in float32, a master copy).
    Returns ({"param": ..., state key: ...} in float32, the peak |value| of each)."""
    p = p0.float().clone().requires_grad_()
    opt = reference_class(rule)([p], **options)
    _round_state(opt, p, state_dtype)  # Adagrad's initial sum, as a 16-bit state starts
    peak = {"param": p.detach().abs()}
    for g in grads:
        p.grad = g.float()
        opt.step()
        with torch.no_grad():
            if param_dtype is not None:
                p.copy_(p.to(param_dtype).float())
        _round_state(opt, p, state_dtype)
        peak["param"] = torch.maximum(peak["param"], p.detach().abs())
        for key, value in opt.state[p].items():
            if key not in SCALARS:
                peak[key] = torch.maximum(peak.get(key, value.abs()), value.abs())
    out = {key: value.clone() for key, value in opt.state[p].items() if key not in SCALARS}
    out["param"] = p.detach().clone()
    return out, peak


def run(rule: str, options: dict, p0: torch.Tensor, grads: list[torch.Tensor], **settings):
    """fastoptim.torch.X on a copy of p0 with these grads: ({"param": ..., state...}, opt)."""
    p = torch.nn.Parameter(p0.clone())
    opt = getattr(fo_torch, rule)([p], **options, **settings)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    out = {key: value for key, value in opt.state[p].items() if key not in SCALARS}
    out["param"] = p.detach()
    return out, opt


def peak_ulps(got: torch.Tensor, want: torch.Tensor, peak: torch.Tensor,
              dtype: torch.dtype) -> float:
    """max |got - want| in ulps of ``dtype`` at each element's peak magnitude."""
    return float(((got.double() - want.double()).abs() / ulp(peak, dtype)).max())


def assert_within_one_ulp(got: dict, want: dict, peak: dict, dtype: torch.dtype,
                          what: str, keys=None) -> None:
    for key in keys or want:
        a, b = got[key], want[key].to(dtype)
        assert a.dtype == dtype, f"{what}: {key} is {a.dtype}"
        worst = peak_ulps(a, b, peak[key], dtype)
        differing = float((a != b).double().mean())
        assert worst <= 1.0, f"{what}: {key} differs by {worst:.2f} ulps"
        assert differing <= 0.005, f"{what}: {key}: {differing:.2%} of the elements differ"


def assert_state_follows(got: dict, want: dict, peak: dict, rule: str) -> None:
    """bfloat16 state beside a float32 param (or master): the moments within one ulp of the
    emulation; a slot that is a copy of the param's sequence (Schedule-Free's z, which the
    float32 param feeds through lerp and weight decay, and which feeds the param back) within
    a few, as the params themselves follow it closely rather than exactly."""
    copies = REGISTRY[rule]["param_copies"]
    moments = [k for k in want if k != "param" and k not in copies]
    if moments:
        assert_within_one_ulp(got, want, peak, torch.bfloat16, rule, moments)
    for key in copies:
        worst = peak_ulps(got[key], want[key].to(torch.bfloat16), peak[key], torch.bfloat16)
        assert worst <= 4.0, f"{rule}: {key} differs by {worst:.2f} ulps"


def assert_param_follows(got: torch.Tensor, want: torch.Tensor, peak: torch.Tensor,
                         rule: str) -> None:
    """A float32 param (or master) beside bfloat16 state, against the emulation: close, or for
    a rule whose state holds a copy of the param's sequence (Schedule-Free's y is a lerp towards
    its bfloat16 z) within a few bfloat16 ulps."""
    if REGISTRY[rule]["param_copies"]:
        worst = peak_ulps(got, want, peak, torch.bfloat16)
        assert worst <= 4.0, f"{rule}: the param differs by {worst:.2f} bfloat16 ulps"
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


# ---- 16-bit params by default: torch's fused semantics ----------------------------------------

@needs_torch_fma
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_half_params_within_one_ulp_of_emulation(rule: str, dtype: torch.dtype) -> None:
    """Default settings: state in the param's dtype, each store rounded once from float32 math;
    after 20 steps every param and state element is within one ulp of the emulation."""
    p0, grads = problem(dtype)
    moved = []
    for options in EXACT_GRID[rule]:
        got, opt = run(rule, options, p0, grads)
        want, peak = emulate(rule, options, p0, grads, dtype, dtype)
        assert set(got) == set(want)
        assert_within_one_ulp(got, want, peak, dtype, f"{rule} {options}")
        moved.append(float((got["param"] != p0).double().mean()))
    assert min(moved) > 0.05 and np.mean(moved) > 0.4  # the bar is not met by standing still


@needs_torch_fma
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", ["Adam", "AdamW"])
def test_bit_identical_to_torch_fused(rule: str, dtype: torch.dtype) -> None:
    """torch's own fused=True Adam/AdamW on 16-bit params (math in float32, one rounding per
    store): fastoptim's result is the same, bit for bit, params and state, over the grid."""
    p0, grads = problem(dtype)
    for options in [RICH[rule], *GRIDS[rule][::2]]:
        got, _ = run(rule, options, p0, grads)
        p = torch.nn.Parameter(p0.clone())
        ref = getattr(torch.optim, rule)([p], fused=True, **options)
        for g in grads:
            p.grad = g.clone()
            ref.step()
        want = {k: v for k, v in ref.state[p].items() if k not in SCALARS}
        want["param"] = p.detach()
        for key in want:
            assert torch.equal(got[key], want[key]), \
                f"{options}: {key}: {int((got[key] != want[key]).sum())} elements differ"


def test_bfloat16_model_just_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import fastoptim.torch as optim`` on a bfloat16 model: the fused step runs (torch's own
    update is never called) and the model trains."""
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda *a, **k: pytest.fail("torch's own update ran"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1)).to(torch.bfloat16)
    x = torch.randn(256, 8).to(torch.bfloat16)
    y = (x[:, :1] * 0.5 - x[:, 1:2]).to(torch.bfloat16)
    opt = fo_torch.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]
    for p in model.parameters():
        state = opt.state[p]
        assert p.dtype == torch.bfloat16
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16


# ---- master weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_master_weights_are_the_float32_step(rule: str, dtype: torch.dtype) -> None:
    """master_weights=True: the master copy (float32, state 'master_param') and the float32
    moments are exactly fastoptim's float32 step on the upcast grads; the param is the master
    rounded to nearest-even; and all of it is torch.optim's float32 step within float32's bar."""
    p0, grads = problem(dtype)
    options = RICH[rule]
    got, opt = run(rule, options, p0, grads, master_weights=True)
    state = opt.state[opt.param_groups[0]["params"][0]]
    master = state["master_param"]
    assert master.dtype == torch.float32 and master.shape == p0.shape
    plain, _ = run(rule, options, p0.float(), [g.float() for g in grads])
    assert torch.equal(master, plain["param"])
    for key in plain:
        if key != "param":
            assert got[key].dtype == torch.float32
            assert torch.equal(got[key], plain[key]), key
    assert torch.equal(got["param"], master.to(dtype))
    want, _ = emulate(rule, options, p0, grads, None, None)
    torch.testing.assert_close(master, want["param"], rtol=1e-5, atol=1e-6)


def test_master_weights_leave_float32_params_alone() -> None:
    """In a group with master_weights=True, float32/float64 params keep no master copy and
    step exactly as without the setting."""
    p0, grads = problem(torch.float32)
    half = torch.nn.Parameter(p0.to(torch.bfloat16))
    full = torch.nn.Parameter(p0.clone())
    double = torch.nn.Parameter(p0.double())
    opt = fo_torch.Adam([half, full, double], lr=0.01, master_weights=True)
    for g in grads:
        half.grad, full.grad, double.grad = g.to(torch.bfloat16), g.clone(), g.double()
        opt.step()
    assert "master_param" in opt.state[half]
    assert "master_param" not in opt.state[full] and "master_param" not in opt.state[double]
    ref_full, _ = run("Adam", dict(lr=0.01), p0, grads)
    ref_double, _ = run("Adam", dict(lr=0.01), p0.double(), [g.double() for g in grads])
    assert torch.equal(full.detach(), ref_full["param"])
    assert torch.equal(double.detach(), ref_double["param"])



# ---- writes to a param beside its master copy --------------------------------------------------
# A write to a 16-bit param between steps (copy_, a loaded model, clamp_, an EMA swap) is the new
# master value of each element it changed: the next step starts from the written value widened
# to float32, the untouched elements from their master. The reference: fastoptim's float32 step
# of float32 params (bit-identical to the master, test_master_weights_are_the_float32_step) whose
# values take each change of the 16-bit param, widened.

WRITES = ("copy", "load_state_dict", "clamp", "ema_swap")


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(3)
    # 64 * 65 + 65 elements: SIMD tails at every level
    return torch.nn.Linear(64, 65).to(dtype)


def _write(kind: str, model: torch.nn.Module, saved: dict, ema: list[torch.Tensor]) -> None:
    """One user write to every param of ``model`` between steps."""
    with torch.no_grad():
        if kind == "copy":
            for p in model.parameters():
                g = torch.Generator().manual_seed(p.numel())
                p.data.copy_(torch.randn(p.shape, generator=g) * 4)
        elif kind == "load_state_dict":
            model.load_state_dict(saved)
        elif kind == "clamp":
            for p in model.parameters():
                p.clamp_(-0.05, 0.03)
        elif kind == "ema_swap":  # swap in the averaged weights (in place, as EMA helpers do)
            for p, e in zip(model.parameters(), ema):
                kept = p.detach().clone()
                p.copy_(e)
                e.copy_(kept)


def _take_writes(before: list[torch.Tensor], params, shadow) -> int:
    """The float32 shadow takes each element whose 16-bit bits the write changed; returns how
    many elements changed."""
    changed = 0
    with torch.no_grad():
        for old, p, q in zip(before, params, shadow):
            bits = torch.int16
            written = old.view(bits) != p.detach().view(bits)
            q.copy_(torch.where(written, p.detach().float(), q))
            changed += int(written.sum())
    return changed


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("kind", WRITES)
def test_a_write_to_the_param_becomes_the_master(kind: str, dtype: torch.dtype,
                                                 simd_level: str) -> None:
    model = _model(dtype)
    params = list(model.parameters())
    saved = copy.deepcopy(model.state_dict())  # the model before training
    ema = [(p.detach().float() * 0.5 + 0.01).to(dtype) for p in params]
    shadow = [torch.nn.Parameter(p.detach().float()) for p in params]
    options = dict(lr=0.01, weight_decay=0.1)
    opt = fo_torch.AdamW(params, **options, master_weights=True)
    ref = fo_torch.AdamW(shadow, **options)
    for k in range(4):
        if k in (1, 3):  # after a step: a master exists that is not the param's value
            before = [p.detach().clone() for p in params]
            _write(kind, model, saved, ema)
            assert _take_writes(before, params, shadow) > len(params)
        grads = _grads(params, k)
        for p, q, g in zip(params, shadow, grads):
            p.grad, q.grad = g, g.float()
        opt.step()
        ref.step()
        for p, q in zip(params, shadow):
            assert torch.equal(opt.state[p]["master_param"], q.detach()), (kind, k)
            assert torch.equal(p.detach(), q.detach().to(dtype)), (kind, k)
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[p][key], ref.state[q][key]), (kind, k, key)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_copy_into_the_param_becomes_the_master_for_every_rule(rule: str, dtype: torch.dtype,
                                                                simd_level: str) -> None:
    """p.data.copy_(x) on some elements (specials among them) before a zero-grad and a real
    step: those elements step from x rounded to the param dtype, the others from the master."""
    p0, grads = problem(dtype, n=1031, steps=3)
    grads[1].zero_()
    p = torch.nn.Parameter(p0.clone())
    shadow = torch.nn.Parameter(p0.float())
    options = RICH[rule]
    opt = getattr(fo_torch, rule)([p], **options, master_weights=True)
    ref = getattr(fo_torch, rule)([shadow], **options)
    tiny = torch.finfo(dtype).tiny
    special = torch.tensor([5.0, -0.0, 0.0, float("inf"), -float("inf"), float("nan"),
                            torch.finfo(dtype).max, -torch.finfo(dtype).max, tiny, tiny / 4])
    for k, g in enumerate(grads):
        if k > 0:
            before = p.detach().clone()
            with torch.no_grad():
                written = slice(k, None, 7)  # another set each time, at every lane position
                values = (torch.arange(p[written].numel()) % 9 - 4) * 0.37 + k
                values[:special.numel()] = special
                p.data[written] = values.to(dtype)
            _take_writes([before], [p], [shadow])
        p.grad, shadow.grad = g.clone(), g.float()
        opt.step()
        ref.step()
        master = opt.state[p]["master_param"]
        torch.testing.assert_close(master, shadow.detach(), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(p.detach(), shadow.detach().to(dtype), rtol=0, atol=0,
                                   equal_nan=True)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_zero_grad_step_keeps_a_written_value(dtype: torch.dtype, simd_level: str) -> None:
    """The issue's case: a zero-grad step after a write. AdamW with fresh moments (the first
    step's grad is zero too) only decays: 5.0 * (1 - 0.5 * 0.5) = 3.75 exactly; SGD keeps 5.0
    (and -0.0, inf). The untouched element steps from its master, which the param cannot hold."""
    odd = 1 + 2.0 ** -_FORMAT[dtype][0]  # one ulp above 1: times 0.75 it needs one more bit
    p = torch.nn.Parameter(torch.tensor([odd, 1.5, -2.0], dtype=dtype))
    q = torch.nn.Parameter(p.detach().clone())
    adamw = fo_torch.AdamW([p], lr=0.5, weight_decay=0.5, master_weights=True)
    sgd = fo_torch.SGD([q], lr=0.5, master_weights=True)
    for x in (p, q):
        x.grad = torch.zeros_like(x)
    adamw.step()
    sgd.step()
    assert adamw.state[p]["master_param"][0].item() == odd * 0.75 != p[0].item()
    with torch.no_grad():
        p[1] = 5.0
        q.data.copy_(torch.tensor([5.0, -0.0, float("inf")]))
    adamw.step()
    sgd.step()
    assert adamw.state[p]["master_param"].tolist() == [odd * 0.75**2, 3.75, -1.125]
    assert p.detach().tolist() == torch.tensor([odd * 0.75**2, 3.75, -1.125]).to(dtype).tolist()
    assert q.detach().tolist() == [5.0, 0.0, float("inf")]
    assert torch.equal(torch.signbit(q.detach()), torch.tensor([False, True, False]))


def test_a_consistent_checkpoint_keeps_the_master_precision() -> None:
    """Model and optimizer restored together: each param is its saved master rounded, so the
    saved master (not the param) continues, exactly as the uninterrupted run."""
    dtype = torch.bfloat16
    model = _model(dtype)
    params = list(model.parameters())
    opt = fo_torch.AdamW(params, lr=0.01, master_weights=True)
    _train(opt, params, range(2))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = _roundtrip(opt.state_dict())
    _train(opt, params, range(2, 4))
    want = [p.detach().clone() for p in params]
    want_master = [opt.state[p]["master_param"].clone() for p in params]
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    _train(opt, params, range(2, 4))
    for p, w, m in zip(params, want, want_master):
        assert torch.equal(p.detach(), w)
        assert torch.equal(opt.state[p]["master_param"], m)


def test_a_stale_master_in_a_checkpoint_yields_to_the_saved_param() -> None:
    """state_dict() after a write and before the next step holds the old master; loaded with
    the written params, the next step still starts from the written values."""
    dtype = torch.bfloat16
    model = _model(dtype)
    params = list(model.parameters())
    opt = fo_torch.AdamW(params, lr=0.01, master_weights=True)
    _train(opt, params, range(2))
    with torch.no_grad():
        for p in params:
            p.mul_(-2.0)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), _roundtrip(opt.state_dict())
    other_model = _model(dtype)
    other_model.load_state_dict(saved_model)
    others = list(other_model.parameters())
    other = fo_torch.AdamW(others, lr=0.01, master_weights=True)
    other.load_state_dict(saved_opt)
    written = [p.detach().float() for p in params]
    _train(opt, params, range(2, 3))
    _train(other, others, range(2, 3))
    for p, q, w in zip(params, others, written):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opt.state[p]["master_param"], other.state[q]["master_param"])
        # one AdamW step of lr 0.01 from the written value, not from the stale master
        torch.testing.assert_close(other.state[q]["master_param"], w, rtol=0, atol=0.02)


# ---- state dtypes ------------------------------------------------------------------------------

@needs_torch_fma
@pytest.mark.parametrize("rule", RULES)
def test_bfloat16_state_for_float32_params(rule: str) -> None:
    """state_dtype=torch.bfloat16 with float32 params: the moments are within one bfloat16 ulp
    of the emulation that rounds them to bfloat16 after every step; the params (float32)
    follow it closely."""
    p0, grads = problem(torch.float32)
    options = RICH[rule]
    got, opt = run(rule, options, p0, grads, state_dtype=torch.bfloat16)
    want, peak = emulate(rule, options, p0, grads, None, torch.bfloat16)
    assert [k for k in want if k != "param"]
    assert_state_follows(got, want, peak, rule)
    # a moment one bfloat16 ulp apart moves the param by ~lr * 2**-8 in that step
    assert_param_follows(got["param"], want["param"], peak["param"], rule)


@needs_torch_fma
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_bfloat16_state_beside_master_weights(rule: str, dtype: torch.dtype) -> None:
    """master_weights=True, state_dtype=bfloat16: float32 master, bfloat16 moments within one
    ulp of the emulation, the param the master rounded."""
    p0, grads = problem(dtype)
    options = RICH[rule]
    got, opt = run(rule, options, p0, grads, master_weights=True, state_dtype="bfloat16")
    master = opt.state[opt.param_groups[0]["params"][0]]["master_param"]
    want, peak = emulate(rule, options, p0, grads, None, torch.bfloat16)
    assert_state_follows(got, want, peak, rule)
    assert_param_follows(master, want["param"], peak["param"], rule)
    assert torch.equal(got["param"], master.to(dtype))


@needs_torch_fma
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_float32_state_for_half_params(rule: str, dtype: torch.dtype) -> None:
    """state_dtype=float32 without a master copy: float32 moments, params within one ulp of the
    emulation that rounds only the params."""
    p0, grads = problem(dtype)
    options = RICH[rule]
    got, _ = run(rule, options, p0, grads, state_dtype=torch.float32)
    want, peak = emulate(rule, options, p0, grads, dtype, None)
    assert_within_one_ulp(got, want, peak, dtype, rule, ["param"])
    for key in want:
        if key != "param":
            assert got[key].dtype == torch.float32
            torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-3)


# ---- 16-bit grads of float32 params ----------------------------------------------------------

needs_grad_dtype = pytest.mark.skipif(not hasattr(torch.Tensor, "grad_dtype"),
                                      reason="Tensor.grad_dtype: torch >= 2.10")


@needs_grad_dtype
@pytest.mark.parametrize("grad_dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_half_grads_of_float32_params(rule: str, grad_dtype: torch.dtype) -> None:
    """p.grad_dtype = torch.bfloat16 (torch >= 2.10): backward leaves 16-bit grads on float32
    params; the step reads them as they are, equal to the float32 step on the upcast grads."""
    p0, grads = problem(torch.float32)
    half_grads = [g.to(grad_dtype) for g in grads]
    p = torch.nn.Parameter(p0.clone())
    p.grad_dtype = grad_dtype
    opt = getattr(fo_torch, rule)([p], **RICH[rule])
    for g in half_grads:
        opt.zero_grad()
        (p * g.float()).sum().backward()  # d/dp = g, delivered in grad_dtype
        assert p.grad.dtype == grad_dtype
        opt.step()
    want, _ = run(rule, RICH[rule], p0, [g.float() for g in half_grads])
    assert torch.equal(p.detach(), want["param"])


@needs_grad_dtype
def test_grad_dtype_change_between_steps_is_noticed() -> None:
    """bfloat16 and float16 grads have the same byte size: a float16 grad replacing a
    bfloat16 one (same shape) must not be read as bfloat16."""
    p0, grads = problem(torch.float32, steps=4)
    p = torch.nn.Parameter(p0.clone())
    p.grad_dtype = None  # any grad dtype may be assigned
    opt = fo_torch.SGD([p], lr=0.1, momentum=0.9)
    used = []
    for k, g in enumerate(grads):
        half = g.to(torch.bfloat16 if k % 2 == 0 else torch.float16)
        p.grad = half  # a new tensor of the same byte size
        used.append(half.float())
        opt.step()
    want, _ = run("SGD", dict(lr=0.1, momentum=0.9), p0, used)
    assert torch.equal(p.detach(), want["param"])


# ---- stochastic rounding -------------------------------------------------------------------------

def _sr_run(rule: str, dtype: torch.dtype = torch.bfloat16, steps: int = 3, n: int = N,
            **settings) -> list[torch.Tensor]:
    """Two params (one above the serial threshold, so threads split it) stepped with stochastic
    rounding; returns the params and every state tensor."""
    p0, grads = problem(dtype, n=n, steps=steps)
    p1, grads1 = problem(dtype, seed=1, n=N, steps=steps)
    ps = [torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p1.clone())]
    options = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01)}[rule]
    opt = getattr(fo_torch, rule)(ps, **options, stochastic_rounding=True, **settings)
    for g, g1 in zip(grads, grads1):
        ps[0].grad, ps[1].grad = g.clone(), g1.clone()
        opt.step()
    out = [p.detach().clone() for p in ps]
    for p in ps:
        out += [v.clone() for v in opt.state[p].values()]
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("rule", ["SGD", "Adam"])
def test_stochastic_rounding_reproducible_per_seed(rule: str) -> None:
    a = _sr_run(rule, seed=123)
    assert _same(a, _sr_run(rule, seed=123))
    b = _sr_run(rule, seed=124)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    p0, grads = problem(torch.bfloat16, steps=3)
    plain, _ = run(rule, {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01)}[rule],
                   p0, grads)
    assert not torch.equal(a[0][:N], plain["param"])  # it does round differently


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("rule", ["SGD", "Adam"])
def test_stochastic_rounding_same_at_every_level_and_thread_count(
        rule: str, dtype: torch.dtype, restore_threads: None) -> None:
    """The random bits come from (seed, step, param, stream, element): the same result at every
    SIMD level and for 1, 2 or 3 threads (the first param is split between them)."""
    n = 3 * fastoptim._core.serial_threshold + 5
    results = {}
    previous = fastoptim.simd_level()
    try:
        for level in fastoptim.available_simd_levels():
            fastoptim.set_simd_level(level)
            for threads in (1, 2, 3):
                fastoptim.set_num_threads(threads)
                results[level, threads] = _sr_run(rule, dtype, n=n, seed=7)
    finally:
        fastoptim.set_simd_level(previous)
    first = next(iter(results.values()))
    for key, value in results.items():
        assert _same(value, first), key


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_stochastic_rounding_is_unbiased(dtype: torch.dtype) -> None:
    """Params of random values, an SGD update of random size: each result is one of the two
    neighbours of the float32 result, and the mean rounding error is zero within 5 standard
    errors (nearest-even is biased here: every update is below half an ulp)."""
    n = 1 << 16
    g = torch.Generator().manual_seed(5)
    p0 = (1.25 + 0.7 * torch.rand(n, generator=g)).to(dtype)  # inside one binade, [1, 2)
    spacing = 2.0 ** -_FORMAT[dtype][0]
    grad = (torch.rand(n, generator=g) * spacing).to(dtype)  # lr * grad < half an ulp
    p = torch.nn.Parameter(p0.clone())
    opt = fo_torch.SGD([p], lr=0.45, stochastic_rounding=True, seed=11)
    p.grad = grad
    opt.step()
    exact = p0.double() - 0.45 * grad.double()
    error = (p.detach().double() - exact) / spacing
    assert float(error.abs().max()) < 1.0
    assert set(torch.unique(p.detach() - p0).tolist()) <= {0.0, -spacing}
    standard_error = float(error.std()) / math.sqrt(n)
    assert abs(float(error.mean())) < 5 * standard_error, (float(error.mean()), standard_error)
    # nearest-even never moves these params
    q = torch.nn.Parameter(p0.clone())
    q.grad = grad
    fo_torch.SGD([q], lr=0.45).step()
    assert torch.equal(q.detach(), p0)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_small_updates_accumulate_with_stochastic_rounding_or_master(dtype: torch.dtype) -> None:
    """Ten SGD steps of 0.3 ulp each on params at 1.5: nearest-even leaves them at 1.5; with
    stochastic rounding their mean moves by 3 ulps (5 standard errors), and a fresh random
    decision is drawn each step (SGD's own counter); a master copy moves them by exactly
    3 ulps."""
    n = 1 << 16
    spacing = 2.0 ** -_FORMAT[dtype][0]
    results = {}
    for name, settings in (("nearest", {}), ("stochastic", dict(stochastic_rounding=True)),
                           ("master", dict(master_weights=True))):
        p = torch.nn.Parameter(torch.full((n,), 1.5, dtype=dtype))
        opt = fo_torch.SGD([p], lr=0.3, **settings)
        for step in range(10):
            p.grad = torch.full((n,), spacing, dtype=dtype)
            opt.step()
            if step == 1:
                results[name, "after two"] = p.detach().clone()
        results[name] = (p.detach().clone(), opt)
    assert torch.equal(results["nearest"][0], torch.full((n,), 1.5, dtype=dtype))
    moved = (1.5 - results["stochastic"][0].double()) / spacing
    assert abs(float(moved.mean()) - 3.0) < 5 * math.sqrt(10 / 4 / n), float(moved.mean())
    sgd = results["stochastic"][1]
    counter = sgd.state[sgd.param_groups[0]["params"][0]]["rounding_step"]
    assert counter.dtype == torch.float32 and float(counter) == 10.0
    # independent decisions per step: after two steps some params moved once (not 0 or 2x)
    once = float(((1.5 - results["stochastic", "after two"].double()) / spacing == 1).double()
                 .mean())
    assert 0.3 < once < 0.55  # 2 * 0.3 * 0.7 = 0.42 for independent decisions
    master_param, master_opt = results["master"]
    master = master_opt.state[master_opt.param_groups[0]["params"][0]]["master_param"]
    assert torch.equal(master_param, master.to(dtype))
    assert torch.equal(master_param, torch.full((n,), 1.5 - 3 * spacing, dtype=dtype))


def test_stochastic_rounding_of_bfloat16_state() -> None:
    """float32 params with bfloat16 state: the momentum buffer's first value (the grad) is
    stored unbiased; nearest-even stores the same value for all of them."""
    n = 1 << 16
    spacing = 2.0 ** -7
    value = 1.5 + 0.3 * spacing
    means = {}
    for stochastic in (False, True):
        p = torch.nn.Parameter(torch.zeros(n))
        opt = fo_torch.SGD([p], lr=0.1, momentum=0.9, state_dtype=torch.bfloat16,
                           stochastic_rounding=stochastic, seed=3)
        p.grad = torch.full((n,), value)
        opt.step()
        buf = opt.state[p]["momentum_buffer"]
        assert buf.dtype == torch.bfloat16
        means[stochastic] = float(buf.double().mean())
    assert means[False] == 1.5
    assert abs(means[True] - value) < 5 * spacing * math.sqrt(0.21 / n)


# ---- settings, validation and errors ---------------------------------------------------------

def test_settings_are_group_keys() -> None:
    a = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    opt = fo_torch.Adam([a], master_weights=True, state_dtype=torch.bfloat16,
                        stochastic_rounding=True, seed=5)
    opt.add_param_group({"params": [b], "seed": 9, "state_dtype": torch.float32})
    g0, g1 = opt.param_groups
    assert (g0["master_weights"], g0["state_dtype"], g0["stochastic_rounding"], g0["seed"]) == \
        (True, "bfloat16", True, 5)
    assert (g1["master_weights"], g1["state_dtype"], g1["stochastic_rounding"], g1["seed"]) == \
        (True, "float32", True, 9)
    saved = opt.state_dict()["param_groups"]
    assert [g["seed"] for g in saved] == [5, 9]
    for group in saved:
        assert {"master_weights", "state_dtype", "stochastic_rounding", "seed"} <= group.keys()


@pytest.mark.parametrize("bad, error, match", [
    (dict(state_dtype=torch.float16), ValueError, "state_dtype"),
    (dict(state_dtype="float64"), ValueError, "state_dtype"),
    (dict(master_weights="yes"), TypeError, "master_weights"),
    (dict(stochastic_rounding=1), TypeError, "stochastic_rounding"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_bad_settings_are_refused(bad: dict, error: type, match: str) -> None:
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(error, match=match):
        fo_torch.Adam([p], **bad)
    opt = fo_torch.Adam([p])
    q = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": [q], **bad})
    assert len(opt.param_groups) == 1


def test_float64_params_with_bfloat16_state_are_refused() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="param 1.*float64"):
        fo_torch.Adam([a, b], state_dtype=torch.bfloat16)
    opt = fo_torch.Adam([a], state_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="param 1.*float64"):
        opt.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 1
    # set by hand after construction: refused by the step, nothing changed
    opt = fo_torch.Adam([a, b])
    a.grad, b.grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
    opt.param_groups[0]["state_dtype"] = "bfloat16"
    with pytest.raises(TypeError, match="param 1.*float64"):
        opt.step()
    assert not opt.state and torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == 0
    with pytest.raises(TypeError, match="float16 params"):
        fo_torch.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))],
                      state_dtype=torch.bfloat16)


def _snapshot(opt: torch.optim.Optimizer, params: list[torch.Tensor]):
    return [p.detach().clone() for p in params], opt.state_dict()


def _assert_unchanged(opt, params, before) -> None:
    after = _snapshot(opt, params)
    assert all(torch.equal(a, b) for a, b in zip(after[0], before[0]))
    assert after[1]["param_groups"] == before[1]["param_groups"]
    assert after[1]["state"].keys() == before[1]["state"].keys()
    for k, state in before[1]["state"].items():
        assert after[1]["state"][k].keys() == state.keys()
        for name, value in state.items():
            assert after[1]["state"][k][name].dtype == value.dtype
            assert torch.equal(after[1]["state"][k][name], value)


@pytest.mark.parametrize("case", ["wider-grad", "float64-grad", "bf16-param-fp16-grad",
                                  "int-param"])
def test_bad_grads_and_params_are_refused_before_any_change(case: str) -> None:
    good = torch.nn.Parameter(torch.linspace(-1, 1, 5).to(torch.bfloat16))
    bad = torch.nn.Parameter(torch.linspace(-1, 1, 5).to(torch.bfloat16)) \
        if case != "int-param" else torch.arange(5)
    opt = fo_torch.Adam([good, bad], master_weights=True)
    good.grad = torch.ones(5, dtype=torch.bfloat16)
    if case != "int-param":
        bad.grad = torch.ones(5, dtype=torch.bfloat16)
    opt.step()  # a started state, which must stay as it is
    before = _snapshot(opt, [good, bad])
    if case != "int-param":
        bad.grad_dtype = None  # any grad dtype may be assigned
    bad.grad = {"wider-grad": torch.ones(5), "float64-grad": torch.ones(5, dtype=torch.float64),
                "bf16-param-fp16-grad": torch.ones(5, dtype=torch.float16),
                "int-param": torch.ones(5, dtype=torch.int64)}[case]
    match = {"wider-grad": "param 1.*wider", "float64-grad": "param 1.*wider",
             "bf16-param-fp16-grad": "param 1.*no kernel.*bfloat16.*float16",
             "int-param": "param 1.*int64"}[case]
    with pytest.raises(TypeError, match=match):
        opt.step()
    _assert_unchanged(opt, [good, bad], before)


# ---- checkpoints ---------------------------------------------------------------------------------

SETTINGS = {
    "default": {},
    "master": dict(master_weights=True),
    "master-bf16-state": dict(master_weights=True, state_dtype=torch.bfloat16),
    "float32-state": dict(state_dtype=torch.float32),
    "stochastic": dict(stochastic_rounding=True, seed=2**63 + 5),
    "master-stochastic": dict(master_weights=True, state_dtype="bfloat16",
                              stochastic_rounding=True, seed=17),
}


def _params():
    g = torch.Generator().manual_seed(9)
    return [torch.nn.Parameter(torch.randn(6, 5, generator=g).to(torch.bfloat16)),
            torch.nn.Parameter(torch.randn(7, generator=g).to(torch.float16)),
            torch.nn.Parameter(torch.randn(4, generator=g))]  # float32: stays plain


def _grads(params, k: int):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]


def _train(opt, params, steps: range) -> None:
    for k in steps:
        for p, g in zip(params, _grads(params, k)):
            p.grad = g
        opt.step()


def _roundtrip(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _entries(state: dict, prefix: str = ""):
    """A saved state's entries, those nested by the rule's reference layout (AdEMAMix's
    bitsandbytes buffers) as 'outer/inner'."""
    for key, value in state.items():
        if isinstance(value, dict):
            yield from _entries(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", SETTINGS)
def test_checkpoint_round_trip(rule: str, name: str) -> None:
    """state_dict through torch.save/torch.load(weights_only=True) into a new optimizer with the
    same settings: the state keeps its dtypes, and both continue bit-identically."""
    settings = dict(SETTINGS[name])
    if rule == "SGD":
        settings["momentum"] = 0.9
    params = _params()
    # float16 params with bfloat16 state need a master copy; the others are fine
    opt = getattr(fo_torch, rule)(params, **settings)
    _train(opt, params, range(3))
    saved = _roundtrip(opt.state_dict())
    for i, state in opt.state_dict()["state"].items():
        for key, value in _entries(state):
            got = dict(_entries(saved["state"][i]))[key]
            assert (got.dtype == value.dtype if isinstance(value, torch.Tensor)
                    else type(got) is type(value)), key
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = getattr(fo_torch, rule)(copies, **{**settings, **(
        {"seed": 1} if "seed" in settings else {})})
    other.load_state_dict(saved)
    assert other.param_groups[0]["seed"] == opt.param_groups[0]["seed"]
    for p, q in zip(params, copies):
        for key, value in opt.state[p].items():
            assert other.state[q][key].dtype == value.dtype, key
            assert torch.equal(other.state[q][key], value), key
    _train(opt, params, range(3, 6))
    _train(other, copies, range(3, 6))
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(other.state[q][key], value), key


def test_torch_checkpoint_loads_with_the_optimizers_settings() -> None:
    """torch.optim's fused bfloat16 Adam checkpoint (no fastoptim keys): loads into the default
    settings (bfloat16 state, as torch's) and continues like torch's fused step; a setting that
    keeps the state in another dtype refuses it."""
    p0, grads = problem(torch.bfloat16, steps=6)
    p = torch.nn.Parameter(p0.clone())
    ref = torch.optim.Adam([p], lr=0.01, fused=True)
    for g in grads[:3]:
        p.grad = g.clone()
        ref.step()
    saved = _roundtrip(ref.state_dict())
    q = torch.nn.Parameter(p.detach().clone())
    opt = fo_torch.Adam([q], lr=0.01, fused=True)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["master_weights"] is False and opt.param_groups[0]["seed"] == 0
    for g in grads[3:]:
        p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
    assert torch.equal(p, q)
    strict = fo_torch.Adam([torch.nn.Parameter(p0.clone())], lr=0.01, master_weights=True)
    with pytest.raises(ValueError, match="exp_avg.*bfloat16.*float32"):
        strict.load_state_dict(saved)
    assert not strict.state


def _mismatched(case: str, sd: dict) -> dict:
    state = sd["state"][0]
    if case == "settings":
        sd["param_groups"][0]["master_weights"] = False
    elif case == "state-dtype-setting":
        sd["param_groups"][0]["state_dtype"] = "float32"
    elif case == "stochastic-setting":
        sd["param_groups"][0]["stochastic_rounding"] = True
    elif case == "moment-dtype":
        state["exp_avg"] = state["exp_avg"].to(torch.bfloat16)
    elif case == "master-dtype":
        state["master_param"] = state["master_param"].to(torch.bfloat16)
    elif case == "master-shape":
        state["master_param"] = state["master_param"].flatten()
    elif case == "master-on-float32-param":
        sd["state"][2]["master_param"] = torch.zeros(4)
    elif case == "bad-seed":
        sd["param_groups"][0]["seed"] = -3
    return sd


@pytest.mark.parametrize("case", ["settings", "state-dtype-setting", "stochastic-setting",
                                  "moment-dtype", "master-dtype", "master-shape",
                                  "master-on-float32-param", "bad-seed"])
def test_mismatched_checkpoint_is_refused_before_any_change(case: str) -> None:
    params = _params()
    opt = fo_torch.Adam(params, master_weights=True, seed=4)
    _train(opt, params, range(2))
    sd = _mismatched(case, opt.state_dict())
    target_params = _params()
    target = fo_torch.Adam(target_params, master_weights=True, seed=8)
    _train(target, target_params, range(1))
    before = _snapshot(target, target_params)
    with pytest.raises(ValueError):
        target.load_state_dict(sd)
    _assert_unchanged(target, target_params, before)
    assert target.param_groups[0]["seed"] == 8


def test_master_weights_turned_off_drops_the_copy() -> None:
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
    opt = fo_torch.SGD([p], lr=0.1, master_weights=True)
    p.grad = torch.ones(5, dtype=torch.bfloat16)
    opt.step()
    assert "master_param" in opt.state[p]
    opt.param_groups[0]["master_weights"] = False
    opt.step()
    assert "master_param" not in opt.state[p]
    opt.load_state_dict(opt.state_dict())


# ---- GradScaler and clip_grad_norm_ with 16-bit grads -----------------------------------------

@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_grad_scaler_unscales_half_grads_in_the_step(dtype: torch.dtype) -> None:
    """scaler.step on 16-bit params: the scale (a power of two) is undone in the kernel's grad
    read, exactly as if the grads had not been scaled; a step with an inf grad is skipped."""
    p0, grads = problem(dtype, steps=5)
    results = []
    for scaled in (False, True):
        p = torch.nn.Parameter(p0.clone())
        opt = fo_torch.Adam([p], lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
        for k, g in enumerate(grads):
            if scaled:
                scaler.scale(torch.ones(()))
                if k == 2:  # overflowed: skipped, and the scale backs off
                    p.grad = torch.full_like(g, math.inf)
                    before = (p.detach().clone(), copy.deepcopy(opt.state_dict()))
                    scaler.step(opt)
                    scaler.update()
                    assert torch.equal(p.detach(), before[0])
                    assert torch.equal(opt.state[p]["exp_avg"], before[1]["state"][0]["exp_avg"])
                    scaler.scale(torch.ones(()))
                p.grad = g * scaler.get_scale()
                scaler.step(opt)
                scaler.update()
            else:
                p.grad = g.clone()
                opt.step()
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("case", ["bf16-params", "fp32-params-bf16-grads"])
def test_clip_with_half_grads_is_torchs(case: str) -> None:
    """clip_grad_norm_ with 16-bit grads is torch's own clip (the norm and the clipped grads),
    then the fused step."""
    p0, grads = problem(torch.float32 if case.startswith("fp32") else torch.bfloat16, steps=3)
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(p0.clone())
        q = torch.nn.Parameter(torch.linspace(-1, 1, 9))  # a float32 param beside it
        opt = fo_torch.SGD([p, q], lr=0.1, momentum=0.9)
        norms = []
        for g in grads:
            p.grad_dtype = None
            p.grad = g.to(torch.bfloat16, copy=True)  # torch's clip rewrites it
            q.grad = torch.full((9,), 3.0)
            norms.append(opt.clip_grad_norm_(1.0) if fused
                         else torch.nn.utils.clip_grad_norm_([p, q], 1.0))
            opt.step()
        results.append((p.detach().clone(), q.detach().clone(), torch.stack(norms)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_torch_fallback_refuses_settings_it_cannot_keep() -> None:
    """differentiable=True runs torch's own update, which keeps no master copy: refused before
    anything changes."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = fo_torch.SGD([p], lr=0.1, differentiable=True, master_weights=True)
    p.grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="param 0.*torch.optim's own update"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3, dtype=torch.bfloat16)) and not opt.state


@pytest.mark.parametrize("rule", ["SGD", "Adam", "NAdam"])
@pytest.mark.parametrize("name", SETTINGS)
def test_checkpoint_continues_on_the_array_front(rule: str, name: str) -> None:
    """A torch-front checkpoint loads into the array front (bfloat16 as ml_dtypes arrays), and
    both continue bit-identically: same kernels, same stochastic-rounding keys (seed, step,
    param index)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    settings = dict(SETTINGS[name], lr=0.05)
    if rule == "SGD":
        settings["momentum"] = 0.9
    p0, grads = problem(torch.bfloat16, steps=6)
    p = torch.nn.Parameter(p0.clone())
    opt = getattr(fo_torch, rule)([p], **settings)
    for g in grads[:3]:
        p.grad = g.clone()
        opt.step()
    array = p.detach().float().numpy().astype(ml_dtypes.bfloat16)
    front = getattr(fastoptim, rule)([array], **{**settings, "seed": 0})
    front.load_state_dict(opt.state_dict())
    assert front.param_groups[0]["seed"] == opt.param_groups[0]["seed"]
    for g in grads[3:]:
        p.grad = g.clone()
        opt.step()
        front.step([g.float().numpy().astype(ml_dtypes.bfloat16)])
    assert np.array_equal(array.view(np.uint16), p.detach().view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["float32", "bfloat16", "float16"])
@needs_grad_dtype
def test_narrower_grads_of_float64_params(grad_dtype: torch.dtype) -> None:
    """A float64 param with a narrower grad (p.grad_dtype): the float64 step on the widened
    grad, the grad read as it is."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4099, dtype=torch.float64))
    ref = p.detach().clone().requires_grad_()
    p.grad_dtype = grad_dtype
    opt = fo_torch.AdamW([p], lr=0.05)
    ref_opt = fo_torch.AdamW([ref], lr=0.05)
    for _ in range(3):
        g = torch.randn(4099).to(grad_dtype)
        p.grad = g.clone()
        ref.grad = g.double()
        opt.step()
        ref_opt.step()
    assert p.grad.dtype == grad_dtype
    assert torch.equal(p.detach(), ref.detach())
