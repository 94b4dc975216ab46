"""Mixed precision on the array front: NumPy float16 and ml_dtypes bfloat16 params and grads,
master weights, bfloat16 state, stochastic rounding, and their checkpoints."""
from __future__ import annotations

import pickle

import fastoptim
import numpy as np
import pytest
from fastoptim import _core

ml_dtypes = pytest.importorskip("ml_dtypes", exc_type=ImportError)
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
RULES = [info["torch_name"] for info in _core.rules()]
REGISTRY = {info["torch_name"]: info for info in _core.rules()}
LR = {"SGD": 0.1, "Adagrad": 0.1, "Adadelta": 1.0, "RMSprop": 0.01}
N = 4099


def _lr(rule: str) -> float:
    return LR.get(rule, 0.05)


def _grads(dtype, steps: int, n: int = N, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32).astype(dtype) for _ in range(steps)]


def _run(rule: str, dtype, steps: int = 5, grad_dtype=None, threads: int | None = None,
         **settings):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(np.float32).astype(dtype)
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule), **settings)
    saved = fastoptim.get_num_threads()
    if threads is not None:
        fastoptim.set_num_threads(threads)
    try:
        for g in _grads(grad_dtype or dtype, steps):
            opt.step([g])
    finally:
        fastoptim.set_num_threads(saved)
    return p, opt


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("rule", RULES)
def test_16bit_params_are_the_float32_step_rounded_once(rule: str, dtype) -> None:
    """Default: state in the param's dtype, math in float32, each store rounded once to
    nearest-even: one step equals the float32 step on widened values, rounded."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(np.float32).astype(dtype)
    ref = p.astype(np.float32)
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule))
    ref_opt = getattr(fastoptim, rule)([ref], lr=_lr(rule))
    (g,) = _grads(dtype, 1)
    opt.step([g])
    ref_opt.step([g.astype(np.float32)])
    np.testing.assert_array_equal(_bits(p), _bits(ref.astype(dtype)))
    for key, value in opt.state.get(0, {}).items():
        if key != "step" and np.ndim(value):
            assert value.dtype == dtype, key
            np.testing.assert_array_equal(_bits(value),
                                          _bits(ref_opt.state[0][key].astype(dtype)))


@pytest.mark.parametrize("rule", RULES)
def test_master_weights_are_the_float32_step_and_the_param_its_rounding(rule: str) -> None:
    p, opt = _run(rule, BF16, master_weights=True)
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(N).astype(np.float32).astype(BF16).astype(np.float32)
    ref_opt = getattr(fastoptim, rule)([ref], lr=_lr(rule))
    for g in _grads(BF16, 5):
        ref_opt.step([g.astype(np.float32)])
    master = opt.state[0]["master_param"]
    assert master.dtype == np.float32
    np.testing.assert_array_equal(master, ref)
    np.testing.assert_array_equal(_bits(p), _bits(master.astype(BF16)))
    for key, value in opt.state[0].items():
        if key not in ("step", "master_param") and np.ndim(value):
            assert value.dtype == np.float32, key



def _copies_stored_as(ref_opt, rule: str, p: np.ndarray, state, compute) -> None:
    """The reference's state slots that start as a copy of the param (Schedule-Free's z), made
    as the optimizer under test makes them: the param stored in the state's type."""
    for slot in REGISTRY[rule]["param_copies"]:
        ref_opt.state.setdefault(0, {})[slot] = p.astype(state).astype(compute)


def _same_bits_or_both_nan(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Bit for bit, except that a NaN matches any NaN: fastoptim's 16-bit stores give NaN one
    quiet pattern, where NumPy's conversion keeps its sign."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(a32), np.isnan(b32), err_msg=what)
    keep = ~np.isnan(a32)
    np.testing.assert_array_equal(_bits(a)[keep], _bits(b)[keep], err_msg=what)


# ---- every layout the build takes, from the registry ------------------------------------------
# One step on each layout `_core.layouts()` reports equals the step of the compute type (float64
# for float64 params, else float32) on the widened values, each 16-bit store rounded once to
# nearest-even and a master copy the exact float32 result. A storage type missing from DTYPES
# fails here.
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "bfloat16": BF16,
          "float16": F16, "int8": np.dtype(np.uint8)}  # int8: the codes of 8-bit state
LAYOUTS = _core.layouts()


def _layout_id(layout: dict) -> str:
    return "{param}-{grad}-{state}".format(**layout) + ("-master" if layout["master"] else "")


