#!/usr/bin/env bash
# GPU checks and figures, for a machine with a CUDA GPU (CI has none):
#   1. the tests marked gpu (CUDA sampler, training, embedding, bfloat16 against float32);
#   2. the sampler against the per-cell loop on the GPU;
#   3. whole runs of 1M and 10M cells on the GPU (bench_scale.py; the 10M cohort repeats
#      the slides of the simulated 1M one).
# Usage: bash bench/gpu.sh [sizes...]     (default sizes: 1000000 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SIZES=("${@:-1000000 10000000}")
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m gpu tests
"$PY" bench/bench_sampler.py --device cuda --seeds 64 1024 4096 16384
"$PY" bench/bench_scale.py --device cuda --threads 8 --sizes ${SIZES[*]}
