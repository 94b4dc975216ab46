"""SIMD level and thread count: the knobs shared by both fronts."""

from __future__ import annotations

import sys

from . import _core

_num_threads: int | None = None


def set_num_threads(num_threads: int) -> None:
    """Use ``num_threads`` OpenMP threads per step (default: torch's, else OMP_NUM_THREADS)."""
    global _num_threads
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
    _core.set_num_threads(num_threads)
    _num_threads = num_threads


def get_num_threads() -> int:
    """Threads a step uses: set_num_threads(), else torch's setting when torch is loaded,
    else OpenMP's (OMP_NUM_THREADS or the core count)."""
    if not _core.openmp_enabled():
        return 1  # built without OpenMP (the macOS wheels): steps run on one thread
    if _num_threads is not None:
        return _num_threads
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    return int(_core.get_num_threads())


def simd_level() -> str:
    """The SIMD level the kernels run at: scalar, sse2, avx2, avx512 or neon."""
    return _core.simd_level()


def available_simd_levels() -> list[str]:
    """Levels this CPU and build can run, lowest first."""
    return list(_core.available_simd_levels())


def set_simd_level(level: str) -> None:
    """Force a SIMD level (tests, benchmarks). FASTOPTIM_SIMD does the same at import."""
    _core.set_simd_level(level)


def openmp_runtime() -> str:
    """Path of the OpenMP runtime library in use, or why there is none."""
    return _core.openmp_runtime()
