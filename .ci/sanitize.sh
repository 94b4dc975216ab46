#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer over the C++ core, from a clean checkout:
#   1. the whole ctest suite (GoogleTest + kernel symbol checks) built with
#      -DFASTOPTIM_SANITIZE=address,undefined (every target, kernels included)
#   2. the Python extension built with the same sanitizers into a scratch directory, and a
#      pytest subset run against it with the ASan runtime preloaded into the interpreter
# Any sanitizer report fails the run: no recovery (-fno-sanitize-recover=all), halt and abort
# on the first error, and the logs are grepped for reports as well.
# Environment: FASTOPTIM_SANITIZE (default address,undefined), FASTOPTIM_SANITIZE_PYTEST_K
# (override the -k expression of step 2), FASTOPTIM_SANITIZE_SKIP_PYTHON=1 (step 1 only).
# Installs its Debian build dependencies (and the Python build requirements) when missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"
sanitizers="${FASTOPTIM_SANITIZE:-address,undefined}"
source "$repo/.ci/lib.sh"

need libgtest-dev libeigen3-dev cmake=cmake g++=g++ make=make

# One compiler for everything, so that the runtime preloaded into Python in step 2 is the one
# the extension was built against.
export CC=gcc CXX=g++
libasan="$(g++ -print-file-name=libasan.so)"
libstdcxx="$(g++ -print-file-name=libstdc++.so)"
for lib in "$libasan" "$libstdcxx"; do
  [[ -e "$lib" ]] || { echo "error: g++ has no $(basename "$lib") ($lib)" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/fastoptim-sanitize.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# halt/abort on the first report, with a stack; leaks count in the C++ suite (not under Python,
# whose interned objects and torch's allocator caches are "leaks" to LeakSanitizer).
asan_common="halt_on_error=1:abort_on_error=1:print_stacktrace=1:strict_init_order=1"
asan_common+=":check_initialization_order=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"

# Sanitizer reports in a log: a test that caught SIGABRT or exited 0 after a report must still
# fail the run.
no_reports() {
  if grep -nE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|Undefined|Leak)" "$1"; then
    echo "error: sanitizer report in $2 (above)" >&2
    exit 1
  fi
}

# ---- 1. the C++ suite ----------------------------------------------------------------------------
stage "configure + build with -fsanitize=$sanitizers"
cmake -S "$repo" -B "$work/build" -DFASTOPTIM_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFASTOPTIM_SANITIZE="$sanitizers" -DFASTOPTIM_INSTALL=OFF
cmake --build "$work/build" --parallel "$jobs"

stage "ctest under the sanitizers"
set +e
ASAN_OPTIONS="$asan_common:detect_leaks=1" \
  ctest --test-dir "$work/build" --output-on-failure --parallel "$jobs" 2>&1 | tee "$work/ctest.log"
status=${PIPESTATUS[0]}
set -e
no_reports "$work/ctest.log" "the C++ suite"
((status == 0)) || { echo "error: ctest failed under the sanitizers" >&2; exit "$status"; }
grep -q "kernel_symbols_check_detects_leak .*Passed" "$work/ctest.log" || {
  echo "error: the kernel symbol check no longer detects a leaked symbol" >&2
  exit 1
}

if [[ "${FASTOPTIM_SANITIZE_SKIP_PYTHON:-0}" == 1 ]]; then
  stage "sanitizer checks passed (Python step skipped)"
  exit 0
fi

# ---- 2. the Python extension ---------------------------------------------------------------------
python="${PYTHON:-python}"
if ! "$python" -c "import scikit_build_core, pybind11, pytest, numpy" 2>/dev/null; then
  stage "installing the Python build and test requirements"
  "$python" -m pip install "scikit-build-core>=0.10" "pybind11>=2.12" "pytest>=7" "hypothesis>=6" numpy
fi

