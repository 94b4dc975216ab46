"""python -m fastoptim info: level in use, levels available, OpenMP runtime, thread count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fastoptim


def run_info(*args: str, **env: str) -> str:
    child_env = {
        k: v for k, v in os.environ.items() if k not in ("FASTOPTIM_SIMD", "OMP_NUM_THREADS")
    }
    child_env.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "fastoptim", "info", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_info_prints_level_levels_runtime_and_threads() -> None:
    out = run_info(OMP_NUM_THREADS="3")
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    assert lines["SIMD level in use"].split()[0] == fastoptim.simd_level()
    assert lines["SIMD levels available"] == ", ".join(fastoptim.available_simd_levels())
    assert lines["OpenMP runtime"] == fastoptim.openmp_runtime()
    if fastoptim.openmp_runtime().startswith("none"):  # built without OpenMP (macOS wheels)
        assert lines["threads per step"].split()[0] == "1"
    else:
        assert lines["threads per step"] == "3  (OMP_NUM_THREADS=3)"


def test_info_reports_a_forced_level() -> None:
    out = run_info("--json", FASTOPTIM_SIMD="scalar", OMP_NUM_THREADS="1")
    facts = json.loads(out)
    assert facts["simd_level"] == "scalar"
    assert facts["simd_level_source"] == "FASTOPTIM_SIMD=scalar"
    assert facts["available_simd_levels"] == fastoptim.available_simd_levels()
    assert facts["num_threads"] == 1
    assert facts["openmp_runtime"] == fastoptim.openmp_runtime()
