"""Malformed checkpoints on both fronts (issue 16, items 4 and 9): every one is a clear
TypeError/ValueError (torch's KeyError for a started state without an entry torch reads while it
loads) raised before anything changes: state, param_groups and params deep-compare equal to a
copy taken before the call, and the optimizer still steps. Entries the rule does not know are
kept, as torch keeps them. Step counts stay exact up to the documented maximum."""

from __future__ import annotations

import copy
from typing import Any, Callable

import fastoptim
import numpy as np
import pytest
from _support import REGISTRY, RICH, RULES, needs_torch, reference_class

try:
    import torch

    import fastoptim.torch as fo_torch
except ImportError:
    torch = None

SHAPES = [(3, 4), (7,), (5,)]  # params 0, 1 in group 0; param 2 in group 1
MAX = fastoptim._core.max_step_count  # 2**53 - 1: the largest count a step may reach


def _torch_opt(rule: str):
    ps = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
    opt = getattr(fo_torch, rule)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003}],
                                  **RICH[rule])
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return ps, opt


def _array_opt(rule: str):
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(s) for s in SHAPES]
    opt = getattr(fastoptim, rule)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003}],
                                   **RICH[rule])
    for _ in range(2):
        opt.step([rng.standard_normal(s) for s in SHAPES])
    return ps, opt


