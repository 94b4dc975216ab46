"""Random sequences of what a user may do between steps — new or in-place grads, None grads,
p.data swapped, transposed or sliced, state entries replaced or resized in place, state
cleared, checkpoints reloaded, lr changed, clip_grad_norm_ (once or twice), zero_grad, a param
group added — played on fastoptim.torch and on torch.optim (foreach=False) side by side: after
every step both have the same params and state, or both raised (hypothesis). A state
tensor's storage freed by hand crashes torch itself: fastoptim alone is played then, and must
raise. Both of fastoptim's plan checks are played (C++ and Python). With master_weights=True,
writes to the 16-bit params (copy_, clamp_, a restored model, an EMA swap, a new p.data)
against torch.optim on float32 params that take every change, widened."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
import fastoptim.torch as fo_torch  # noqa: E402
from _support import RICH, RULES, flat_entries, reference_class  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

OPS = ("step", "new_grads", "inplace_grads", "none_grad", "swap_data", "transpose", "shrink",
       "replace_state", "clear_param_state", "reload", "lr", "resize_state", "free_state",
       "clip", "zero_grad", "zero_grad_keep", "add_group", "sparse_outside", "bad_checkpoint")

# Malformed checkpoints: each a change to a good state_dict; loading one must raise and change
# nothing (fastoptim alone: torch's own loader is not all-or-nothing).
BAD_CHECKPOINTS = (
    lambda sd: sd["state"].__setitem__(0, None),
    lambda sd: sd.__setitem__("state", []),
    # (a rule that keeps no step count, Lion, Schedule-Free: the state dict emptied instead)
    lambda sd: sd["state"][0].pop("step") if "step" in sd["state"].get(0, {}) else sd.clear(),
    lambda sd: sd["state"][0].__setitem__("step", "3") if "step" in sd["state"].get(0, {})
    else sd.clear(),
    lambda sd: sd["param_groups"][0]["params"].pop(),
    lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
    lambda sd: sd.pop("param_groups"),
    lambda sd: [v.__setitem__(k, v[k][:2]) for v in sd["state"].values() for k in list(v)
                if hasattr(v[k], "shape") and v[k].dim() > 0] or sd.clear(),
)


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(11)
    return [torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64, generator=g)),
            torch.nn.Parameter(torch.randn(9, dtype=torch.float64, generator=g)),
            torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64, generator=g))]


def _grad_like(p: torch.Tensor, k: int, i: int) -> torch.Tensor:
    t = torch.arange(p.numel(), dtype=torch.float64) * (0.31 + 0.17 * k + i)
    return torch.sin(t).reshape(p.shape)


def _apply(op: str, k: int, ps, opt) -> None:
    """One user action; k makes each action's values distinct."""
    if op == "new_grads":
        for i, p in enumerate(ps):
            p.grad = _grad_like(p, k, i)
    elif op == "inplace_grads":
        for p in ps:
            if p.grad is not None:
                p.grad.mul_(0.5)
    elif op == "none_grad":
        ps[1].grad = None
    elif op == "swap_data":
        ps[2].data = torch.full_like(ps[2], 0.1 * k)
    elif op == "transpose":
        ps[0].data = ps[0].data.t()
    elif op == "shrink":
        ps[1].data = ps[1].data[:5]
        if ps[1].grad is not None:
            ps[1].grad = _grad_like(ps[1], k, 1)
    elif op == "replace_state":
        state = opt.state.get(ps[0])
        if state:
            key = sorted(k2 for k2 in state if k2 != "step")[k % max(1, len(state) - 1)] \
                if len(state) > 1 else "step"
            state[key] = state[key].clone() * 0.5 + (0.01 if key != "step" else 1)
    elif op == "clear_param_state":
        opt.state.pop(ps[2], None)
    elif op == "reload":
        opt.load_state_dict(opt.state_dict())
    elif op == "lr":
        opt.param_groups[0]["lr"] = 0.001 * (k + 1)
    elif op == "resize_state":  # torch then fails its size check; fastoptim must notice too
        state = opt.state.get(ps[0], {})
        tensors = sorted(key for key, v in state.items() if v.numel() > 1)
        if tensors:
            resized = state[tensors[k % len(tensors)]]
            resized.resize_(ps[0].numel() * 3)
            # resize_ leaves the new elements uninitialized, and keeps the storage order, which
            # for a transposed param's state is fastoptim's layout (torch's is contiguous)
            resized.fill_(0.25)
    elif op == "clip":
        if isinstance(opt, _FUSED):
            opt.clip_grad_norm_(0.3 + 0.1 * k, norm_type=(2.0, 1.0, float("inf"))[k % 3])
        else:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                           0.3 + 0.1 * k, norm_type=(2.0, 1.0, float("inf"))[k % 3])
    elif op == "zero_grad":
        opt.zero_grad()
    elif op == "zero_grad_keep":
        opt.zero_grad(set_to_none=False)
    elif op == "add_group":
        extra = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64) * (k + 1))
        extra.grad = torch.cos(torch.arange(6, dtype=torch.float64) * k)
        opt.add_param_group({"params": [extra]})
        ps.append(extra)


