#!/usr/bin/env bash
# Wall time of `pip install .` on a fresh clone, as a new user runs it (build isolation: pip
# fetches the build requirements; no ccache: CCACHE_DISABLE=1), installed into a scratch
# directory; then the size of the extension it built.
# Usage: bash bench/install_time.sh [commit ...]   (default: HEAD; each measured in turn)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastoptim-install-time.XXXXXX")"
trap 'rm -rf "$work"' EXIT
[[ $# -gt 0 ]] || set -- HEAD
for commit in "$@"; do
  rm -rf "$work/clone" "$work/site"
  git clone -q "$repo" "$work/clone"
  git -C "$work/clone" checkout -q "$commit"
  start=$(date +%s.%N)
  (cd "$work/clone" && CCACHE_DISABLE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
     "$python" -m pip install -q --no-deps --target "$work/site" . >"$work/pip.log" 2>&1) ||
    { tail -n 30 "$work/pip.log"; exit 1; }
  end=$(date +%s.%N)
  core=("$work"/site/fastoptim/_core*.so)
  printf '%s (%s): pip install . %.1f s wall; _core %d KB\n' "$commit" \
    "$(git -C "$work/clone" log -1 --format=%h)" "$(echo "$end - $start" | bc)" \
    $(( $(stat -c %s "${core[0]}") / 1024 ))
done
