"""Never wrong, never out of bounds: what a user may do to params, grads, state and param groups
between steps (each change followed like torch.optim, or rejected with a clear error and nothing
changed), all-or-nothing steps and loads on both fronts, shared memory, step counts, error types,
concurrent steps, and GradScaler with fused=True."""

from __future__ import annotations

import copy
import threading

import fastoptim
import numpy as np
from fastoptim import _core
import pytest

torch = pytest.importorskip("torch")
import fastoptim.torch as fo_torch  # noqa: E402
from _support import RICH, RULES, has_torch_reference, reference_class  # noqa: E402

from _support import REGISTRY  # noqa: E402

# the rules whose state has a step count
STATEFUL = [r for r in RULES if REGISTRY[r]["has_step"]]


def _snapshot(opt, params) -> tuple:
    """Everything a failed step or load must leave as it was (bit for bit)."""
    state = {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                     for k, v in s.items()} for p, s in opt.state.items()}
    return ([p.detach().clone() for p in params], state, len(opt.state),
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaN included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _assert_unchanged(before: tuple, opt, params) -> None:
    after = _snapshot(opt, params)
    for a, b in zip(before[0], after[0]):
        assert _same(a, b)
    assert before[2] == after[2], "a failed step added state entries"
    assert before[1].keys() == after[1].keys()
    for key, s in before[1].items():
        assert s.keys() == after[1][key].keys()
        for k, v in s.items():
            w = after[1][key][k]
            assert _same(v, w) if isinstance(v, torch.Tensor) else v == w
    assert before[3] == after[3]


def _pair(rule: str, make_params, **kw):
    ref_ps, fo_ps = make_params(), make_params()
    opts = {**RICH[rule], **kw}
    ref = reference_class(rule)(ref_ps, **opts)
    fo = getattr(fo_torch, rule)(fo_ps, **opts)
    return ref_ps, ref, fo_ps, fo


def _close(got, want) -> None:
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=0)


def _grads(ps, k: int) -> None:
    for i, p in enumerate(ps):
        n = p.numel()
        p.grad = torch.cos(torch.arange(n, dtype=p.dtype) * (0.3 + k + i)).reshape(p.shape)


# ---- the cached plan: params changed behind its back ------------------------------------------

@pytest.mark.parametrize("rule", STATEFUL)
def test_param_shrunk_at_the_same_address_is_rejected_like_torch(rule: str) -> None:
    """The issue's reproducer: p.data = p.data[:16] keeps the address; the old plan would read
    4096 grads from a 16-element tensor. torch raises a size mismatch; so does fastoptim, and
    nothing changes."""
    p = torch.nn.Parameter(torch.zeros(4096))
    opt = getattr(fo_torch, rule)([p], lr=0.1)
    p.grad = torch.ones(4096)
    opt.step()
    address = p.data_ptr()
    p.data = p.data[:16]
    assert p.data_ptr() == address
    p.grad = torch.ones(16)
    q = torch.nn.Parameter(torch.zeros(4096))
    ref = reference_class(rule)([q], lr=0.1)
    q.grad = torch.ones(4096)
    ref.step()
    q.data = q.data[:16]
    q.grad = torch.ones(16)
    with pytest.raises(RuntimeError):
        ref.step()
    before = _snapshot(opt, [p])
    with pytest.raises(RuntimeError, match="param 0"):
        opt.step()
    _assert_unchanged(before, opt, [p])


