"""Bad input gets a clear error and nothing is lost: hyperparameters (torch's exact wording, both
fronts), bad grads/params on the array front (error names the param; every param and state
buffer untouched), mismatched state_dicts (both fronts)."""

from __future__ import annotations

import copy
import importlib
import inspect
import pickle

import fastoptim
import numpy as np
import pytest
from _support import (HAVE_TORCH, REGISTRY, RICH, RULES, SCALAR_STATE_KEYS,
                      has_torch_reference, needs_torch, reference_type, short_steps,
                      slot_entries)

if HAVE_TORCH:
    import fastoptim.torch as fo_torch
    import torch

BAD_HYPERPARAMETERS = {
    "SGD": [dict(lr=-0.1), dict(lr=-1), dict(lr=-1e-20),
            dict(momentum=-0.5), dict(weight_decay=-1e-3), dict(weight_decay=-2),
            dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1),
            dict(nesterov=True, momentum=-0.9)],
    "Adagrad": [dict(lr=-0.01), dict(lr_decay=-0.1), dict(weight_decay=-0.1),
                dict(initial_accumulator_value=-0.1), dict(eps=-1e-10), dict(eps=-2.5e-05),
                dict(lr_decay=-3)],
    "Adadelta": [dict(lr=-1.0), dict(rho=-0.1), dict(rho=1.5), dict(rho=1.0000001),
                 dict(eps=-1e-6), dict(weight_decay=-0.25)],
    "RMSprop": [dict(lr=-0.01), dict(eps=-1e-8), dict(momentum=-0.1), dict(weight_decay=-0.1),
                dict(alpha=-0.5), dict(alpha=-1e-300)],
    "Adam": [dict(lr=-1e-3), dict(lr=float("nan")), dict(eps=-1e-8), dict(betas=(1.0, 0.999)), dict(betas=(-0.1, 0.9)),
             dict(betas=(0.9, 1.0)), dict(betas=(0.9, -1e-3)), dict(betas=(1.5, 2.0)),
             dict(weight_decay=-0.1), dict(betas=(0.9, 1))],
    "AdamW": [dict(lr=-1e-3), dict(eps=-1e-8), dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)),
              dict(weight_decay=-0.01), dict(lr=float("-inf"))],
    "NAdam": [dict(lr=-1), dict(lr=float("nan")), dict(eps=-1e-8), dict(betas=(1.0, 0.999)),
              dict(betas=(-0.1, 0.9)), dict(betas=(0.9, 1.0)), dict(betas=(0.9, 1)),
              dict(weight_decay=-0.1), dict(momentum_decay=-1), dict(momentum_decay=-4e-3),
              dict(momentum_decay=float("nan")), dict(momentum_decay=-1e-300)],
    "RAdam": [dict(lr=-1), dict(lr=-1e-20), dict(eps=-1e-8), dict(betas=(1.0, 0.999)),
              dict(betas=(0.9, 1.0)), dict(betas=(0.9, 1)), dict(betas=(0.9, -1e-3)),
              dict(betas=(1.5, 2.0)), dict(weight_decay=-1), dict(weight_decay=float("nan"))],
    "Adamax": [dict(lr=-1), dict(lr=float("-inf")), dict(eps=-1e-8), dict(eps=float("nan")),
               dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(-0.5, 0.9)),
               dict(weight_decay=-0.1)],
    "Lion": [dict(lr=-1), dict(lr=float("nan")), dict(betas=(1.5, 0.9)), dict(betas=(0.9, -0.1)),
             dict(betas=(0.9, float("nan"))), dict(weight_decay=-1),
             dict(weight_decay=float("nan"))],
    "AdEMAMix": [dict(lr=-1), dict(lr=float("nan")), dict(eps=-1e-8),
                 dict(betas=(1.0, 0.999, 0.9999)), dict(betas=(0.9, 1.0, 0.9999)),
                 dict(betas=(0.9, 0.999, 1.0)), dict(betas=(0.9, 0.999, -0.1)),
                 dict(weight_decay=-0.1), dict(alpha=-1.0), dict(alpha=float("nan")),
                 dict(t_alpha=-1), dict(t_beta3=-10), dict(t_alpha=float("nan")),
                 dict(betas=(0.0, 0.999, 0.9999), t_beta3=100),
                 dict(betas=(0.9, 0.999, 0.0), t_beta3=100)],
    "AdamWScheduleFree": [dict(lr=-1), dict(lr=float("nan")), dict(eps=-1e-8),
                          dict(betas=(0.0, 0.999)), dict(betas=(1.0, 0.999)),
                          dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1),
                          dict(warmup_steps=-1), dict(warmup_steps=2.5)],
    # schedulefree's own checks (lr, weight_decay, momentum) and words
    "SGDScheduleFree": [dict(lr=-1), dict(weight_decay=-0.1), dict(momentum=0),
                        dict(momentum=1), dict(momentum=-0.5), dict(warmup_steps=-3)],
}
# a rule missing from the table fails tests/test_registry_coverage.py (not the collection here)
HYPER_CASES = [pytest.param(rule, kw, id=f"{rule}-{kw}") for rule in RULES
               for kw in BAD_HYPERPARAMETERS.get(rule, ())]


