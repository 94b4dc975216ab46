"""The rules with group state and transforms (Schedule-Free's AdamW and SGD): train()/eval() on
both fronts against the reference, the step refused in eval mode with schedulefree's exception,
the group state advanced once per group and step, the grads left as they were, the transforms
through a master copy, and state dicts loaded into schedulefree's optimizers and back,
continuing the same trajectory."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastoptim  # noqa: E402
import fastoptim.torch as fo_torch  # noqa: E402
from _support import REGISTRY, RICH, official_class, ready_to_step, tol  # noqa: E402

import references  # noqa: E402

TRANSFORMING = [rule for rule, info in REGISTRY.items() if info["transforms"]]
DTYPES = [torch.float32, torch.float64]
SHAPES = ((17,), (3, 5))


def _problem(dtype, steps: int = 12, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]
    return init, grads


def _step(opt, params, grads, front: str) -> None:
    if front == "array":
        opt.step([g.numpy().copy() for g in grads])
        return
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def _make(front: str, rule: str, init, **options):
    if front == "array":
        params = [p.numpy().copy() for p in init]
        return getattr(fastoptim, rule)(params, **options), params
    if front == "reference":
        params = [torch.nn.Parameter(p.clone()) for p in init]
        return getattr(references, rule)(params, **options), params
    params = [torch.nn.Parameter(p.clone()) for p in init]
    return getattr(fo_torch, rule)(params, **options), params


def _values(params) -> list[np.ndarray]:
    return [np.array(p.detach().numpy() if hasattr(p, "detach") else p, copy=True)
            for p in params]


def _assert_same(got, want, dtype, exact: bool) -> None:
    for a, b in zip(got, want):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, **tol(str(dtype).removeprefix("torch.")))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("front", ["torch", "array"])
@pytest.mark.parametrize("rule", TRANSFORMING)
def test_train_and_eval_follow_the_reference(rule: str, front: str, dtype) -> None:
    """Steps, eval(), train() (twice each: the second is a no-op), more steps: the params as the
    reference has them after each; SGD bit for bit (AdamW's sqrt is torch's inexact one)."""
    init, grads = _problem(dtype)
    ours, params = _make(front, rule, init, **RICH[rule])
    ref, ref_params = _make("reference", rule, init, **RICH[rule])
    exact = rule == "SGDScheduleFree"
    for opt in (ours, ref):
        opt.train()
    for k, row in enumerate(grads):
        _step(ours, params, row, front)
        _step(ref, ref_params, row, "torch")
        if k in (5, 9):
            for name in ("eval", "eval", "train", "train") if k == 5 else ("eval",):
                getattr(ours, name)()
                getattr(ref, name)()
                _assert_same(_values(params), _values(ref_params), dtype, exact)
                assert ours.param_groups[0]["train_mode"] == ref.param_groups[0]["train_mode"]
            if k == 9:
                ours.train()
                ref.train()
    _assert_same(_values(params), _values(ref_params), dtype, exact)
    for key in ("k", "weight_sum", "lr_max", "scheduled_lr"):
        assert ours.param_groups[0][key] == ref.param_groups[0][key], key
    assert type(ours.param_groups[0]["k"]) is int


@pytest.mark.parametrize("front", ["torch", "array"])
@pytest.mark.parametrize("rule", TRANSFORMING)
def test_a_step_in_eval_mode_raises_the_official_exception(rule: str, front: str) -> None:
    init, grads = _problem(torch.float32, steps=2)
    official = official_class(rule)([torch.nn.Parameter(p.clone()) for p in init])
    with pytest.raises(Exception) as want:  # noqa: PT011 - schedulefree raises Exception
        official.step()
    ours, params = _make(front, rule, init)
    ours.eval()  # as constructed (conftest.py trains the generic tests' optimizers)
    calls = []
    with pytest.raises(Exception) as got:  # noqa: PT011
        if front == "torch":
            ours.step(closure=lambda: calls.append(1))
        else:
            ours.step([g.numpy() for g in grads[0]])
    assert type(got.value) is Exception and str(got.value) == str(want.value)
    assert not calls  # refused before the closure runs, as schedulefree
    assert ours.param_groups[0]["k"] == 0
    _assert_same(_values(params), _values(init), torch.float32, exact=True)
    ours.train()
    _step(ours, params, grads[0], front)
    ours.eval()
    with pytest.raises(Exception, match="not in train mode"):  # noqa: PT011
        _step(ours, params, grads[1], front)


@pytest.mark.parametrize("front", ["torch", "array"])
@pytest.mark.parametrize("rule", TRANSFORMING)
def test_group_state_advances_once_per_group_even_without_grads(rule: str, front: str) -> None:
    init, grads = _problem(torch.float64, steps=3)
    if front == "array":
        params = [p.numpy().copy() for p in init]
        opt = getattr(fastoptim, rule)([{"params": [params[0]]}, {"params": [params[1]]}])
    else:
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opt = getattr(fo_torch, rule)([{"params": [params[0]]}, {"params": [params[1]]}])
    ref_params = [torch.nn.Parameter(p.clone()) for p in init]
    ref = getattr(references, rule)([{"params": [ref_params[0]]}, {"params": [ref_params[1]]}])
    for o in (opt, ref):
        o.train()
    for row in grads:
        row = [row[0], None]  # the second group never has a grad
        if front == "array":
            opt.step([row[0].numpy().copy(), None])
        else:
            params[0].grad, params[1].grad = row[0].clone(), None
            opt.step()
        ref_params[0].grad = row[0].clone()
        ref.step()
    for mine, theirs in zip(opt.param_groups, ref.param_groups):
        for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"):
            assert mine[key] == theirs[key], key
    assert opt.param_groups[1]["k"] == 3


@pytest.mark.parametrize("rule", TRANSFORMING)
def test_the_grad_is_left_as_it_was(rule: str) -> None:
    """schedulefree writes the normalised grad into p.grad; fastoptim reads it only."""
    init, grads = _problem(torch.float32, steps=1)
    opt, params = _make("torch", rule, init, weight_decay=0.1)
    opt.train()
    for p, g in zip(params, grads[0]):
        p.grad = g.clone()
    opt.step()
    for p, g in zip(params, grads[0]):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("front", ["torch", "array"])
@pytest.mark.parametrize("rule", TRANSFORMING)
def test_transforms_go_through_the_master_copy(rule: str, front: str) -> None:
    """bfloat16 params with float32 master copies: the masters follow the float32 run exactly
    (same bfloat16-exact params and grads), through eval() and train(), and each param is its
    master rounded to nearest."""
    init, grads = _problem(torch.float32, steps=6)
    init = [p.bfloat16().float() for p in init]
    grads = [[g.bfloat16().float() for g in row] for row in grads]
    plain, plain_params = _make("torch", rule, init, **RICH[rule])
    if front == "torch":
        params = [torch.nn.Parameter(p.bfloat16()) for p in init]
        half = getattr(fo_torch, rule)(params, master_weights=True, **RICH[rule])
    else:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        params = [p.numpy().astype(ml_dtypes.bfloat16) for p in init]
        half = getattr(fastoptim, rule)(params, master_weights=True, **RICH[rule])
    for o in (plain, half):
        o.train()
    for k, row in enumerate(grads):
        _step(plain, plain_params, row, "torch")
        if front == "torch":
            for p, g in zip(params, row):
                p.grad = g.bfloat16()
            half.step()
        else:
            half.step([g.numpy().astype(params[0].dtype) for g in row])
        if k == 3:
            plain.eval()
            half.eval()
            masters = [half.state[p if front == "torch" else i]["master_param"]
                       for i, p in enumerate(params)]
            for m, p, want in zip(masters, params, plain_params):
                m = torch.as_tensor(np.asarray(m))
                assert torch.equal(m, want.detach())
                got = p.detach().float() if front == "torch" else \
                    torch.from_numpy(np.asarray(p).astype(np.float32))
                assert torch.equal(got, want.detach().bfloat16().float())
            plain.train()
            half.train()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule", TRANSFORMING)
def test_state_dicts_load_both_ways_with_the_official_optimizer(rule: str, dtype) -> None:
    """schedulefree's state dict (after 6 steps and eval(), as one saves) loaded into
    fastoptim.torch, and fastoptim.torch's into schedulefree's: after train() and 6 more steps
    each pair is where schedulefree alone (foreach=False) gets."""
    official = official_class(rule)
    init, grads = _problem(dtype)
    exact = rule == "SGDScheduleFree"
    options = dict(RICH[rule], foreach=False)

    def run(first, second) -> list[np.ndarray]:
        a_params = [torch.nn.Parameter(p.clone()) for p in init]
        a = ready_to_step(first(a_params, **options), rule)
        for row in grads[:6]:
            _step(a, a_params, row, "torch")
        a.eval()
        saved = a.state_dict()
        b_params = [torch.nn.Parameter(p.detach().clone()) for p in a_params]
        b = second(b_params, **options)
        b.load_state_dict(saved)
        assert b.param_groups[0]["k"] == 6 and b.param_groups[0]["train_mode"] is False
        b.train()
        for row in grads[6:]:
            _step(b, b_params, row, "torch")
        return _values(b_params)

    want = run(official, official)
    _assert_same(run(official, getattr(fo_torch, rule)), want, dtype, exact)
    _assert_same(run(getattr(fo_torch, rule), official), want, dtype, exact)
