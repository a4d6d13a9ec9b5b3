#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): every CUDA path of the toolchain, in one run.
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [gpu_check.py options...]
#
# OUTDIR defaults to $OUT/gpu_check, or ./gpu_check without $OUT; a relative OUTDIR is taken from
# the directory the script is called from. Options go to gpu_check.py, e.g. --budget-s 300,
# --parts environment,tensorrt, --trt-precisions fp32,fp16 (python benchmarks/gpu_check.py --help).
# Runs from a copy of the working tree: nothing needs to be installed but torch. $PYTHON picks
# the interpreter (default: python3, else python).
#
# Exit codes (gpu_check.py's): 0 every part ran or was skipped for a stated missing dependency;
# 1 a part failed; 2 no CUDA device; 3 the time budget skipped or cut short a part; 130 interrupted.
set -euo pipefail

out="${OUT:-.}/gpu_check"
if [[ $# -gt 0 && "$1" != -* ]]; then
    out="$1"
    shift
fi
[[ "$out" = /* ]] || out="$PWD/$out"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    python="$(command -v python3 || command -v python || true)"
fi
if [[ -z "$python" ]]; then
    echo "gpu_check.sh: no python3 or python on PATH (set PYTHON)" >&2
    exit 2
fi

rc=0
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" benchmarks/gpu_check.py --output "$out" "$@" || rc=$?

case "$rc" in
    0) verdict="ok" ;;
    1) verdict="a part failed" ;;
    2) verdict="no CUDA device, or bad arguments" ;;
    3) verdict="incomplete: the time budget skipped or cut short a part" ;;
    130) verdict="interrupted" ;;
    *) verdict="crashed" ;;
esac
echo "gpu_check: $verdict (exit $rc); figures in $out/results.json and $out/summary.md" >&2
exit "$rc"
