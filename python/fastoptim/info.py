"""python -m fastoptim info: what this build runs on this machine.

Prints the SIMD level in use (and why: CPU detection or FASTOPTIM_SIMD), the levels this CPU and
build can run, the OpenMP runtime library the kernels use, and how many threads a step uses and
where that number comes from. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

from . import __version__, _core, _runtime
from ._runtime import available_simd_levels, get_num_threads, openmp_runtime, simd_level


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _thread_source() -> str:
    if _runtime._num_threads is not None:
        return "fastoptim.set_num_threads()"
    if "torch" in sys.modules:
        return "torch.get_num_threads()"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    return "OpenMP default: one per core"


def collect() -> dict[str, Any]:
    """The facts ``info`` prints, as a dict."""
    forced = os.environ.get("FASTOPTIM_SIMD", "")
    no_openmp = openmp_runtime().startswith("none")
    return {
        "version": __version__,
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "simd_level": simd_level(),
        "simd_level_source": f"FASTOPTIM_SIMD={forced}" if forced else "CPU detection",
        "available_simd_levels": available_simd_levels(),
        "openmp_runtime": openmp_runtime(),
        "num_threads": 1 if no_openmp else get_num_threads(),
        "num_threads_source": "built without OpenMP" if no_openmp else _thread_source(),
        "serial_threshold": int(_core.serial_threshold),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastoptim info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    facts = collect()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(
        f"fastoptim {facts['version']} on {facts['machine']} ({facts['system']}), "
        f"Python {facts['python']}"
    )
    print(f"CPU:                   {facts['cpu']}")
    print(f"SIMD level in use:     {facts['simd_level']}  ({facts['simd_level_source']})")
    print(f"SIMD levels available: {', '.join(facts['available_simd_levels'])}")
    print(f"OpenMP runtime:        {facts['openmp_runtime']}")
    print(f"threads per step:      {facts['num_threads']}  ({facts['num_threads_source']})")
    print(f"serial below:          {facts['serial_threshold']} elements per call")
    return 0