def _torch_message(rule: str, kw: dict) -> str:
    """torch's message; for a rule torch lacks (whose reference raises AssertionError or
    nothing), the torch front's, in torch's wording: "Invalid <what>: <value>"."""
    if has_torch_reference(rule):
        with pytest.raises(ValueError) as info:
            getattr(torch.optim, rule)([torch.zeros(2, requires_grad=True)], **kw)
        return str(info.value)
    with pytest.raises(ValueError) as info:
        getattr(fo_torch, rule)([torch.zeros(2, requires_grad=True)], **kw)
    module, _, name = REGISTRY[rule]["reference"].rpartition(".")
    try:
        getattr(importlib.import_module(module), name)([torch.zeros(2)], **kw)
    except ValueError as official:  # the official implementation's check: its words
        return str(official)
    except (ImportError, AssertionError):  # not installed; lion-pytorch asserts
        pass
    assert str(info.value).startswith("Invalid ")
    return str(info.value)


@needs_torch
@pytest.mark.parametrize(("rule", "kw"), HYPER_CASES)
def test_bad_hyperparameter_torch_front_same_message(rule: str, kw: dict) -> None:
    want = _torch_message(rule, kw)
    with pytest.raises(ValueError) as info:
        getattr(fo_torch, rule)([torch.zeros(2, requires_grad=True)], **kw)
    assert str(info.value) == want


@needs_torch
@pytest.mark.parametrize(("rule", "kw"), HYPER_CASES)
def test_bad_hyperparameter_array_front_same_message(rule: str, kw: dict) -> None:
    want = _torch_message(rule, kw)
    with pytest.raises(ValueError) as info:
        getattr(fastoptim, rule)([np.zeros(2)], **kw)
    assert str(info.value) == want


@needs_torch
@pytest.mark.parametrize("front", ["array", "torch"])
@pytest.mark.parametrize(("rule", "kw"), HYPER_CASES)
def test_bad_hyperparameter_set_mid_run(rule: str, kw: dict, front: str) -> None:
    """A bad value written into group 1 after some steps: step() raises ValueError with torch's
    wording, and neither group has changed (group 0 is valid and would be stepped first)."""
    want = _torch_message(rule, kw)
    if front == "array":
        params = [np.linspace(-1, 1, 6), np.linspace(0, 2, 5)]
        opt = getattr(fastoptim, rule)([{"params": [params[0]]}, {"params": [params[1]]}],
                                       lr=0.01)
        grads = [np.full(6, 0.5), np.full(5, -0.25)]

        def step():
            opt.step(grads)

        def snapshot():
            return [p.copy() for p in params], copy.deepcopy(opt.state)
    else:
        params = [torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64)),
                  torch.nn.Parameter(torch.linspace(0, 2, 5, dtype=torch.float64))]
        opt = getattr(fo_torch, rule)([{"params": [params[0]]}, {"params": [params[1]]}],
                                      lr=0.01)
        for p in params:
            p.grad = torch.full_like(p, 0.5)

        def step():
            opt.step()

        def snapshot():
            return [p.detach().clone() for p in params], copy.deepcopy(
                {i: dict(opt.state[p]) for i, p in enumerate(params) if p in opt.state})
    step()
    step()
    opt.param_groups[1].update(kw)
    before = snapshot()
    with pytest.raises(ValueError) as info:
        step()
    assert str(info.value) == want
    _assert_same_snapshot(snapshot(), before)


