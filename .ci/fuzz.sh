#!/usr/bin/env bash
# Fuzzes Optimizer::load() with libFuzzer (Clang, -fsanitize=fuzzer,address,undefined) for a
# bounded time, from the checked-in seed corpus (cpp/fuzz/corpus, copied: the run's new inputs
# are not written back). Fails on any crash, sanitizer report, or harness assertion; the
# crashing input is kept in the artifact directory printed at the end.
# Environment: FASTOPTIM_FUZZ_SECONDS (default 60), FASTOPTIM_FUZZ_ARTIFACTS (default: a
# directory under $TMPDIR that is kept only when the run fails).
# Installs clang and its libFuzzer runtime (Debian libclang-rt-<major>-dev) when missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"
seconds="${FASTOPTIM_FUZZ_SECONDS:-60}"
source "$repo/.ci/lib.sh"

need cmake=cmake clang++=clang make=make

# libFuzzer ships in Debian's libclang-rt-<major>-dev (older releases: libfuzzer-<major>-dev).
has_libfuzzer() {
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    clang++ -fsanitize=fuzzer -x c++ - -o /dev/null 2>/dev/null
}
if ! has_libfuzzer; then
  major="$(clang++ -dumpversion | cut -d. -f1)"
  if apt-cache show "libclang-rt-$major-dev" >/dev/null 2>&1; then
    apt_install "libclang-rt-$major-dev"
  else
    apt_install "libfuzzer-$major-dev"
  fi
  has_libfuzzer || { echo "error: clang++ cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fastoptim-fuzz.XXXXXX")"
artifacts="${FASTOPTIM_FUZZ_ARTIFACTS:-$work/artifacts}"
mkdir -p "$artifacts"
keep=0
cleanup() {
  if ((keep)); then
    echo "fuzz artifacts kept in $artifacts" >&2
    [[ "$artifacts" == "$work"/* ]] && find "$work" -mindepth 1 -maxdepth 1 ! -name artifacts -exec rm -rf {} +
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# ---- build ---------------------------------------------------------------------------------------
# The library is instrumented for coverage (fuzzer-no-link) and the sanitizers; one thread, no
# OpenMP: the fuzzer drives tiny params, and determinism makes crashes reproducible. Scalar
# kernels only: the checkpoint loader does not depend on the SIMD level (the sanitized C++
# suite runs every level).
stage "configure + build the fuzz target (clang, -fsanitize=fuzzer,address,undefined)"
CC=clang CXX=clang++ cmake -S "$repo" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFASTOPTIM_FUZZ=ON -DFASTOPTIM_PYTHON=OFF -DFASTOPTIM_TESTS=OFF -DFASTOPTIM_INSTALL=OFF \
  -DFASTOPTIM_OPENMP=OFF -DFASTOPTIM_SIMD_LEVELS=scalar \
  -DFASTOPTIM_SANITIZE=address,undefined,fuzzer-no-link
cmake --build "$work/build" --parallel "$jobs" --target fuzz_checkpoint_load
fuzzer="$work/build/cpp/fuzz/fuzz_checkpoint_load"

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"

# ---- the seeds alone, then the timed run -------------------------------------------------------
cp -r "$repo/cpp/fuzz/corpus" "$work/corpus"
stage "seed corpus ($(find "$work/corpus" -type f | wc -l) inputs)"
if ! "$fuzzer" -runs=0 -artifact_prefix="$artifacts/" "$work/corpus" >"$work/seeds.log" 2>&1; then
  tail -n 60 "$work/seeds.log" >&2
  keep=1
  echo "error: a seed input fails the harness" >&2
  exit 1
fi

stage "fuzzing for ${seconds}s"
set +e
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$work/corpus" >"$work/fuzz.log" 2>&1
status=$?
set -e
tail -n 12 "$work/fuzz.log"
if ((status != 0)) || grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:" "$work/fuzz.log"; then
  grep -nE -A40 "ERROR:|runtime error:|fuzz_checkpoint_load:" "$work/fuzz.log" | head -n 80 >&2
  keep=1
  echo "error: the fuzzer found a failing input (status $status); see $artifacts" >&2
  exit 1
fi

stage "fuzzing passed"