def _outcome(fn):
    try:
        fn()
        return None
    except Exception as exc:  # noqa: BLE001 - compared between the two optimizers
        return type(exc)


_FUSED = tuple(getattr(fo_torch, name) for name in fo_torch.FUSED)


def _clip_then_inplace(ops: list[str], want, got) -> bool:
    """A grad modified in place after a clip: torch's clip had already rewritten it, which
    fastoptim (whose clip is folded into the step) cannot reconstruct: its one documented
    error, raised by the next step or clip."""
    return got is RuntimeError and want is None and "inplace_grads" in ops and "clip" in ops


@pytest.fixture(params=["c++", "python"])
def plan_check(request, monkeypatch):
    """Both per-step plan checks: the C++ guard (where torch's C shim loaded) and Python's."""
    from fastoptim.torch import _optimizers

    if request.param == "c++" and not _optimizers._PLAN_GUARD:
        pytest.skip("torch's C shim is not available here")
    monkeypatch.setattr(_optimizers, "_PLAN_GUARD", request.param == "c++")
    return request.param


@pytest.mark.parametrize("rule", RULES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=14))
def test_random_changes_between_steps_follow_torch(rule: str, ops: list[str], plan_check) -> None:
    ref_ps, fo_ps = _params(), _params()
    ref = reference_class(rule)(ref_ps, **RICH[rule])
    fo = getattr(fo_torch, rule)(fo_ps, **RICH[rule])
    for ps in (ref_ps, fo_ps):
        for i, p in enumerate(ps):
            p.grad = _grad_like(p, 0, i)
    for k, op in enumerate([*ops, "step"]):
        if op == "step":
            want, got = _outcome(ref.step), _outcome(fo.step)
            if _clip_then_inplace(ops, want, got):
                return
            if want is not None or got is not None:
                # torch raised (e.g. a shrunk param against its old state): so must fastoptim,
                # which changed nothing; torch's own failed step may have, so stop here
                assert want is not None and got is not None, (ops, want, got)
                return
            for a, b in zip(fo_ps, ref_ps):
                assert a.shape == b.shape and a.stride() == b.stride() or a.is_contiguous()
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-15, equal_nan=True)
            for a, b in zip(fo_ps, ref_ps):
                assert fo.state.get(a, {}).keys() == ref.state.get(b, {}).keys()
                for key, value in ref.state.get(b, {}).items():
                    torch.testing.assert_close(fo.state[a][key].double(), value.double(),
                                               rtol=1e-12, atol=1e-15, equal_nan=True)
        elif op == "sparse_outside":  # fastoptim alone: torch's SGD would write outside
            before = [p.detach().clone() for p in fo_ps]
            states = {id(p): {key: v.clone() for key, v in fo.state.get(p, {}).items()}
                      for p in fo_ps}
            kept = fo_ps[1].grad
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                n = fo_ps[1].shape[0]
                fo_ps[1].grad = torch.sparse_coo_tensor(
                    torch.tensor([[0, n + k]]), torch.ones(2, dtype=torch.float64), (n,),
                    check_invariants=False)
            with pytest.raises((IndexError, RuntimeError)):
                fo.step()
            assert all(torch.equal(a, b.detach()) for a, b in zip(before, fo_ps))
            for p in fo_ps:
                for key, v in states[id(p)].items():
                    assert torch.equal(v, fo.state[p][key]), key
            fo_ps[1].grad = kept
        elif op == "bad_checkpoint":  # fastoptim alone: raises, changes nothing, goes on
            sd = fo.state_dict()
            BAD_CHECKPOINTS[k % len(BAD_CHECKPOINTS)](sd)
            before = copy.deepcopy(fo.state_dict())
            with pytest.raises((TypeError, ValueError, KeyError)):
                fo.load_state_dict(sd)
            after = fo.state_dict()
            assert before["param_groups"] == after["param_groups"]
            assert before["state"].keys() == after["state"].keys()
            for key, entry in before["state"].items():
                got, want = flat_entries(after["state"][key]), flat_entries(entry)
                assert got.keys() == want.keys()
                for name, v in want.items():
                    np.testing.assert_array_equal(got[name], v, err_msg=name)
        elif op == "free_state":
            state = fo.state.get(fo_ps[0], {})
            tensors = sorted(key for key, v in state.items() if v.numel() > 1)
            if not tensors:
                continue
            state[tensors[k % len(tensors)]].untyped_storage().resize_(0)
            before = [p.detach().clone() for p in fo_ps]
            if fo_ps[0].grad is None:  # the param is not stepped: nothing reads that state
                _outcome(fo.step)
                assert torch.equal(before[0], fo_ps[0].detach())
            else:
                with pytest.raises(RuntimeError, match="has no memory|modified in place after"):
                    fo.step()
                assert all(torch.equal(a, b.detach()) for a, b in zip(before, fo_ps))
            return
        else:
            want = _outcome(lambda op=op, k=k: _apply(op, k, ref_ps, ref))
            got = _outcome(lambda op=op, k=k: _apply(op, k, fo_ps, fo))
            if _clip_then_inplace(ops, want, got):
                return
            if want is not None or got is not None:
                # fastoptim's load_state_dict checks state shapes against the params, which
                # torch leaves to the next step (where it raises): the one allowed difference
                assert want == got or (op == "reload" and got is ValueError), (ops, want, got)
                return


