"""fastoptim._roofline, the benchmark's same-traffic loop: every element of every written stream
gets x += grad exactly once, in each stream's own storage type (the 16-bit ones rounded to
nearest even, as NumPy and torch round), across thread splits and at every SIMD level (the
product's level: the roofline follows fastoptim.simd_level()); bad tables are refused before
anything is written. No timing here."""

from __future__ import annotations

import os
import subprocess
import sys

import fastoptim
import numpy as np
import pytest
from fastoptim import _core, _roofline

try:
    import torch
except ImportError:
    torch = None

# one-lane heads and tails, two-vector steps of every level, the thread split
SIZES = [1, 7, 15, 16, 17, 31, 33, 63, 65, 1023, 1024, 1025, 4097, 100003]
NUMPY = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


def table(params, grads, states) -> np.ndarray:
    """The (n, 7) pointer table, states given per slot (one array per param)."""
    rows = []
    for i, (p, g) in enumerate(zip(params, grads)):
        slots = [s[i].ctypes.data for s in states] + [0] * (3 - len(states))
        rows.append([p.ctypes.data, g.ctypes.data, *slots, p.size, 0])
    return np.array(rows, dtype=np.int64).reshape(-1, 7)


def expected(x: np.ndarray, g: np.ndarray, wide: type) -> np.ndarray:
    """x + g in the arithmetic the loop uses (float64 for a float64 param, else float32),
    stored back in x's type."""
    return (x.astype(wide) + g.astype(wide)).astype(x.dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "layout",
    [
        ("float32", "float32", "float32"),
        ("float64", "float64", "float64"),
        ("float64", "float32", "float64"),
        ("float16", "float16", "float16"),
        ("float16", "float16", "float32"),
        ("float16", "float32", "float16"),
        ("float32", "float16", "float32"),
    ],
)
@pytest.mark.parametrize("states", [0, 1, 2, 3])
def test_every_stream_gets_x_plus_grad(
    layout: tuple[str, str, str], states: int, threads: int, simd_level: str
) -> None:
    assert _roofline.simd_level() == simd_level
    param_t, grad_t, state_t = (NUMPY[t] for t in layout)
    wide = np.float64 if param_t == np.float64 else np.float32
    rng = np.random.default_rng(states)
    params = [rng.standard_normal(n).astype(param_t) for n in SIZES]
    grads = [rng.standard_normal(n).astype(grad_t) for n in SIZES]
    slots = [[rng.standard_normal(n).astype(state_t) for n in SIZES] for _ in range(states)]
    want_params = [expected(p, g, wide) for p, g in zip(params, grads)]
    want_slots = [[expected(s, g, wide) for s, g in zip(slot, grads)] for slot in slots]
    grads_before = [g.copy() for g in grads]
    dtypes = [layout[0], layout[1]] + [layout[2]] * states
    _roofline.step(table(params, grads, slots), dtypes, threads, _core.serial_threshold)
    for got, want in zip(params, want_params):
        np.testing.assert_array_equal(got, want)
    for slot, want_slot in zip(slots, want_slots):
        for got, want in zip(slot, want_slot):
            np.testing.assert_array_equal(got, want)
    for g, before in zip(grads, grads_before):
        np.testing.assert_array_equal(g, before)  # read only


@pytest.mark.parametrize("threads", [1, 2, 3, 0])
def test_each_element_once_across_thread_chunks(threads: int) -> None:
    """Ones added to counters: a chunk boundary that skipped or repeated elements shows."""
    sizes = [3, 64, 65, 16384, 1, 20000, 127]  # 36644 in all: above the serial threshold
    params = [np.zeros(n, np.float32) for n in sizes]
    slots = [[np.full(n, 10.0, np.float32) for n in sizes]]
    grads = [np.ones(n, np.float32) for n in sizes]
    t = table(params, grads, slots)
    for _ in range(3):
        _roofline.step(t, ["float32"] * 3, threads, _core.serial_threshold)
    assert all((p == 3).all() for p in params)
    assert all((s == 13).all() for s in slots[0])


def test_float16_round_trips_every_value(simd_level: str) -> None:
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    x = halves.copy()
    minus_zero = np.full(x.size, -0.0, np.float32)  # x + -0 is x, for -0 too
    _roofline.step(table([x], [minus_zero], []), ["float16", "float32"], 1)
    nan = np.isnan(halves)
    np.testing.assert_array_equal(x.view(np.uint16)[~nan], halves.view(np.uint16)[~nan])
    assert np.isnan(x[nan]).all()


def _awkward_floats() -> np.ndarray:
    rng = np.random.default_rng(7)
    scaled = rng.standard_normal(50_000) * 10.0 ** rng.integers(-10, 6, 50_000)
    edges = [65504, 65519.99, 65520, 1e9, np.inf, 6e-8, 2.98e-8, 2.99e-8, 5.9604645e-8 * 1.5]
    odd = np.arange(0, 2048) * 2 + 1
    ties = [
        (odd / 2) * 2.0**-24,  # halfway between float16 subnormals
        1 + odd * 2.0**-11,  # halfway between float16 normals in [1, 2)
        1 + odd[:128] * 2.0**-8,  # halfway between bfloat16 values in [1, 2)
    ]
    parts = [scaled, edges, [-e for e in edges], *ties, [np.nan]]
    return np.concatenate(parts).astype(np.float32)


