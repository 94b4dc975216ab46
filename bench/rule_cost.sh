#!/usr/bin/env bash
# What one more rule costs the build: compiles every translation unit of the Python extension
# (the kernels at each level, the driver, the binding, the rest of the library) once as the
# tree is and once with a throw-away rule (Adamax's description under another name,
# registered as rule 9), in a scratch copy of the tree, and prints the CPU seconds of each
# and the difference. CPU seconds, not wall time: they are what the build adds on any machine,
# and less sensitive to a busy machine than wall time (each unit is compiled twice, the faster
# counts). The throw-away copy is deleted.
# Usage: bash bench/rule_cost.sh [compiler]     (default g++; FASTOPTIM_TREE: another
#        checkout to measure, e.g. an older commit's worktree)
set -euo pipefail
repo="${FASTOPTIM_TREE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cxx="${1:-g++}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastoptim-rule-cost.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-python}"
pyinc="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
pbinc="$("$python" -c 'import pybind11; print(pybind11.get_include())')"
common=(-O3 -DNDEBUG -std=gnu++20 -fPIC)
kernel=(-ffp-contract=off -fno-math-errno -fno-trapping-math)

# the tree's units, each with its flags; prints "<unit> <cpu seconds>" lines and the total
compile_all() {
  local tree=$1 total=0 line
  local -a units=(
    "isa_scalar cpp/src/kernels/isa_scalar.cpp ${kernel[*]} -fno-tree-vectorize"
    "isa_sse2 cpp/src/kernels/isa_sse2.cpp ${kernel[*]}"
    "isa_avx2 cpp/src/kernels/isa_avx2.cpp ${kernel[*]} -mavx2 -mf16c -mfma"
    "isa_avx512 cpp/src/kernels/isa_avx512.cpp ${kernel[*]} -mavx512f -mfma"
    "driver cpp/src/driver.cpp -fopenmp -DFASTOPTIM_OPENMP -DFASTOPTIM_KERNELS_X86 -ffp-contract=off"
    "dispatch cpp/src/dispatch.cpp -DFASTOPTIM_KERNELS_X86"
    "optimizer cpp/src/optimizer.cpp"
    "checkpoint cpp/src/checkpoint.cpp"
    "options cpp/src/options.cpp"
    "_core python/fastoptim/_core.cpp -fvisibility=hidden"
    "_plan_guard python/fastoptim/_plan_guard.cpp -fvisibility=hidden"
    "roof_scalar cpp/roofline/isa_scalar.cpp ${kernel[*]} -fno-tree-vectorize"
    "roof_sse2 cpp/roofline/isa_sse2.cpp ${kernel[*]}"
    "roof_avx2 cpp/roofline/isa_avx2.cpp ${kernel[*]} -mavx2 -mf16c -mfma"
    "roof_avx512 cpp/roofline/isa_avx512.cpp ${kernel[*]} -mavx512f -mfma"
    "_roofline python/fastoptim/_roofline.cpp -fvisibility=hidden -fopenmp -DFASTOPTIM_KERNELS_X86")
  for line in "${units[@]}"; do
    read -r name src flags <<< "$line"
    [[ -e "$tree/$src" ]] || continue
    local secs="" run
    for run in 1 2; do
      /usr/bin/time -f "%U %S" -o "$work/time" "$cxx" "${common[@]}" $flags -I"$pyinc" \
        -I"$pbinc" -I"$tree/cpp/src" -I"$tree/cpp/include" -I"$tree/cpp/roofline" -c "$tree/$src" -o "$work/unit.o"
      secs=$(awk -v best="$secs" '{s = $1 + $2; if (best == "" || s < best) best = s;
                                    printf "%.2f", best}' "$work/time")
    done
    printf '  %-12s %6.2f s\n' "$name" "$secs"
    total=$(awk -v a="$total" -v b="$secs" 'BEGIN {printf "%.2f", a + b}')
  done
  printf '  %-12s %6.2f s\n' total "$total"
  echo "$total" > "$work/total"
}

echo "== the tree as it is ($cxx)"
compile_all "$repo"
before=$(cat "$work/total")

mkdir -p "$work/tree"
cp -r "$repo/cpp" "$work/tree/"
mkdir -p "$work/tree/python/fastoptim"
cp "$repo"/python/fastoptim/*.cpp "$repo"/python/fastoptim/*.hpp "$work/tree/python/fastoptim/" 2>/dev/null || true
rules="$work/tree/cpp/include/fastoptim/rules"
sed -e 's/struct Adamax\b/struct Throwaway/g' -e 's/Adamax/Throwaway/g' -e 's/adamax/throwaway/g' \
  "$rules/adamax.hpp" > "$rules/throwaway.hpp"
registry="$work/tree/cpp/include/fastoptim/rules.hpp"
sed -i -e 's|#include "fastoptim/rules/adamax.hpp"|&\n#include "fastoptim/rules/throwaway.hpp"|' \
  -e 's/  adamax = 8,/&\n  throwaway = 9,/' -e 's/Radam, Adamax>/Radam, Adamax, Throwaway>/' "$registry"
grep -q Throwaway "$registry" || { echo "error: could not register the throw-away rule" >&2; exit 1; }

echo "== with a throw-away rule (a copy of Adamax, registered as rule 9)"
compile_all "$work/tree"
after=$(cat "$work/total")
awk -v a="$before" -v b="$after" \
  'BEGIN {printf "one more rule: +%.2f CPU s (%.2f -> %.2f); on 2 cores about +%.2f s of wall time\n", b - a, a, b, (b - a) / 2}'
