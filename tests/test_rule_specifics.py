"""What NAdam, RAdam and Adamax have that the other rules don't, on both fronts against
torch.optim.X(foreach=False): NAdam's per-param mu_product (its exact float32 value, its dtype,
saved, loaded, replaced, or bad), RAdam's switch from its unrectified to its rectified update
(per param, at every SIMD level), Adamax's exp_inf (a running max of |g| + eps, NaN and inf as
torch.maximum has them)."""

from __future__ import annotations

import copy
from typing import Any

import fastoptim
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastoptim.torch as fo_torch  # noqa: E402
from _support import radam_first_rectified, radam_rho, reference_class  # noqa: E402

FRONTS = ("array", "torch")
DTYPES = ("float32", "float64")


def _tol(dtype: Any) -> dict[str, float]:
    return dict(rtol=1e-10, atol=0.0) if str(dtype).endswith("64") else dict(rtol=1e-5, atol=1e-6)


class Run:
    """The same params stepped by torch.optim.X(foreach=False) and by one fastoptim front."""

    def __init__(self, rule: str, front: str, opts: dict, shapes=((7,), (3, 5)),
                 dtype: str = "float64", seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        init = [rng.standard_normal(s).astype(dtype) for s in shapes]
        self.rule, self.front, self.opts, self.dtype = rule, front, opts, np.dtype(dtype)
        self.rng = rng
        self.ref_ps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
        self.ref = reference_class(rule)(self.ref_ps, **opts)
        if front == "torch":
            self.ps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
            self.opt = getattr(fo_torch, rule)(self.ps, **opts)
        else:
            self.ps = [p.copy() for p in init]
            self.opt = getattr(fastoptim, rule)(self.ps, **opts)

    def grads(self) -> list[np.ndarray]:
        return [self.rng.standard_normal(p.shape).astype(self.dtype) for p in self.ps]

    def step(self, grads: list[np.ndarray | None], ours: bool = True, ref: bool = True) -> None:
        if ref:
            for p, g in zip(self.ref_ps, grads):
                p.grad = None if g is None else torch.from_numpy(g.copy())
            self.ref.step()
        if ours:
            if self.front == "torch":
                for p, g in zip(self.ps, grads):
                    p.grad = None if g is None else torch.from_numpy(g.copy())
                self.opt.step()
            else:
                self.opt.step([None if g is None else g.copy() for g in grads])

    def params(self) -> list[np.ndarray]:
        if self.front == "torch":
            return [p.detach().numpy().copy() for p in self.ps]
        return [p.copy() for p in self.ps]

    def ref_params(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.ref_ps]

    def state(self, i: int) -> dict[str, Any]:
        """Param i's live state entries (tensors or arrays); {} if it has none."""
        if self.front == "torch":
            return self.opt.state.get(self.ps[i], {})
        return self.opt.state.get(i, {})

    def ref_state(self, i: int) -> dict[str, torch.Tensor]:
        return self.ref.state[self.ref_ps[i]]

    def assert_close(self, what: str = "") -> None:
        for i, (a, b) in enumerate(zip(self.params(), self.ref_params())):
            np.testing.assert_allclose(a, b, err_msg=f"{what} param {i}", **_tol(self.dtype))
        for i in range(len(self.ps)):
            ours, theirs = self.state(i), self.ref_state(i)
            assert set(ours) == set(theirs), f"{what} param {i}: {sorted(ours)}"
            for key, value in theirs.items():
                got, want = _np(ours[key]), value.numpy()
                scale = max(1.0, float(np.abs(want).max(initial=0.0)))
                tol = _tol(want.dtype)
                np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                           err_msg=f"{what} param {i} {key}")


def _np(value: Any) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _bits(value: Any) -> tuple[str, bytes]:
    a = np.ascontiguousarray(_np(value))
    return a.dtype.str, a.tobytes()


# ---- NAdam: mu_product ---------------------------------------------------------------------------

MU_SETTINGS = [dict(momentum_decay=0.0), dict(), dict(momentum_decay=0.1),
               dict(momentum_decay=1.0, weight_decay=0.1, decoupled_weight_decay=True),
               dict(betas=(0.5, 0.9), momentum_decay=0.02), dict(betas=(0.99, 0.999), lr=0.05)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("opts", MU_SETTINGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in
                                                                     o.items()) or "defaults")
