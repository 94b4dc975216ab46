"""Both fronts against torch.optim.X(..., foreach=False): 50 steps over each rule's whole option
grid, float32 and float64, at every SIMD level; param groups, lr changes, None grads, sizes."""

from __future__ import annotations

import fastoptim
import fastoptim.torch as fo_torch
import numpy as np
import pytest
import torch
from _support import (
    RICH as SHARED_RICH,
    REGISTRY,
    reference_class,
    FRONTS,
    GRIDS,
    RULES,
    SIZES,
    Case,
    assert_close_runs,
    freeze,
    options_id,
    reference,
    run,
    tol,
)

GRID_CASES = [
    pytest.param(rule, opts, id=f"{rule}-{options_id(opts)}") for rule in RULES
    for opts in GRIDS[rule]
]
DTYPES = ("float64", "float32")


@pytest.mark.grid
@pytest.mark.parametrize("front", ["fastoptim.torch", "array-numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rule", "options"), GRID_CASES)
def test_option_grid(rule: str, options: dict, dtype: str, front: str, simd_level: str) -> None:
    case = Case.single(rule, options, dtype=dtype)
    assert_close_runs(run(case, front), reference(case), dtype, f"{front} @ {simd_level}")


@pytest.mark.grid
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rule", "options"), GRID_CASES)
def test_option_grid_array_front_torch_tensors(rule: str, options: dict, dtype: str) -> None:
    """torch CPU tensors (params and grads) given to the array front are updated in place."""
    case = Case.single(rule, options, dtype=dtype)
    assert_close_runs(run(case, "array-tensor"), reference(case), dtype, "array-tensor")


@pytest.mark.grid
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rule", "options"), GRID_CASES)
def test_option_grid_torch_front_reused_grads(rule: str, options: dict, dtype: str) -> None:
    """The training-loop path: the same .grad tensors written in place every step, so the torch
    front's cached plan is reused."""
    case = Case.single(rule, options, dtype=dtype)
    got = run(case, "fastoptim.torch", grad_mode="inplace")
    assert_close_runs(got, reference(case), dtype, "fastoptim.torch (in-place grads)")


