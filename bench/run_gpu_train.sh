#!/usr/bin/env bash
# The Ray Train + DeepSpeed loop on a lent GPU machine (16 cores): bench/train_overhead.py on CPU there (does the
# overhead shrink with cores to spare?) and on the GPU (DeepSpeed bf16 over NCCL, the real training path).
# Needs .whl/ with ray (its Java jars and rllib stripped to fit the 64 MiB carry), a deepspeed wheel built with
# DS_BUILD_OPS=0, pydantic/jsonschema and their deps, transformers, and omegaconf/antlr4 in .whl/pure/.
# Budget about 10 minutes of device time: the first try (2026-11-28) gave the GPU bench 120 s, and its Ray Train
# run was still training when that ran out (set-up before it: ~70 s, Ray and worker start: ~30 s).
set -uo pipefail
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/pure:$PWD PATH=/tmp/site/bin:$PATH
python3 -c "import ray, deepspeed, ray.train.torch, ray.data, omegaconf, transformers
print('ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)" || exit 1
{
  echo "== GPU, batch 32"; timeout 220 python3 bench/train_overhead.py --batch 32 --device cuda
  echo "== CPU, batch 8"; DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= timeout 160 python3 bench/train_overhead.py --batch 8
  echo "== CPU, batch 32"; DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= timeout 160 python3 bench/train_overhead.py --batch 32
} 2>&1 | tee "$OUT/train_overhead_log.txt" | grep -E "^(==|device=|plain|Ray Train|ratio)|Error|error:"
