#!/usr/bin/env bash
# GPU smoke test of edgeuad, for a machine with an NVIDIA GPU (about 10 minutes at most).
#
#   tools/gpu_smoke.sh [OUT_DIR]        (default: $OUT if set, else ./gpu_smoke_out)
#
# Steps, each under its own time limit, each reported in OUT_DIR/report.md (also printed):
#   1. environment: nvidia-smi, nvcc, python packages, _rt's build and CUDA status
#   2. build _rt with CUDA if this tree's _rt is missing or has no CUDA (EDGEUAD_CUDA=ON)
#   3. CUDA kernels vs the CPU kernel (tools/gpu_smoke.py kernels)
#   4. compute-sanitizer memcheck and racecheck on small shapes, when compute-sanitizer exists
#   5. pytest -m gpu (the GPU tests fail, not skip, when a GPU is visible but unusable)
#   6. a tiny TensorRT engine in fp32 and fp16: build, run, compare with onnxruntime
#   7. timing table: fused CUDA map vs torch CUDA, % of peak DRAM bandwidth; the map's device time per kernel
#   8. Detector fps: TensorRT (+ CUDA map) vs onnxruntime-CUDA vs eager torch CUDA
#   9. ReContrast training step on CUDA, float32 vs bf16 autocast (benchmarks/bench_train_step.py; the
#      `precision=auto` default keeps CUDA in float32 until this is measured)
# Exit status: 0 when every step that could run passed, 1 otherwise.  Steps whose requirements are
# missing (torch with CUDA, tensorrt, pycuda, compute-sanitizer) say SKIPPED and why.
#
# Status: ran once on a lent H200 (2026-12-04, commit ff36a8f, torch 2.11+cu130, no TensorRT/pycuda
# there: steps 6 and TensorRT rows SKIPPED); results in benchmarks/RESULTS.md.  CI (no GPU) tests only
# `bash -n` and the Python part's imports/argument parsing (tests/python/test_gpu_smoke.py).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/gpu_smoke_out}}"
PY="${PY:-$(command -v python3)}"
mkdir -p "$OUTDIR"
REPORT="$OUTDIR/report.md"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
SMOKE="$ROOT/tools/gpu_smoke.py"
failed=0
start=$(date +%s)
# Every step's limit is cut to what is left of the whole budget (default 570 s: the 10-minute goal).
deadline=$(( start + ${SMOKE_BUDGET_S:-570} ))

say() { echo "$*" | tee -a "$REPORT"; }

# step NAME SECONDS CMD...: run with a time limit, append its output to the report, track failures.
step() {
  local name=$1 limit=$2
  shift 2
  say ""
  say "### $name"
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 15 ]; then
    say "SKIPPED: the ${SMOKE_BUDGET_S:-570} s budget is spent"
    failed=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$OUTDIR/$name.log" | tee -a "$REPORT"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "**TIMEOUT** after ${limit}s ($name)"
    failed=1
  elif [ "$rc" -ne 0 ]; then
    say "**FAILED** ($name, exit $rc)"
    failed=1
  fi
  say "_(${name}: $(( $(date +%s) - t0 )) s)_"
}

: >"$REPORT"
# EDGEUAD_COMMIT names the tree when its .git is absent or stale (a copied working tree)
say "# edgeuad GPU smoke test ($(date -u +%FT%TZ), commit ${EDGEUAD_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')})"

say ""
say "### system"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi: not available"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not on PATH"
  echo "python: $PY ($("$PY" --version 2>&1))"; } | tee -a "$REPORT"

if ! "$PY" -c "import edgeuad._rt as r, sys; sys.exit(0 if r.has_cuda() else 1)" 2>/dev/null; then
  step build_rt 300 env EDGEUAD_CUDA=ON EDGEUAD_BUILD_DIR="$OUTDIR/cmake" "$PY" "$ROOT/setup.py" -q build_ext --inplace
fi
step env 60 "$PY" "$SMOKE" env
step kernels 120 "$PY" "$SMOKE" kernels

if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 3 "$PY" "$SMOKE" kernels --small
  done
else
  say ""
  say "### compute-sanitizer"
  say "SKIPPED: compute-sanitizer not on PATH"
fi

if "$PY" -c "import pytest" 2>/dev/null; then
  # Only the files that hold GPU tests: collecting the whole suite imports packages (ray, hnswlib,
  # onnxconverter_common) that a GPU machine's image may lack, and -m gpu would run none of them anyway.
  mapfile -t gpu_files < <(grep -l "pytest.mark.gpu" "$ROOT"/tests/python/test_*.py)
  step pytest_gpu 180 "$PY" -m pytest "${gpu_files[@]}" -m gpu -q -x -p no:cacheprovider
else
  say ""; say "### pytest_gpu"; say "SKIPPED: pytest not installed"
fi
step engine 150 "$PY" "$SMOKE" engine --out "$OUTDIR/engine"
step timing 90 "$PY" "$SMOKE" timing
step profile 90 "$PY" "$SMOKE" profile
step detector 240 "$PY" "$SMOKE" detector --out "$OUTDIR/detector"
step train_step 120 "$PY" "$ROOT/benchmarks/bench_train_step.py" --device cuda --rounds 3 --steps 5 --stem train_step_cuda

say ""
say "total: $(( $(date +%s) - start )) s; $([ "$failed" -eq 0 ] && echo 'all steps that ran passed' || echo 'SOME STEPS FAILED')"
exit "$failed"