def test_layouts_name_known_storage_types() -> None:
    assert LAYOUTS, "the build reports no layout"
    for layout in LAYOUTS:
        for stream in ("param", "grad", "state"):
            assert layout[stream] in DTYPES, f"{_layout_id(layout)}: no test dtype for {stream}"


@pytest.mark.parametrize("layout", LAYOUTS, ids=_layout_id)
@pytest.mark.parametrize("rule", RULES)
def test_every_layout_is_the_compute_step_stored_once(rule: str, layout: dict) -> None:
    param, grad, state = (DTYPES[layout[k]] for k in ("param", "grad", "state"))
    compute = np.dtype(np.float64) if param == np.float64 else np.dtype(np.float32)
    settings = {"master_weights": True} if layout["master"] else {}
    if state != param or layout["master"]:  # beside a master, state defaults to float32
        settings["state_dtype"] = layout["state"]
    if layout["state"] == "int8":  # stored as blockwise codes (tests/test_int8.py)
        if REGISTRY[rule]["param_copies"]:
            pytest.skip("int8 state is for moments (the refusal: tests/test_int8.py)")
        _int8_layout_is_the_float32_step_quantized(rule, param, grad, settings)
        return
    rng = np.random.default_rng(3)
    p = rng.standard_normal(N).astype(np.float32).astype(param)
    g = (rng.standard_normal(N) * 0.5).astype(np.float32).astype(grad)
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule), **settings)
    ref = p.astype(compute)
    ref_opt = getattr(fastoptim, rule)([ref], lr=_lr(rule))
    _copies_stored_as(ref_opt, rule, ref, state, compute)
    for step in range(2):  # the second step reads state the first one stored
        opt.step([g])
        ref_opt.step([g.astype(compute)])
        if layout["master"]:
            np.testing.assert_array_equal(opt.state[0]["master_param"], ref)
        np.testing.assert_array_equal(_bits(p), _bits(ref.astype(param)))
        for key, value in ref_opt.state.get(0, {}).items():
            if key == "step" or not np.ndim(value):
                continue
            stored = opt.state[0][key]
            assert stored.dtype == state, key
            np.testing.assert_array_equal(_bits(stored), _bits(value.astype(state)), err_msg=key)
            ref_opt.state[0][key][...] = stored.astype(compute)  # the next step reads this
        ref[...] = (opt.state[0]["master_param"] if layout["master"] else p).astype(compute)


def _int8_layout_is_the_float32_step_quantized(rule: str, param, grad, settings: dict) -> None:
    """int8 state: each step is the float32 step from the dequantized state, each slot then
    quantized in blocks (references.quantize_blockwise), the param stored once."""
    import torch
    from references import quantize_blockwise

    settings = {**settings, "min_8bit_size": 0, "block_size": 64}
    rng = np.random.default_rng(3)
    p = rng.standard_normal(N).astype(np.float32).astype(param)
    g = (rng.standard_normal(N) * 0.5).astype(np.float32).astype(grad)
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule), **settings)
    ref = p.astype(np.float32)
    ref_opt = getattr(fastoptim, rule)([ref], lr=_lr(rule))
    unsigned = set(REGISTRY[rule]["non_negative"])
    for _ in range(2):
        opt.step([g])
        ref_opt.step([g.astype(np.float32)])
        if settings.get("master_weights"):
            np.testing.assert_array_equal(opt.state[0]["master_param"], ref)
        np.testing.assert_array_equal(_bits(p), _bits(ref.astype(param)))
        for key, value in ref_opt.state.get(0, {}).items():
            if key == "step" or not np.ndim(value):
                continue
            codes, scales = quantize_blockwise(torch.from_numpy(value.copy()), 64,
                                               key not in unsigned)
            assert opt.state[0][key].dtype == np.uint8, key
            np.testing.assert_array_equal(opt.state[0][key], codes.numpy(), err_msg=key)
            np.testing.assert_array_equal(opt.state[0][f"{key}_scales"], scales.numpy(),
                                          err_msg=key)
            ref_opt.state[0][key][...] = opt.dequantize_state(0, key)
        ref[...] = (opt.state[0]["master_param"] if settings.get("master_weights")
                    else p).astype(np.float32)


# ---- writes to a param beside its master copy -------------------------------------------------
# A write to a 16-bit param between steps is the new master value of every element it changed:
# the next step starts from the written value widened to float32, the untouched elements from
# their master. The reference: the float32 step of float32 params (bit-identical to the master)
# whose values take each change of the 16-bit param, widened.