@pytest.mark.parametrize("rule", RULES)
def test_param_replaced_by_a_smaller_tensor_is_rejected(rule: str) -> None:
    """A new, smaller tensor (which may land at the old address) is never stepped with the old
    size; SGD without momentum keeps no state, so it simply follows."""
    p = torch.nn.Parameter(torch.zeros(4096, dtype=torch.float64))
    opt = getattr(fo_torch, rule)([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    for _ in range(3):
        p.data = torch.zeros(16, dtype=torch.float64)
        p.grad = torch.ones(16, dtype=torch.float64)
        if rule == "SGD":
            opt.step()
            assert torch.equal(p.detach(), torch.full((16,), -0.1, dtype=torch.float64))
        else:
            before = _snapshot(opt, [p])
            with pytest.raises(RuntimeError, match="shape"):
                opt.step()
            _assert_unchanged(before, opt, [p])


@pytest.mark.parametrize("rule", RULES)
def test_param_transposed_in_place_follows_torch(rule: str) -> None:
    """p.data = p.data.t() on a square param: same address, size and dtype, other strides.
    torch pairs elements by index (state keeps its layout); so must fastoptim."""
    def make():
        g = torch.Generator().manual_seed(3)
        return [torch.nn.Parameter(torch.randn(6, 6, generator=g, dtype=torch.float64)),
                torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=g))]

    ref_ps, ref, fo_ps, fo = _pair(rule, make)
    for k in range(6):
        if k == 3:
            for ps in (ref_ps, fo_ps):
                ps[0].data = ps[0].data.t()
        for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
            _grads(ps, k)
            opt.step()
        _close(fo_ps, ref_ps)


@pytest.mark.parametrize("rule", RULES)
def test_param_data_swapped_for_same_shape_follows_torch(rule: str) -> None:
    def make():
        return [torch.nn.Parameter(torch.linspace(-1, 1, 33, dtype=torch.float64))]

    ref_ps, ref, fo_ps, fo = _pair(rule, make)
    for k in range(6):
        if k == 2:
            for ps in (ref_ps, fo_ps):
                ps[0].data = torch.linspace(2, 3, 33, dtype=torch.float64)
        if k == 4:  # a non-contiguous view of a larger buffer
            for ps in (ref_ps, fo_ps):
                ps[0].data = torch.linspace(0, 1, 66, dtype=torch.float64)[::2].clone()[:33]
        for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
            _grads(ps, k)
            opt.step()
        _close(fo_ps, ref_ps)


@pytest.mark.parametrize("rule", RULES)
def test_grad_resized_in_place_is_noticed(rule: str) -> None:
    """The same grad object given other memory (grad.data = ...) between steps."""
    p = torch.nn.Parameter(torch.zeros(64))
    opt = getattr(fo_torch, rule)([p], lr=0.1)
    p.grad = torch.ones(64)
    opt.step()
    g = p.grad
    g.data = torch.ones(8)  # the same tensor object, now 8 elements
    before = _snapshot(opt, [p])
    with pytest.raises(RuntimeError, match="param 0"):
        opt.step()
    _assert_unchanged(before, opt, [p])


# ---- the cached plan: state changed behind its back -------------------------------------------

REPLACED_ENTRIES = [
    *((rule, key) for rule in ("Adam", "AdamW") for key in ("exp_avg", "exp_avg_sq", "step")),
    ("NAdam", "mu_product"), ("NAdam", "exp_avg"), ("NAdam", "step"),
    # step 3 -> 8: RAdam's next step is rectified (rho_t > 5), three steps early
    ("RAdam", "exp_avg_sq"), ("RAdam", "step"),
    ("Adamax", "exp_inf"), ("Adamax", "step"),
]


@pytest.mark.parametrize(("rule", "key"), REPLACED_ENTRIES)
def test_state_entry_replaced_is_followed(rule: str, key: str) -> None:
    """opt.state[p]["exp_avg"] = t (or "step", NAdam's "mu_product"): the next step updates t,
    like torch, and state_dict() saves what was updated."""
    def make():
        return [torch.nn.Parameter(torch.linspace(-1, 1, 20, dtype=torch.float64))]

    ref_ps, ref, fo_ps, fo = _pair(rule, make)
    for k in range(6):
        if k == 3:
            for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
                old = opt.state[ps[0]][key]
                opt.state[ps[0]][key] = (old * 0.5 + 0.01) if key != "step" else old.clone() + 5
        for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
            _grads(ps, k)
            opt.step()
        _close(fo_ps, ref_ps)
    got, want = fo.state_dict()["state"][0], ref.state_dict()["state"][0]
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name].double(), rtol=1e-10, atol=0)


