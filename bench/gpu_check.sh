#!/usr/bin/env bash
# One prepared GPU session (device tool); each form fits one device call (< 10 minutes):
#   bash bench/gpu_check.sh         about 9 minutes on an H100:
#     1. bench/gpu_check.py: the default protective path (EM against a frozen ViT-B-32, and ViT-B-32 +
#        RN50, 224 px, bf16: samples/s), then the paper preset (RN50, 224 px, bf16) over a 2,048-sample unit, as it is,
#        compiled, and with larger PGD/HotFlip batches; peak memory; bf16 vs fp32 losses;
#     2. the protection effect of the fast path: MEM-3 protected in bf16 vs fp32 (cpu-tiny protocol,
#        tiny-resnet victim, 30 epochs), as bench/effectiveness.py rows.
#   bash bench/gpu_check.sh photo   the photo-like regime (issue 13): the small-vit variant rows the CPU sessions have
#     not measured (tiny-resnet has every row; small-vit its main method rows), at the calibrated
#     difficulty, as far as the time allows (PHOTO_ROWS / PHOTO_VICTIMS override;
#     bench/results/effectiveness_photo_gpu.json, then join: bench/effectiveness.py --style photo --merge).
#   bash bench/gpu_check.sh flickr8k RUN   RUN = clean or random-words: one calibration curve on the Flickr8K
#     shape (8,000 images x 5 captions = 40,000 pairs, difficulty 0.3), the regime the CPU cannot train
#     (bench/results/calibration_flickr8k_RUN.json; join the two with bench/calibrate.py --merge).
# Wheels for what the GPU image lacks travel in .whl (see README, Benchmarks).
set -uo pipefail
OUT=${OUT:-bench/results}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD   # the checkout's mempipe and mempipe_research, uninstalled
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=6 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
if [ "${1:-}" = flickr8k ]; then
  timeout ${FLICKR_TIMEOUT:-560} python3 bench/calibrate.py --levels 0.3 --train 40000 --captions-per-image 5 \
    --runs "${2:-clean}" --device cuda --work /tmp/work_calibration --out "$OUT/calibration_flickr8k_${2:-clean}.json" 2>&1 \
    | grep -v Warn | tail -6
  exit 0
fi
if [ "${1:-}" = photo ]; then
  timeout ${PHOTO_TIMEOUT:-540} python3 bench/effectiveness.py --style photo --device cuda \
    --rows "${PHOTO_ROWS:-mem3-cs,mem3-cn,mem3-rand,mem3-joint,uc-text}" \
    --victims "${PHOTO_VICTIMS:-small-vit}" --work /tmp/work_photo --out "$OUT/effectiveness_photo_gpu.json" > "$OUT/log_photo.txt" 2>&1
  grep -v Warn "$OUT/log_photo.txt" | tail -14
  exit 0
fi
timeout ${CHECK_TIMEOUT:-330} python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | grep -v "No pretrained" | tail -10
timeout ${EFF_TIMEOUT:-180} python3 bench/effectiveness.py --device cuda --rows mem3,mem3-bf16 --victims tiny-resnet \
  --work /tmp/work_a --out "$OUT/effectiveness_gpu_bf16.json" > "$OUT/log_bf16.txt" 2>&1
grep -v Warn "$OUT/log_bf16.txt" | tail -12