def _take_writes(before: np.ndarray, p: np.ndarray, shadow: np.ndarray) -> int:
    written = _bits(before) != _bits(p)
    shadow[written] = p[written].astype(np.float32)
    return int(written.sum())


def _write(kind: str, p: np.ndarray, saved: np.ndarray, ema: np.ndarray, k: int) -> None:
    if kind == "assign":  # some elements, specials among them, another set each time
        finfo = ml_dtypes.finfo(p.dtype)
        tiny = float(finfo.tiny)
        values = ((np.arange(p[k::7].size) % 9 - 4) * 0.37 + k).astype(np.float32)
        special = [5.0, -0.0, 0.0, np.inf, -np.inf, np.nan, float(finfo.max),
                   -float(finfo.max), tiny, tiny / 4]
        values[:len(special)] = special
        p[k::7] = values.astype(p.dtype)
    elif kind == "restore":  # the model's weights from a checkpoint
        p[...] = saved
    elif kind == "clip":
        np.clip(p, -0.5, 0.3, out=p)
    elif kind == "ema_swap":
        kept = p.copy()
        p[...] = ema
        ema[...] = kept


@pytest.mark.grid
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["assign", "restore", "clip", "ema_swap"])
@pytest.mark.parametrize("rule", RULES)
def test_a_write_to_the_param_becomes_the_master(rule: str, kind: str, dtype,
                                                 simd_level: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(np.float32).astype(dtype)
    saved, ema = p.copy(), (p.astype(np.float32) * 0.5 + 0.01).astype(dtype)
    shadow = p.astype(np.float32)
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule), master_weights=True)
    ref = getattr(fastoptim, rule)([shadow], lr=_lr(rule))
    grads = _grads(dtype, 4)
    grads[2][...] = 0  # a zero-grad step after a write
    for k, g in enumerate(grads):
        if k > 0:
            before = p.copy()
            _write(kind, p, saved, ema, k)
            changed = _take_writes(before, p, shadow)
            assert changed > 0 or k > 1  # later writes may find nothing to change
        opt.step([g])
        ref.step([g.astype(np.float32)])
        master = opt.state[0]["master_param"]
        np.testing.assert_array_equal(master, shadow, err_msg=f"{kind}, step {k}")
        _same_bits_or_both_nan(p, shadow.astype(dtype), f"{kind}, step {k}")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_zero_grad_step_keeps_a_written_value(dtype, simd_level: str) -> None:
    """The issue's case. AdamW with fresh moments (its first grad is zero too) only decays:
    5.0 * (1 - 0.5 * 0.5) = 3.75 exactly; SGD keeps 5.0 (and -0.0, inf). The untouched
    element steps from its master, which the param cannot hold."""
    odd = 1 + float(ml_dtypes.finfo(dtype).eps)  # times 0.75 it needs one bit more
    p = np.array([odd, 1.5, -2.0], dtype=dtype)
    q = p.copy()
    adamw = fastoptim.AdamW([p], lr=0.5, weight_decay=0.5, master_weights=True)
    sgd = fastoptim.SGD([q], lr=0.5, master_weights=True)
    zero = np.zeros(3, dtype=dtype)
    adamw.step([zero])
    sgd.step([zero])
    assert adamw.state[0]["master_param"][0] == odd * 0.75 != float(p[0])
    p[1] = 5.0
    q[...] = np.array([5.0, -0.0, np.inf], dtype=dtype)
    adamw.step([zero])
    sgd.step([zero])
    want = [odd * 0.75**2, 3.75, -1.125]
    assert adamw.state[0]["master_param"].tolist() == want
    np.testing.assert_array_equal(_bits(p), _bits(np.array(want, dtype=np.float32).astype(dtype)))
    assert q.astype(np.float32).tolist() == [5.0, 0.0, np.inf] and np.signbit(q[1])