def _group_cases() -> list:
    cases = []
    for rule in RULES:
        grid = GRIDS[rule]
        picks = [grid[1], grid[len(grid) // 2], grid[-4]]  # three different settings
        shapes = ((4,), (17,), (2, 3), (1,), (16,), (5, 7))
        groups = (((0, 1), freeze(picks[0])), ((2, 3), freeze(picks[1])), ((4, 5), freeze(picks[2])))
        for dtype in DTYPES:
            cases.append(pytest.param(Case(rule, shapes, groups, dtype=dtype), id=f"{rule}-{dtype}"))
            # lr changed mid-run, per group, twice
            lr_changes = ((10, 0, 0.5 * dict(picks[0])["lr"]), (20, 2, 0.003), (35, 0, 0.02),
                          (35, 1, 0.0))
            cases.append(pytest.param(
                Case(rule, shapes, groups, dtype=dtype, lr_changes=lr_changes),
                id=f"{rule}-{dtype}-lr-changes"))
            # None grads: param 1 skipped from the start (no state yet), param 4 mid-run,
            # param 5 for the last steps
            none_grads = ((1, 0, 12), (4, 20, 29), (5, 44, 49))
            cases.append(pytest.param(
                Case(rule, shapes, groups, dtype=dtype, none_grads=none_grads),
                id=f"{rule}-{dtype}-none-grads"))
    return cases


@pytest.mark.grid
@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("case", _group_cases())
def test_param_groups_lr_changes_none_grads(case: Case, front: str) -> None:
    assert_close_runs(run(case, front), reference(case), case.dtype, front)


@pytest.mark.parametrize("rule", RULES)
def test_none_grad_does_not_create_state_or_advance_step(rule: str) -> None:
    case = Case.single(rule, GRIDS[rule][-1], shapes=((3,), (5,)), steps=6,
                       none_grads=((1, 0, 3),))
    want = reference(case)
    for front in FRONTS:
        got = run(case, front)
        assert_close_runs(got, want, "float64", front)
    if REGISTRY[rule]["has_step"]:
        # torch: a param whose grad was None for 4 of 6 steps has taken 2 steps
        assert float(want["state"][1]["step"]) == 2.0
        assert float(want["state"][0]["step"]) == 6.0


# Sizes that end on every SIMD tail and split over threads (100003 > the serial threshold), with
# the shared rich options and, where the rule has it, maximize (the grids cover it off).
RICH = {rule: {**SHARED_RICH[rule], **({"maximize": True} if "maximize" in REGISTRY[rule]["defaults"]
                                        else {})} for rule in REGISTRY}


@pytest.mark.grid
@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("rule", RULES)
def test_sizes(rule: str, size: int, dtype: str, front: str) -> None:
    steps = 12 if size > 10000 else 50
    case = Case.single(rule, RICH[rule], shapes=((size,),), dtype=dtype, steps=steps)
    assert_close_runs(run(case, front), reference(case), dtype, front)


@pytest.mark.parametrize("rule", RULES)
def test_sizes_one_group_every_level(rule: str, simd_level: str) -> None:
    """All the sizes in one group (total > the serial threshold, so the step is split over
    threads across tensor boundaries) at every SIMD level."""
    shapes = tuple((s,) for s in SIZES)
    for dtype in DTYPES:
        case = Case.single(rule, RICH[rule], shapes=shapes, dtype=dtype, steps=8)
        assert_close_runs(run(case, "array-numpy"), reference(case), dtype, simd_level)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("front", ["array", "torch"])
def test_mixed_dtypes_in_one_group(rule: str, front: str) -> None:
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(9).astype(np.float32), rng.standard_normal(33),
            rng.standard_normal((2, 8)).astype(np.float32)]
    grads = [[rng.standard_normal(p.shape).astype(p.dtype) for p in init] for _ in range(30)]
    ref_params = [torch.tensor(p, requires_grad=True) for p in init]
    ref = reference_class(rule)(ref_params, **RICH[rule])
    if front == "torch":
        params = [torch.tensor(p, requires_grad=True) for p in init]
        opt = getattr(fo_torch, rule)(params, **RICH[rule])
    else:
        params = [p.copy() for p in init]
        opt = getattr(fastoptim, rule)(params, **RICH[rule])
    for row in grads:
        for p, g in zip(ref_params, row):
            p.grad = torch.tensor(g)
        ref.step()
        if front == "torch":
            for p, g in zip(params, row):
                p.grad = torch.tensor(g)
            opt.step()
        else:
            opt.step([g.copy() for g in row])
    for p, r in zip(params, ref_params):
        got = p.detach().numpy() if front == "torch" else p
        assert got.dtype == r.detach().numpy().dtype
        np.testing.assert_allclose(got, r.detach().numpy(), **tol(str(got.dtype)))


@pytest.mark.parametrize("front", ["array", "torch"])
def test_adagrad_state_creation_like_torch(front: str) -> None:
    """torch.optim.Adagrad makes "sum" in the constructor from the constructor's
    initial_accumulator_value (a group's own value is ignored), and a group added later gets
    its state on its first step, from the same constructor value."""
    ref_ps = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in range(3)]
    ref = torch.optim.Adagrad([{"params": [ref_ps[0]], "initial_accumulator_value": 5.0}],
                              initial_accumulator_value=0.25, foreach=False)
    if front == "torch":
        ps = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in range(3)]
        opt = fo_torch.Adagrad([{"params": [ps[0]], "initial_accumulator_value": 5.0}],
                               initial_accumulator_value=0.25)
    else:
        ps = [np.zeros(3) for _ in range(3)]
        opt = fastoptim.Adagrad([{"params": [ps[0]], "initial_accumulator_value": 5.0}],
                                initial_accumulator_value=0.25)

    def state():
        return {k: {n: float(np.asarray(v).flat[0]) for n, v in s.items()}
                for k, s in opt.state_dict()["state"].items()}

    def ref_state():
        return {k: {n: float(v.flatten()[0]) for n, v in s.items()}
                for k, s in ref.state_dict()["state"].items()}

    assert state() == ref_state() == {0: {"step": 0.0, "sum": 0.25}}
    ref.add_param_group({"params": [ref_ps[1]], "initial_accumulator_value": 7.0})
    opt.add_param_group({"params": [ps[1]], "initial_accumulator_value": 7.0})
    assert state() == ref_state()
    for _ in range(3):
        for p in ref_ps[:2]:
            p.grad = torch.full((3,), 0.5, dtype=torch.float64)
        ref.step()
        if front == "torch":
            for p in ps[:2]:
                p.grad = torch.full((3,), 0.5, dtype=torch.float64)
            opt.step()
        else:
            opt.step([np.full(3, 0.5), np.full(3, 0.5)])
        got, want = state(), ref_state()
        assert got.keys() == want.keys()
        for i in want:
            assert got[i] == pytest.approx(want[i], rel=1e-12)
    for p, r in zip(ps, ref_ps):
        np.testing.assert_allclose(np.asarray(p.detach() if front == "torch" else p),
                                   r.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("rule", RULES)
def test_array_front_updates_torch_leaf_tensors_in_place(rule: str) -> None:
    """A torch CPU tensor (even a leaf that requires grad) given to the array front is updated
    in its own memory: zero copy, like a NumPy array."""
    ref = torch.nn.Parameter(torch.linspace(-1, 1, 10, dtype=torch.float64))
    p = torch.nn.Parameter(ref.detach().clone())
    ptr = p.data_ptr()
    ref_opt = reference_class(rule)([ref], **RICH[rule])
    opt = getattr(fastoptim, rule)([p], **RICH[rule])
    for k in range(5):
        g = torch.cos(torch.arange(10, dtype=torch.float64) * (k + 1))
        ref.grad = g.clone()
        ref_opt.step()
        opt.step([g])
    assert p.data_ptr() == ptr
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("rule", RULES)
def test_array_front_buffer_protocol_objects(rule: str) -> None:
    """Plain buffer-protocol objects (array.array, a memoryview of a bytearray) as params and
    grads: updated in place, same numbers as NumPy arrays."""
    import array

    values = [0.5, -1.25, 2.0, 0.0, 3.5]
    grads = [[np.cos(k + i) for i in range(5)] for k in range(6)]
    w = array.array("d", values)
    raw = bytearray(np.array(values, np.float32).tobytes())
    m = memoryview(raw).cast("f")
    ref64, ref32 = np.array(values), np.array(values, np.float32)
    opts = RICH[rule]
    a = getattr(fastoptim, rule)([w, m], **opts)
    b = getattr(fastoptim, rule)([ref64, ref32], **opts)
    for row in grads:
        a.step([array.array("d", row), memoryview(np.array(row, np.float32))])
        b.step([np.array(row), np.array(row, np.float32)])
    np.testing.assert_array_equal(np.array(w), ref64)
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32), ref32)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("rule", RULES)
def test_zero_dim_and_empty_params(rule: str, front: str) -> None:
    """0-d params (a learned temperature) and empty ones (a (3, 0) weight) next to normal ones."""
    case = Case.single(rule, RICH[rule], shapes=((), (0,), (3, 0), (4,)), steps=10)
    assert_close_runs(run(case, front), reference(case), "float64", front)
    case32 = Case.single(rule, RICH[rule], shapes=((), (0,), (3, 0), (4,)), steps=10,
                         dtype="float32")
    assert_close_runs(run(case32, front), reference(case32), "float32", front)
