#!/usr/bin/env bash
# The prepared GPU checks of the speed work (docs/benchmarks.md), in two calls that each fit the device
# tool's 10 minutes on an H100 (estimates; nothing here has run on a GPU yet):
#   bash bench/gpu_session.sh kernels   # ~3 min: varlen vs sdpa on packed rows, the chunked loss vs plain
#   bash bench/gpu_session.sh compare   # ~8 min: runner vs TRL (full, LoRA), then the step profile
# Figures go to $OUT (default /tmp/gpu-session); the corpus and the shared 1B base stay in /tmp/sbs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
case "${1:-}" in
  kernels)
    timeout 150 "$PY" bench/attention_kernels.py 2>&1 | tee "$OUT/attention_kernels.txt"
    timeout 90 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_fused_loss.py -k on_a_gpu 2>&1 | tee "$OUT/fused_loss.txt"
    ;;
  compare)
    timeout 420 "$PY" bench/side_by_side.py --workdir /tmp/sbs --steps 15 --warmup 3 \
      --json "$OUT/side_by_side.json" 2>&1 | tee "$OUT/side_by_side.txt"
    timeout 150 "$PY" bench/profile_step.py --workdir /tmp/sbs --json "$OUT/profile_step.json" 2>&1 \
      | tee "$OUT/profile_step.txt"
    ;;
  *) echo "usage: bash bench/gpu_session.sh kernels|compare" >&2; exit 2 ;;
esac
