"""int8 state (state_dtype="int8"): blockwise dynamic 8-bit moments, torchao 0.18's AdamW8bit.

- the maps and the quantization are the reference's (tests/references.py, written from
  torchao's quant_utils), bit for bit at every SIMD level, partial last blocks included;
- against torchao's AdamW8bit/Adam8bit (eager: torch.compile disabled), 20 steps: teacher-forced
  (both start every step from the same state) the codes are identical except ties, counted,
  each a value within float32 rounding of the two op orders from a decision boundary, and the
  params within rtol 1e-4 / atol 1e-6; free-running, the codes that differ are counted and the
  params of every element whose codes never differed are within the same tolerance;
- every other rule with moment state against its fp32 reference with the same quantization
  (references.Quantized8bit);
- bit-identical across SIMD levels and thread counts; combined with bf16 params, master
  weights, stochastic rounding, clipping and GradScaler; checkpoints (and torchao's); every bad
  input a ValueError/TypeError with nothing changed.
"""

from __future__ import annotations

import copy
import math

import fastoptim
import fastoptim.torch as fo
import numpy as np
import pytest
from conftest import LEVELS
from fastoptim import _core
from references import Quantized8bit, dequantize_blockwise, dynamic_map, quantize_blockwise

torch = pytest.importorskip("torch")

REGISTRY = {info["torch_name"]: info for info in _core.rules()}
# every rule with moment state takes int8 state; a rule with a slot that copies the param
# (Schedule-Free's z) refuses it
MOMENT_RULES = [name for name, info in REGISTRY.items()
                if info["slots"] and not info["param_copies"]]
COPY_RULES = [name for name, info in REGISTRY.items() if info["param_copies"]]
OPTIONS = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.5, "centered": True},
           "Adagrad": {"initial_accumulator_value": 0.1}, "Adam": {"amsgrad": True}}
LR = {"SGD": 0.05, "Adagrad": 0.05, "Adadelta": 1.0, "RMSprop": 0.01, "Lion": 1e-3}


def _torchao():
    return pytest.importorskip("torchao.optim", exc_type=ImportError)


def _reference_class(name: str) -> type:
    reference = REGISTRY[name]["reference"]
    if reference.startswith("torch.optim."):
        return getattr(torch.optim, name)
    import references

    return getattr(references, name)


# ---- the map and the quantization -----------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_is_the_reference(signed: bool) -> None:
    ours = torch.tensor(_core.dynamic_map(signed), dtype=torch.float32)
    assert torch.equal(ours.view(torch.int32), dynamic_map(signed).view(torch.int32))
    try:
        from torchao.optim.subclass_8bit import get_qmap_signed, get_qmap_unsigned
    except ImportError:
        return
    theirs = torch.tensor(get_qmap_signed() if signed else get_qmap_unsigned())
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))