def _assert_same_snapshot(after, before) -> None:
    (p_after, s_after), (p_before, s_before) = after, before
    for a, b in zip(p_after, p_before):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert s_after.keys() == s_before.keys()
    for k in s_before:
        assert s_after[k].keys() == s_before[k].keys()
        for name in s_before[k]:
            np.testing.assert_array_equal(np.asarray(s_after[k][name]),
                                          np.asarray(s_before[k][name]), err_msg=name)


@pytest.mark.parametrize("rule", RULES)
def test_array_front_execution_flags(rule: str) -> None:
    """torch's execution flags on the array front: foreach, capturable and fused (those torch's
    signature has) are accepted and change nothing; differentiable=True is a ValueError naming
    it, in the constructor and in an added group (which is then not added)."""
    names = inspect.signature(getattr(fastoptim, rule)).parameters
    flags = {k: True for k in ("foreach", "capturable", "fused") if k in names}
    if not has_torch_reference(rule):
        # the reference's flags only (schedulefree's foreach, accepted and ignored)
        assert "differentiable" not in names
        return
    assert "foreach" in flags and "differentiable" in names
    w, ref = np.linspace(-1, 1, 9), np.linspace(-1, 1, 9)
    a = getattr(fastoptim, rule)([w], **RICH[rule], **flags)
    b = getattr(fastoptim, rule)([ref], **RICH[rule])
    for k in range(short_steps(rule, 3)):
        g = np.cos(np.arange(9.0) * (k + 1))
        a.step([g])
        b.step([g])
    np.testing.assert_array_equal(w, ref)
    with pytest.raises(ValueError, match="differentiable"):
        getattr(fastoptim, rule)([np.zeros(3)], differentiable=True)
    with pytest.raises(ValueError, match="differentiable"):
        a.add_param_group({"params": [np.zeros(3)], "differentiable": True})
    assert len(a.param_groups) == 1


def test_constructor_errors_match_torch() -> None:
    w = np.zeros(3)
    with pytest.raises(ValueError, match="^optimizer got an empty parameter list$"):
        fastoptim.Adam([])
    with pytest.raises(ValueError, match="^some parameters appear in more than one parameter "
                                         "group$"):
        fastoptim.Adam([{"params": [w]}, {"params": [w]}])
    with pytest.raises(ValueError, match="more than one parameter group"):
        fastoptim.SGD([w, w])
    with pytest.raises(TypeError, match="iterable"):
        fastoptim.Adam(w)


# ---- array front: bad grads and params ------------------------------------------------------


SHAPES = [(3, 4), (7,), (5,), (2, 2)]  # params 0, 1 in group 0; params 2, 3 in group 1


def _setup(rule: str, dtype=np.float32, bad_param: tuple[int, np.ndarray] | None = None):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    if bad_param is not None:
        params[bad_param[0]] = bad_param[1]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
    opt = getattr(fastoptim, rule)(groups, **RICH[rule])
    return params, opt