# ---- master weights: writes to the 16-bit params between steps --------------------------------
MASTER_OPS = ("step", "new_grads", "none_grad", "copy", "clamp", "restore", "ema_swap",
              "new_data", "reload", "lr")


def _half_params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(13)
    return [torch.nn.Parameter(torch.randn(4, 5, generator=g).to(torch.bfloat16)),
            torch.nn.Parameter(torch.randn(17, generator=g).to(torch.float16)),
            torch.nn.Parameter(torch.randn(2, 9, generator=g).to(torch.bfloat16))]


def _write_half(op: str, k: int, ps, saved, ema) -> None:
    """One write to the 16-bit params (k makes each write's values distinct)."""
    with torch.no_grad():
        if op == "copy":
            ps[0].copy_(_grad_like(ps[0], k, 5) * 2)
        elif op == "clamp":
            ps[1].clamp_(-0.3 - 0.01 * k, 0.4)
        elif op == "restore":  # model.load_state_dict of the initial weights
            ps[2].copy_(saved[2])
        elif op == "ema_swap":
            kept = ps[0].detach().clone()
            ps[0].copy_(ema)
            ema.copy_(kept)
        elif op == "new_data":
            ps[2].data = torch.full_like(ps[2], 0.1 * k - 0.5)


@pytest.mark.parametrize("rule", RULES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(MASTER_OPS), min_size=1, max_size=14))
def test_writes_to_params_with_master_weights_follow_torch(rule: str, ops: list[str]) -> None:
    """The model: at a step, every element of a 16-bit param whose bits differ from what the
    last step left there (any number of writes in between) starts from its value widened to
    float32 (torch.optim's float32 params take exactly that), the others from their master. A
    param the step skips (no grad) keeps its master and its written value. After every step the
    master is torch's float32 param, the 16-bit param the master rounded to nearest-even, the
    state torch's."""
    fo_ps = _half_params()
    ref_ps = [torch.nn.Parameter(p.detach().float()) for p in fo_ps]
    saved = [p.detach().clone() for p in fo_ps]
    stepped = [p.detach().clone() for p in fo_ps]  # each param as the last step left it
    ema = (fo_ps[0].detach().float() * 0.5 + 0.02).to(fo_ps[0].dtype)
    ref = reference_class(rule)(ref_ps, **RICH[rule])
    fo = getattr(fo_torch, rule)(fo_ps, **RICH[rule], master_weights=True)
    for k, op in enumerate(["new_grads", *ops, "step"]):
        if op == "step":
            with torch.no_grad():
                for i, (a, b) in enumerate(zip(fo_ps, ref_ps)):
                    if a.grad is not None:
                        changed = stepped[i].view(torch.int16) != a.detach().view(torch.int16)
                        b.copy_(torch.where(changed, a.detach().float(), b))
            ref.step()
            fo.step()
            for i, (a, b) in enumerate(zip(fo_ps, ref_ps)):
                state = fo.state.get(a, {})
                if "master_param" not in state:  # never stepped: no master yet
                    continue
                master = state["master_param"]
                torch.testing.assert_close(master, b.detach(), rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"{ops}: {m}")
                if a.grad is not None:
                    assert torch.equal(a.detach(), master.to(a.dtype)), ops
                    stepped[i] = a.detach().clone()
                assert state.keys() - {"master_param"} == ref.state[b].keys()
                for key, value in ref.state[b].items():
                    torch.testing.assert_close(
                        state[key].float(), value.float(), rtol=1e-5, atol=1e-6,
                        msg=lambda m, key=key: f"{ops} {key}: {m}")
        elif op == "new_grads":
            for i, (a, b) in enumerate(zip(fo_ps, ref_ps)):
                a.grad = _grad_like(a, k, i).to(a.dtype)
                b.grad = a.grad.float()
        elif op == "none_grad":
            fo_ps[1].grad = ref_ps[1].grad = None
        elif op == "reload":
            fo.load_state_dict(fo.state_dict())
            ref.load_state_dict(ref.state_dict())
        elif op == "lr":
            fo.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.001 * (k + 1)
        else:
            _write_half(op, k, fo_ps, saved, ema)
