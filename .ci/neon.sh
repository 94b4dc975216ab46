#!/usr/bin/env bash
# The NEON kernels, built and tested here: the C++ suite cross-compiled for AArch64 (GoogleTest
# from Debian's source package) and run under qemu-aarch64. DispatchEnv tests are left out: they
# re-execute the test binary (gtest death tests), which qemu-user cannot do; they run natively
# in .ci/cpp.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -f /usr/src/googletest/CMakeLists.txt ] || need+=(googletest)
if [ ${#need[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq &&
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
build=$(mktemp -d /tmp/fastoptim-aarch64.XXXXXX)
trap 'rm -rf "$build"' EXIT
cmake -S cmake/aarch64 -B "$build" -Wno-dev -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64/toolchain.cmake" >/dev/null
cmake --build "$build" -j2 >/dev/null
ctest --test-dir "$build" -j2 -E '^DispatchEnv\.' --output-on-failure
echo "NEON checks passed"
