"""Gradient clipping and AMP scaling inside the step: opt.clip_grad_norm_ on both fronts (the
norm against torch.nn.utils.clip_grad_norm_, the clip folded into the next step, bit-identical
norms across thread counts and SIMD levels, bad input) and torch.amp.GradScaler driving the
fused step (unscale folded in, whole step skipped on inf/NaN), against torch.optim."""

from __future__ import annotations

import math

import fastoptim
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastoptim.torch as fo_torch  # noqa: E402
from _support import RICH, RULES, reference_class  # noqa: E402

NORMS = [1.0, 2.0, 3.0, math.inf]


def _params(dtypes=(torch.float32, torch.float64, torch.float32), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(40, 7), (17,), (5, 3, 2)]
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=d))
            for s, d in zip(shapes, dtypes)]


def _grads(ps, k: int, none_at: int | None = None) -> None:
    for i, p in enumerate(ps):
        if i == none_at:
            p.grad = None
            continue
        t = torch.arange(p.numel(), dtype=torch.float64) * (0.37 + 0.11 * k + i)
        p.grad = (torch.sin(t) * (3.0 + i)).to(p.dtype).reshape(p.shape)


def _tol(dtype) -> dict:
    return dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-6, atol=0)


# ---- the norm ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.float64,) * 3,
                                    (torch.float32, torch.float64, torch.float32)],
                         ids=["float32", "float64", "mixed"])