def _good_grads(dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _snapshot(params, opt):
    return [np.array(p, copy=True) for p in params], copy.deepcopy(opt.state)


def _bad_grads(kind: str, index: int) -> tuple[list, type, str]:
    grads: list = _good_grads()
    shape = SHAPES[index]
    if kind == "shape":
        grads[index] = np.zeros((int(np.prod(shape)) + 1,), np.float32)
        return grads, ValueError, "shape"
    if kind == "transposed-shape":
        if len(shape) == 1:
            other = (1, shape[0])
        elif shape[0] != shape[1]:
            other = shape[::-1]
        else:
            other = (1, shape[0] * shape[1])
        grads[index] = np.zeros(other, np.float32)  # same size, other shape
        return grads, ValueError, "shape"
    if kind == "dtype":
        grads[index] = grads[index].astype(np.float64)
        return grads, TypeError, "dtype"
    if kind == "int-grad":
        grads[index] = np.zeros(shape, np.int32)
        return grads, TypeError, ""
    if kind == "non-contiguous":
        big = np.zeros(tuple(2 * s for s in shape), np.float32)
        grads[index] = big[tuple(slice(None, None, 2) for _ in shape)]
        return grads, ValueError, "contiguous"
    if kind == "fortran-order":
        if len(shape) == 2 and min(shape) > 1:
            grads[index] = np.asfortranarray(np.zeros(shape, np.float32))
        else:
            grads[index] = np.zeros((2 * shape[0],) + shape[1:], np.float32)[::2]
        assert not grads[index].flags.c_contiguous
        return grads, ValueError, "contiguous"
    if kind == "not-an-array":
        grads[index] = "grad"
        return grads, TypeError, ""
    if kind == "byteswapped":
        grads[index] = grads[index].astype(">f4" if np.little_endian else "<f4")
        return grads, TypeError, ""
    raise KeyError(kind)


# (a float16 or bfloat16 grad of a float32 param is read as it is: tests/test_mixed_precision.py)
GRAD_KINDS = ["shape", "transposed-shape", "dtype", "int-grad", "non-contiguous",
              "fortran-order", "not-an-array", "byteswapped"]


@pytest.mark.parametrize("steps_before", [0, 3])
@pytest.mark.parametrize("index", [0, 1, 3])
@pytest.mark.parametrize("kind", GRAD_KINDS)
@pytest.mark.parametrize("rule", RULES)
def test_bad_grad_names_param_and_changes_nothing(rule: str, kind: str, index: int,
                                                 steps_before: int) -> None:
    """Index 3 sits in group 1, so group 0 is valid and would be stepped first; steps_before=0
    is the first step, when the state is being created."""
    params, opt = _setup(rule)
    twin_params, twin = _setup(rule)
    for _ in range(steps_before):
        opt.step(_good_grads())
        twin.step(_good_grads())
    before = _snapshot(params, opt)
    grads, exc, words = _bad_grads(kind, index)
    with pytest.raises(exc) as info:
        opt.step(grads)
    message = str(info.value)
    assert f"param {index}" in message, message
    assert words in message
    for other in set(range(4)) - {index}:
        assert f"param {other}" not in message
    _assert_same_snapshot(_snapshot(params, opt), before)
    # nothing lost: the optimizer continues exactly as one that never saw the bad step
    opt.step(_good_grads())
    twin.step(_good_grads())
    _assert_same_snapshot(_snapshot(params, opt), _snapshot(twin_params, twin))


@pytest.mark.parametrize("count", [0, 3, 5])
@pytest.mark.parametrize("rule", RULES)
def test_wrong_grad_count(rule: str, count: int) -> None:
    params, opt = _setup(rule)
    opt.step(_good_grads())
    before = _snapshot(params, opt)
    grads = (_good_grads() + _good_grads())[:count]
    with pytest.raises(ValueError, match=f"{count} grads for 4 params"):
        opt.step(grads)
    _assert_same_snapshot(_snapshot(params, opt), before)


def test_grads_must_be_a_list() -> None:
    _, opt = _setup("Adam")
    with pytest.raises(TypeError):
        opt.step(np.zeros(4))


def _bad_param(kind: str, index: int) -> tuple[np.ndarray, type, str]:
    shape = SHAPES[index]
    if kind == "int32":
        return np.zeros(shape, np.int32), TypeError, "dtype"
    if kind == "float16":
        return np.zeros(shape, np.float16), TypeError, "dtype"
    if kind == "read-only":
        p = np.zeros(shape, np.float32)
        p.setflags(write=False)
        return p, ValueError, "read-only"
    if kind == "non-contiguous":
        big = np.zeros(tuple(2 * s for s in shape), np.float32)
        return big[tuple(slice(None, None, 2) for _ in shape)], ValueError, "contiguous"
    if kind == "transposed":
        if len(shape) < 2:
            big = np.zeros((shape[0], 2), np.float32)
            return big[:, 0], ValueError, "contiguous"
        return np.zeros(shape[::-1], np.float32).T, ValueError, "contiguous"
    raise KeyError(kind)


PARAM_KINDS = ["int32", "float16", "read-only", "non-contiguous", "transposed"]


@pytest.mark.parametrize("steps_before", [0, 2])
@pytest.mark.parametrize("index", [0, 3])
@pytest.mark.parametrize("kind", PARAM_KINDS)
@pytest.mark.parametrize("rule", RULES)
def test_bad_param_names_param_and_changes_nothing(rule: str, kind: str, index: int,
                                                  steps_before: int) -> None:
    bad, exc, words = _bad_param(kind, index)
    params, opt = _setup(rule, bad_param=(index, bad))
    grads = _good_grads()
    skip_bad = [None if i == index else g for i, g in enumerate(grads)]
    for _ in range(steps_before):
        opt.step(skip_bad)  # the bad param has no grad yet: the others step fine
    before = _snapshot(params, opt)
    with pytest.raises(exc) as info:
        opt.step(grads)
    message = str(info.value)
    assert f"param {index}" in message, message
    assert words in message
    _assert_same_snapshot(_snapshot(params, opt), before)


def test_params_sharing_memory_rejected() -> None:
    base = np.zeros(10)
    a, b = base[:6], base[4:]
    opt = fastoptim.SGD([a, b], lr=0.1)
    with pytest.raises(ValueError, match="shares memory"):
        opt.step([np.ones(6), np.ones(6)])
    assert not base.any()


def test_read_only_grad_is_fine() -> None:
    w = np.zeros(3)
    g = np.ones(3)
    g.setflags(write=False)
    fastoptim.SGD([w], lr=0.5).step([g])
    np.testing.assert_array_equal(w, -0.5)


def test_unsupported_param_fails_before_adagrad_state() -> None:
    """Adagrad makes its state in the constructor; an int param gets none and step() names it."""
    ok, bad = np.zeros(3), np.zeros(3, np.int32)
    opt = fastoptim.Adagrad([ok, bad])
    with pytest.raises(TypeError, match="param 1"):
        opt.step([np.ones(3), np.ones(3, np.int32)])
    np.testing.assert_array_equal(ok, 0)
    assert float(opt.state[0]["step"]) == 0.0


@needs_torch
# ---- torch front: bad grads -----------------------------------------------------------------

def test_torch_front_bad_grad_changes_nothing() -> None:
    ps = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))]
    opt = fo_torch.Adam([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.1)
    ps[0].grad = torch.ones(4)
    ps[1].grad = torch.ones(3).to_sparse()  # torch's Adam rejects sparse grads
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(ps[0].detach(), torch.ones(4))
    assert all(float(s["step"]) == 0 for s in opt.state.values() if "step" in s)


# ---- load_state_dict with a mismatched state ------------------------------------------------

def _torch_pair(rule: str, groups: int = 2):
    ps = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
    if groups == 2:
        spec = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003}]
    else:
        spec = [{"params": ps}]
    opt = getattr(fo_torch, rule)(spec, **RICH[rule])
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return ps, opt