def test_a_stale_master_in_a_state_dict_yields_to_the_saved_param() -> None:
    """A consistent pair (param and master saved together after a step) continues from the
    master, exactly. state_dict() after a write and before the next step holds the old master:
    loaded beside the written param, the next step still starts from the written values."""
    p, opt = _run("AdamW", BF16, steps=2, master_weights=True)
    g1, g2 = _grads(BF16, 2, seed=5)
    for write in (False, True):
        if write:
            p *= -2
        values, state = p.copy(), opt.state_dict()
        opt.step([g1 if not write else g2])
        q = values.copy()
        other = fastoptim.AdamW([q], lr=0.05, master_weights=True)
        other.load_state_dict(state)
        other.step([g1 if not write else g2])
        np.testing.assert_array_equal(_bits(q), _bits(p))
        np.testing.assert_array_equal(other.state[0]["master_param"], opt.state[0]["master_param"])
    # one step of lr 0.05 from the written values, not from the stale master
    np.testing.assert_allclose(other.state[0]["master_param"], values.astype(np.float32),
                               rtol=0, atol=0.1)


@pytest.mark.parametrize("rule", RULES)
def test_bfloat16_state_for_float32_params(rule: str) -> None:
    """bfloat16 moments: each step is the float32 step from the widened moments, the moments
    stored rounded."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(np.float32)
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule), state_dtype="bfloat16")
    ref = p.copy()
    ref_opt = getattr(fastoptim, rule)([ref], lr=_lr(rule))
    _copies_stored_as(ref_opt, rule, ref, BF16, np.dtype(np.float32))
    for g in _grads(np.float32, 3):
        opt.step([g])
        ref_opt.step([g])
        np.testing.assert_array_equal(p, ref)
        for key, value in opt.state.get(0, {}).items():
            if key != "step" and np.ndim(value):
                assert value.dtype == BF16
                np.testing.assert_array_equal(_bits(value),
                                              _bits(ref_opt.state[0][key].astype(BF16)))
                ref_opt.state[0][key][...] = value.astype(np.float32)


@pytest.mark.parametrize("grad_dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_16bit_grads_of_float32_params_are_read_as_they_are(grad_dtype) -> None:
    p, _ = _run("AdamW", np.float32, grad_dtype=grad_dtype)
    ref, _ = _run("AdamW", np.float32, grad_dtype=None)  # not the same grads: widened below
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(N).astype(np.float32)
    ref_opt = fastoptim.AdamW([ref], lr=0.05)
    for g in _grads(grad_dtype, 5):
        ref_opt.step([g.astype(np.float32)])
    np.testing.assert_array_equal(p, ref)


@pytest.mark.parametrize("spelling", ["bfloat16", BF16, ml_dtypes.bfloat16], ids=["name",
                                                                                "dtype", "type"])
def test_state_dtype_spellings(spelling) -> None:
    p, opt = _run("Adam", np.float32, steps=1, state_dtype=spelling)
    assert opt.state[0]["exp_avg"].dtype == BF16
    assert opt.param_groups[0]["state_dtype"] == "bfloat16"


def test_float32_state_for_bfloat16_params_without_master() -> None:
    p, opt = _run("Adam", BF16, state_dtype="float32")
    assert opt.state[0]["exp_avg"].dtype == np.float32
    assert "master_param" not in opt.state[0]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_stochastic_rounding_is_reproducible_and_seeded(dtype) -> None:
    a, _ = _run("AdamW", dtype, stochastic_rounding=True, seed=7)
    b, _ = _run("AdamW", dtype, stochastic_rounding=True, seed=7)
    c, _ = _run("AdamW", dtype, stochastic_rounding=True, seed=8)
    d, _ = _run("AdamW", dtype)
    np.testing.assert_array_equal(_bits(a), _bits(b))
    assert (_bits(a) != _bits(c)).any()
    assert (_bits(a) != _bits(d)).any()


@pytest.mark.parametrize("rule", RULES)
def test_stochastic_rounding_is_the_same_at_every_level_and_thread_count(rule: str) -> None:
    level = _core.simd_level()
    results = []
    try:
        for simd in _core.available_simd_levels():
            _core.set_simd_level(simd)
            for threads in (1, 2, 3):
                p, opt = _run(rule, BF16, steps=3, threads=threads, stochastic_rounding=True,
                              seed=3, state_dtype=None)
                results.append(_bits(p).copy())
    finally:
        _core.set_simd_level(level)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_stochastic_rounding_of_extremes_is_the_same_at_every_level(dtype) -> None:
    # NaN, infinities, the largest finite values, subnormals and signed zeros in the param and the
    # grad, odd sizes (the vector body, the even/odd blocks and the one-lane tails all round): the
    # param and state bits agree at every level and thread count, NaN is stored as the
    # nearest-even store stores it, and an infinite param with a finite grad stays infinite.
    info = np.finfo(dtype)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, float(info.max), -float(info.max),
                         float(info.smallest_subnormal), 0.0, -0.0, 1.0], np.float32)
    quiet_nan = 0x7FC0 if dtype == BF16 else 0x7E00
    level = _core.simd_level()
    saved = fastoptim.get_num_threads()
    try:
        for n in (67, 1029):
            rng = np.random.default_rng(n)
            p0 = rng.standard_normal(n).astype(np.float32)
            g = rng.standard_normal(n).astype(np.float32)
            p0[::7] = np.resize(specials, p0[::7].size)
            g[3::5] = np.resize(specials[::-1], g[3::5].size)
            p0, g = p0.astype(dtype), g.astype(dtype)
            results = []
            for simd in _core.available_simd_levels():
                _core.set_simd_level(simd)
                for threads in (1, 2):
                    fastoptim.set_num_threads(threads)
                    p = p0.copy()
                    opt = fastoptim.Adam([p], lr=0.5, stochastic_rounding=True, seed=5)
                    with np.errstate(all="ignore"):
                        for _ in range(2):
                            opt.step([g])
                    state = opt.state[0]
                    results.append([_bits(p).copy()] + [_bits(state[k]).copy()
                                                        for k in ("exp_avg", "exp_avg_sq")])
            for r in results[1:]:
                for got, want in zip(r, results[0]):
                    np.testing.assert_array_equal(got, want)
            for a in results[0]:
                nan = np.isnan(a.view(dtype))
                assert nan.any() and (a[nan] == quiet_nan).all()
            stays = np.isinf(p0) & np.isfinite(g)
            assert stays.any()
            np.testing.assert_array_equal(results[0][0][stays], _bits(p0)[stays])
    finally:
        _core.set_simd_level(level)
        fastoptim.set_num_threads(saved)


def test_sgd_keeps_its_own_rounding_count() -> None:
    p, opt = _run("SGD", BF16, steps=3, stochastic_rounding=True)
    assert float(opt.state[0]["rounding_step"]) == 3.0


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_stochastic_rounding_is_unbiased(dtype) -> None:
    """SGD moves every element by the same fraction of an ulp: the mean of the stochastically
    rounded results converges to the exact value; nearest-even leaves them all unchanged."""
    n = 1 << 16
    start = np.float32(1.0)
    ulp = np.float32(2.0 ** -7 if dtype == BF16 else 2.0 ** -10)
    update = np.float32(0.3) * ulp  # below half an ulp
    for stochastic in (True, False):
        p = np.full(n, start, np.float32).astype(dtype)
        opt = fastoptim.SGD([p], lr=1.0, stochastic_rounding=stochastic, seed=11)
        opt.step([np.full(n, -update, np.float32).astype(np.float32).astype(dtype)])
        values = p.astype(np.float64)
        if not stochastic:
            assert (values == 1.0).all()
            continue
        assert set(np.unique(values)) <= {1.0, 1.0 + float(ulp)}
        exact = 1.0 + float(np.float32(np.float32(-update).astype(dtype).astype(np.float32))) * -1
        fraction = (exact - 1.0) / float(ulp)
        standard_error = np.sqrt(fraction * (1 - fraction) / n) * float(ulp)
        assert abs(values.mean() - exact) < 6 * standard_error


def test_updates_below_half_an_ulp_move_params_only_with_stochastic_rounding_or_master() -> None:
    moved = {}
    for name, settings in {"nearest": {}, "stochastic": {"stochastic_rounding": True},
                           "master": {"master_weights": True}}.items():
        p = np.full(1000, 1.0, np.float32).astype(BF16)
        opt = fastoptim.SGD([p], lr=1e-4, **settings)
        for _ in range(50):
            opt.step([np.ones(1000, np.float32).astype(BF16)])
        moved[name] = float(np.abs(p.astype(np.float32) - 1.0).max())
    assert moved["nearest"] == 0.0
    assert moved["stochastic"] > 0.0
    assert moved["master"] > 0.0


# ---- bad input ----------------------------------------------------------------------------------
def _unchanged_after(opt, params, grads, exc, words: str) -> None:
    before = [p.copy() for p in params]
    state_before = pickle.dumps(opt.state_dict())
    with pytest.raises(exc, match=words):
        opt.step(grads)
    for a, b in zip(params, before):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    assert pickle.dumps(opt.state_dict()) == state_before


def test_grads_wider_than_params_are_refused() -> None:
    p = [np.ones(10, np.float32).astype(BF16), np.ones(10, np.float32)]
    opt = fastoptim.Adam(p)
    _unchanged_after(opt, p, [np.ones(10, np.float32).astype(BF16), np.ones(10)], TypeError,
                     "param 1: grad dtype float64 is wider")
    _unchanged_after(opt, p, [np.ones(10, np.float32), np.ones(10, np.float32)], TypeError,
                     "param 0: grad dtype float32 is wider")


def test_nonsense_settings_are_refused() -> None:
    p = [np.ones(10, np.float32), np.ones(10)]
    opt = fastoptim.Adam(p, state_dtype="bfloat16")
    _unchanged_after(opt, p, [np.ones(10, np.float32), np.ones(10)], TypeError,
                     "param 1: state_dtype=bfloat16 does not fit float64")
    with pytest.raises(ValueError, match="state_dtype"):
        fastoptim.Adam(p, state_dtype="float16")
    with pytest.raises(TypeError, match="seed"):
        fastoptim.Adam(p, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        fastoptim.Adam(p, seed=-1)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        fastoptim.Adam(p, stochastic_rounding="yes")
    ints = [np.ones(10, np.int32)]
    with pytest.raises(TypeError, match="param 0"):
        fastoptim.Adam(ints).step([np.ones(10, np.int32)])


# ---- checkpoints --------------------------------------------------------------------------------
SETTINGS = [{}, {"master_weights": True}, {"state_dtype": "bfloat16", "master_weights": True},
            {"state_dtype": "float32"}, {"stochastic_rounding": True, "seed": 5}]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())) or
                         "default")
def test_checkpoints_carry_storage_types_and_continue_exactly(settings) -> None:
    p, opt = _run("AdamW", BF16, steps=3, **settings)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    assert saved["param_groups"][0]["seed"] == settings.get("seed", 0)
    q = p.copy()
    other = fastoptim.AdamW([q], lr=0.05, **{**settings, "seed": 0})
    other.load_state_dict(saved)
    for key, value in opt.state[0].items():
        assert other.state[0][key].dtype == np.asarray(value).dtype
    for g in _grads(BF16, 2, seed=9):
        opt.step([g])
        other.step([g])
    np.testing.assert_array_equal(_bits(p), _bits(q))


def test_checkpoint_with_other_storage_types_is_refused_and_changes_nothing() -> None:
    p, opt = _run("AdamW", BF16, steps=2)
    saved = opt.state_dict()
    q = p.copy()
    other = fastoptim.AdamW([q], lr=0.05, master_weights=True)
    before = pickle.dumps(other.state_dict())
    with pytest.raises(ValueError, match="master_weights"):
        other.load_state_dict(saved)
    assert pickle.dumps(other.state_dict()) == before
    f32 = np.ones(N, np.float32)
    plain = fastoptim.AdamW([f32], lr=0.05)
    with pytest.raises(ValueError, match="param 0: loaded state 'exp_avg' is bfloat16"):
        plain.load_state_dict(saved)
    assert plain.state == {}


def test_torch_bfloat16_checkpoint_loads_into_ml_dtypes_arrays() -> None:
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.randn(N).to(torch.bfloat16))
    t_opt = torch.optim.AdamW([w], lr=0.05, fused=True)
    w.grad = torch.randn(N).to(torch.bfloat16)
    t_opt.step()
    p = w.detach().float().numpy().astype(BF16)
    opt = fastoptim.AdamW([p], lr=0.05)
    opt.load_state_dict(t_opt.state_dict())
    assert opt.state[0]["exp_avg"].dtype == BF16
    np.testing.assert_array_equal(opt.state[0]["exp_avg"].astype(np.float32),
                                  t_opt.state[w]["exp_avg"].float().numpy())


@pytest.mark.parametrize("grad_dtype", [np.float32, BF16, F16], ids=["float32", "bfloat16",
                                                                      "float16"])
@pytest.mark.parametrize("rule", RULES)
def test_narrower_grads_of_float64_params_are_widened_as_read(rule: str, grad_dtype) -> None:
    """Any grad no wider than its param: a float64 param's float32/bfloat16/float16 grad gives
    the float64 step on the widened grad."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N)
    ref = p.copy()
    opt = getattr(fastoptim, rule)([p], lr=_lr(rule))
    ref_opt = getattr(fastoptim, rule)([ref], lr=_lr(rule))
    for g in _grads(grad_dtype, 3):
        opt.step([g])
        ref_opt.step([g.astype(np.float64)])
    np.testing.assert_array_equal(p, ref)