@pytest.mark.parametrize("norm_type", NORMS)
def test_norm_matches_torch(norm_type: float, dtypes) -> None:
    ps, qs = _params(dtypes), _params(dtypes)
    opt = fo_torch.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}], lr=0.1)
    _grads(ps, 0, none_at=1 if len(set(dtypes)) == 1 else None)
    _grads(qs, 0, none_at=1 if len(set(dtypes)) == 1 else None)
    before = [None if p.grad is None else p.grad.clone() for p in ps]
    got = opt.clip_grad_norm_(1.0, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_(qs, 1.0, norm_type=norm_type)
    assert isinstance(got, torch.Tensor) and got.dim() == 0 and got.dtype == want.dtype
    # torch computes each float32 grad's norm in float32: float32's tolerance when any is
    torch.testing.assert_close(got, want, **_tol(min(dtypes, key=lambda d: d.itemsize)))
    for p, g in zip(ps, before):  # fastoptim does not rewrite the grads
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


@pytest.mark.parametrize("norm_type", NORMS)
def test_array_front_norm_matches_torch(norm_type: float) -> None:
    qs = _params()
    _grads(qs, 0)
    grads = [q.grad.numpy().copy() for q in qs]
    ws = [q.detach().numpy().copy() for q in qs]
    opt = fastoptim.SGD(ws, lr=0.1)
    got = opt.clip_grad_norm_([grads[0], None, grads[2]], 1.0, norm_type=norm_type)
    qs[1].grad = None
    want = torch.nn.utils.clip_grad_norm_(qs, 1.0, norm_type=norm_type)
    assert isinstance(got, float)
    assert got == pytest.approx(float(want), rel=1e-6)
    # torch's argument order, grads by keyword: the same norm (a fresh optimizer: a second
    # clip of the same grads measures them clipped, as torch's does)
    fresh = fastoptim.SGD(ws, lr=0.1)
    again = fresh.clip_grad_norm_(1.0, norm_type, grads=[grads[0], None, grads[2]])
    assert again == got
    twice = fresh.clip_grad_norm_(1.0, norm_type, grads=[grads[0], None, grads[2]])
    assert twice == pytest.approx(float(torch.nn.utils.clip_grad_norm_(qs, 1.0, norm_type)),
                                  rel=1e-5)
    with pytest.raises(TypeError, match="needs the grads"):
        opt.clip_grad_norm_(1.0)


def test_norm_bit_identical_across_threads_and_levels(restore_threads) -> None:
    ps = [torch.nn.Parameter(torch.zeros(300_001)), torch.nn.Parameter(torch.zeros(7, 5,
                                                                                   dtype=torch.float64))]
    _grads(ps, 3)
    previous = fastoptim.simd_level()
    norms = {}
    try:
        for level in fastoptim.available_simd_levels():
            fastoptim.set_simd_level(level)
            for threads in (1, 2, 3):
                fastoptim.set_num_threads(threads)
                for p in NORMS + ODD_NORMS:
                    # a new optimizer each time: a second clip would measure the clipped grads
                    norms[(level, threads, p)] = float(fo_torch.Adam(ps).clip_grad_norm_(1.0, p))
    finally:
        fastoptim.set_simd_level(previous)
    for (_, _, p), value in norms.items():
        assert value == norms[(previous, 1, p)]


# ---- orders whose powers leave float range (issue 16, item 6) ---------------------------------

# |g|^p overflows (or underflows) double for these orders and grads of magnitude ~5: the norm is
# taken relative to the largest magnitude, max|g| * (sum (|g| / max|g|)^p)^(1/p), finite for any
# finite order. torch's vector_norm does not scale: it answers inf (or 1.0) for the first three.
ODD_NORMS = [1e300, 1e10, 1000.0, 0.5, 3.0]
TORCH_FINITE = {0.5, 3.0}  # orders torch still answers correctly for these grads


def _reference_norm(grads, p: float) -> float:
    """The definition in float64, relative to the largest magnitude."""
    a = np.concatenate([np.abs(np.asarray(g, dtype=np.float64)).ravel() for g in grads])
    m = a.max()
    return float(m * np.sum((a / m) ** p) ** (1.0 / p))


def _ref_step_with_coef(ref_ps, coef: float) -> None:
    for q in ref_ps:
        q.grad.mul_(coef)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_type", ODD_NORMS)
def test_any_finite_order_gives_a_finite_norm_torch_front(norm_type: float, dtype) -> None:
    ps, qs = _params((dtype,) * 3), _params((dtype,) * 3)
    opt = fo_torch.SGD(ps, lr=0.1)
    ref = torch.optim.SGD(qs, lr=0.1, foreach=False)
    _grads(ps, 0)
    _grads(qs, 0)
    want = _reference_norm([q.grad for q in qs], norm_type)
    got = opt.clip_grad_norm_(1.0, norm_type=norm_type)
    assert math.isfinite(float(got))
    torch.testing.assert_close(float(got), want, **_tol(dtype))
    if norm_type in TORCH_FINITE:
        rs = _params((dtype,) * 3)
        _grads(rs, 0)
        theirs = torch.nn.utils.clip_grad_norm_(rs, 1.0, norm_type)
        torch.testing.assert_close(got, theirs, **_tol(dtype))
    # the clip the next step applies: torch.optim's step on grads scaled by the same factor
    coef = min(1.0, 1.0 / (want + 1e-6))
    assert coef < 1.0
    _ref_step_with_coef(qs, coef)
    opt.step()
    ref.step()
    for a, b in zip(ps, qs):
        torch.testing.assert_close(a.detach(), b.detach(), **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", ODD_NORMS)
def test_any_finite_order_gives_a_finite_norm_array_front(norm_type: float, dtype) -> None:
    qs = _params((torch.float64,) * 3)
    _grads(qs, 0)
    grads = [q.grad.numpy().astype(dtype) for q in qs]
    ws = [q.detach().numpy().astype(dtype) for q in qs]
    opt = fastoptim.SGD(ws, lr=0.1)
    want = _reference_norm(grads, norm_type)
    got = opt.clip_grad_norm_(grads, 1.0, norm_type=norm_type)
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)
    if norm_type in TORCH_FINITE:
        tq = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
        for q, g in zip(tq, grads):
            q.grad = torch.from_numpy(g.copy())
        assert got == pytest.approx(float(torch.nn.utils.clip_grad_norm_(tq, 1.0, norm_type)),
                                    rel=1e-5)
    coef = min(1.0, 1.0 / (want + 1e-6))
    expected = [w - 0.1 * (g * dtype(coef)) for w, g in zip(ws, grads)]
    opt.step(grads)
    for w, e in zip(ws, expected):
        np.testing.assert_allclose(w, e, rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1e300, 3.0])
