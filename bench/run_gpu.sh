#!/usr/bin/env bash
# Every GPU measurement in one go (one lent H100/H200): environment, the card's bf16 matmul ceiling, and
# bench/train_gpu.py over the paper presets. Writes gpu_runs.jsonl and gpu_log.txt under $OUT (or /tmp).
# On a machine without our packages, bring them in .whl/: the pinned transformers wheel, and copies of the
# pure-Python omegaconf and antlr4 packages in .whl/pure/ (antlr4-python3-runtime has no wheel).
set -uo pipefail
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (the device image's transformers is older than our pin)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD/.whl/pure || exit 1
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 - <<'PY'
import torch, time
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
print(f"bf16 8192^3 matmul: {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s")
PY
  timeout 420 python3 bench/train_gpu.py --runs eva_vit_g:256 eva_vit_g:128 eva_vit_g:384 clip_vit_l:256 \
    --steps 20 --dtype bf16 --json "$OUT/gpu_runs.jsonl"
} 2>&1 | tee "$OUT/gpu_log.txt"