def _values(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.integers(-8, 3, n)
    x[rng.integers(0, n, max(1, n // 50))] = 0.0
    return torch.from_numpy(x)


def _with_ties(signed: bool, block: int) -> torch.Tensor:
    """A block whose elements sit exactly on the rounding midpoints (float32), and next to
    them: a tie goes up."""
    qmap = dynamic_map(signed)
    mids = (qmap[:-1] + (qmap[1:] - qmap[:-1]) * 0.5)
    x = torch.cat([torch.tensor([1.0]), mids, torch.nextafter(mids, torch.zeros(()))])
    return x[:block] if x.numel() >= block else torch.cat([x, torch.zeros(block - x.numel())])


@pytest.mark.parametrize("block", [32, 256, 4096])
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_is_the_reference_at_every_level(simd_level: str, signed: bool,
                                                  block: int) -> None:
    parts = [_values(3 * block + 17, 1), _with_ties(signed, block),
             torch.tensor([float("nan"), 1.0, -2.0] + [0.5] * (block - 3)),  # a NaN block
             torch.tensor([float("inf"), 1.0] + [0.25] * (block - 2)),  # an inf block
             torch.zeros(block), torch.full((block,), 1e-13), _values(5, 2)]  # partial last
    x = torch.cat([t.float() for t in parts])
    if not signed:
        x = x.abs()
    codes = np.empty(x.numel(), dtype=np.uint8)
    scales = np.empty(-(-x.numel() // block), dtype=np.float32)
    _core.quantize(x.numpy(), codes, scales, block, signed)
    want_codes, want_scales = quantize_blockwise(x, block, signed)
    np.testing.assert_array_equal(codes, want_codes.numpy())
    np.testing.assert_array_equal(np.isnan(scales), want_scales.isnan().numpy())
    finite = ~np.isnan(scales)
    np.testing.assert_array_equal(scales[finite], want_scales.numpy()[finite])
    values = np.empty(x.numel(), dtype=np.float32)
    _core.dequantize(codes, scales, values, block, signed)
    want = dequantize_blockwise(torch.from_numpy(codes), torch.from_numpy(scales), block, signed)
    np.testing.assert_array_equal(values, want.numpy())


def test_ties_go_up() -> None:
    qmap = dynamic_map(True)
    x = torch.zeros(32)
    x[0] = 1.0  # the scale: every other value is its own scaled value
    x[1] = qmap[200] + (qmap[201] - qmap[200]) * 0.5  # exactly the midpoint in float32
    codes = np.empty(32, dtype=np.uint8)
    scales = np.empty(1, dtype=np.float32)
    _core.quantize(x.numpy(), codes, scales, 32, True)
    assert codes[1] == 201


def test_quantize_checks_sizes_before_writing() -> None:
    x = np.ones(100, dtype=np.float32)
    codes, scales = np.zeros(100, dtype=np.uint8), np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        _core.quantize(x, codes, scales, 48, True)
    with pytest.raises(ValueError, match="scales: expected 4"):
        _core.quantize(x, codes, np.zeros(3, dtype=np.float32), 32, True)
    with pytest.raises(ValueError, match="codes: expected 100"):
        _core.quantize(x, np.zeros(99, dtype=np.uint8), scales, 32, True)
    assert not codes.any() and not scales.any()


# ---- against torchao --------------------------------------------------------------------------
SHAPES = [(64, 256), (4096,), (10, 10)]  # torchao quantizes numel >= 4096 divisible by 256


def _ao_pair(name: str, **options):
    ao = _torchao()
    torch.manual_seed(0)
    start = [torch.randn(shape) for shape in SHAPES]
    pa = [t.clone().requires_grad_() for t in start]
    pf = [t.clone().requires_grad_() for t in start]
    return getattr(ao, name)(pa, **options), pa, getattr(fo, name)(pf, **options), pf


def _grads(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=generator) * 0.1 for shape in SHAPES]


def _quantized(state: dict, key: str):
    """(codes, scales) of a torchao state entry, or None for its float32 state."""
    value = state[key]
    return (value.codes, value.scale) if hasattr(value, "codes") else None


AO_CASES = [("AdamW8bit", {"lr": 1e-2}), ("AdamW8bit", {"lr": 3e-3, "weight_decay": 0.1}),
            ("Adam8bit", {"lr": 1e-2, "weight_decay": 1e-3})]
# (torchao 0.18's amsgrad fails on its own 8-bit state: aten.maximum is not implemented for
# OptimState8bit; fastoptim's amsgrad is checked against the reference below)
SLOTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _moments_both_orders(name: str, options: dict, p, g, state_f, k: str, step: int,
                         fo_opt) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 value of moment ``k`` before quantization, from the same dequantized state:
    torch's op order (fastoptim's) and torchao's."""
    beta1, beta2 = options.get("betas", (0.9, 0.999))
    wd = options.get("weight_decay", 1e-2 if name == "AdamW8bit" else 0.0)
    g_torch, g_ao = g, g
    if name == "Adam8bit" and wd:
        g_torch, g_ao = g.add(p.detach(), alpha=wd), g + wd * p.detach()
    m = fo_opt.dequantize_state(p, "exp_avg") if "exp_avg" in state_f else torch.zeros_like(p)
    v = fo_opt.dequantize_state(p, "exp_avg_sq") if "exp_avg_sq" in state_f else \
        torch.zeros_like(p)
    if k == "exp_avg":
        return m.lerp(g_torch, 1 - beta1), m.lerp(g_ao, 1 - beta1)
    v_torch = v.mul(beta2).addcmul_(g_torch, g_torch, value=1 - beta2)
    v_ao = v.lerp(g_ao.square(), 1 - beta2)
    if k == "exp_avg_sq":
        return v_torch, v_ao
    most = fo_opt.dequantize_state(p, k) if k in state_f else torch.zeros_like(p)
    return torch.maximum(most, v_torch), torch.maximum(most, v_ao)


@pytest.mark.parametrize(("name", "options"), AO_CASES, ids=lambda x: str(x))
def test_against_torchao_teacher_forced(monkeypatch: pytest.MonkeyPatch, name: str,
                                        options: dict) -> None:
    """Each step from the same params and state: every code equal except ties (a value within
    float32 rounding of the two op orders from the decision midpoint), params within rtol 1e-4,
    atol 1e-6."""
    monkeypatch.setattr(torch, "compile", lambda f, **_: f)  # torchao eager
    ao, pa, opt, pf = _ao_pair(name, **options)
    ties, worst = 0, [0.0, 0.0]
    for step in range(20):
        grads = _grads(step)
        before = {}
        for a, f, g in zip(pa, pf, grads):
            with torch.no_grad():
                a.copy_(f)
            a.grad, f.grad = g.clone(), g.clone()
            state_a, state_f = ao.state.get(a), opt.state.get(f)
            if state_a:  # torchao's state: fastoptim's codes and scales
                for k in SLOTS:
                    if k in state_a and _quantized(state_a, k) is not None:
                        state_a[k].codes.copy_(state_f[k])
                        state_a[k].scale.copy_(state_f[f"{k}_scales"])
                    elif k in state_a:
                        state_a[k].copy_(state_f[k])
            before[id(f)] = {k: _moments_both_orders(name, options, f, g, state_f or {},
                                                     k, step, opt)
                             for k in SLOTS if state_f and k in state_f} if state_f else {}
        ao.step()
        opt.step()
        for a, f in zip(pa, pf):
            torch.testing.assert_close(f, a, rtol=1e-4, atol=1e-6)
            error = (f.detach() - a.detach()).abs()
            worst[0] = max(worst[0], float(error.max()))
            worst[1] = max(worst[1], float((error / (1e-6 + 1e-4 * a.detach().abs())).max()))
            state_a, state_f = ao.state[a], opt.state[f]
            for k in SLOTS:
                if k not in state_a or _quantized(state_a, k) is None:
                    continue
                codes_a, scale_a = _quantized(state_a, k)
                differ = state_f[k] != codes_a
                if not differ.any():
                    continue
                assert (state_f[k].int() - codes_a.int())[differ].abs().max() == 1, k
                ties += int(differ.sum())
                if id(f) not in before or k not in before[id(f)]:
                    continue  # the first step: both from zero state
                ours, theirs = before[id(f)][k]
                # a tie: the two float32 values, scaled, straddle the midpoint of the two codes
                # (within the rounding of the division)
                signed = k == "exp_avg"
                qmap = dynamic_map(signed)
                low = torch.minimum(state_f[k], codes_a).long()[differ]
                mid = qmap[low] + (qmap[low + 1] - qmap[low]) * 0.5
                block = f.numel() // scale_a.numel()
                index = torch.arange(f.numel()).view(f.shape)[differ] // block
                y_ours = ours[differ] / state_f[f"{k}_scales"][index]
                y_theirs = theirs[differ] / scale_a[index]
                slack = 4 * torch.finfo(torch.float32).eps * mid.abs()
                assert bool(((torch.minimum(y_ours, y_theirs) <= mid + slack) &
                             (torch.maximum(y_ours, y_theirs) >= mid - slack)).all()), k
    print(f"{name} {options}: {ties} tied codes of {sum(math.prod(s) for s in SHAPES)} "
          f"elements x 20 steps; params max abs {worst[0]:.3g}, {worst[1]:.1%} of the tolerance")


@pytest.mark.parametrize(("name", "options"), AO_CASES, ids=lambda x: str(x))
def test_against_torchao_20_steps(monkeypatch: pytest.MonkeyPatch, name: str,
                                  options: dict) -> None:
    """Free-running: the codes that differ are adjacent and few (ties, and what they lead to);
    every element whose codes never differed has its param within rtol 1e-4, atol 1e-6."""
    monkeypatch.setattr(torch, "compile", lambda f, **_: f)
    ao, pa, opt, pf = _ao_pair(name, **options)
    touched = [torch.zeros(s, dtype=torch.bool) for s in SHAPES]
    differing = 0
    for step in range(20):
        for a, f, g in zip(pa, pf, _grads(step)):
            a.grad, f.grad = g.clone(), g.clone()
        ao.step()
        opt.step()
        for i, (a, f) in enumerate(zip(pa, pf)):
            for k in SLOTS:
                if k in ao.state[a] and _quantized(ao.state[a], k) is not None:
                    differ = opt.state[f][k] != ao.state[a][k].codes
                    touched[i] |= differ
                    differing += int(differ.sum())
    total = sum(math.prod(s) for s in SHAPES)
    assert sum(int(t.sum()) for t in touched) <= total // 500
    worst = [0.0, 0.0]
    for a, f, t in zip(pa, pf, touched):
        torch.testing.assert_close(f.detach()[~t], a.detach()[~t], rtol=1e-4, atol=1e-6)
        error = (f.detach() - a.detach()).abs()[~t]
        worst = [max(worst[0], float(error.max())),
                 max(worst[1], float((error / (1e-6 + 1e-4 * a.detach().abs()[~t])).max()))]
    print(f"{name} {options}: {differing} code differences over 20 steps, "
          f"{sum(int(t.sum()) for t in touched)} of {total} elements touched; untouched params "
          f"max abs {worst[0]:.3g}, {worst[1]:.1%} of the tolerance")


def test_aliases_are_adam_and_adamw_with_int8_state() -> None:
    p = torch.zeros(8192, requires_grad=True)
    opt = fo.AdamW8bit([p], lr=0.1, block_size=128, bf16_stochastic_round=True)
    assert isinstance(opt, fo.AdamW) and opt.param_groups[0]["state_dtype"] == "int8"
    assert opt.param_groups[0]["block_size"] == 128
    assert opt.param_groups[0]["stochastic_rounding"] is True
    assert isinstance(fo.Adam8bit([p]), fo.Adam)
    assert fo.Adam8bit([p]).param_groups[0]["weight_decay"] == 0


# ---- every rule with moment state against its reference -----------------------------------------

def _pair(name: str, shapes, block: int = 256, **settings):
    torch.manual_seed(1)
    start = [torch.randn(s) for s in shapes]
    pr = [t.clone().requires_grad_() for t in start]
    pf = [t.clone().requires_grad_() for t in start]
    options = {"lr": LR.get(name, 1e-2), **OPTIONS.get(name, {})}
    info = REGISTRY[name]
    ref = Quantized8bit(_reference_class(name)(pr, **options), [s for s, _ in info["slots"]],
                        info["non_negative"], block_size=block)
    opt = getattr(fo, name)(pf, state_dtype="int8", block_size=block, **options, **settings)
    return ref, pr, opt, pf


@pytest.mark.parametrize("name", MOMENT_RULES)
def test_every_moment_rule_against_its_reference(name: str) -> None:
    """Teacher-forced, as against torchao: each step from the same params and codes, the codes
    equal the reference's except ties, the params within rtol 1e-4 / atol 1e-6. A partial last
    block (5000 elements) and a small tensor (float32 state) are in."""
    shapes = [(40, 128), (5000,), (7, 3)]
    ref, pr, opt, pf = _pair(name, shapes)
    slots = [s for s, _ in REGISTRY[name]["slots"]]
    differing = 0
    for step in range(20):
        generator = torch.Generator().manual_seed(step)
        for r, f in zip(pr, pf):
            g = torch.randn(f.shape, generator=generator) * 0.1
            with torch.no_grad():
                r.copy_(f)
            r.grad, f.grad = g.clone(), g.clone()
            for slot in slots:
                if f"{slot}_scales" in opt.state.get(f, {}):
                    i = next(i for i, q in enumerate(pf) if q is f)
                    ref.codes[(i, slot)] = (opt.state[f][slot].clone(),
                                            opt.state[f][f"{slot}_scales"].clone())
                elif slot in opt.state.get(f, {}):
                    ref.reference.state[r][slot].copy_(opt.state[f][slot])
        ref.step()
        opt.step()
        for i, (r, f) in enumerate(zip(pr, pf)):
            torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-6)
            for slot in slots:
                if (i, slot) not in ref.codes:
                    continue
                codes, scales = ref.codes[(i, slot)]
                differ = opt.state[f][slot] != codes
                differing += int(differ.sum())
                if differ.any():
                    assert (opt.state[f][slot].int() - codes.int())[differ].abs().max() == 1
    assert differing <= 20 * sum(math.prod(s) for s in shapes) // 10000, differing
    print(f"{name}: {differing} tied codes over 20 steps")


@pytest.mark.parametrize("name", COPY_RULES)
def test_rules_whose_state_copies_the_param_refuse_int8(name: str) -> None:
    p = torch.randn(5000, requires_grad=True)
    opt = getattr(fo, name)([p], state_dtype="int8")
    opt.train()
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="int8 state is for moments"):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state.get(p)


# ---- SIMD levels, threads, settings ---------------------------------------------------------------

def _run_torch(name: str, steps: int = 3, dtype=torch.float32, **settings):
    torch.manual_seed(2)
    params = [torch.randn(s).to(dtype).requires_grad_() for s in [(100003,), (33, 257)]]
    opt = getattr(fo, name)(params, lr=1e-2, state_dtype="int8", **OPTIONS.get(name, {}),
                            **settings)
    for step in range(steps):
        generator = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=generator) * 0.1).to(dtype)
        opt.step()
    return params, opt


