#!/usr/bin/env bash
# The GPU check (issue 21; docs/GPU_CHECK.md): on one CUDA GPU, in one process tree, under ~8 minutes:
#   1. the CUDA twins of the CPU tests:   pytest -m cuda
#   2. the benchmark on CUDA:             python -m gantrain.tools.bench for dcgan-mnist, dcgan-celeba64 and stylegan-64
#      in fp32 eager, bf16, bf16 + channels-last + compile, each writing its GPU section of docs/BENCHMARKS.md.
# GPU_CHECK_DRY=1: collects the tests and prints the commands, runs nothing on a device, exits 0 (CPU is fine).
# Environment: PYTHON (default .venv/bin/python, else python3); GPU_CHECK_SECONDS (bench timing window, 2);
# GPU_CHECK_BUDGET (seconds for the whole check, 400: a step that would start past it is skipped, and each
# runs under `timeout` for what is left); GPU_CHECK_STEPS (which steps, default tests,fp32,bf16,compile: a
# second run repeats only what failed or was skipped); PYTEST_ARGS (e.g. "-k resume" for the tests step);
# OUT (the device tool's output folder: the log and docs/BENCHMARKS.md are copied there). Wheels in .whl/
# (tools/gpu_wheels.sh) are installed first when hydra is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DRY=${GPU_CHECK_DRY:-0}
SECONDS_PER=${GPU_CHECK_SECONDS:-2}
BUDGET=${GPU_CHECK_BUDGET:-400}
STEPS=,${GPU_CHECK_STEPS:-tests,fp32,bf16,compile},
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-/tmp/gpu_check.log}
START=$(date +%s)
FAILED=()
exec > >(tee "$LOG") 2>&1

# ---- packages the GPU image lacks, from the carried wheels (no network there)
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing $(ls .whl/*.whl | wc -l) carried wheels from .whl/ into /tmp/gantrain-site"
    [ "$DRY" = 1 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gantrain-site .whl/*.whl || { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/gantrain-site
  else
    echo "gpu_check: hydra is not importable and .whl/ holds no wheels: run tools/gpu_wheels.sh first"; exit 1
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export CUBLAS_WORKSPACE_CONFIG=:4096:8   # the exact-resume twin needs deterministic cuBLAS
export GANTRAIN_METRICS_CACHE=${GANTRAIN_METRICS_CACHE:-/tmp/gantrain-metrics-cache}

step() {  # step KEY NAME CMD...: run CMD under what is left of the budget; record a failure, go on
  local key=$1 name=$2; shift 2
  case "$STEPS" in *,"$key",*) ;; *) echo; echo "== $name: not in GPU_CHECK_STEPS"; return 0 ;; esac
  local left=$(( BUDGET - ($(date +%s) - START) ))
  echo; echo "== $name  (t=$(( $(date +%s) - START ))s, ${left}s of the budget left)"
  echo "\$ $*"
  if [ "$DRY" = 1 ]; then return 0; fi
  if [ "$left" -lt 20 ]; then echo "gpu_check: SKIPPED $name (budget spent)"; FAILED+=("$name (skipped)"); return 0; fi
  timeout --signal=INT --kill-after=15 "$left" "$@" || { echo "gpu_check: FAILED $name (exit $?)"; FAILED+=("$name"); }
}

echo "== gpu_check $( [ "$DRY" = 1 ] && echo '(dry run)' ) $(date -u +%FT%TZ) in $ROOT, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
CASES=dcgan-mnist,dcgan-celeba64,stylegan-64   # the bench's cases (gantrain/tools/bench.py CASES)
"$PY" -c "
import sys, torch
from gantrain.tools.bench import CASES
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN',
      torch.backends.cudnn.version(), '| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
assert not set('$CASES'.split(',')) - set(CASES), 'a bench case is unknown'" \
  || { echo "gpu_check: torch or gantrain is not importable with $PY, or a case is unknown"; exit 1; }
if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: no CUDA GPU here (use GPU_CHECK_DRY=1 to check the script on a CPU)"; exit 1
fi

# ---- 1. the CUDA tests
PYTEST=("$PY" -m pytest -m cuda -p no:cacheprovider -o addopts= -q -rs --durations=15 --continue-on-collection-errors tests/ ${PYTEST_ARGS:-})
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=240)
if [ "$DRY" = 1 ]; then
  echo; echo "== collecting the CUDA tests"
  collected=$("${PYTEST[@]}" --collect-only 2>&1) || { echo "$collected"; echo "gpu_check: collection failed"; exit 1; }
  echo "$collected" | grep -v "^$"
  n=$(echo "$collected" | grep -c '::')
  [ "$n" -gt 0 ] || { echo "gpu_check: no test is marked cuda"; exit 1; }
  echo "gpu_check: $n CUDA tests collected"
fi
step tests "CUDA tests" "${PYTEST[@]}"

# ---- 2. the benchmark on CUDA, one docs/BENCHMARKS.md section per configuration
BENCH=("$PY" -m gantrain.tools.bench --device cuda --cases "$CASES" --seconds "$SECONDS_PER" --n-jpeg 1024 --write)
step fp32 "bench fp32 eager" "${BENCH[@]}" --precision 32 --tag fp32
step bf16 "bench bf16" "${BENCH[@]}" --precision bf16 --tag bf16
step compile "bench bf16 + channels-last + compile" "${BENCH[@]}" --precision bf16 \
  --extra trainer.channels_last=true,trainer.compile=true --tag bf16-cl-compile

[ -n "${OUT:-}" ] && [ "$DRY" != 1 ] && cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"
echo; echo "== gpu_check done in $(( $(date +%s) - START ))s; log $LOG"
if [ ${#FAILED[@]} -gt 0 ]; then printf 'gpu_check: FAILED: %s\n' "${FAILED[@]}"; exit 1; fi
echo "gpu_check: all steps passed$( [ "$DRY" = 1 ] && echo ' (dry run: nothing was run on a GPU)')"