def test_state_update_with_new_dict_entries_is_followed() -> None:
    def make():
        return [torch.nn.Parameter(torch.linspace(-1, 1, 20, dtype=torch.float64))]

    ref_ps, ref, fo_ps, fo = _pair("RMSprop", make)
    for k in range(6):
        if k == 3:
            for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
                s = opt.state[ps[0]]
                s.update(square_avg=s["square_avg"] * 2, grad_avg=s["grad_avg"].clone())
        for ps, opt in ((ref_ps, ref), (fo_ps, fo)):
            _grads(ps, k)
            opt.step()
        _close(fo_ps, ref_ps)


def _last_entry(rule: str) -> str:
    """The state entry a default-options step of ``rule`` reads last: its scalar slot if it has
    one (NAdam's mu_product), else the last buffer slot those options use."""
    info = REGISTRY[rule]
    if info["scalar_slots"]:
        return info["scalar_slots"][-1][0]
    used = _core.state_slots(info["name"], {**info["defaults"], "lr": 0.1})
    return [slot for slot in used if slot is not None][-1]


@pytest.mark.parametrize("rule", [r for r in RULES
                                  if has_torch_reference(r) and REGISTRY[r]["has_step"]])
def test_loaded_state_missing_an_entry_raises_keyerror_like_torch(rule: str) -> None:
    missing = _last_entry(rule)
    results = []
    for cls in (getattr(torch.optim, rule), getattr(fo_torch, rule)):
        p = torch.nn.Parameter(torch.ones(5))
        opt = cls([p], lr=0.1, **({"foreach": False} if cls.__module__.startswith("torch")
                                   else {}))
        p.grad = torch.ones(5)
        opt.step()
        sd = copy.deepcopy(opt.state_dict())  # torch's shares the per-param dicts
        del sd["state"][0][missing]
        if rule == "NAdam":
            # torch's NAdam.__setstate__ reads every started state's mu_product while loading:
            # the KeyError comes from load_state_dict (torch.optim has by then replaced its
            # state; fastoptim's load must change nothing)
            before = _snapshot(opt, [p])
            with pytest.raises(KeyError, match=missing):
                opt.load_state_dict(sd)
            if cls is getattr(fo_torch, rule):
                _assert_unchanged(before, opt, [p])
            continue
        opt.load_state_dict(sd)
        before = _snapshot(opt, [p])
        with pytest.raises(KeyError, match=missing) as info:
            opt.step()
        results.append(info.value)
        _assert_unchanged(before, opt, [p])
    if results:
        assert "param 0" in str(results[1])


@pytest.mark.parametrize("rule", STATEFUL)
def test_failed_step_adds_no_state(rule: str) -> None:
    """The first group is fine, the second has a bad option: nothing changes, no state entry
    appears for the first group's params."""
    a = torch.nn.Parameter(torch.ones(5))
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = getattr(fo_torch, rule)([{"params": [a]}, {"params": [b]}], lr=0.1)
    state_before = len(opt.state)
    opt.param_groups[1]["lr"] = "abc"
    a.grad, b.grad = torch.ones(5), torch.ones(3, dtype=torch.float64)
    before = _snapshot(opt, [a, b])
    with pytest.raises(TypeError, match="'lr'"):
        opt.step()
    _assert_unchanged(before, opt, [a, b])
    assert len(opt.state) == state_before


# ---- all or nothing: step counts ---------------------------------------------------------------

BAD_STEPS = [float("nan"), float("inf"), -1.0, 2.5, 2.0**60]


@pytest.mark.parametrize("bad", BAD_STEPS)
@pytest.mark.parametrize("rule", STATEFUL)
def test_bad_step_set_by_hand_changes_nothing_in_any_group(rule: str, bad: float) -> None:
    """Group 0 (float32) is fine; the float64 param of group 1 has a bad step count. The step
    raises naming that param, and group 0 was not written either."""
    a = torch.nn.Parameter(torch.ones(40000))  # above the serial threshold: threads too
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    c = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = getattr(fo_torch, rule)([{"params": [a]}, {"params": [b, c]}], lr=0.1)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt.step()
    opt.state[c]["step"] = torch.tensor(bad, dtype=torch.float64)
    before = _snapshot(opt, [a, b, c])
    with pytest.raises(ValueError, match=r"param 2: state 'step'"):
        opt.step()
    _assert_unchanged(before, opt, [a, b, c])