def _snapshot(params, opt) -> list[np.ndarray]:
    out = []
    for p in params:
        out.append(p.detach().view(torch.int16 if p.element_size() == 2 else torch.int32).numpy())
        for value in opt.state[p].values():
            if torch.is_tensor(value):
                out.append(value.numpy().copy())
    return out


@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Lion"])
def test_bit_identical_across_levels_and_threads(name: str, restore_threads: None) -> None:
    runs = []
    previous = fastoptim.simd_level()
    try:
        for level in LEVELS:
            fastoptim.set_simd_level(level)
            for threads in (1, 2, 3):
                fastoptim.set_num_threads(threads)
                runs.append(((level, threads), _snapshot(*_run_torch(name))))
    finally:
        fastoptim.set_simd_level(previous)
    for label, snapshot in runs[1:]:
        for a, b in zip(runs[0][1], snapshot):
            np.testing.assert_array_equal(a, b, err_msg=str(label))


@pytest.mark.parametrize("settings", [
    {"master_weights": True}, {"stochastic_rounding": True, "seed": 3}, {}],
    ids=["master", "stochastic", "bf16"])
def test_bf16_params(settings: dict, restore_threads: None) -> None:
    """bf16 params with int8 moments: with a master copy the master is the float32 params'
    int8 trajectory; every variant the same bits for 1 and 2 threads."""
    params, opt = _run_torch("AdamW", dtype=torch.bfloat16, **settings)
    fastoptim.set_num_threads(1)
    again, opt1 = _run_torch("AdamW", dtype=torch.bfloat16, **settings)
    for a, b in zip(_snapshot(params, opt), _snapshot(again, opt1)):
        np.testing.assert_array_equal(a, b)
    if settings.get("master_weights"):
        torch.manual_seed(2)
        ref = [torch.randn(s).to(torch.bfloat16).float().requires_grad_()
               for s in [(100003,), (33, 257)]]
        ref_opt = fo.AdamW(ref, lr=1e-2, state_dtype="int8")
        for step in range(3):
            generator = torch.Generator().manual_seed(step)
            for p in ref:
                p.grad = (torch.randn(p.shape, generator=generator) * 0.1).bfloat16().float()
            ref_opt.step()
        for p, r in zip(params, ref):
            assert torch.equal(opt.state[p]["master_param"], r.detach())
            assert torch.equal(p.detach(), r.detach().bfloat16())
            assert torch.equal(opt.state[p]["exp_avg"], ref_opt.state[r]["exp_avg"])