def test_float64_grads_whose_powers_overflow_or_underflow(norm_type: float) -> None:
    """float64 grads near 1e200 (squares overflow) and near 1e-170 (squares underflow): the
    order-2 norm too is finite and right, where an unscaled sum says inf or 0."""
    for scale in (1e200, 1e-170):
        g = np.array([3.0, -4.0, 1.0, 0.5]) * scale
        opt = fastoptim.SGD([np.zeros(4)], lr=0.1)
        got = opt.clip_grad_norm_([g], 1.0, norm_type=norm_type)
        assert got == pytest.approx(_reference_norm([g], norm_type), rel=1e-12)
        p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        p.grad = torch.from_numpy(g.copy())
        fo = fo_torch.SGD([p], lr=0.1)
        assert float(fo.clip_grad_norm_(1.0, norm_type)) == got


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("norm_type", ODD_NORMS)
def test_odd_orders_with_nonfinite_grads_as_before(norm_type: float, bad: float) -> None:
    """An inf grad makes the norm inf, a NaN one NaN (torch's answer too), on both fronts."""
    ps = _params((torch.float32,) * 3)
    _grads(ps, 0)
    ps[2].grad[1, 1, 0] = bad
    opt = fo_torch.SGD(ps, lr=0.1)
    got = float(opt.clip_grad_norm_(1.0, norm_type))
    arr = fastoptim.SGD([p.detach().numpy().copy() for p in ps], lr=0.1)
    got_array = arr.clip_grad_norm_([p.grad.numpy() for p in ps], 1.0, norm_type)
    for value in (got, got_array):
        assert math.isnan(value) if math.isnan(bad) else value == math.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        arr.clip_grad_norm_([p.grad.numpy() for p in ps], 1.0, norm_type,
                            error_if_nonfinite=True)


# ---- clip + step against torch -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", RULES)
def test_clip_then_step_matches_torch(rule: str, dtype: torch.dtype) -> None:
    ref_ps, fo_ps = _params((dtype,) * 3), _params((dtype,) * 3)
    ref = reference_class(rule)(ref_ps, **RICH[rule])
    fo = getattr(fo_torch, rule)(fo_ps, **RICH[rule])
    for k in range(50):
        _grads(ref_ps, k, none_at=k % 7 if k % 5 == 0 else None)
        _grads(fo_ps, k, none_at=k % 7 if k % 5 == 0 else None)
        norm_type = NORMS[k % len(NORMS)]
        want = torch.nn.utils.clip_grad_norm_(ref_ps, 2.0, norm_type=norm_type)
        got = fo.clip_grad_norm_(2.0, norm_type=norm_type)
        torch.testing.assert_close(got, want, **_tol(dtype))
        ref.step()
        fo.step()
    tol = dict(rtol=1e-10, atol=0) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(fo_ps, ref_ps):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


@pytest.mark.parametrize("rule", ["SGD", "Adam", "RMSprop"])
def test_array_front_clip_then_step_matches_torch(rule: str) -> None:
    ref_ps = _params((torch.float64,) * 3)
    ws = [p.detach().numpy().copy() for p in ref_ps]
    ref = reference_class(rule)(ref_ps, **RICH[rule])
    fo = getattr(fastoptim, rule)(ws, **RICH[rule])
    for k in range(50):
        _grads(ref_ps, k)
        grads = [p.grad.numpy().copy() for p in ref_ps]
        torch.nn.utils.clip_grad_norm_(ref_ps, 2.0)
        fo.clip_grad_norm_(grads, 2.0)
        ref.step()
        fo.step(grads)
    for a, b in zip(ws, ref_ps):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=0)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(max_norm=-1.0), dict(max_norm=float("nan")),
                                 dict(norm_type=0), dict(norm_type=-2.0),
                                 dict(norm_type="fro"), dict(norm_type=float("nan"))])