@pytest.mark.parametrize("bad", BAD_STEPS + ["abc"])
@pytest.mark.parametrize("front", ["torch", "array"])
def test_bad_step_in_checkpoint_rejected_at_load(front: str, bad) -> None:
    if front == "torch":
        ps = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))]
        opt = fo_torch.Adam(ps, lr=0.1)
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        sd = opt.state_dict()
        sd["state"][1]["step"] = bad if isinstance(bad, str) else torch.tensor(bad)
        before = _snapshot(opt, ps)
        with pytest.raises((ValueError, TypeError), match="param 1: state 'step'"):
            opt.load_state_dict(sd)
        _assert_unchanged(before, opt, ps)
    else:
        ws = [np.ones(4, np.float32), np.ones(3, np.float32)]
        opt = fastoptim.Adam(ws, lr=0.1)
        opt.step([np.ones(4, np.float32), np.ones(3, np.float32)])
        sd = opt.state_dict()
        sd["state"][1]["step"] = bad if isinstance(bad, str) else np.array(bad)
        saved = copy.deepcopy(opt.state)
        with pytest.raises((ValueError, TypeError), match="param 1: state 'step'"):
            opt.load_state_dict(sd)
        assert opt.state.keys() == saved.keys()
        for i in saved:
            for k in saved[i]:
                assert np.array_equal(opt.state[i][k], saved[i][k])


@pytest.mark.parametrize("bad", BAD_STEPS)
def test_array_front_bad_step_changes_nothing(bad: float) -> None:
    ws = [np.ones(40000, np.float32), np.ones(3, np.float64)]
    opt = fastoptim.Adam([{"params": [ws[0]]}, {"params": [ws[1]]}], lr=0.1)
    grads = [np.ones_like(w) for w in ws]
    opt.step(grads)
    opt.state[1]["step"] = np.array(bad)
    before = [w.copy() for w in ws], copy.deepcopy(opt.state)
    with pytest.raises(ValueError, match="param 1: state 'step'"):
        opt.step(grads)
    assert all(np.array_equal(a, b) for a, b in zip(before[0], ws))
    assert np.array_equal(opt.state[0]["exp_avg"], before[1][0]["exp_avg"])
    assert float(opt.state[0]["step"]) == 1.0


# ---- error types and messages ------------------------------------------------------------------

@pytest.mark.parametrize("front", ["torch", "array"])
def test_subnormal_negative_lr_is_a_valueerror(front: str) -> None:
    module = fo_torch if front == "torch" else fastoptim
    params = [torch.nn.Parameter(torch.ones(2))] if front == "torch" else [np.ones(2)]
    with pytest.raises(ValueError, match="Invalid learning rate: -1e-310"):
        module.Adam(params, lr=-1e-310)


@pytest.mark.parametrize("value", ["abc", None, [1, 2]])
@pytest.mark.parametrize("front", ["torch", "array"])
def test_loaded_group_with_a_non_number_names_the_key(front: str, value) -> None:
    if front == "torch":
        ps = [torch.nn.Parameter(torch.ones(3))]
        opt = fo_torch.Adam(ps, lr=0.1)
        ps[0].grad = torch.ones(3)
    else:
        ps = [np.ones(3, np.float32)]
        opt = fastoptim.Adam(ps, lr=0.1)
    sd = opt.state_dict()
    sd["param_groups"][0]["eps"] = value
    if front == "array":
        with pytest.raises(TypeError, match="'eps'"):
            opt.load_state_dict(sd)
        return
    opt.load_state_dict(sd)  # torch does not check groups at load; the step does
    before = _snapshot(opt, ps)
    with pytest.raises(TypeError, match="'eps'"):
        opt.step()
    _assert_unchanged(before, opt, ps)


@pytest.mark.parametrize("rule", ["Adam", "AdamW", "Adadelta", "RMSprop", "NAdam", "RAdam",
                                  "Adamax"])