def _array_pair(rule: str, groups: int = 2):
    params = [np.random.default_rng(2).standard_normal(s) for s in SHAPES]
    spec = ([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}] if groups == 2
            else [{"params": params}])
    opt = getattr(fastoptim, rule)(spec, **RICH[rule])
    for _ in range(2):
        opt.step([np.ones(s) for s in SHAPES])
    return params, opt


def _mismatch(kind: str, sd: dict, rule: str) -> dict:
    sd = copy.deepcopy(sd)
    if kind == "group-count":
        sd["param_groups"] = sd["param_groups"][:1]
    elif kind == "extra-group":
        sd["param_groups"].append(dict(sd["param_groups"][-1], params=[99]))
    elif kind == "param-count":
        sd["param_groups"][1]["params"] = sd["param_groups"][1]["params"][:1]
    elif kind in ("buffer-shape", "buffer-shape-group0"):
        # a buffer where the front saves it (the reference's layout nests AdEMAMix's)
        state = sd["state"][3 if kind == "buffer-shape" else 0]
        holder = next((v for v in state.values() if isinstance(v, dict)), state)
        slot = next(k for k in holder if k not in SCALAR_STATE_KEYS)
        value = holder[slot]
        if kind == "buffer-shape":
            holder[slot] = (torch.zeros(5) if hasattr(value, "detach") else np.zeros(5))
        else:
            holder[slot] = (value.reshape(-1) if hasattr(value, "reshape") else value)
    # a changed lr: a partial load would show in param_groups
    for g in sd["param_groups"]:
        g["lr"] = 123.0
    return sd