def test_clipping_and_grad_scaler_are_the_step_on_prepared_grads() -> None:
    """GradScaler's unscale and clip_grad_norm_ fold into the grad read with int8 state as
    with any other: the same bits as clipping grads that were never scaled."""
    torch.manual_seed(5)
    start = torch.randn(9000)
    a = start.clone().requires_grad_()
    b = start.clone().requires_grad_()
    opt_a = fo.AdamW8bit([a], lr=1e-2)
    opt_b = fo.AdamW8bit([b], lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        g = torch.randn(9000) * 3
        a.grad = None
        scaler.scale((a * g).sum()).backward()  # a.grad = g * 1024
        scaler.unscale_(opt_a)
        opt_a.clip_grad_norm_(1.0)
        scaler.step(opt_a)
        scaler.update()
        b.grad = g.clone()  # the unscale by a power of two is exact
        opt_b.clip_grad_norm_(1.0)
        opt_b.step()
        assert torch.equal(a.detach(), b.detach())
        assert torch.equal(opt_a.state[a]["exp_avg"], opt_b.state[b]["exp_avg"])


def test_small_tensors_keep_float32_state() -> None:
    p, q = torch.randn(4095, requires_grad=True), torch.randn(4096, requires_grad=True)
    opt = fo.AdamW([p, q], state_dtype=torch.int8)
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and "exp_avg_scales" not in opt.state[p]
    assert opt.state[q]["exp_avg"].dtype == torch.uint8
    assert opt.state[q]["exp_avg_scales"].shape == (16,)
    arrays = fastoptim.AdamW([np.zeros(100, np.float32)], state_dtype=np.int8, min_8bit_size=64)
    arrays.step([np.ones(100, np.float32)])
    assert arrays.state[0]["exp_avg"].dtype == np.uint8
    assert arrays.state[0]["exp_avg_scales"].shape == (1,)
    np.testing.assert_array_equal(arrays.dequantize_state(0, "exp_avg"),
                                  np.full(100, 0.1, np.float32))


def test_dequantize_state_is_the_codes_decoded() -> None:
    (p, _), opt = _run_torch("AdamW")
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        want = dequantize_blockwise(opt.state[p][key], opt.state[p][f"{key}_scales"], 256, signed)
        assert torch.equal(opt.dequantize_state(p, key), want)


# ---- checkpoints ----------------------------------------------------------------------------------

def test_checkpoint_round_trip_continues_bit_identically() -> None:
    params, opt = _run_torch("Adam")
    saved = opt.state_dict()
    state = saved["state"][0]
    assert state["exp_avg"].dtype == torch.uint8 and state["exp_avg_scales"].dtype == torch.float32
    assert saved["param_groups"][0]["block_size"] == 256
    clones = [p.detach().clone().requires_grad_() for p in params]
    other = fo.Adam(clones, lr=1e-2, state_dtype="int8", amsgrad=True)
    other.load_state_dict(saved)
    for step in range(2):
        for p, c in zip(params, clones):
            p.grad = torch.full_like(p, 0.01 * (step + 1))
            c.grad = p.grad.clone()
        opt.step()
        other.step()
    for a, b in zip(_snapshot(params, opt), _snapshot(clones, other)):
        np.testing.assert_array_equal(a, b)


def _bad_checkpoints(saved: dict) -> list[tuple[dict, type, str]]:
    def edited(edit) -> dict:
        copy_ = copy.deepcopy(saved)
        edit(copy_)
        return copy_

    return [
        (edited(lambda s: s["param_groups"][0].update(block_size=128)), ValueError,
         "block_size=128"),
        (edited(lambda s: s["param_groups"][0].update(state_dtype=None)), ValueError,
         "state_dtype"),
        (edited(lambda s: s["state"][0].update(exp_avg_scales=torch.zeros(3))), ValueError,
         "param 0: loaded state 'exp_avg_scales' must be 391 float32 scales"),
        (edited(lambda s: s["state"][0].update(
            exp_avg_scales=s["state"][0]["exp_avg_scales"].double())), ValueError,
         "exp_avg_scales' must be"),
        (edited(lambda s: s["state"][1].update(exp_avg=torch.zeros(33, 256, dtype=torch.uint8))),
         ValueError, "param 1: loaded state 'exp_avg' must be uint8 codes"),
        (edited(lambda s: s["state"][1].update(exp_avg=s["state"][1]["exp_avg"].to(torch.int16))),
         ValueError, "param 1: loaded state 'exp_avg' must be uint8 codes"),
        (edited(lambda s: s["state"][0].pop("exp_avg_sq_scales")), ValueError,
         "without its scales"),
    ]


def test_bad_checkpoints_change_nothing() -> None:
    params, opt = _run_torch("AdamW")
    saved = opt.state_dict()
    for bad, error, words in _bad_checkpoints(saved):
        before = opt.state_dict()
        with pytest.raises(error, match=words):
            opt.load_state_dict(bad)
        after = opt.state_dict()
        for key, state in before["state"].items():
            for name, value in state.items():
                assert torch.equal(value, after["state"][key][name]), name
        assert after["param_groups"] == before["param_groups"]


def test_array_front_checkpoints() -> None:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(5000).astype(np.float32)
    opt = fastoptim.AdamW([p], lr=1e-2, state_dtype="int8")
    for _ in range(3):
        opt.step([rng.standard_normal(5000).astype(np.float32)])
    saved = opt.state_dict()
    q = p.copy()
    other = fastoptim.AdamW([q], lr=1e-2, state_dtype="int8")
    other.load_state_dict(saved)
    g = rng.standard_normal(5000).astype(np.float32)
    opt.step([g])
    other.step([g])
    np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], other.state[0]["exp_avg"])
    bad = copy.deepcopy(saved)
    bad["state"][0]["exp_avg_scales"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="param 0: loaded state 'exp_avg_scales' must be 20"):
        other.load_state_dict(bad)
    wrong = fastoptim.AdamW([q.copy()], lr=1e-2, state_dtype="int8", block_size=512)
    with pytest.raises(ValueError, match="block_size"):
        wrong.load_state_dict(saved)
    assert not wrong.state


