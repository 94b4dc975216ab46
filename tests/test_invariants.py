"""Property tests (hypothesis): lr=0 is a no-op, chunking invariance (a group stepped at once ==
each tensor stepped alone == a tensor stepped in pieces), maximize symmetry (maximize with g ==
minimize with -g), and agreement with torch.optim for random options and shapes."""

from __future__ import annotations

import fastoptim
import numpy as np
import pytest
from _support import (
    REGISTRY,
    HAVE_TORCH,
    RULES,
    Case,
    assert_close_runs,
    freeze,
    needs_torch,
    reference,
    run,
    short_steps,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

if HAVE_TORCH:
    import fastoptim.torch as fo_torch
    import torch

settings.register_profile(
    "fastoptim", deadline=None, max_examples=40, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("fastoptim")


def _unit(lo: float = 0.0, hi: float = 1.0) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def options(draw, rule: str, lr=None) -> dict:
    # lr small enough that params stay O(1) over the steps: float32's atol 1e-6 is about an ulp
    # there, and a param that cancels to ~0 from O(10) values would measure only rounding.
    lr = draw(_unit(1e-4, 0.1)) if lr is None else lr
    wd = draw(st.sampled_from([0.0, 0.01]) | _unit(0, 0.3))
    maximize = draw(st.booleans())
    if rule == "Lion":  # no maximize, no eps
        return dict(lr=lr / 10, betas=(draw(_unit(0, 1)), draw(_unit(0, 1))), weight_decay=wd)
    if rule == "AdEMAMix":  # no maximize; warm-ups off, mid-run or longer than the run
        warmup = st.sampled_from([None, 0, 3]) | st.integers(1, 100)
        return dict(lr=lr / 10, betas=(draw(_unit(0.01, 0.99)), draw(_unit(0, 0.999)),
                                       draw(_unit(0.01, 0.9999))),
                    alpha=draw(_unit(0, 10)), t_alpha=draw(warmup), t_beta3=draw(warmup),
                    eps=draw(st.sampled_from([1e-8, 1e-5, 1e-3])), weight_decay=wd)
    if rule == "AdamWScheduleFree":  # no maximize
        return dict(lr=lr, betas=(draw(_unit(0.01, 0.99)), draw(_unit(0, 0.999))),
                    weight_decay=wd, warmup_steps=draw(st.integers(0, 20)),
                    r=draw(_unit(0, 2)), weight_lr_power=draw(_unit(0, 2)))
    if rule == "SGDScheduleFree":
        return dict(lr=lr, momentum=draw(_unit(0.01, 0.99)), weight_decay=wd,
                    warmup_steps=draw(st.integers(0, 20)), r=draw(_unit(0, 2)),
                    weight_lr_power=draw(_unit(0, 2)))
    if rule == "SGD":
        nesterov = draw(st.booleans())
        momentum = draw(st.sampled_from([0.0, 0.9]) | _unit(0, 1))
        dampening = draw(st.sampled_from([0.0, 0.5]) | _unit(0, 1))
        if nesterov:
            momentum, dampening = max(momentum, 0.1), 0.0
        return dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=wd,
                    nesterov=nesterov, maximize=maximize)
    if rule == "Adagrad":
        return dict(lr=lr, lr_decay=draw(_unit(0, 0.2)), weight_decay=wd,
                    initial_accumulator_value=draw(_unit(0, 1)),
                    eps=draw(st.sampled_from([1e-10, 1e-6, 1e-3])), maximize=maximize)
    if rule == "Adadelta":
        return dict(lr=lr * 2, rho=draw(_unit(0, 1)), eps=draw(st.sampled_from([1e-6, 1e-3])),
                    weight_decay=wd, maximize=maximize)
    if rule == "RMSprop":
        return dict(lr=lr / 10, alpha=draw(_unit(0.5, 0.999)),
                    eps=draw(st.sampled_from([1e-8, 1e-4, 1e-2])), weight_decay=wd,
                    momentum=draw(st.sampled_from([0.0, 0.9]) | _unit(0, 0.95)),
                    centered=draw(st.booleans()), maximize=maximize)
    betas = (draw(_unit(0, 0.99)), draw(_unit(0, 0.999)))
    eps = draw(st.sampled_from([1e-8, 1e-5, 1e-3]))
    if rule == "Adamax":
        return dict(lr=lr / 10, betas=betas, eps=eps, weight_decay=wd, maximize=maximize)
    if rule == "NAdam":
        return dict(lr=lr / 10, betas=betas, eps=eps, weight_decay=wd,
                    momentum_decay=draw(st.sampled_from([0.0, 4e-3]) | _unit(0, 0.5)),
                    decoupled_weight_decay=draw(st.booleans()), maximize=maximize)
    if rule == "RAdam":
        # beta2 above 2/3 (rho_inf > 5) reaches the rectified branch; below, never
        betas = (betas[0], draw(st.sampled_from([0.9, 0.999, 0.6]) | _unit(0, 0.999)))
        return dict(lr=lr / 10, betas=betas, eps=eps, weight_decay=wd,
                    decoupled_weight_decay=draw(st.booleans()), maximize=maximize)
    if rule not in ("Adam", "AdamW"):
        raise KeyError(f"options: no strategy for {rule}")  # a new rule needs its own
    out = dict(lr=lr / 10, betas=betas, eps=eps, weight_decay=wd,
               amsgrad=draw(st.booleans()), maximize=maximize)
    if rule == "Adam":
        out["decoupled_weight_decay"] = draw(st.booleans())
    return out


@st.composite
def rule_and_options(draw, lr=None, maximize=False):
    """A rule (one with a maximize option when asked) and options for it."""
    rule = draw(st.sampled_from([r for r in RULES
                                 if not maximize or "maximize" in REGISTRY[r]["defaults"]]))
    return rule, draw(options(rule, lr=lr))


shapes_st = st.lists(
    st.one_of(st.integers(1, 40).map(lambda n: (n,)),
              st.tuples(st.integers(1, 9), st.integers(1, 9)),
              st.sampled_from([(1023,), (4097,), (16,), (17,)])),
    min_size=1, max_size=5).map(tuple)


def _steps(rule: str, opts: dict, params: list[np.ndarray], grads: list[list[np.ndarray]]):
    opt = getattr(fastoptim, rule)(params, **opts)
    for row in grads:
        opt.step(row)
    return opt


def _problem(shapes, dtype, steps, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


@given(ro=rule_and_options(lr=0.0), shapes=shapes_st, dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**16))
def test_lr_zero_is_a_noop(ro, shapes, dtype, seed) -> None:
    rule, opts = ro
    steps = short_steps(rule, 4)
    params, grads = _problem(shapes, dtype, steps, seed)
    before = [p.copy() for p in params]
    opt = _steps(rule, opts, params, grads)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    # the state did advance (lr=0 is not a skipped step)
    if REGISTRY[rule]["has_step"]:
        assert all(float(s["step"]) == steps for s in opt.state.values())
    if rule == "NAdam" and opts["betas"][0] > 0:
        assert all(float(s["mu_product"]) < 1.0 for s in opt.state.values())
    if not HAVE_TORCH:
        return
    # and the torch front agrees
    tparams = [torch.tensor(b, requires_grad=True) for b in before]
    topt = getattr(fo_torch, rule)(tparams, **opts)
    for row in grads:
        for p, g in zip(tparams, row):
            p.grad = torch.tensor(g)
        topt.step()
    for p, b in zip(tparams, before):
        np.testing.assert_array_equal(p.detach().numpy(), b)


@given(ro=rule_and_options(), shapes=shapes_st, dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**16), threads=st.sampled_from([1, 2]))
def test_chunking_invariance(ro, shapes, dtype, seed, threads, restore_threads) -> None:
    """One group of tensors == each tensor in its own optimizer == each tensor split in two
    views stepped as separate params: bit for bit."""
    fastoptim.set_num_threads(threads)
    rule, opts = ro
    params, grads = _problem(shapes, dtype, short_steps(rule, 5), seed)
    together = [p.copy() for p in params]
    _steps(rule, opts, together, grads)
    for k, p in enumerate(params):
        alone = p.copy()
        _steps(rule, opts, [alone], [[row[k]] for row in grads])
        np.testing.assert_array_equal(alone, together[k])
        flat = p.copy().reshape(-1)
        if flat.size >= 2:
            cut = flat.size // 3 + 1
            pieces = [flat[:cut], flat[cut:]]  # contiguous views of one array
            _steps(rule, opts, pieces,
                   [[row[k].reshape(-1)[:cut], row[k].reshape(-1)[cut:]] for row in grads])
            np.testing.assert_array_equal(flat.reshape(p.shape), together[k])