MISMATCHES = ["group-count", "extra-group", "param-count", "buffer-shape", "buffer-shape-group0"]


def _torch_snapshot(ps, opt):
    return ([p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict()))


def _assert_same_torch_snapshot(after, before) -> None:
    for a, b in zip(after[0], before[0]):
        assert torch.equal(a, b)
    sa, sb = after[1], before[1]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sb["state"]:
        _assert_same_entries(sa["state"][k], sb["state"][k])


def _assert_same_entries(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, v in b.items():
        if isinstance(v, dict):  # the reference's nested buffers
            _assert_same_entries(a[name], v)
        elif isinstance(v, torch.Tensor):
            assert torch.equal(a[name], v), name
        else:
            assert type(a[name]) is type(v) and a[name] == v, name


@needs_torch
@pytest.mark.parametrize("kind", MISMATCHES)
@pytest.mark.parametrize("rule", RULES)
def test_torch_front_load_mismatched_state_raises_first(rule: str, kind: str) -> None:
    ps, opt = _torch_pair(rule)
    sd = _mismatch(kind, opt.state_dict(), rule)
    before = _torch_snapshot(ps, opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_same_torch_snapshot(_torch_snapshot(ps, opt), before)
    for p in ps:  # and it still steps
        p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("kind", MISMATCHES)
@pytest.mark.parametrize("rule", RULES)
def test_array_front_load_mismatched_state_raises_first(rule: str, kind: str) -> None:
    params, opt = _array_pair(rule)
    sd = _mismatch(kind, opt.state_dict(), rule)
    before_groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                                   for g in opt.param_groups])
    before = _snapshot(params, opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_same_snapshot(_snapshot(params, opt), before)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
        before_groups
    opt.step([np.ones(s) for s in SHAPES])


@needs_torch
@pytest.mark.parametrize("rule", RULES)
def test_array_front_load_torch_checkpoint_with_mismatch_raises(rule: str) -> None:
    _, topt = _torch_pair(rule)
    params, opt = _array_pair(rule)
    sd = _mismatch("buffer-shape", topt.state_dict(), rule)
    before = _snapshot(params, opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_same_snapshot(_snapshot(params, opt), before)


# ---- array front state_dict round trip ------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", RULES)
def test_array_state_dict_round_trip(rule: str, dtype) -> None:
    rng = np.random.default_rng(4)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(10)]

    def make(params):
        return getattr(fastoptim, rule)([{"params": params[:2]},
                                         {"params": params[2:], "lr": 0.003}], **RICH[rule])

    a_params = [p.copy() for p in init]
    a = make(a_params)
    for k in range(5):
        a.step(grads[k])
    sd = a.state_dict()
    # torch's structure, with NumPy arrays
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert sd["param_groups"][1]["lr"] == 0.003
    if HAVE_TORCH:
        t = reference_type(rule)([torch.zeros(1, requires_grad=True)], **RICH[rule])
        precision = {"master_weights", "state_dtype", "stochastic_rounding", "seed", "block_size",
                     "min_8bit_size"}
        assert set(sd["param_groups"][0]) == set(t.state_dict()["param_groups"][0]) | precision
    # the reference's layout where it keeps its own (AdEMAMix: bitsandbytes' nested, stacked
    # buffers and int step)
    entries, nest, int_step = REGISTRY[rule]["checkpoint"] or ([], None, False)
    stacked = {name: count for name, count in entries if count > 1}
    for i, s in sd["state"].items():
        if nest is not None:
            s = {**{k: v for k, v in s.items() if k != nest}, **s[nest]}
        for name, v in s.items():
            if name == "step" and int_step:
                assert type(v) is int and v == 5
                continue
            assert isinstance(v, np.ndarray)
            if name == "step":
                assert v.shape == () and v.dtype == np.float32 and float(v) == 5.0
            elif name == "mu_product":  # NAdam: torch's 0-d float32 scalar, whatever the dtype
                assert v.shape == () and v.dtype == np.float32 and 0 < float(v) < 1
            else:
                shape = (stacked[name], *SHAPES[i]) if name in stacked else SHAPES[i]
                assert v.dtype == dtype and v.shape == shape
    sd = pickle.loads(pickle.dumps(sd))
    b_params = [p.copy() for p in a_params]
    b = make(b_params)
    b.load_state_dict(sd)
    for k in range(5, 10):
        a.step(grads[k])
        b.step(grads[k])
    for x, y in zip(a_params, b_params):
        np.testing.assert_array_equal(x, y)
    # the snapshot did not move with later steps, and loading it shares no memory
    for i, s in b.state.items():
        saved = slot_entries(sd["state"][i], rule)
        for name, v in s.items():
            if name != "step":
                assert not np.shares_memory(v, saved[name])
                assert not np.array_equal(v, saved[name])


@needs_torch
@pytest.mark.parametrize("front", ["array", "torch"])
def test_momentum_switched_on_mid_run(front: str) -> None:
    """torch allows setting SGD momentum after steps without it (the buffer starts then)."""
    ref_p = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float64))
    ref = torch.optim.SGD([ref_p], lr=0.1, foreach=False)
    if front == "torch":
        p = torch.nn.Parameter(ref_p.detach().clone())
        opt = fo_torch.SGD([p], lr=0.1)
    else:
        w = ref_p.detach().numpy().copy()
        opt = fastoptim.SGD([w], lr=0.1)
    for k in range(6):
        if k == 2:
            ref.param_groups[0]["momentum"] = 0.9
            opt.param_groups[0]["momentum"] = 0.9
        g = torch.linspace(0, 1, 7, dtype=torch.float64) * (k + 1)
        ref_p.grad = g.clone()
        ref.step()
        if front == "torch":
            p.grad = g.clone()
            opt.step()
        else:
            opt.step([g.numpy()])
    got = p.detach().numpy() if front == "torch" else w
    np.testing.assert_allclose(got, ref_p.detach().numpy(), rtol=1e-12)