def _snapshot(front: str, ps, opt) -> Any:
    """Full copies of the params, the state and the param groups (params by identity)."""
    if front == "torch":
        state = {i: {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                     for k, v in opt.state[p].items()} for i, p in enumerate(ps) if p in opt.state}
        params = [p.detach().clone() for p in ps]
        groups = [({k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
                   [id(p) for p in g["params"]]) for g in opt.param_groups]
    else:
        state = copy.deepcopy(opt.state)
        params = [p.copy() for p in ps]
        groups = [({k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
                   [id(p) for p in g["params"]]) for g in opt.param_groups]
    return params, state, groups


def _as_np(v: Any) -> Any:
    if torch is not None and isinstance(v, torch.Tensor):
        return v.detach().numpy()
    return v


def _assert_same(after, before) -> None:
    (pa, sa, ga), (pb, sb, gb) = after, before
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(_as_np(a), _as_np(b))
    assert sa.keys() == sb.keys()
    for k in sb:
        assert sa[k].keys() == sb[k].keys(), k
        for name in sb[k]:
            a, b = _as_np(sa[k][name]), _as_np(sb[k][name])
            assert type(a) is type(b), name
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype, name
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                assert a == b, name
    assert ga == gb


def _corrupt(kind: str, rule: str, sd: dict) -> tuple[dict, type]:
    """A checkpoint broken one way, and the error type it must raise."""
    sd = copy.deepcopy(sd)
    for g in sd["param_groups"]:  # a partial load would show in param_groups
        g["lr"] = 123.0
    has_step = "step" in sd["state"][0]
    if kind == "state-entry-none":
        sd["state"][0] = None
        return sd, TypeError
    if kind == "state-list":
        sd["state"] = []
        return sd, TypeError
    if kind == "no-state":
        del sd["state"]
        return sd, ValueError
    if kind == "not-a-dict":
        return [sd], TypeError
    if kind == "group-not-dict":
        sd["param_groups"][1] = [2]
        return sd, TypeError
    if kind == "groups-not-list":
        sd["param_groups"] = {0: sd["param_groups"][0]}
        return sd, TypeError
    if kind == "group-no-params":
        del sd["param_groups"][1]["params"]
        return sd, ValueError
    if kind == "params-not-list":
        sd["param_groups"][1]["params"] = 2
        return sd, TypeError
    if kind == "duplicate-id":
        sd["param_groups"][1]["params"] = [0]
        return sd, ValueError
    if kind == "key-not-int":
        sd["state"]["zero"] = sd["state"].pop(0)
        return sd, TypeError
    if kind == "step-missing":
        if not has_step:
            pytest.skip("the rule keeps no step")
        del sd["state"][2]["step"]
        return sd, KeyError
    if kind == "step-string":
        if not has_step:
            pytest.skip("the rule keeps no step")
        sd["state"][2]["step"] = "3"
        return sd, TypeError
    if kind == "step-fraction":
        if not has_step:
            pytest.skip("the rule keeps no step")
        sd["state"][2]["step"] = 2.5
        return sd, ValueError
    if kind == "step-too-large":
        if not has_step:
            pytest.skip("the rule keeps no step")
        sd["state"][2]["step"] = float(MAX)
        return sd, ValueError
    # a buffer where the front saves it (the reference's layout nests AdEMAMix's)
    holder = next((v for v in sd["state"][0].values() if isinstance(v, dict)), sd["state"][0])
    slot = next(k for k in holder if k not in ("step", "mu_product"))
    if kind == "numpy-buffer":  # on the torch front a buffer is a tensor
        holder[slot] = np.zeros(holder[slot].shape)
        return sd, TypeError
    if kind == "buffer-string":
        holder[slot] = "abc"
        return sd, TypeError
    if kind == "buffer-int-dtype":
        value = holder[slot]
        holder[slot] = (value.to(torch.int64) if hasattr(value, "detach")
                        else value.astype(np.int64))
        return sd, TypeError
    if kind == "mu-string":
        if rule != "NAdam":
            pytest.skip("NAdam only")
        sd["state"][1]["mu_product"] = "0.5"
        return sd, TypeError
    raise AssertionError(kind)


KINDS = ["state-entry-none", "state-list", "no-state", "not-a-dict", "group-not-dict",
         "groups-not-list", "group-no-params", "params-not-list", "duplicate-id", "key-not-int",
         "step-missing", "step-string", "step-fraction", "step-too-large", "numpy-buffer",
         "buffer-string", "buffer-int-dtype", "mu-string"]


def _check_refused(front: str, rule: str, kind: str) -> None:
    ps, opt = _torch_opt(rule) if front == "torch" else _array_opt(rule)
    if kind == "numpy-buffer" and front == "array":
        pytest.skip("the array front takes arrays")
    sd, error = _corrupt(kind, rule, opt.state_dict())
    before = _snapshot(front, ps, opt)
    with pytest.raises(error) as info:
        opt.load_state_dict(sd)
    assert str(info.value), "the error says what is wrong"
    _assert_same(_snapshot(front, ps, opt), before)
    if front == "torch":  # and it still steps
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    else:
        opt.step([np.ones(s) for s in SHAPES])


@needs_torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", RULES)
def test_torch_front_malformed_checkpoint_changes_nothing(rule: str, kind: str) -> None:
    _check_refused("torch", rule, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", RULES)
def test_array_front_malformed_checkpoint_changes_nothing(rule: str, kind: str) -> None:
    if torch is None and kind == "buffer-int-dtype":
        pytest.skip("needs torch")
    _check_refused("array", rule, kind)


@pytest.mark.parametrize("front", ["torch", "array"])
def test_messages_name_param_and_entry(front: str) -> None:
    if front == "torch" and torch is None:
        pytest.skip("needs torch")
    ps, opt = _torch_opt("Adam") if front == "torch" else _array_opt("Adam")
    sd = opt.state_dict()
    cases: list[tuple[Callable[[dict], None], str]] = [
        (lambda d: d["state"].__setitem__(0, None), "state of param 0 must be a dict"),
        (lambda d: d.__setitem__("state", []), "'state' must be a dict"),
        (lambda d: d["state"][2].pop("step"), "param 2: loaded state has no 'step'"),
        (lambda d: d["state"][2].__setitem__("step", "3"), "param 2: state 'step' must be a "
                                                           "number, got '3'"),
        (lambda d: d["param_groups"].__setitem__(0, 5), "param group 0 must be a dict"),
        (lambda d: d["param_groups"][1].pop("params"), "param group 1 has no 'params'"),
        (lambda d: d["state"].__setitem__("a", {}), "state key 'a' is not a param id"),
    ]
    if front == "torch":
        cases.append((lambda d: d["state"][1].__setitem__("exp_avg", np.zeros(7)),
                      "param 1: loaded state 'exp_avg' must be a tensor, got numpy.ndarray"))
    for corrupt, message in cases:
        bad = copy.deepcopy(sd)
        corrupt(bad)
        with pytest.raises((TypeError, ValueError, KeyError)) as info:
            opt.load_state_dict(bad)
        assert message in str(info.value)


@needs_torch
@pytest.mark.parametrize("rule", ["Adam", "SGD"])
def test_unknown_entries_are_kept_as_torch_keeps_them(rule: str) -> None:
    """Entries the rule does not know (a user's note, a tensor of any shape) load on both
    fronts as they load into torch.optim, and the steps go on."""
    ps, opt = _torch_opt(rule)
    sd = opt.state_dict()
    sd["state"][0]["note"] = "warm restart"
    sd["state"][1]["extra"] = torch.arange(3.0)
    ref_ps = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ref = reference_class(rule)([{"params": ref_ps[:2]}, {"params": ref_ps[2:]}],
                                     **RICH[rule])
    ref.load_state_dict(copy.deepcopy(sd))
    opt.load_state_dict(sd)
    # torch keeps the key (its loader rebuilds a str from a generator of its characters, so
    # the value is a generator's repr there); fastoptim keeps the value as it is
    assert "note" in ref.state[ref_ps[0]]
    assert opt.state[ps[0]]["note"] == "warm restart"
    assert torch.equal(opt.state[ps[1]]["extra"], ref.state[ref_ps[1]]["extra"])
    for p, q in zip(ps, ref_ps):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    opt.step()
    ref.step()
    for p, q in zip(ps, ref_ps):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=0)
    arr_ps, arr = _array_opt(rule)
    asd = arr.state_dict()
    asd["state"][0]["note"] = "warm restart"
    arr.load_state_dict(asd)
    assert arr.state[0]["note"] == "warm restart"
    arr.step([np.ones(s) for s in SHAPES])


# ---- step counts up to the documented maximum (item 9) -----------------------------------------

def _last_steps(front: str, rule: str, step_value: Any):
    ps, opt = _torch_opt(rule) if front == "torch" else _array_opt(rule)
    sd = opt.state_dict()
    for s in sd["state"].values():
        s["step"] = copy.deepcopy(step_value)  # each param its own counter
    opt.load_state_dict(sd)
    return ps, opt


def _step(front: str, ps, opt) -> None:
    if front == "torch":
        for p in ps:
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    else:
        opt.step([np.full(s, 0.5) for s in SHAPES])


@pytest.mark.parametrize("value", ["int", "float", "float64-tensor", "float32-array"])
@pytest.mark.parametrize("front", ["torch", "array"])
@pytest.mark.parametrize("rule", ["Adam", "NAdam"])
def test_step_count_exact_to_the_documented_maximum(rule: str, front: str, value: str) -> None:
    if torch is None and (front == "torch" or value == "float64-tensor"):
        pytest.skip("needs torch")
    last = MAX - 1  # 2**53 - 2: the largest count a checkpoint may hold
    if value == "float32-array":
        step_value = np.array(2**24, dtype=np.float32)  # float32 stops counting exactly here
        last = 2**24
    else:
        step_value = {"int": last, "float": float(last),
                      "float64-tensor": None}[value]
        if value == "float64-tensor":
            step_value = torch.tensor(float(last), dtype=torch.float64)
    ps, opt = _last_steps(front, rule, step_value)
    _step(front, ps, opt)
    for s in opt.state_dict()["state"].values():
        assert float(s["step"]) == last + 1  # exact: float32 would say 2**53 (or 2**24)
        assert int(float(s["step"])) == last + 1
    if last + 1 < MAX:
        _step(front, ps, opt)
        for s in opt.state_dict()["state"].values():
            assert float(s["step"]) == last + 2
        return
    before = _snapshot(front, ps, opt)
    with pytest.raises(ValueError, match=r"param 0: state 'step' is 9007199254740991"):
        _step(front, ps, opt)
    _assert_same(_snapshot(front, ps, opt), before)


@needs_torch
def test_torch_loads_a_large_step_as_float32_fastoptim_keeps_it() -> None:
    """What torch.optim does with a loaded count of 2**53 - 2 given as a number: a float32
    tensor, 2**53 (rounded). fastoptim's torch front keeps the count exact (float64)."""
    p = torch.nn.Parameter(torch.zeros(3))
    ref = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    ref.step()
    sd = ref.state_dict()
    sd["state"][0]["step"] = MAX - 1
    ref.load_state_dict(copy.deepcopy(sd))
    assert ref.state[p]["step"].dtype == torch.float32
    assert float(ref.state[p]["step"]) == 2.0**53
    q = torch.nn.Parameter(torch.zeros(3))
    fo = fo_torch.Adam([q])
    fo.load_state_dict(sd)
    assert fo.state[q]["step"].dtype == torch.float64
    assert float(fo.state[q]["step"]) == MAX - 1


# ---- the reference's own checkpoint layout (the registry's "checkpoint": AdEMAMix's
# bitsandbytes layout, m1 and m2 stacked in 'state1' and nested) ----------------------------

LAYOUT_RULES = [rule for rule in RULES if REGISTRY[rule]["checkpoint"] is not None]
LAYOUT_DEFECTS = ["stack-size", "stack-not-array", "missing-entry", "extra-8bit-entry",
                  "both-layouts", "nest-not-dict"]


def _layout_defect(kind: str, rule: str, sd: dict) -> dict:
    entries, nest, _ = REGISTRY[rule]["checkpoint"]
    sd = copy.deepcopy(sd)
    for g in sd["param_groups"]:
        g["lr"] = 123.0
    state = sd["state"][0]
    holder = state[nest] if nest else state
    stacked = next(name for name, count in entries if count > 1)
    if kind == "stack-size":
        holder[stacked] = holder[stacked][:1]
    elif kind == "stack-not-array":
        holder[stacked] = [1.0, 2.0]
    elif kind == "missing-entry":
        del holder[entries[-1][0]]
    elif kind == "extra-8bit-entry":
        holder["qmap1"] = holder[entries[-1][0]]
    elif kind == "both-layouts":
        state[REGISTRY[rule]["slots"][0][0]] = holder[entries[-1][0]]
    elif kind == "nest-not-dict":
        state[nest] = [holder]
    return sd


@pytest.mark.parametrize("kind", LAYOUT_DEFECTS)
@pytest.mark.parametrize("front", ["torch", "array"])
@pytest.mark.parametrize("rule", LAYOUT_RULES)
def test_reference_layout_defects_change_nothing(rule: str, front: str, kind: str) -> None:
    """Both fronts save the reference's layout and load it back; a malformed one is a
    TypeError/ValueError naming the param, raised before anything changes."""
    if front == "torch" and torch is None:
        pytest.skip("needs torch")
    if kind == "nest-not-dict" and REGISTRY[rule]["checkpoint"][1] is None:
        pytest.skip("the layout nests nothing")
    ps, opt = _torch_opt(rule) if front == "torch" else _array_opt(rule)
    saved = opt.state_dict()
    entries, nest, int_step = REGISTRY[rule]["checkpoint"]
    holder = saved["state"][0][nest] if nest else saved["state"][0]
    assert sorted(holder) == sorted(name for name, _ in entries)
    assert type(saved["state"][0]["step"]) is (int if int_step else type(saved["state"][0]["step"]))
    opt.load_state_dict(saved)  # its own layout loads
    before = _snapshot(front, ps, opt)
    with pytest.raises((TypeError, ValueError), match="param 0"):
        opt.load_state_dict(_layout_defect(kind, rule, saved))
    _assert_same(_snapshot(front, ps, opt), before)
