#!/usr/bin/env bash
# GPU checks and figures, for a machine with a CUDA GPU (CI has none):
#   1. the tests marked gpu (CUDA sampler, training, embedding, bfloat16 against float32);
#   2. with REAL_DATA=DIR (the folder bench_real.py takes): niches on the real sets, trained
#      and embedded on the GPU, beside the CPU figures in the README;
#   3. whole runs of 1M and 10M cells on the GPU (bench_scale.py; the 10M cohort repeats
#      the slides of the simulated 1M one), one size at a time;
#   4. the sampler against the per-cell loop on the GPU.
# Usage: [REAL_DATA=DIR] [BUDGET_S=seconds] bash bench/gpu.sh [sizes...]
#        (default sizes: 1000000 10000000)
# A step that fails is reported and the next one runs; the exit status is 1 if any failed.
# With BUDGET_S, a step still running when the budget is spent is stopped (and reported).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SIZES=(${@:-1000000 10000000})
THREADS=$(nproc)
BUDGET_S=${BUDGET_S:-0}
failed=0

step() {
    local left=100000
    if [ "$BUDGET_S" -gt 0 ]; then left=$((BUDGET_S - SECONDS)); fi
    echo "## $* (at ${SECONDS} s)"
    if [ "$left" -le 5 ]; then echo "SKIPPED (budget spent): $*"; failed=1; return; fi
    timeout "$left" "$@"
    local rc=$?
    if [ $rc -eq 124 ]; then echo "STOPPED (budget spent): $*"; failed=1
    elif [ $rc -ne 0 ]; then echo "FAILED (exit $rc): $*"; failed=1; fi
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; \
print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" || exit 1
# the gpu tests are all under tests/core; the dashboard's tests need streamlit, which a GPU
# machine may not have
step "$PY" -m pytest -q -m gpu tests/core
if [ -n "${REAL_DATA:-}" ]; then
    step "$PY" bench/bench_real.py "$REAL_DATA" --threads "$THREADS" --skip-transfer
fi
for size in "${SIZES[@]}"; do
    step "$PY" bench/bench_scale.py --device cuda --threads "$THREADS" --sizes "$size"
done
step "$PY" bench/bench_sampler.py --device cuda --seeds 32 64 1024 4096 16384
echo "## done at ${SECONDS} s"
exit $failed
