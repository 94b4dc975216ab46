"""What a hostile user may do at 0.2's new surfaces (issue 16): state tensors resized or freed
in place, sparse grads with indices outside the param, a pending clip meeting other grads,
param groups or a second clip. Each case: torch.optim's result, or a clear error with every
param and state tensor unchanged (full copies compared)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastoptim  # noqa: E402
import fastoptim.torch as fo_torch  # noqa: E402
from _support import REGISTRY, RICH, RULES, reference_class  # noqa: E402

# each rule's state tensors: its slots (moments, Schedule-Free's copy z of the param)
STATE_KEYS = {rule: [name for name, _ in info["slots"]] for rule, info in REGISTRY.items()}


def _snapshot(params, opt, skip: tuple = ()) -> tuple:
    """Copies of every param and state entry (but ``skip``'s (id(param), key) entries: torch
    itself crashes cloning a tensor whose storage was freed)."""
    return ([p.detach().clone() for p in params],
            {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                     for k, v in opt.state.get(p, {}).items() if (id(p), k) not in skip}
             for p in params})


def _assert_unchanged(before: tuple, params, opt, skip: tuple = ()) -> None:
    ps, states = before
    del skip  # left out of the snapshot already
    for a, b in zip(ps, params):
        assert torch.equal(a, b.detach()), "a param changed"
    for p in params:
        for k, v in states[id(p)].items():
            now = opt.state[p][k]
            if isinstance(v, torch.Tensor):
                if v.is_sparse:
                    v, now = v.to_dense(), now.to_dense()
                assert torch.equal(v, now), k
            else:
                assert v == now, k


def _model(rule: str, dtype=torch.float32, **kw):
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(300, dtype=dtype, generator=g)),
              torch.nn.Parameter(torch.randn(7, 5, dtype=dtype, generator=g))]
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, dtype=dtype, generator=g) * (i + 1)
    opt = getattr(fo_torch, rule)(params, **{**RICH[rule], **kw})
    return params, opt


# ---- 1. state tensors resized in place ---------------------------------------------------------

def _state_tensors(opt, p, rule: str) -> list[str]:
    keys = [k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor) and v.numel() > 1]
    assert set(keys) <= set(STATE_KEYS[rule]), f"{rule}: {keys} are not all its slots"
    return keys


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("how", ["resize_big", "storage_zero", "storage_grow"])
def test_state_tensor_resized_in_place_is_noticed(rule: str, how: str) -> None:
    params, opt = _model(rule)
    opt.step()
    keys = _state_tensors(opt, params[0], rule)
    if not keys:
        pytest.skip(f"{rule} with these options keeps no state tensor")
    for key in keys:
        params, opt = _model(rule)
        opt.step()
        t = opt.state[params[0]][key]
        if how == "resize_big":
            t.resize_(2_000_000)
        elif how == "storage_zero":
            t.untyped_storage().resize_(0)
        else:  # the storage reallocated (same size in elements, new address)
            t.untyped_storage().resize_(t.untyped_storage().nbytes() * 4)
        before = _snapshot(params, opt, skip=((id(params[0]), key),))
        if how == "storage_grow":
            # still the same shape and its memory is whole: the step follows it there
            opt.step()
            ref_params, ref = _model(rule)
            ref.step()
            ref.step()
            for a, b in zip(params, ref_params):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
            continue
        with pytest.raises(RuntimeError, match=rf"param 0: state '{key}'"):
            opt.step()
        _assert_unchanged(before, params, opt, skip=((id(params[0]), key),))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_copy_resized_in_place_is_noticed(dtype: torch.dtype) -> None:
    params, opt = _model("AdamW", dtype=dtype, master_weights=True)
    opt.step()
    opt.state[params[1]]["master_param"].untyped_storage().resize_(0)
    before = _snapshot(params, opt, skip=((id(params[1]), "master_param"),))
    with pytest.raises(RuntimeError, match="param 1: state 'master_param' has no memory"):
        opt.step()
    _assert_unchanged(before, params, opt, skip=((id(params[1]), "master_param"),))
    params, opt = _model("AdamW", dtype=dtype, master_weights=True)
    opt.step()
    opt.state[params[0]]["master_param"].resize_(5_000_000)
    with pytest.raises(RuntimeError, match="param 0: state 'master_param' has shape"):
        opt.step()


@pytest.mark.parametrize("rule", ["Adam", "NAdam"])
def test_step_counter_resized_or_swapped_is_noticed(rule: str) -> None:
    params, opt = _model(rule)
    opt.step()
    opt.state[params[0]]["step"].untyped_storage().resize_(0)
    before = _snapshot(params, opt, skip=((id(params[0]), "step"),))
    with pytest.raises(RuntimeError, match="param 0: state 'step' has no memory"):
        opt.step()
    _assert_unchanged(before, params, opt, skip=((id(params[0]), "step"),))
    # a counter whose .data is swapped: the step counts the new one, as torch's would
    params, opt = _model(rule)
    ref_params, ref = _model(rule)
    for o, ps in ((opt, params), (ref, ref_params)):
        o.step()
        o.state[ps[0]]["step"].data = torch.tensor(5.0)
        o.step()
    assert float(opt.state[params[0]]["step"]) == 6.0
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_state_data_swapped_is_followed_like_torch() -> None:
    params, opt = _model("Adam")
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for a, b in zip(ref_params, params):
        a.grad = b.grad.clone()
    ref = torch.optim.Adam(ref_params, foreach=False, **RICH["Adam"])
    for o, ps in ((opt, params), (ref, ref_params)):
        o.step()
        o.state[ps[0]]["exp_avg"].data = torch.full((300,), 0.25)
        o.step()
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt.state[params[0]]["exp_avg"], ref.state[ref_params[0]]["exp_avg"])


# ---- 2. sparse grads with indices outside the param --------------------------------------------

def _bad_sparse(rows: list[int], n: int = 10, width: int = 3) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_coo_tensor(torch.tensor([rows]), torch.ones(len(rows), width),
                                       (n, width), check_invariants=False)


@pytest.mark.parametrize("opts", [("Adagrad", {}), ("SGD", {"lr": 0.1}),
                                  ("SGD", {"lr": 0.1, "momentum": 0.9})],
                         ids=lambda o: f"{o[0]}-{o[1]}")
@pytest.mark.parametrize("rows", [[0, 10], [-1, 2], [3, 1 << 40], [-(1 << 40)]])
def test_sparse_grad_outside_the_param_is_an_index_error(opts, rows) -> None:
    rule, kw = opts
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = getattr(fo_torch, rule)(emb.parameters(), **kw)
    good = torch.sparse_coo_tensor(torch.tensor([[1, 2]]), torch.ones(2, 3), (10, 3))
    emb.weight.grad = good
    opt.step()
    emb.weight.grad = _bad_sparse(rows)
    before = _snapshot([emb.weight], opt)
    with pytest.raises(IndexError, match="param 0: its sparse grad has index"):
        opt.step()
    _assert_unchanged(before, [emb.weight], opt)


def test_sparse_adagrad_weight_decay_raises_before_counting() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    ref_emb = copy.deepcopy(emb)
    opt = fo_torch.Adagrad(emb.parameters(), weight_decay=0.1)
    ref = torch.optim.Adagrad(ref_emb.parameters(), weight_decay=0.1)
    for e in (emb, ref_emb):
        e.weight.grad = torch.sparse_coo_tensor(torch.tensor([[1, 2]]), torch.ones(2, 3), (10, 3))
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible") as mine:
        opt.step()
    with pytest.raises(RuntimeError) as theirs:
        ref.step()
    assert str(mine.value) == str(theirs.value)
    assert float(ref.state[ref_emb.weight]["step"]) == 1.0  # torch counted the failed step
    assert float(opt.state[emb.weight]["step"]) == 0.0  # fastoptim changed nothing


# ---- 5. a pending clip applies only to the grads it measured -----------------------------------

def _pair(rule: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    ref_model = copy.deepcopy(model)
    kw = RICH[rule]
    opt = getattr(fo_torch, rule)(model.parameters(), **kw)
    ref = reference_class(rule)(ref_model.parameters(), **kw)
    return (model, opt, lambda ms, mn, p=2.0: opt.clip_grad_norm_(mn, p)), \
        (ref_model, ref, lambda ms, mn, p=2.0: torch.nn.utils.clip_grad_norm_(ms.parameters(),
                                                                            mn, p))


def _backward(model, k: float) -> None:
    (model(torch.linspace(-1, 1, 12).reshape(3, 4) * k) ** 2).sum().backward()


def _same(a, b, rtol=2e-5, atol=1e-6) -> None:
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=atol)


SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def zero_grad_then_new_backward(m, opt, clip):
    _backward(m, 1.0)
    clip(m, 0.1)
    opt.zero_grad()
    _backward(m, 2.0)
    opt.step()


@scenario
def zero_grad_zeros_then_new_backward(m, opt, clip):
    _backward(m, 1.0)
    clip(m, 0.1)
    opt.zero_grad(set_to_none=False)
    _backward(m, 2.0)
    opt.step()


@scenario
def module_zero_grad_then_new_backward(m, opt, clip):
    _backward(m, 1.0)
    clip(m, 0.1)
    m.zero_grad()  # set_to_none: new grad tensors
    _backward(m, 2.0)
    opt.step()


@scenario
def one_grad_replaced(m, opt, clip):
    _backward(m, 1.0)
    clip(m, 0.1)
    first = next(m.parameters())
    first.grad = torch.full_like(first, 0.5)
    opt.step()


@scenario
def group_added_after_clip(m, opt, clip):
    _backward(m, 1.0)
    clip(m, 0.1)
    extra = torch.nn.Parameter(torch.linspace(-1, 1, 5))
    extra.grad = torch.full((5,), 3.0)
    opt.add_param_group({"params": [extra]})
    opt.step()
    return extra.detach().clone()


@scenario
def second_clip_composes(m, opt, clip):
    _backward(m, 1.0)
    first = clip(m, 0.5)
    second = clip(m, 0.1)
    opt.step()
    return torch.tensor([float(first), float(second)])


@scenario
def second_clip_other_norm(m, opt, clip):
    _backward(m, 1.0)
    first = clip(m, 0.5, 1.0)
    second = clip(m, 0.2, float("inf"))
    opt.step()
    return torch.tensor([float(first), float(second)])


@scenario
def clip_then_two_steps(m, opt, clip):
    _backward(m, 1.0)
    clip(m, 0.1)
    opt.step()
    opt.step()  # the same grads, not clipped again (torch's clip rewrote them once)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("rule", ["Adam", "SGD", "Adagrad"])
def test_pending_clip_follows_torch(rule: str, name: str) -> None:
    (m, opt, clip), (rm, ref, ref_clip) = _pair(rule)
    got = SCENARIOS[name](m, opt, clip)
    want = SCENARIOS[name](rm, ref, ref_clip)
    _same(m, rm)
    if want is not None:
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6)


def test_grad_modified_in_place_after_clip_is_an_error() -> None:
    (m, opt, clip), _ = _pair("Adam")
    _backward(m, 1.0)
    clip(m, 0.1)
    next(m.parameters()).grad.mul_(2.0)
    before = _snapshot(list(m.parameters()), opt)
    with pytest.raises(RuntimeError, match="param 0: its grad was modified in place after "
                                           "clip_grad_norm_"):
        opt.step()
    _assert_unchanged(before, list(m.parameters()), opt)


def test_clip_with_grad_scaler_without_scaler_step_leaves_nothing_stale() -> None:
    (m, opt, _), (rm, ref, _) = _pair("Adam")
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    scaler.scale((m(torch.ones(3, 4)) ** 2).sum()).backward()
    ref_scaler.scale((rm(torch.ones(3, 4)) ** 2).sum()).backward()
    opt.clip_grad_norm_(0.1, grad_scaler=scaler)
    ref_scaler.unscale_(ref)
    torch.nn.utils.clip_grad_norm_(rm.parameters(), 0.1)
    # no scaler.step: the user starts over with plain (unscaled) grads and a plain step
    for model in (m, rm):
        model.zero_grad()
        _backward(model, 1.5)
    opt.step()
    ref.step()
    _same(m, rm)


def test_array_front_pending_clip_applies_to_its_grads_only() -> None:
    w = np.linspace(-1, 1, 6).astype(np.float32)
    w_ref = w.copy()
    g = np.full(6, 3.0, np.float32)
    opt = fastoptim.SGD([w], lr=1.0)
    ref = fastoptim.SGD([w_ref], lr=1.0)
    opt.clip_grad_norm_([g], 1.0)
    opt.step([g.copy()])  # another buffer: read as it is
    ref.step([g])
    np.testing.assert_array_equal(w, w_ref)
    a, b = np.ones(3, np.float32), np.ones(3, np.float32)
    two = fastoptim.SGD([a, b], lr=1.0)
    ga, gb = np.full(3, 2.0, np.float32), np.full(3, 4.0, np.float32)
    two.clip_grad_norm_([ga, gb], 1.0)
    before = (a.copy(), b.copy())
    with pytest.raises(ValueError, match="param 1: its grad is not one clip_grad_norm_ measured"):
        two.step([ga, gb.copy()])
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])
    two.step([ga, gb])  # the measured grads: clipped
    norm = float(np.sqrt(3 * 4 + 3 * 16))
    np.testing.assert_allclose(a, 1 - 2 / (norm + 1e-6), rtol=1e-6)