def test_sparse_grads_get_torchs_error(rule: str) -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = getattr(fo_torch, rule)(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    before = _snapshot(opt, list(emb.parameters()))
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    _assert_unchanged(before, opt, list(emb.parameters()))


def test_weight_decay_overflowing_float32_is_rejected() -> None:
    p = torch.nn.Parameter(torch.ones(8))
    opt = fo_torch.Adam([p], lr=0.1, weight_decay=1e300)
    p.grad = torch.ones(8)
    before = _snapshot(opt, [p])
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    _assert_unchanged(before, opt, [p])
    w = np.ones(8, np.float32)
    arr = fastoptim.Adam([w], lr=0.1, weight_decay=1e300)
    with pytest.raises(ValueError, match="weight_decay"):
        arr.step([np.ones(8, np.float32)])
    assert np.array_equal(w, np.ones(8, np.float32)) and not arr.state


# ---- shared memory -----------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_grad_that_is_another_params_memory_is_rejected(rule: str) -> None:
    a = torch.nn.Parameter(torch.ones(40000))
    b = torch.nn.Parameter(torch.full((40000,), 2.0))
    opt = getattr(fo_torch, rule)([a, b], lr=0.1)
    a.grad = torch.ones(40000)
    b.grad = a.detach()  # b's grad is a's memory, which the step writes
    before = _snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    _assert_unchanged(before, opt, [a, b])
    # also when the plan is already cached and only the grad object changes
    b.grad = torch.ones(40000)
    opt.step()
    b.grad = a.detach()
    before = _snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="param 1 grad shares memory"):
        opt.step()
    _assert_unchanged(before, opt, [a, b])


def test_params_sharing_memory_across_groups_are_rejected() -> None:
    base = torch.zeros(100)
    a = torch.nn.Parameter(base[:60])
    b = torch.nn.Parameter(base[50:])
    opt = fo_torch.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = torch.ones(60), torch.ones(50)
    with pytest.raises(ValueError, match="param 1 shares memory with param 0|param 0 shares "
                                         "memory with param 1"):
        opt.step()
    assert torch.equal(base, torch.zeros(100))


@pytest.mark.parametrize("rule", RULES)
def test_param_listed_twice_is_rejected(rule: str) -> None:
    p = torch.nn.Parameter(torch.ones(5))
    with pytest.warns(UserWarning):
        opt = getattr(fo_torch, rule)([p, p], lr=0.1)
    p.grad = torch.ones(5)
    before = _snapshot(opt, [p])
    with pytest.raises(ValueError, match="param 1 is param 0 listed twice"):
        opt.step()
    _assert_unchanged(before, opt, [p])


def test_state_tensor_shared_between_params_is_rejected() -> None:
    a, b = torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(5))
    opt = fo_torch.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(5), torch.ones(5)
    opt.step()
    opt.state[b]["exp_avg"] = opt.state[a]["exp_avg"]
    before = _snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    _assert_unchanged(before, opt, [a, b])


# ---- concurrency -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["SGD", "Adam"])
def test_concurrent_steps_serialize(rule: str, restore_threads) -> None:
    """Several Python threads step one optimizer: every step happens exactly once, as if one
    after the other (the kernels release the GIL, a lock per optimizer orders the steps)."""
    fastoptim.set_num_threads(2)
    n, threads, steps = 200_000, 4, 10

    def make():
        return [torch.nn.Parameter(torch.zeros(n)), torch.nn.Parameter(torch.zeros(7))]

    ps = make()
    opt = getattr(fo_torch, rule)(ps, lr=0.01, **({"momentum": 0.9} if rule == "SGD" else {}))
    for p in ps:
        p.grad = torch.ones_like(p)

    def work():
        for _ in range(steps):
            opt.step()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seq = make()
    ref = getattr(fo_torch, rule)(seq, lr=0.01, **({"momentum": 0.9} if rule == "SGD" else {}))
    for p in seq:
        p.grad = torch.ones_like(p)
    for _ in range(threads * steps):
        ref.step()
    for a, b in zip(ps, seq):
        assert torch.equal(a.detach(), b.detach())
    if rule == "Adam":
        assert float(opt.state[ps[0]]["step"]) == threads * steps


# ---- GradScaler with fused=True ----------------------------------------------------------------

