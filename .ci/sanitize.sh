#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer over the C++ core and the Python extension, from
# a clean checkout, in one Clang build tree (Clang: the compiler of the macOS wheels; the wheel
# and .ci/cpp.sh build with GCC, so CI compiles everything with both):
#   1. the whole ctest suite (GoogleTest + kernel symbol checks), every target instrumented
#   2. the extension built in the same tree, installed beside the Python sources into a scratch
#      directory, and a pytest subset run against it with the ASan runtime preloaded
# Any sanitizer report fails the run: no recovery (-fno-sanitize-recover=all), halt and abort
# on the first error, and the logs are grepped for reports as well.
# OpenMP is LLVM's libomp here (Clang does not compile for GCC's libgomp); the threaded paths
# (a step split across threads, inside a tensor too) run under the sanitizers either way.
# Environment: FASTOPTIM_SANITIZE (default address,undefined), FASTOPTIM_NO_SANITIZE (checks left
# out; default none), FASTOPTIM_SANITIZE_PYTEST_K (a -k expression for
# step 2), FASTOPTIM_SANITIZE_SKIP_PYTHON=1 (step 1 only), PYTHON.
# Installs its Debian build dependencies (and the Python build requirements) when missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"
sanitizers="${FASTOPTIM_SANITIZE:-address,undefined}"
skip_python="${FASTOPTIM_SANITIZE_SKIP_PYTHON:-0}"
python="${PYTHON:-python}"
source "$repo/.ci/lib.sh"

need libgtest-dev libeigen3-dev cmake=cmake clang++=clang make=make
major="$(clang++ -dumpversion | cut -d. -f1)"
need "libomp-$major-dev"

# One compiler for everything, so that the runtime preloaded into Python in step 2 is the one
# the extension was built against.
export CC=clang CXX=clang++
libasan="$(clang++ -print-file-name="libclang_rt.asan-$(uname -m).so")"
libstdcxx="$(clang++ -print-file-name=libstdc++.so)"
for lib in "$libasan" "$libstdcxx"; do
  [[ -e "$lib" ]] || { echo "error: clang++ has no $(basename "$lib") ($lib)" >&2; exit 1; }
done

python_args=(-DFASTOPTIM_PYTHON=OFF)
if [[ "$skip_python" != 1 ]]; then
  if ! "$python" -c "import pybind11, pytest, xdist, numpy" 2>/dev/null; then
    stage "installing the Python build and test requirements"
    "$python" -m pip install "pybind11>=2.12" "pytest>=7" "pytest-xdist>=3" "hypothesis>=6" numpy
  fi
  python_args=(-DFASTOPTIM_PYTHON=ON "-DPython_EXECUTABLE=$(command -v "$python")"
               "-Dpybind11_DIR=$("$python" -m pybind11 --cmakedir)")
fi

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
# Clang's -fsanitize=undefined also checks float-to-int conversions (GCC's does not); nothing is
# left out unless FASTOPTIM_NO_SANITIZE names a check.
no_sanitize="${FASTOPTIM_NO_SANITIZE-}"
stage "configure + build with clang -fsanitize=$sanitizers${no_sanitize:+ -fno-sanitize=$no_sanitize} (library, C++ suite, extension)"
# Line tables are all a report's stack needs, and compile faster than full debug info.
cmake -S "$repo" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -gline-tables-only -DNDEBUG" \
  -DFASTOPTIM_SANITIZE="$sanitizers" -DFASTOPTIM_NO_SANITIZE="$no_sanitize" \
  -DFASTOPTIM_INSTALL=OFF "${python_args[@]}"
grep -q -- "-fopenmp" "$work/build/compile_commands.json" ||
  { echo "error: the sanitized build has no OpenMP: the threaded paths would go unchecked" >&2; exit 1; }
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

if [[ "$skip_python" == 1 ]]; then
  stage "sanitizer checks passed (Python step skipped)"
  exit 0
fi

# ---- 2. the Python extension ---------------------------------------------------------------------
stage "the extension of the same tree, beside the Python sources in $work/site"
mkdir -p "$work/site"
cp -r "$repo/python/fastoptim" "$work/site/"
cmake --install "$work/build" --component python --prefix "$work/site"

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
assert core.openmp_enabled(), "the sanitized extension has no OpenMP"
try:
    import torch
except ImportError:
    print("torch is not installed: the torch tests are skipped by tests/conftest.py")
else:
    print("fastoptim", fastoptim.__file__, "torch", torch.__version__, "OpenMP",
          fastoptim.openmp_runtime())
EOF

# Every validation path (the binding's checks before it releases the GIL), the torch front,
# exactness at every size and level (the grids' pairwise sample), clipping, layouts, the
# benchmark's roofline loop, state tensors resized or freed in place and sparse grads outside
# the param (the plan check in C++), and tests/test_reliability*.py.
pytest_files=(tests/test_validation.py tests/test_torch_front.py tests/test_exactness.py
              tests/test_clip.py tests/test_layouts.py tests/test_roofline.py
              tests/test_new_surfaces.py)
for extra in "$repo"/tests/test_reliability*.py; do
  [[ -e "$extra" ]] && pytest_files+=("tests/$(basename "$extra")")
done
pytest_k=()
[[ -n "${FASTOPTIM_SANITIZE_PYTEST_K:-}" ]] && pytest_k=(-k "$FASTOPTIM_SANITIZE_PYTEST_K")
stage "pytest under the sanitizers: ${pytest_files[*]} ${pytest_k[*]}"
cd "$repo"
set +e
"$python" -m pytest -x -q -p no:cacheprovider -n auto "${pytest_files[@]}" "${pytest_k[@]}" 2>&1 |
  tee "$work/pytest.log"
status=${PIPESTATUS[0]}
set -e
no_reports "$work/pytest.log" "the Python tests"
((status == 0)) || { echo "error: pytest failed under the sanitizers (status $status)" >&2; exit "$status"; }

stage "sanitizer checks passed"
