#!/usr/bin/env bash
# CapFilt's GPU measurements on a lent H100/H200 (16 cores): bench/capfilt_gpu.py with paper-size models,
# captioner and filter batch sizes x prepare threads. Needs .whl/ with the pinned transformers wheel (the device
# image's is older); ray and omegaconf are not needed. About 4-5 minutes of device time with the machine's start.
# Writes capfilt_gpu.jsonl and capfilt_gpu_log.txt under $OUT (or /tmp).
set -uo pipefail
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c "import pynvml; pynvml.nvmlInit(); print('NVML', pynvml.nvmlSystemGetDriverVersion())" \
    || echo "NVML unavailable: GPU busy will not be measured"
  timeout 500 python3 bench/capfilt_gpu.py --json "$OUT/capfilt_gpu.jsonl"
} 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/capfilt_gpu_log.txt"
