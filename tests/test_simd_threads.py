"""SIMD levels and threads: every level and both thread counts give bit-identical results;
FASTOPTIM_SIMD and the thread-count API behave as documented."""

from __future__ import annotations

import os
import subprocess
import sys

import fastoptim
import numpy as np
import pytest
from _support import (
    GRIDS,
    HAVE_TORCH,
    RULES,
    SIZES,
    Case,
    assert_equal_runs,
    needs_torch,
    run,
    short_steps,
)
from conftest import LEVELS

EXPECTED_X86 = ("scalar", "sse2", "avx2", "avx512")


def test_levels_reported() -> None:
    levels = fastoptim.available_simd_levels()
    assert levels[0] == "scalar"
    assert len(set(levels)) == len(levels)
    known = ("scalar", "sse2", "avx2", "avx512", "neon")
    assert all(level in known for level in levels)
    # lowest first
    assert levels == sorted(levels, key=known.index)
    # the default (no FASTOPTIM_SIMD in this process, checked by conftest) is the best level
    if "FASTOPTIM_SIMD" not in os.environ:
        assert fastoptim.simd_level() == levels[-1]


def test_x86_64_levels_match_cpu() -> None:
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 only")
    assert "sse2" in LEVELS  # part of x86-64
    if not os.path.exists("/proc/cpuinfo"):
        return
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    # a level is offered only if the CPU has it (else: SIGILL)
    if "avx2" in LEVELS:
        assert "avx2" in flags
    if "avx512" in LEVELS:
        assert "avx512f" in flags


@pytest.mark.parametrize("bad", ["bogus", "", "AVX2", "neon" if "neon" not in LEVELS else "avx512"])
def test_set_simd_level_rejects_unavailable(bad: str) -> None:
    if bad in LEVELS:
        pytest.skip("level available here")
    before = fastoptim.simd_level()
    with pytest.raises(ValueError, match="not available"):
        fastoptim.set_simd_level(bad)
    assert fastoptim.simd_level() == before


def test_set_simd_level_takes_effect(simd_level: str) -> None:
    assert fastoptim.simd_level() == simd_level


def _probe(env_value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FASTOPTIM_SIMD", None)
    if env_value is not None:
        env["FASTOPTIM_SIMD"] = env_value
    code = "import fastoptim; print(fastoptim.simd_level())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.parametrize("level", LEVELS)
def test_env_var_forces_level(level: str) -> None:
    out = _probe(level)
    assert out.stdout.strip() == level
    assert "FASTOPTIM_SIMD" not in out.stderr  # a valid request is not warned about


def test_env_var_unknown_warns_and_uses_best() -> None:
    out = _probe("no-such-level")
    assert out.stdout.strip() == LEVELS[-1]
    assert "FASTOPTIM_SIMD" in out.stderr


def test_env_var_unavailable_level_warns_and_falls_back() -> None:
    missing = [lvl for lvl in ("avx512", "avx2", "neon") if lvl not in LEVELS]
    if not missing:
        pytest.skip("every level is available")
    out = _probe(missing[0])
    assert out.stdout.strip() == LEVELS[-1]
    assert "FASTOPTIM_SIMD" in out.stderr


# ---- bit-identical across levels and thread counts ------------------------------------------

def _cases() -> list:
    """Per rule: every flag combination of the grid at a size mix that ends on every tail and,
    in total, is above the serial threshold (so 2 threads really split the group)."""
    shapes = tuple((s,) for s in SIZES if s < 100000) + ((3, 11111),)
    out = []
    for rule in RULES:
        grid = GRIDS[rule]
        for k, opts in enumerate(grid[:: max(1, len(grid) // 6)]):
            for dtype in ("float32", "float64"):
                out.append(pytest.param(Case.single(rule, opts, shapes=shapes, dtype=dtype,
                                                    steps=short_steps(rule, 5), seed=k),
                                        id=f"{rule}-{k}-{dtype}"))
    return out


CASES = _cases()


@pytest.mark.grid
@pytest.mark.parametrize("front", ["array-numpy", "fastoptim.torch"] if HAVE_TORCH
                         else ["array-numpy"])
@pytest.mark.parametrize("case", CASES)
def test_levels_bit_identical(case: Case, front: str, restore_threads: None) -> None:
    fastoptim.set_num_threads(2)
    before = fastoptim.simd_level()
    try:
        fastoptim.set_simd_level("scalar")
        want = run(case, front)
        for level in LEVELS[1:]:
            fastoptim.set_simd_level(level)
            assert_equal_runs(run(case, front), want, f"{level} vs scalar")
    finally:
        fastoptim.set_simd_level(before)


@pytest.mark.grid
@pytest.mark.parametrize("front", ["array-numpy", "fastoptim.torch"] if HAVE_TORCH
                         else ["array-numpy"])
@pytest.mark.parametrize("case", CASES[::3])
def test_threads_bit_identical(case: Case, front: str, simd_level: str,
                               restore_threads: None) -> None:
    fastoptim.set_num_threads(1)
    want = run(case, front)
    for threads in (2, 3):
        fastoptim.set_num_threads(threads)
        assert fastoptim.get_num_threads() == threads
        assert_equal_runs(run(case, front), want, f"{threads} threads vs 1")


@pytest.mark.parametrize("rule", RULES)
def test_big_tensor_levels_and_threads(rule: str, restore_threads: None) -> None:
    """One 100003-element tensor (thread split inside a tensor, odd tail) per level, 1 and 2
    threads: all bit-identical."""
    opts = GRIDS[rule][-1]
    case = Case.single(rule, opts, shapes=((100003,),), dtype="float32",
                       steps=short_steps(rule, 3))
    before = fastoptim.simd_level()
    results = {}
    try:
        for level in LEVELS:
            fastoptim.set_simd_level(level)
            for threads in (1, 2):
                fastoptim.set_num_threads(threads)
                results[level, threads] = run(case, "array-numpy")
    finally:
        fastoptim.set_simd_level(before)
    want = results["scalar", 1]
    for key, got in results.items():
        assert_equal_runs(got, want, f"{key} vs scalar/1 thread")


# ---- thread-count API -----------------------------------------------------------------------

def test_set_get_num_threads(restore_threads: None) -> None:
    for n in (1, 2, 5):
        fastoptim.set_num_threads(n)
        assert fastoptim.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects(bad: object, restore_threads: None) -> None:
    before = fastoptim.get_num_threads()
    with pytest.raises((ValueError, TypeError)):
        fastoptim.set_num_threads(bad)  # type: ignore[arg-type]
    assert fastoptim.get_num_threads() == before

@needs_torch

def test_default_threads_follow_torch() -> None:
    code = ("import torch, fastoptim; torch.set_num_threads(1); a = fastoptim.get_num_threads();"
            "torch.set_num_threads(2); b = fastoptim.get_num_threads(); print(a, b)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split() == ["1", "2"]


@pytest.mark.parametrize("omp", ["1", "3"])
def test_default_threads_follow_omp_num_threads_without_torch(omp: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=omp)
    code = "import fastoptim, sys; assert 'torch' not in sys.modules; print(fastoptim.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == omp


def test_tiny_step_with_many_threads(restore_threads: None) -> None:
    """More threads than elements, and groups below the serial threshold, still step right."""
    fastoptim.set_num_threads(8)
    w = np.ones(3)
    fastoptim.SGD([w], lr=0.5).step([np.array([1.0, 2.0, 3.0])])
    np.testing.assert_array_equal(w, [0.5, 0.0, -0.5])