# ---- a scalar state edited in place (issue 16, item 3) -------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("front", ["array", "torch"])
def test_nonfinite_mu_product_names_param_and_entry(front: str, bad: float) -> None:
    """NAdam's mu_product made NaN/inf in place after a step: the step's error names the param and
    the state entry (not lr, beta1, momentum_decay), and nothing changes in either group."""
    if front == "array":
        params = [np.linspace(-1, 1, 6), np.linspace(0, 2, 5)]
        opt = fastoptim.NAdam([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.01)
        grads = [np.full(6, 0.5), np.full(5, -0.25)]

        def step():
            opt.step(grads)

        def snapshot():
            return [p.copy() for p in params], copy.deepcopy(opt.state)

        step()
        opt.state[1]["mu_product"][...] = bad
    else:
        if not HAVE_TORCH:
            pytest.skip("needs torch")
        params = [torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64)),
                  torch.nn.Parameter(torch.linspace(0, 2, 5, dtype=torch.float64))]
        opt = fo_torch.NAdam([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.01)
        for p in params:
            p.grad = torch.full_like(p, 0.5)

        def step():
            opt.step()

        def snapshot():
            return [p.detach().clone() for p in params], copy.deepcopy(
                {i: dict(opt.state[p]) for i, p in enumerate(params) if p in opt.state})

        step()
        opt.state[params[1]]["mu_product"].fill_(bad)
    before = snapshot()
    with pytest.raises(ValueError, match=r"param 1\b.*'mu_product'") as info:
        step()
    for blamed in ("lr", "beta1", "momentum_decay"):
        assert f"{blamed}=" not in str(info.value)
    _assert_same_snapshot(snapshot(), before)