def test_torchao_checkpoint_loads_and_continues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda f, **_: f)
    ao, pa, _, _ = _ao_pair("AdamW8bit", lr=1e-2)
    for step in range(5):
        for a, g in zip(pa, _grads(step)):
            a.grad = g
        ao.step()
    clones = [a.detach().clone().requires_grad_() for a in pa]
    opt = fo.AdamW8bit(clones, lr=1e-2)
    opt.load_state_dict(ao.state_dict())
    for a, c in zip(pa, clones):
        state = ao.state[a]
        if _quantized(state, "exp_avg") is not None:
            assert torch.equal(opt.state[c]["exp_avg"], state["exp_avg"].codes)
            assert torch.equal(opt.dequantize_state(c, "exp_avg_sq"),
                               state["exp_avg_sq"].dequantize())
    for step in range(5, 10):
        for a, c, g in zip(pa, clones, _grads(step)):
            a.grad, c.grad = g.clone(), g.clone()
        ao.step()
        opt.step()
    for a, c in zip(pa, clones):
        close = torch.isclose(c.detach(), a.detach(), rtol=1e-4, atol=1e-6)
        assert int((~close).sum()) <= a.numel() // 500


# ---- validation and memory safety -----------------------------------------------------------------

@pytest.mark.parametrize(("settings", "error", "words"), [
    ({"block_size": 100}, ValueError, "block_size must be a power of two from 32 to 65536"),
    ({"block_size": 16}, ValueError, "power of two"),
    # the value as given, whatever its size
    ({"block_size": -256}, ValueError, "from 32 to 65536, got -256$"),
    ({"block_size": 2**70}, ValueError, f"from 32 to 65536, got {2**70}$"),
    ({"block_size": 0}, ValueError, "from 32 to 65536, got 0$"),
    ({"block_size": 2.0}, TypeError, "block_size must be an integer"),
    ({"min_8bit_size": -1}, ValueError, "min_8bit_size must be >= 0"),
    ({"state_dtype": torch.int16}, ValueError, "state_dtype must be"),
])
def test_bad_settings(settings: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        fo.AdamW([torch.zeros(3, requires_grad=True)], **{"state_dtype": "int8", **settings})


def test_float64_params_refuse_int8() -> None:
    with pytest.raises(TypeError, match="param 0: state_dtype=int8 does not fit float64"):
        fo.AdamW([torch.zeros(5000, dtype=torch.float64, requires_grad=True)], state_dtype="int8")


@pytest.mark.parametrize("edit", ["short scales", "scales dtype", "codes resized", "codes dtype"])
def test_state_edited_between_steps_is_refused(edit: str) -> None:
    """The plan points at codes and scales: a replaced or resized one is noticed, checked, and
    refused with nothing written (never a read or write outside a buffer)."""
    p = torch.randn(5000, requires_grad=True)
    opt = fo.AdamW8bit([p], lr=1e-2)
    p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state[p]
    if edit == "short scales":
        state["exp_avg_scales"].resize_(3)
    elif edit == "scales dtype":
        state["exp_avg_sq_scales"] = state["exp_avg_sq_scales"].double()
    elif edit == "codes resized":
        state["exp_avg"].resize_(100)
    else:
        state["exp_avg"] = state["exp_avg"].to(torch.int16)
    before = p.detach().clone()
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        opt.step()
    assert torch.equal(p.detach(), before)
