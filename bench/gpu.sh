#!/usr/bin/env bash
# The GPU checks in one command, for a machine with CUDA and ../shared beside the repo: the CUDA
# tests (and, on CUDA, the device-side non-finite check and the precision step), then the
# training bench at BERT-base with --bf16 at batch 128 and 32 (uer against HF), then uer --compile
# at batch 128 (mlm). Each part has a time limit; results go to $OUT (or ./gpu-results). About 5
# minutes on an H200.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
out=${OUT:-gpu-results}
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "=== $1 at $(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,memory.used --format=csv,noheader
stamp tests
timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py \
  "tests/test_reliability.py::test_a_non_finite_step_is_caught_on_the_device_and_no_later_step_moves_the_weights" \
  "tests/test_train.py::test_the_precision_step_is_clip_grad_norm_then_the_step" 2>&1 | tail -15 | tee "$out/test_cuda.log"
bench() {  # name, time limit, arguments
  local name=$1 limit=$2
  shift 2
  stamp "$name"
  timeout "$limit" python3 bench/train_speed.py --device cuda --bf16 --recipes base --steps 32 --no_retain_row \
    --no_dense --json "$out/$name.json" "$@" 2>&1 | grep -v '^{\|^[WI]1[0-9]' | tail -12 | tee "$out/$name.log"
}
bench b128 120 --targets bert mlm --batch_size 128
bench b32 120 --targets bert mlm --batch_size 32
bench compile128 200 --targets mlm --batch_size 128 --warmup 12 --compile
stamp end
