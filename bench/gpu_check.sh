#!/usr/bin/env bash
# One prepared GPU session (device tool): the paper-preset throughput check, then the
# effectiveness table at the cpu-tiny protocol and at the full protocol, in parallel.
# Wheels for what the GPU image lacks travel in .whl (see README, Performance).
set -uo pipefail
OUT=${OUT:-bench/results}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=6 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
timeout 170 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | grep -v "No pretrained" | tail -4
FULL='{"outer_iters":20,"train_steps":200,"pgd_steps":8,"hotflip_iters":5,"candidates":16}'
timeout ${EFF_TIMEOUT:-340} python3 bench/effectiveness.py --device cuda --work /tmp/work_a --out "$OUT/effectiveness.json" \
  > "$OUT/log_table.txt" 2>&1 &
timeout ${EFF_TIMEOUT:-340} python3 bench/effectiveness.py --device cuda --work /tmp/work_b --tag @full --overrides "$FULL" \
  --rows mem3,mem3+strip,mem3-cn,mem3-cn+strip,uc,em --out "$OUT/effectiveness_full.json" > "$OUT/log_full.txt" 2>&1 &
wait
grep -v Warn "$OUT/log_table.txt" | tail -40
grep -v Warn "$OUT/log_full.txt" | tail -20