def test_nadam_mu_product_is_torchs_every_step(opts: dict, front: str, dtype: str) -> None:
    """torch keeps mu_product as a 0-d float32 tensor even for float64 params, multiplying it by
    mu (itself rounded to float32) in float32: the value after every step is torch's, bit for
    bit. A param skipped (None grad) keeps its mu_product, as its step count."""
    run = Run("NAdam", front, {"lr": 0.01, **opts}, dtype=dtype)
    for k in range(50):
        grads = run.grads()
        if 10 <= k < 15:
            grads[1] = None
        run.step(grads)
        for i in range(2):
            ours, theirs = run.state(i)["mu_product"], run.ref_state(i)["mu_product"]
            assert theirs.dtype == torch.float32 and theirs.dim() == 0
            if front == "torch":
                assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
            else:
                assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
            assert _np(ours).shape == ()
            assert float(ours) == float(theirs), f"step {k + 1} param {i}"
    run.assert_close()
    assert float(run.state(1)["step"]) == 45.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_nadam_mu_product_float64_under_float64_default_dtype(dtype: str) -> None:
    """With torch's default dtype float64, torch makes step and mu_product float64 (and
    multiplies in float64): so does the torch front, bit for bit."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run = Run("NAdam", "torch", dict(lr=0.01, momentum_decay=0.1), dtype=dtype)
        for k in range(20):
            run.step(run.grads())
            for i in range(2):
                ours, theirs = run.state(i), run.ref_state(i)
                for key in ("step", "mu_product"):
                    assert ours[key].dtype == theirs[key].dtype == torch.float64, key
                assert _bits(ours["mu_product"]) == _bits(theirs["mu_product"]), f"step {k + 1}"
        run.assert_close()
    finally:
        torch.set_default_dtype(previous)


def test_nadam_mu_product_in_state_dict() -> None:
    """Both fronts save mu_product like torch (a 0-d float32 scalar, NumPy on the array front),
    and a snapshot does not move with later steps."""
    for front in FRONTS:
        run = Run("NAdam", front, dict(lr=0.01, momentum_decay=0.05), dtype="float64")
        for _ in range(6):
            run.step(run.grads())
        sd, want = run.opt.state_dict(), run.ref.state_dict()
        for i in range(2):
            got = sd["state"][i]["mu_product"]
            assert isinstance(got, torch.Tensor if front == "torch" else np.ndarray)
            assert _bits(got) == _bits(want["state"][i]["mu_product"]), front
            assert sd["state"][i].keys() == want["state"][i].keys()
        frozen = float(sd["state"][0]["mu_product"])
        run.step(run.grads())
        assert float(sd["state"][0]["mu_product"]) == frozen
        assert float(run.state(0)["mu_product"]) != frozen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("front", FRONTS)
def test_nadam_loaded_mu_product_is_used(front: str, dtype: str) -> None:
    """A loaded mu_product is what the next steps multiply (not recomputed from the step
    count): torch's state_dict with mu_product set to 0.125 at step 7, loaded into torch.optim
    and into fastoptim, continues the same."""
    run = Run("NAdam", front, dict(lr=0.01, momentum_decay=0.02), dtype=dtype)
    for _ in range(7):
        run.step(run.grads(), ours=False)
    sd = copy.deepcopy(run.ref.state_dict())
    for s in sd["state"].values():
        s["mu_product"] = torch.tensor(0.125)  # float32, as torch saves it
    run.ref.load_state_dict(copy.deepcopy(sd))
    if front == "array":
        sd["state"] = {i: {k: v.numpy() for k, v in s.items()} for i, s in sd["state"].items()}
        for p, r in zip(run.ps, run.ref_ps):
            p[...] = r.detach().numpy()
    else:
        with torch.no_grad():
            for p, r in zip(run.ps, run.ref_ps):
                p.copy_(r)
    run.opt.load_state_dict(sd)
    for i in range(2):
        assert float(run.state(i)["mu_product"]) == 0.125
    for _ in range(10):
        run.step(run.grads())
    # torch's load_state_dict casts mu_product to a float64 param's dtype (and torch multiplies
    # it in float64 from then on); the array front keeps a float32 scalar
    for i in range(2):
        if front == "torch" or dtype == "float32":
            assert _bits(run.state(i)["mu_product"]) == _bits(run.ref_state(i)["mu_product"])
        else:
            assert _np(run.state(i)["mu_product"]).dtype == np.float32
            np.testing.assert_allclose(float(run.state(i)["mu_product"]),
                                       float(run.ref_state(i)["mu_product"]), rtol=1e-6)
    # (float32 against float64 mu_products moves float64 params by ~1e-11 here)
    for a, b in zip(run.params(), run.ref_params()):
        np.testing.assert_allclose(a, b, **(_tol(dtype) if front == "torch" or dtype == "float32"
                                            else dict(rtol=1e-9, atol=1e-10)))


def test_nadam_float64_mu_product_is_multiplied_in_float64() -> None:
    """A float64 mu_product (as torch's load_state_dict leaves it for float64 params; here set
    by hand next to a float32 param) is multiplied in float64 by torch and stays float64: so on
    the torch front, bit for bit."""
    run = Run("NAdam", "torch", dict(lr=0.05, momentum_decay=0.1), dtype="float32")
    for _ in range(3):
        run.step(run.grads())
    value = float(run.ref_state(0)["mu_product"]) * (1 + 2**-40)  # not a float32 value
    run.ref_state(0)["mu_product"] = torch.tensor(value, dtype=torch.float64)
    run.state(0)["mu_product"] = torch.tensor(value, dtype=torch.float64)
    for _ in range(5):
        run.step(run.grads())
    theirs = run.ref_state(0)["mu_product"]
    assert theirs.dtype == torch.float64
    assert _bits(run.state(0)["mu_product"]) == _bits(theirs)
    assert _bits(run.state(1)["mu_product"]) == _bits(run.ref_state(1)["mu_product"])
    run.assert_close()


def _snapshot(run: Run) -> tuple:
    states = {i: {k: copy.deepcopy(_np(v) if isinstance(v, (torch.Tensor, np.ndarray)) else v)
                  for k, v in run.state(i).items()} for i in range(len(run.ps))}
    return run.params(), states


def _assert_same(after: tuple, before: tuple) -> None:
    for a, b in zip(after[0], before[0]):
        np.testing.assert_array_equal(a, b)
    assert after[1].keys() == before[1].keys()
    for i in before[1]:
        assert after[1][i].keys() == before[1][i].keys()
        for k, v in before[1][i].items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(after[1][i][k], v, err_msg=k)
            else:
                assert after[1][i][k] == v


def _bad_mu_product(kind: str, front: str) -> Any:
    if kind == "string":
        return "abc"
    if kind == "list":
        return [0.5, 0.25]
    if kind == "shape-3":  # a buffer where a scalar belongs
        return torch.full((3,), 0.5) if front == "torch" else np.full(3, 0.5, np.float32)
    raise KeyError(kind)


BAD_MU = ["string", "list", "shape-3"]


@pytest.mark.parametrize("kind", BAD_MU)
@pytest.mark.parametrize("front", FRONTS)
def test_nadam_bad_mu_product_in_checkpoint(front: str, kind: str) -> None:
    """A loaded state whose mu_product is not a number or not a scalar: a ValueError or
    TypeError naming the param and mu_product, at load_state_dict or at the next step, and
    nothing changes (params 0 and 1 are one group: param 0 is not stepped either); the
    optimizer then goes on like one that never saw the bad checkpoint."""
    run = Run("NAdam", front, dict(lr=0.01), dtype="float32")
    twin = Run("NAdam", front, dict(lr=0.01), dtype="float32")
    for _ in range(2):
        grads = run.grads()
        run.step(grads, ref=False)
        twin.step(grads, ref=False)
    sd = copy.deepcopy(run.opt.state_dict())
    sd["state"][1]["mu_product"] = _bad_mu_product(kind, front)
    before = _snapshot(run)
    grads = run.grads()
    try:
        run.opt.load_state_dict(sd)
    except (ValueError, TypeError) as exc:
        message = str(exc)
    else:  # accepted at load (as torch.optim does): the step must refuse it, all or nothing
        loaded = _snapshot(run)
        with pytest.raises((ValueError, TypeError)) as info:
            run.step(grads, ref=False)
        message = str(info.value)
        _assert_same(_snapshot(run), loaded)
        run.opt.load_state_dict(twin.opt.state_dict())  # a good checkpoint replaces it
    assert "mu_product" in message and "param 1" in message, message
    _assert_same(_snapshot(run), before)
    run.step(grads, ref=False)
    twin.step(grads, ref=False)
    _assert_same(_snapshot(run), _snapshot(twin))


@pytest.mark.parametrize("kind", BAD_MU)
@pytest.mark.parametrize("front", FRONTS)
def test_nadam_bad_mu_product_set_by_hand(front: str, kind: str) -> None:
    """opt.state[...]["mu_product"] replaced by a bad value between steps: the step raises
    naming the param and mu_product, and no param or state entry changed (param 0, before it
    in the group, is above the serial threshold: threads would have split it)."""
    run = Run("NAdam", front, dict(lr=0.01), shapes=((40000,), (3,), (5,)), dtype="float32")
    for _ in range(2):
        run.step(run.grads(), ref=False)
    run.state(2)["mu_product"] = _bad_mu_product(kind, front)
    before = _snapshot(run)
    with pytest.raises((ValueError, TypeError)) as info:
        run.step(run.grads(), ref=False)
    assert "mu_product" in str(info.value) and "param 2" in str(info.value), str(info.value)
    _assert_same(_snapshot(run), before)


# ---- RAdam: unrectified, then rectified --------------------------------------------------------

RADAM_BETAS = [(0.9, 0.999), (0.9, 0.9), (0.8, 0.7), (0.5, 0.6)]


@pytest.mark.parametrize("betas", RADAM_BETAS, ids=lambda b: f"beta2={b[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("front", FRONTS)
def test_radam_switch_to_rectified_matches_torch_every_step(front: str, dtype: str, betas,
                                                            simd_level: str) -> None:
    """beta2 0.999 and 0.9 switch at step 6, 0.7 (rho_inf 5.67) at step 10, 0.6 (rho_inf 4)
    never: params and state equal torch's after every one of 14 steps, at every SIMD level,
    with sizes that end on every vector tail."""
    first = radam_first_rectified(betas[1], 14)
    assert first == {0.999: 6, 0.9: 6, 0.7: 10, 0.6: None}[betas[1]]  # the run crosses (or not)
    run = Run("RAdam", front, dict(lr=0.05, betas=betas, weight_decay=0.01), dtype=dtype,
              shapes=((1,), (7,), (16,), (17,), (3, 11)))
    for k in range(14):
        run.step(run.grads())
        run.assert_close(f"{simd_level} step {k + 1}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("front", FRONTS)
def test_radam_branch_is_per_param(front: str, dtype: str) -> None:
    """The branch depends on each param's own step count: a param whose grad was None for
    3 steps is still unrectified when the others of its group are rectified (steps 6-8)."""
    run = Run("RAdam", front, dict(lr=0.05, betas=(0.9, 0.9), decoupled_weight_decay=True,
                                   weight_decay=0.1), dtype=dtype, shapes=((9,), (4, 3)))
    for k in range(12):
        grads = run.grads()
        if 1 <= k <= 3:
            grads[1] = None
        run.step(grads)
        run.assert_close(f"step {k + 1}")
        if k == 6:  # step 7 of param 0 (rectified), step 4 of param 1 (not)
            assert float(run.state(0)["step"]) == 7 and float(run.state(1)["step"]) == 4
            assert radam_rho(0.9, 7)[1] > 5.0 >= radam_rho(0.9, 4)[1]


# ---- Adamax: exp_inf -----------------------------------------------------------------------------

def _adamax_grads(rng: np.random.Generator, k: int, n: int, dtype: str) -> np.ndarray:
    """Grads that take both sides of the max: small and large values, exact zeros, -0.0, spikes."""
    g = rng.standard_normal(n) * (10.0 if k % 7 == 3 else 0.1 if k % 5 == 4 else 1.0)
    g[k % n] = 0.0
    g[(3 * k + 1) % n] = -0.0
    g[(5 * k + 2) % n] = 1e-4 * rng.standard_normal()
    return g.astype(dtype)


@pytest.mark.parametrize("opts", [dict(), dict(betas=(0.5, 0.5), eps=1e-3, maximize=True),
                                  dict(betas=(0.0, 0.0), eps=1e-3), dict(eps=0.0, betas=(0.8, 0.99)),
                                  dict(eps=0.5, lr=0.1)],
                         ids=["defaults", "eps1e-3-maximize", "betas=0", "eps=0", "eps=0.5"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("front", FRONTS)
def test_adamax_exp_inf_is_torchs_bit_for_bit(front: str, dtype: str, opts: dict) -> None:
    """Without weight decay exp_inf depends on the grads alone, through exactly rounded
    operations (beta2 * exp_inf, |g| + eps, max): it equals torch's bit for bit after every
    step; exp_avg and the params meet the usual bar."""
    run = Run("Adamax", front, {"lr": 0.01, **opts}, dtype=dtype, shapes=((37,),))
    rng = np.random.default_rng(3)
    for k in range(30):
        g = _adamax_grads(rng, k, 37, dtype)
        if k == 0 and opts.get("eps", 1e-8) == 0.0:
            g[g == 0] = 0.5  # eps=0: a zero first grad would give exp_inf 0 and 0/0
        run.step([g])
        ours, theirs = run.state(0)["exp_inf"], run.ref_state(0)["exp_inf"]
        assert _bits(ours) == _bits(theirs), f"step {k + 1}"
    run.assert_close()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("front", FRONTS)
def test_adamax_nan_and_inf_like_torch(front: str, dtype: str, simd_level: str) -> None:
    """torch.maximum propagates NaN from either side: a NaN grad makes that element's exp_inf,
    exp_avg and param NaN, and a NaN already in exp_inf stays NaN against later finite grads
    (a max that returns its other operand on NaN would drop it, one way or the other). +-inf
    grads give an infinite exp_inf and a NaN param. Other elements are untouched by these.
    Positions in the vector body and in the tails, at every SIMD level. exp_avg need only be
    non-finite where torch's is (NaN or inf depends on how lerp is written)."""
    n = 37
    run = Run("Adamax", front, dict(lr=0.01, betas=(0.8, 0.9)), dtype=dtype, shapes=((n,),))
    rng = np.random.default_rng(5)
    for k in range(12):
        g = rng.standard_normal(n).astype(dtype)
        if k == 2:
            g[[0, 9, 33, 36]] = np.nan
        if k == 4:
            g[5], g[34] = np.inf, -np.inf
        run.step([g])
        for name, ours, theirs in (("param", run.params()[0], run.ref_params()[0]),
                                   *((key, _np(run.state(0)[key]), run.ref_state(0)[key].numpy())
                                     for key in ("exp_avg", "exp_inf"))):
            where = f"{simd_level} step {k + 1} {name}"
            finite = np.isfinite(theirs)
            np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=where)
            if name != "exp_avg":
                np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=where)
            np.testing.assert_allclose(ours[finite], theirs[finite], **_tol(dtype),
                                       err_msg=f"{simd_level} step {k + 1} {name}")
    # the run went where the docstring says
    exp_inf, param = run.ref_state(0)["exp_inf"].numpy(), run.ref_params()[0]
    assert np.isnan(exp_inf[[0, 9, 33, 36]]).all() and np.isposinf(exp_inf[[5, 34]]).all()
    assert np.isnan(param[[0, 9, 33, 36, 5, 34]]).all() and np.isfinite(param).sum() == n - 6


@pytest.mark.parametrize("front", FRONTS)
def test_adamax_loaded_nan_exp_inf_stays_nan(front: str) -> None:
    """A NaN in a loaded exp_inf (from torch's state_dict) stays NaN, as in torch."""
    run = Run("Adamax", front, dict(lr=0.01), dtype="float32", shapes=((19,),))
    run.step(run.grads(), ours=False)
    sd = copy.deepcopy(run.ref.state_dict())
    sd["state"][0]["exp_inf"][[2, 17]] = float("nan")
    run.ref.load_state_dict(copy.deepcopy(sd))
    if front == "array":
        sd["state"] = {i: {k: v.numpy() for k, v in s.items()} for i, s in sd["state"].items()}
        run.ps[0][...] = run.ref_ps[0].detach().numpy()
    else:
        with torch.no_grad():
            run.ps[0].copy_(run.ref_ps[0])
    run.opt.load_state_dict(sd)
    for _ in range(3):
        run.step(run.grads())
    ours, theirs = _np(run.state(0)["exp_inf"]), run.ref_state(0)["exp_inf"].numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.isnan(ours[[2, 17]]).all() and np.isnan(run.params()[0][[2, 17]]).all()
    finite = ~np.isnan(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], **_tol("float32"))