def test_bad_clip_arguments_change_nothing(bad: dict) -> None:
    ps = _params()
    opt = fo_torch.Adam(ps, lr=0.1)
    _grads(ps, 0)
    kwargs = {"max_norm": 1.0, **bad}
    with pytest.raises((ValueError, TypeError)):
        opt.clip_grad_norm_(**kwargs)
    twin_ps = _params()
    twin = fo_torch.Adam(twin_ps, lr=0.1)
    _grads(twin_ps, 0)
    opt.step()
    twin.step()
    for a, b in zip(ps, twin_ps):  # no clip was left pending
        assert torch.equal(a, b)
    ws = [np.ones(3)]
    arr = fastoptim.Adam(ws)
    with pytest.raises((ValueError, TypeError)):
        arr.clip_grad_norm_([np.ones(3)], **kwargs)
    assert "_clip_coef" not in arr.__dict__


def test_clip_with_no_grads_is_torchs_zero_norm() -> None:
    ps = _params()
    opt = fo_torch.Adam(ps)
    got = opt.clip_grad_norm_(1.0)
    want = torch.nn.utils.clip_grad_norm_(ps, 1.0)
    assert got.dtype == want.dtype and float(got) == float(want) == 0.0
    arr = fastoptim.Adam([np.ones(3)])
    assert arr.clip_grad_norm_([None], 1.0) == 0.0


@pytest.mark.parametrize("front", ["torch", "array"])
def test_nonfinite_norm_with_error_if_nonfinite_changes_nothing(front: str) -> None:
    ps = _params((torch.float32,) * 3)
    _grads(ps, 0)
    ps[1].grad[3] = float("inf")
    if front == "torch":
        opt = fo_torch.Adam(ps)
        with pytest.raises(RuntimeError, match="non-finite"):
            opt.clip_grad_norm_(1.0, error_if_nonfinite=True)
        assert "_fastoptim_clip" not in opt.__dict__
        assert math.isinf(float(opt.clip_grad_norm_(1.0)))  # without the flag: like torch
    else:
        opt = fastoptim.Adam([p.detach().numpy().copy() for p in ps])
        with pytest.raises(RuntimeError, match="non-finite"):
            opt.clip_grad_norm_([p.grad.numpy() for p in ps], 1.0, error_if_nonfinite=True)
        assert "_clip_coef" not in opt.__dict__


# ---- GradScaler --------------------------------------------------------------------------------