def _scaler_run(cls, fused: bool | None, inf_steps: set[int], **opts):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    kw = {"fused": fused} if fused is not None else {"foreach": False}
    opt = cls(model.parameters(), **opts, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    g = torch.Generator().manual_seed(1)
    snapshots = []
    for k in range(12):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if k in inf_steps:
            next(model.parameters()).grad[0, 0] = float("inf") if k % 2 else float("nan")
        scaler.step(opt)
        scaler.update()
        snapshots.append([p.detach().clone() for p in model.parameters()])
    return snapshots, opt, scaler.get_scale()


@pytest.mark.parametrize("rule", ["SGD", "Adam", "AdamW", "Adagrad"])
def test_gradscaler_with_fused_true_matches_torch(rule: str) -> None:
    """fused=True makes torch's GradScaler hand the step grad_scale and found_inf instead of
    unscaling and skipping itself: the step must unscale, and skip entirely on inf/NaN."""
    opts = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01), "AdamW": dict(lr=0.01),
            "Adagrad": dict(lr=0.1)}[rule]
    inf_steps = {0, 4, 5, 9}
    want, ref, ref_scale = _scaler_run(getattr(torch.optim, rule), None, inf_steps, **opts)
    got, fo, fo_scale = _scaler_run(getattr(fo_torch, rule), True, inf_steps, **opts)
    assert fo._step_supports_amp_scaling
    assert ref_scale == fo_scale
    for k, (a, b) in enumerate(zip(got, want)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=f"step {k}")
        if k in inf_steps and k > 0:
            assert all(torch.equal(x, y) for x, y in zip(a, got[k - 1])), "skipped step changed"
    for p in fo.state:
        if "step" in fo.state[p]:
            assert float(fo.state[p]["step"]) == 12 - len(inf_steps)


def test_gradscaler_skip_on_first_step_allocates_nothing() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = fo_torch.SGD([p], lr=0.1, momentum=0.9, fused=True)
    p.grad = torch.tensor([1.0, float("inf"), 1.0, 1.0])
    opt.grad_scale = torch.tensor(8.0)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(4)) and len(opt.state) == 0
    opt.found_inf = torch.tensor(0.0)
    p.grad = torch.full((4,), 8.0)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), 0.9))


# ---- fork --------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_step_in_a_forked_child_finishes_and_matches(restore_threads) -> None:
    """libgomp cannot start threads in a child forked after a parallel region ran: the child's
    steps run on one thread instead of hanging, with the same (bit-identical) result."""
    import os
    import signal
    import time

    if not fastoptim._core.openmp_enabled():
        pytest.skip("built without OpenMP")
    fastoptim.set_num_threads(2)
    w = np.linspace(-1, 1, 300_000, dtype=np.float32)
    g = np.cos(np.arange(w.size, dtype=np.float32))
    opt = fastoptim.Adam([w], lr=0.1)
    opt.step([g])  # a parallel region runs in the parent
    expected = w.copy()
    twin = fastoptim.Adam([expected], lr=0.1)
    twin.load_state_dict(opt.state_dict())
    twin.step([g])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: step, report the bytes, leave without running any cleanup
        try:
            opt.step([g])
            os.write(write, b"1" if np.array_equal(w, expected) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the step in the forked child did not finish (libgomp after fork)")
    answer = os.read(read, 1)
    os.close(read)
    assert answer == b"1", "the child's step differs from the parent's"


def test_array_front_concurrent_steps_serialize(restore_threads) -> None:
    fastoptim.set_num_threads(2)
    w = np.zeros(200_000, np.float32)
    opt = fastoptim.Adam([w], lr=0.01)
    g = np.ones_like(w)

    def work():
        for _ in range(10):
            opt.step([g])

    workers = [threading.Thread(target=work) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    v = np.zeros_like(w)
    ref = fastoptim.Adam([v], lr=0.01)
    for _ in range(40):
        ref.step([g])
    assert np.array_equal(w, v) and float(opt.state[0]["step"]) == 40
    twin = copy.deepcopy(opt)  # the lock is not copied; the copy has its own
    twin.step([g])
    assert float(twin.state[0]["step"]) == 41 and float(opt.state[0]["step"]) == 40
