#!/usr/bin/env bash
# One prepared GPU session (device tool): the paper-preset throughput check, then the
# effectiveness table at the cpu-tiny protocol, the issue-8 rows (methods meant to survive
# trigger stripping, both victim families) and the shortcut race at 30 epochs, in parallel.
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
timeout ${EFF_TIMEOUT:-340} python3 bench/effectiveness.py --device cuda --work /tmp/work_a --out "$OUT/effectiveness.json" \
  > "$OUT/log_table.txt" 2>&1 &
ISSUE8=mem3-rand,mem3-rand+strip,mem3-joint,mem3-joint+strip,mem3-cs,mem3-cs+strip,uc-text,uc-text+strip,mem3-rand+jpeg75,mem3-rand+crop,mem3-rand+jpeg10,mem3-rand+grayscale
(timeout ${EFF_TIMEOUT:-340} python3 bench/effectiveness.py --device cuda --work /tmp/work_b --rows "$ISSUE8" \
   --out "$OUT/effectiveness_issue8.json" > "$OUT/log_issue8.txt" 2>&1
 timeout 120 python3 bench/shortcut_race.py --device cuda --epochs 30 --work /tmp/work_b \
   --out "$OUT/shortcut_race_gpu.json" >> "$OUT/log_issue8.txt" 2>&1) &
wait
grep -v Warn "$OUT/log_table.txt" | tail -40
grep -v Warn "$OUT/log_issue8.txt" | tail -30