def test_float16_rounds_to_nearest_even(simd_level: str) -> None:
    f = _awkward_floats()
    x = np.zeros(f.size, np.float16)
    _roofline.step(table([x], [f], []), ["float16", "float32"], 2)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16)
    nan = np.isnan(f)
    np.testing.assert_array_equal(x.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
    assert np.isnan(x[nan]).all()


@pytest.mark.skipif(torch is None, reason="bfloat16 reference from torch")
def test_bfloat16_rounds_as_torch(simd_level: str) -> None:
    f = torch.from_numpy(_awkward_floats())
    x = torch.zeros(f.numel(), dtype=torch.bfloat16)
    grads = [f.numpy()]
    bits = x.view(torch.int16).numpy()  # same memory
    _roofline.step(table([bits], grads, []), ["bfloat16", "float32"], 2)
    want = f.to(torch.bfloat16)
    finite = ~torch.isnan(f)
    assert torch.equal(x.view(torch.int16)[finite], want.view(torch.int16)[finite])
    assert torch.isnan(x[~finite]).all()
    # and back: a bfloat16 grad widened into a float32 param
    p = torch.zeros(f.numel())
    _roofline.step(table([p.numpy()], [bits], []), ["float32", "bfloat16"], 1)
    assert torch.equal(p[finite], want.float()[finite])


@pytest.mark.skipif(torch is None, reason="bfloat16 reference from torch")
@pytest.mark.parametrize("states", [0, 3])
def test_bfloat16_layout_rounds_as_torch(states: int, simd_level: str) -> None:
    """Every stream bfloat16 (the levels' even/odd conversions): every bfloat16 value as a param
    and a state against random grads and special ones (NaN, inf, subnormals), 2 bytes past an
    aligned start (a one-lane head), and a row of 3 (a tail alone)."""
    gen = torch.Generator().manual_seed(states)
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    xs = [every.clone()[1:], every[:3].clone()]
    gs = []
    for x in xs:
        g = torch.randn(x.numel(), generator=gen) * 4.0 ** torch.randint(
            -8, 8, x.shape, generator=gen
        )
        g[::97] = every[: g[::97].numel()].float()
        gs.append(g.to(torch.bfloat16))
    slots = [[x.flip(0) for x in xs] for _ in range(states)]
    want = [[(x.float() + g.float()).to(torch.bfloat16) for x, g in zip(xs, gs)]]
    want += [[(x.float() + g.float()).to(torch.bfloat16) for x, g in zip(s, gs)] for s in slots]

    def bits(tensors: list) -> list:
        return [t.view(torch.int16).numpy() for t in tensors]  # the same memory

    t = table(bits(xs), bits(gs), [bits(slot) for slot in slots])
    _roofline.step(t, ["bfloat16"] * (2 + states), 2, 1)
    for got_row, want_row in zip([xs, *slots], want):
        for got, w in zip(got_row, want_row):
            nan = torch.isnan(w)
            assert torch.equal(got.view(torch.int16)[~nan], w.view(torch.int16)[~nan])
            assert torch.isnan(got[nan]).all()


def test_bytes_per_element_is_each_streams_traffic() -> None:
    assert _roofline.bytes_per_element(["float32"] * 4) == 28  # Adam: AdamW's 28 bytes
    assert _roofline.bytes_per_element(["float64", "float64"]) == 24
    # mixed: bfloat16 param and grad, float32 state: 2 + 2*2 + 2*(2*4)
    assert _roofline.bytes_per_element(["bfloat16", "bfloat16", "float32", "float32"]) == 22
    assert set(_roofline.dtypes) == {"float32", "float64", "bfloat16", "float16"}


def test_level_is_the_products() -> None:
    assert _roofline.simd_level() == fastoptim.simd_level()
    # FASTOPTIM_SIMD forces the roofline too (scalar: every build and CPU has it)
    env = {**os.environ, "FASTOPTIM_SIMD": "scalar"}
    code = "from fastoptim import _roofline; print(_roofline.simd_level())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "scalar"


def test_bad_calls_are_refused_before_any_write() -> None:
    p, g = np.zeros(8, np.float32), np.ones(8, np.float32)
    good = table([p], [g], [])
    f32 = ["float32", "float32"]
    cases = [
        (good.astype(np.float64), f32, ValueError),  # not int64
        (good[:, :6].copy(), f32, ValueError),  # not 7 columns
        (np.asfortranarray(np.vstack([good, good])), f32, ValueError),
        (good, ["float32"], ValueError),  # no grad stream
        (good, ["float32"] * 6, ValueError),  # four state streams
        (good, ["float32", "int8"], TypeError),
        (good, ["float32", "float32", "float32"], ValueError),  # state 0 is null
        # float64 goes with float64 params only, and their state is float64
        (good, ["float32", "float64"], ValueError),
        (good, ["float64", "float64", "float32"], ValueError),
        (good, ["float64", "bfloat16"], ValueError),
    ]
    misaligned = good.copy()
    misaligned[0, 0] += 2
    cases.append((misaligned, f32, ValueError))
    negative = good.copy()
    negative[0, 5] = -1
    cases.append((negative, f32, ValueError))
    for t, dtypes, error in cases:
        with pytest.raises(error):
            _roofline.step(t, dtypes, 1)
    with pytest.raises(ValueError):
        _roofline.step(good, f32, -1)
    assert (p == 0).all()
    empty = np.zeros((0, 7), np.int64)
    _roofline.step(empty, f32, 2)  # nothing to do
    null_but_empty = np.zeros((1, 7), np.int64)
    _roofline.step(null_but_empty, ["float32"] * 5, 2)  # size 0: pointers never read


def test_arithmetic_rate_measures_and_rejects_bad_arguments() -> None:
    from fastoptim import _roofline

    assert _roofline.arithmetic_rate(1, 4096, 0.01) > 0
    for bad in ({"num_threads": 0}, {"num_threads": 1, "n": 100}, {"num_threads": 1, "n": 0}):
        with pytest.raises(ValueError):
            _roofline.arithmetic_rate(**bad)
