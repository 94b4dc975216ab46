"""The references of the rules torch.optim lacks (tests/references.py) against the official
implementations the registry names, wherever they install: the same params and state, bit for
bit, over the rule's option grid, in float32 and float64 (the dtypes the official implementation
computes in: a reference's ``official_dtypes``). Every other test compares fastoptim with
tests/references.py, so this is what ties fastoptim to the official implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _support import (  # noqa: E402
    GRIDS,
    REGISTRY,
    RICH,
    has_torch_reference,
    official_class,
    ready_to_step,
)

import references  # noqa: E402

OWN_REFERENCE = [rule for rule in REGISTRY if not has_torch_reference(rule)]


def test_every_rule_torch_lacks_has_a_reference() -> None:
    for rule in OWN_REFERENCE:
        assert hasattr(references, rule), f"tests/references.py has no {rule}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rule", OWN_REFERENCE)
def test_reference_is_the_official_implementation_bit_for_bit(rule: str, dtype) -> None:
    reference = getattr(references, rule)
    if dtype not in getattr(reference, "official_dtypes", (dtype,)):
        pytest.skip(f"{REGISTRY[rule]['reference']} does not compute in {dtype}")
    official = official_class(rule)
    for options in [RICH[rule], *GRIDS[rule]]:
        gen = torch.Generator().manual_seed(7)
        init = [torch.randn(s, generator=gen, dtype=dtype) for s in ((17,), (3, 5))]
        ours = [torch.nn.Parameter(p.clone()) for p in init]
        theirs = [torch.nn.Parameter(p.clone()) for p in init]
        a = ready_to_step(reference(ours, **options), rule)
        b = ready_to_step(official(theirs, **options), rule)
        for step in range(50):
            for x, y in zip(ours, theirs):
                g = torch.randn(x.shape, generator=gen, dtype=dtype)
                if step == 3:  # an exact zero and a NaN-free sign(0) case
                    g[0] = 0.0
                x.grad, y.grad = g.clone(), g.clone()
            a.step()
            b.step()
        for x, y in zip(ours, theirs):
            assert torch.equal(x, y), (rule, options)
        # without empty states: schedulefree's train() leaves one per param it visits
        sa, sb = ({k: v for k, v in o.state_dict()["state"].items() if v} for o in (a, b))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert_same_entries(sa[k], sb[k], (rule, options))


def assert_same_entries(a: dict, b: dict, where: object) -> None:
    """Two param states alike: the same keys, tensors bit for bit (with dtype and shape),
    other values (an int step) equal and of one type, nested dicts alike."""
    assert a.keys() == b.keys(), where
    for name, value in b.items():
        if isinstance(value, dict):
            assert_same_entries(a[name], value, (where, name))
        elif isinstance(value, torch.Tensor):
            assert a[name].dtype == value.dtype and torch.equal(a[name], value), (where, name)
        else:
            assert type(a[name]) is type(value) and a[name] == value, (where, name)


@pytest.mark.parametrize("rule", OWN_REFERENCE)
def test_checkpoints_load_both_ways_with_the_official_implementation(rule: str) -> None:
    """fastoptim.torch's state_dict loads into the official implementation and the official
    one's into fastoptim.torch (the same keys: the official layout, e.g. bitsandbytes'
    stacked AdEMAMix buffers), the state loaded bit for bit, and each continues on the
    uninterrupted official trajectory (float32, which every official implementation computes
    in; fastoptim's float32 tolerance to its reference, rtol 1e-5 / atol 1e-6)."""
    import fastoptim.torch as fo_torch

    official = official_class(rule)
    options = RICH[rule]
    gen = torch.Generator().manual_seed(11)
    init = [torch.randn(s, generator=gen) for s in ((17,), (3, 5))]
    grads = [[torch.randn(p.shape, generator=gen) for p in init] for _ in range(10)]

    def run(opt, params, steps):
        for row in steps:
            for p, g in zip(params, row):
                p.grad = g.clone()
            opt.step()

    def make(cls, params):
        return ready_to_step(cls(params, **options), rule)

    whole = [torch.nn.Parameter(p.clone()) for p in init]
    run(make(official, whole), whole, grads)
    for first, second in ((getattr(fo_torch, rule), official),
                          (official, getattr(fo_torch, rule))):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        a = make(first, params)
        run(a, params, grads[:5])
        saved = a.state_dict()
        resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
        b = make(second, resumed)
        b.load_state_dict(saved)
        assert_same_entries(b.state_dict()["state"], saved["state"], (rule, first.__module__))
        run(b, resumed, grads[5:])
        for p, q in zip(resumed, whole):  # fastoptim's float32 tolerance to its reference
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{rule}, from {first.__module__}: {m}")


def _ademamix_algorithm_1(params: list[np.ndarray], grads: list[list[np.ndarray]],
                          lr: float = 1e-3, betas=(0.9, 0.999, 0.9999), alpha: float = 5.0,
                          t_alpha: int | None = None, t_beta3: int | None = None,
                          eps: float = 1e-8, weight_decay: float = 1e-2) -> list[np.ndarray]:
    """Algorithm 1 of the AdEMAMix paper as printed, in NumPy float64: bias-corrected m1 and nu,
    theta -= lr * ((m1_hat + alpha_t * m2) / (sqrt(nu_hat) + eps) + weight_decay * theta), with
    the schedulers of its section 3 (alpha linear, beta3 through the half-life's interpolation)."""
    beta1, beta2, beta3 = betas
    params = [p.copy() for p in params]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    nu = [np.zeros_like(p) for p in params]
    for t, row in enumerate(grads, start=1):
        alpha_t = min(t * alpha / t_alpha, alpha) if t_alpha else alpha
        beta3_t = beta3
        if t_beta3:
            s = t / t_beta3
            beta3_t = min(math.exp(math.log(beta1) * math.log(beta3)
                                   / ((1 - s) * math.log(beta3) + s * math.log(beta1))), beta3)
        for i, g in enumerate(row):
            m1[i] = beta1 * m1[i] + (1 - beta1) * g
            m2[i] = beta3_t * m2[i] + (1 - beta3_t) * g
            nu[i] = beta2 * nu[i] + (1 - beta2) * g * g
            m1_hat = m1[i] / (1 - beta1**t)
            nu_hat = nu[i] / (1 - beta2**t)
            params[i] = params[i] - lr * ((m1_hat + alpha_t * m2[i]) / (np.sqrt(nu_hat) + eps)
                                          + weight_decay * params[i])
    return params


@pytest.mark.parametrize("options", [RICH["AdEMAMix"], *GRIDS["AdEMAMix"]],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_ademamix_reference_is_algorithm_1_in_float64(options: dict) -> None:
    """bitsandbytes computes AdEMAMix in float32 only: in float64 the reference is held to the
    paper's Algorithm 1 (the same sums in another order: rtol 1e-10 after 50 steps)."""
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in ((17,), (3, 5))]
    grads = [[rng.standard_normal(p.shape) for p in init] for _ in range(50)]
    params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
    opt = references.AdEMAMix(params, **options)
    for row in grads:
        for p, g in zip(params, row):
            p.grad = torch.tensor(g)
        opt.step()
    for got, want in zip(params, _ademamix_algorithm_1(init, grads, **options)):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=0)
