#!/usr/bin/env bash
# The C++ side of CI (issue 4, part 1), from a clean checkout, with no Python involved:
#   1. configure + build + ctest with -DFASTOPTIM_PYTHON=OFF
#   2. cmake --install to a temporary prefix
#   3. configure, build and run cpp/examples against that prefix (find_package); the loss
#      must fall with every rule
#   4. a tiny add_subdirectory() consumer of the repository (scalar kernels only: the other
#      levels compile exactly as in step 1)
#   5. README.md's C++ blocks, each compiled against the installed package and run
# Installs its Debian build dependencies when they are missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"
source "$repo/.ci/lib.sh"

need libgtest-dev libeigen3-dev cmake=cmake g++=g++ make=make
# GCC, as the Linux wheels (the sanitizers build with Clang); named as CMake names it for the
# wheel, so that ccache serves the objects .ci/run's wheel build compiled with the same flags.
export CC=gcc CXX=g++

work="$(mktemp -d "${TMPDIR:-/tmp}/fastoptim-cpp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---- 1. build and test without Python ----------------------------------------------------------
stage "configure + build (FASTOPTIM_PYTHON=OFF)"
cmake -S "$repo" -B "$work/build" -DFASTOPTIM_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release
cmake --build "$work/build" --parallel "$jobs"
# The C++ build must not have looked for Python or pybind11 at all.
if grep -E '^(Python_EXECUTABLE|Python3_EXECUTABLE|pybind11_DIR)[:=]' "$work/build/CMakeCache.txt"; then
  echo "error: the C++-only build looked up Python/pybind11" >&2
  exit 1
fi

stage "ctest"
ctest --test-dir "$work/build" --output-on-failure --parallel "$jobs"

# ---- 2. install --------------------------------------------------------------------------------
stage "cmake --install"
cmake --install "$work/build" --prefix "$work/prefix"
for f in include/fastoptim/optimizer.hpp include/fastoptim/eigen.hpp \
         lib*/cmake/fastoptim/fastoptimConfig.cmake lib*/cmake/fastoptim/fastoptimConfigVersion.cmake; do
  compgen -G "$work/prefix/$f" >/dev/null || { echo "error: $f not installed" >&2; exit 1; }
done

# ---- 3. the find_package example ---------------------------------------------------------------
stage "example against the installed package"
cmake -S "$repo/cpp/examples" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release
cmake --build "$work/example" --parallel "$jobs"
"$work/example/logistic_regression" | tee "$work/example.log"
grep -q "loss fell with every rule" "$work/example.log"
if grep -q "DID NOT FALL" "$work/example.log"; then
  echo "error: a rule's loss did not fall" >&2
  exit 1
fi

# ---- 4. add_subdirectory consumer ---------------------------------------------------------------
stage "add_subdirectory consumer"
cmake -S "$repo/cpp/examples/add_subdirectory" -B "$work/subdirectory" \
  -DFASTOPTIM_SOURCE_DIR="$repo" -DCMAKE_BUILD_TYPE=Release -DFASTOPTIM_SIMD_LEVELS=scalar
cmake --build "$work/subdirectory" --parallel "$jobs"
"$work/subdirectory/consumer"

# ---- 5. the README's C++ blocks -----------------------------------------------------------------
# Each ```cpp block of README.md is a whole program (tests/test_readme.py checks that it is and
# that it is marked as covered here): compiled against the installed package and run.
stage "README C++ blocks"
mkdir -p "$work/readme"
awk -v dir="$work/readme" '
  /^```cpp[[:space:]]*$/ { n++; file = sprintf("%s/readme_%d.cpp", dir, n); inside = 1; next }
  /^```/ && inside      { inside = 0; close(file); next }
  inside                { print > file }
' "$repo/README.md"
blocks=("$work"/readme/readme_*.cpp)
[ -e "${blocks[0]}" ] || { echo "error: no C++ block found in README.md" >&2; exit 1; }
{
  echo 'cmake_minimum_required(VERSION 3.21)'
  echo 'project(fastoptim_readme LANGUAGES CXX)'
  echo 'find_package(fastoptim CONFIG REQUIRED)'
  for src in "${blocks[@]}"; do
    name="$(basename "$src" .cpp)"
    echo "add_executable($name $name.cpp)"
    echo "target_compile_features($name PRIVATE cxx_std_20)"
    echo "target_link_libraries($name PRIVATE fastoptim::fastoptim)"
  done
} > "$work/readme/CMakeLists.txt"
cmake -S "$work/readme" -B "$work/readme/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release
cmake --build "$work/readme/build" --parallel "$jobs"
for src in "${blocks[@]}"; do
  name="$(basename "$src" .cpp)"
  "$work/readme/build/$name" || { echo "error: README.md's $name exited with $?" >&2; exit 1; }
  echo "$name: ok"
done

stage "C++ checks passed"