def _amp_run(make_opt, clip: str | None, inf_steps: set[int], steps: int = 16):
    """A small model trained under fp16 autocast on CPU with GradScaler; infs/NaNs injected into
    one grad at `inf_steps`. clip: None, "torch" (torch.nn.utils.clip_grad_norm_) or "fused"
    (opt.clip_grad_norm_), after scaler.unscale_(opt)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = make_opt(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=4)
    gen = torch.Generator().manual_seed(1)
    history = []
    for k in range(steps):
        x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 1, generator=gen)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        if k in inf_steps:
            model[0].weight.grad[1, 2] = float("inf") if k % 2 else float("nan")
        if clip == "two-pass":  # no unscale_: the clip's pass checks for infs, the step unscales
            opt.clip_grad_norm_(0.5, grad_scaler=scaler)
        elif clip is not None:
            scaler.unscale_(opt)
            if clip == "torch":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            else:
                opt.clip_grad_norm_(0.5)
        scaler.step(opt)
        scaler.update()
        history.append(([p.detach().clone() for p in model.parameters()],
                        {i: {k2: v.clone() for k2, v in opt.state[p].items()}
                         for i, p in enumerate(model.parameters()) if p in opt.state},
                        scaler.get_scale()))
    return history


# Centered RMSprop with momentum amplifies float32 rounding on this model even without AMP
# (sqrt of square_avg - grad_avg**2 near zero): the AMP runs use plain RMSprop with momentum.
AMP_OPTS = {**RICH, "RMSprop": dict(lr=0.01, momentum=0.5, weight_decay=0.01)}


@pytest.mark.parametrize("clip", [None, "fused", "two-pass"])
@pytest.mark.parametrize("rule", RULES)
def test_gradscaler_matches_torch_step_for_step(rule: str, clip: str | None, monkeypatch) -> None:
    inf_steps = {0, 3, 4, 9}
    opts = AMP_OPTS[rule]
    want = _amp_run(lambda ps: reference_class(rule)(ps, **opts),
                    None if clip is None else "torch", inf_steps)
    torch_passes = []
    real = torch._amp_foreach_non_finite_check_and_unscale_

    def counting(*args, **kwargs):
        torch_passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", counting)
    got = _amp_run(lambda ps: getattr(fo_torch, rule)(ps, **opts), clip, inf_steps)
    if clip == "two-pass":  # torch's unscale/inf-check pass never ran
        assert not torch_passes
    for k, ((gp, gs, gscale), (wp, ws, wscale)) in enumerate(zip(got, want)):
        assert gscale == wscale, f"step {k}: the scaler saw different infs"
        # float32 grads from a model: rounding differences feed back into later grads, so
        # the model-training tolerance of test_torch_front.py
        for a, b in zip(gp, wp):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert gs.keys() == ws.keys()
        for i in ws:
            for key in ws[i]:
                torch.testing.assert_close(gs[i][key].double(), ws[i][key].double(),
                                           rtol=1e-4, atol=1e-5)
        if k in inf_steps and k > 0:  # a skipped step changes nothing, bit for bit
            prev_p, prev_s, _ = got[k - 1]
            assert all(torch.equal(a, b) for a, b in zip(gp, prev_p))
            assert gs.keys() == prev_s.keys()
            for i in gs:
                assert all(torch.equal(gs[i][key], prev_s[i][key]) for key in gs[i])
    if rule != "Adagrad":  # torch.optim.Adagrad makes its state in the constructor
        assert not got[0][1], "a skipped first step allocated state"


@pytest.mark.parametrize("dtype", [torch.bfloat16])  # float16 grads: GradScaler refuses them
def test_half_precision_clip_and_scaler_fall_back_to_torch(dtype: torch.dtype) -> None:
    """16-bit grads (bfloat16 params, stepped by the fused kernels): clip_grad_norm_(grad_scaler=)
    is torch's unscale_ + clip (the fused norm reads float32/float64 grads only), so the whole
    sequence equals scaler.unscale_ + torch.nn.utils.clip_grad_norm_ + the same fused step."""
    results = []
    for fused_clip in (False, True):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 12).to(dtype))
        opt = fo_torch.SGD([p], lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        scaler.scale(torch.ones(()))
        for k in range(4):
            p.grad = (torch.cos(torch.arange(12.0) * (k + 1)) * 4.0).to(dtype)
            if fused_clip:
                norm = opt.clip_grad_norm_(0.5, grad_scaler=scaler)
            else:
                scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_([p], 0.5)
            scaler.step(opt)
            scaler.update()
        results.append((p.detach().clone(), float(norm)))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert not torch.equal(results[0][0], torch.linspace(-1, 1, 12).to(dtype))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_complex_grads_norm_matches_torch(norm_type: float) -> None:
    """Order 2 is the real view's norm (fused); other orders use |z| (torch's clip)."""
    def params():
        g = torch.Generator().manual_seed(4)
        return [torch.nn.Parameter(torch.randn(6, 5, dtype=torch.complex128, generator=g)),
                torch.nn.Parameter(torch.randn(7, dtype=torch.float64, generator=g))]

    ps, qs = params(), params()
    for group in (ps, qs):
        for i, p in enumerate(group):
            p.grad = torch.ones_like(p) * (1.5 + i) + (1j if p.is_complex() else 0)
    opt = fo_torch.Adam(ps)
    got = opt.clip_grad_norm_(1.0, norm_type)
    want = torch.nn.utils.clip_grad_norm_(qs, 1.0, norm_type)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    opt.step()
    ref = torch.optim.Adam(qs, foreach=False)
    ref.step()
    for a, b in zip(ps, qs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=0)
