"""The checked-in torch.optim trajectories (tests/data/reference_trajectories.json, shared with
the C++ tests) reproduced by both Python fronts, step by step, at every SIMD level."""

from __future__ import annotations

import json
from pathlib import Path

import fastoptim
import numpy as np
import pytest
from _support import HAVE_TORCH, slot_entries
from fastoptim import _core

DATA = Path(__file__).parent / "data" / "reference_trajectories.json"
CASES = json.loads(DATA.read_text())["cases"] if DATA.exists() else []

pytestmark = pytest.mark.skipif(not DATA.exists(), reason="no reference_trajectories.json")


def _tol(dtype: str) -> dict[str, float]:
    return dict(rtol=1e-10, atol=0.0) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)


def _options(case: dict) -> dict:
    opts = dict(case["options"])
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    return opts


def test_file_is_well_formed() -> None:
    data = json.loads(DATA.read_text())
    assert data["format"] == "fastoptim-reference-trajectories"
    assert data["version"] == 1
    assert {c["optimizer"] for c in CASES} == {info["torch_name"] for info in _core.rules()}
    names = {info["torch_name"]: info["name"] for info in _core.rules()}
    assert all(c["rule"] == names[c["optimizer"]] for c in CASES)
    assert len({c["name"] for c in CASES}) == len(CASES)
    for c in CASES:  # every rule in both dtypes; NAdam's mu_product, like step, a number
        assert any(d["optimizer"] == c["optimizer"] and d["dtype"] != c["dtype"] for d in CASES)
        for state in c["final_state"]:
            assert all(isinstance(v, list) != (k in ("step", "mu_product"))
                       for k, v in state.items()), c["name"]


@pytest.mark.parametrize("front", ["array", "torch"] if HAVE_TORCH else ["array"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fronts_reproduce_reference(case: dict, front: str, simd_level: str) -> None:
    dtype = np.dtype(case["dtype"])
    shapes = [tuple(s) for s in case["shapes"]]
    init = [np.array(v, dtype=dtype).reshape(s) for v, s in zip(case["params"], shapes)]
    if front == "torch":
        import fastoptim.torch as fo_torch
        import torch

        params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
        opt = getattr(fo_torch, case["optimizer"])(params, **_options(case))
    else:
        params = [p.copy() for p in init]
        opt = getattr(fastoptim, case["optimizer"])(params, **_options(case))
    tol = _tol(case["dtype"])
    for k, step in enumerate(case["steps"]):
        opt.param_groups[0]["lr"] = step["lr"]
        grads = [None if g is None else np.array(g, dtype=dtype).reshape(s)
                 for g, s in zip(step["grads"], shapes)]
        if front == "torch":
            for p, g in zip(params, grads):
                p.grad = None if g is None else torch.from_numpy(g)
            opt.step()
            got = [p.detach().numpy() for p in params]
        else:
            opt.step(grads)
            got = params
        for i, (p, want) in enumerate(zip(got, step["params"])):
            np.testing.assert_allclose(p.reshape(-1), np.array(want, dtype=dtype), **tol,
                                       err_msg=f"step {k} param {i}")
    state = opt.state_dict()["state"]
    for i, want in enumerate(case["final_state"]):
        have = slot_entries(state.get(i, {}), case["optimizer"])
        have = {k: v for k, v in have.items() if v is not None}
        assert set(have) == set(want), f"param {i}"
        for name, value in want.items():
            got = np.asarray(have[name].detach() if hasattr(have[name], "detach") else have[name])
            if name == "step":
                assert float(got) == float(value)
            elif name == "mu_product":  # torch's float32 product, exactly (float64 params too)
                assert got.shape == () and got.dtype == np.float32
                assert float(got) == value, f"final mu_product of param {i}"
            else:
                assert got.dtype == dtype
                np.testing.assert_allclose(got.reshape(-1), np.array(value, dtype=dtype),
                                           rtol=tol["rtol"],
                                           atol=tol["atol"] * max(1.0, np.abs(value).max()),
                                           err_msg=f"final {name} of param {i}")