stage "build the extension with -fsanitize=$sanitizers"
# pip's -C reaches scikit-build-core; no isolation (offline CI reuses the installed backend).
"$python" -m pip install --no-build-isolation --no-deps --no-compile --disable-pip-version-check \
  -t "$work/site" "$repo" \
  -C "cmake.define.FASTOPTIM_SANITIZE=$sanitizers" \
  -C cmake.build-type=RelWithDebInfo \
  -C "build-dir=$work/pybuild"

# An editable install of fastoptim (scikit-build-core's import hook in sys.meta_path) would be
# found before anything on PYTHONPATH: this sitecustomize, run after the .pth files, drops any
# import hook that serves fastoptim from elsewhere, in pytest and in its subprocesses.
cat > "$work/site/sitecustomize.py" <<'EOF'
import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))


def _serves_fastoptim_elsewhere(finder):
    if finder is importlib.machinery.PathFinder:
        return False
    try:
        spec = finder.find_spec("fastoptim", None)
    except Exception:
        return False
    return spec is not None and not (spec.origin or "").startswith(_here + os.sep)


sys.meta_path[:] = [f for f in sys.meta_path if not _serves_fastoptim_elsewhere(f)]

# Chain to a sitecustomize this one shadows, if the interpreter has one.
_other = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _other is not None and _other.loader is not None:
    _module = importlib.util.module_from_spec(_other)
    _other.loader.exec_module(_module)
EOF

# The ASan runtime must be the first library of the process: preload it into the interpreter
# (torch loads under it; only our extension is instrumented). libstdc++ is preloaded too: the
# interpreter does not link it, and ASan's __cxa_throw interceptor, set up when libasan starts,
# otherwise finds no real __cxa_throw and aborts on the first C++ exception (the binding turns
# std::invalid_argument into ValueError, so the validation tests throw plenty).
export LD_PRELOAD="$libasan:$libstdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="$asan_common:detect_leaks=0"
export PYTHONPATH="$work/site"
stage "the sanitized extension is the one imported"
"$python" - "$work/site" <<'EOF'
import os, sys
import fastoptim, fastoptim._core as core
site = os.path.realpath(sys.argv[1])
for path in (fastoptim.__file__, core.__file__):
    assert os.path.realpath(path).startswith(site + os.sep), f"imported {path}, not the build under test"
with open(core.__file__, "rb") as f:
    assert b"__asan_init" in f.read(), "the extension is not built with AddressSanitizer"
try:
    import torch
except ImportError:
    print("torch is not installed: the torch tests are skipped by tests/conftest.py")
else:
    print("fastoptim", fastoptim.__file__, "torch", torch.__version__)
EOF

# A subset that runs in about a minute on 2 cores (all three files: ~70 s): every validation
# path (the binding's checks before it releases the GIL), the torch front, and exactness at
# every size and level, with the big option grid at the scalar level and the widest one only
# (sse2/avx2 repeat the same code paths), and the benchmark's roofline loop (a few seconds).
# tests/test_reliability*.py is included when present; test_new_surfaces.py: state tensors resized
# or freed in place, sparse grads outside the param (the plan check in C++ under ASan).
pytest_files=(tests/test_validation.py tests/test_torch_front.py tests/test_exactness.py
              tests/test_clip.py tests/test_layouts.py tests/test_roofline.py
              tests/test_new_surfaces.py)
for extra in "$repo"/tests/test_reliability*.py; do
  [[ -e "$extra" ]] && pytest_files+=("tests/$(basename "$extra")")
done
default_k="not (test_option_grid and (sse2 or avx2))"
pytest_k="${FASTOPTIM_SANITIZE_PYTEST_K:-$default_k}"
stage "pytest under the sanitizers: ${pytest_files[*]} -k '$pytest_k'"
cd "$repo"
set +e
"$python" -m pytest -x -q -p no:cacheprovider "${pytest_files[@]}" -k "$pytest_k" 2>&1 |
  tee "$work/pytest.log"
status=${PIPESTATUS[0]}
set -e
no_reports "$work/pytest.log" "the Python tests"
((status == 0)) || { echo "error: pytest failed under the sanitizers (status $status)" >&2; exit "$status"; }

stage "sanitizer checks passed"
