"""python -m fastoptim info: what this build runs on this machine."""

from __future__ import annotations

import platform

from . import __version__, _core
from ._runtime import available_simd_levels, get_num_threads, openmp_runtime, simd_level


def main(argv: list[str] | None = None) -> int:
    print(f"fastoptim {__version__} on {platform.machine()} ({platform.system()})")
    print(f"SIMD level in use:     {simd_level()}")
    print(f"SIMD levels available: {', '.join(available_simd_levels())}")
    print(f"OpenMP runtime:        {openmp_runtime()}")
    print(f"threads per step:      {get_num_threads()}")
    print(f"serial below:          {_core.serial_threshold} elements per call")
    return 0