@given(ro=rule_and_options(maximize=True), shapes=shapes_st,
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_maximize_symmetry(ro, shapes, dtype, seed) -> None:
    rule, opts = ro
    assume("maximize" in REGISTRY[rule]["defaults"])  # Lion and AdEMAMix have none
    params, grads = _problem(shapes, dtype, short_steps(rule, 5), seed)
    a = [p.copy() for p in params]
    b = [p.copy() for p in params]
    _steps(rule, dict(opts, maximize=True), a, grads)
    _steps(rule, dict(opts, maximize=False), b, [[-g for g in row] for row in grads])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@needs_torch
@settings(max_examples=30)
@given(ro=rule_and_options(), shapes=shapes_st, dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**16), front=st.sampled_from(["array-numpy", "fastoptim.torch"]))
def test_random_options_match_torch(ro, shapes, dtype, seed, front) -> None:
    rule, opts = ro
    case = Case.single(rule, opts, shapes=shapes, dtype=dtype, steps=20, seed=seed)
    assert_close_runs(run(case, front), reference(case), dtype, front)


@settings(max_examples=15)
@given(ro=rule_and_options(), seed=st.integers(0, 2**16))
def test_levels_agree_on_random_options(ro, seed) -> None:
    rule, opts = ro
    shapes = ((33,), (4097,), (5, 3))
    params, grads = _problem(shapes, "float32", short_steps(rule, 3), seed)
    before = fastoptim.simd_level()
    results = []
    try:
        for level in fastoptim.available_simd_levels():
            fastoptim.set_simd_level(level)
            ps = [p.copy() for p in params]
            _steps(rule, opts, ps, grads)
            results.append(ps)
    finally:
        fastoptim.set_simd_level(before)
    for other in results[1:]:
        for x, y in zip(other, results[0]):
            np.testing.assert_array_equal(x, y)


def test_profile_is_loaded() -> None:
    assert settings.default.derandomize
    assert freeze({"b": 1, "a": 2}) == (("a", 2), ("b", 1))


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
