#!/usr/bin/env bash
# The GPU checks in one go, on any Linux machine with an NVIDIA GPU and its driver, from the repository root:
#   bash benchmarks/gpu_check.sh [OUT.json]          (default bench_out/gpu_check.json; QUICK=1 for a shorter run)
# Sets up .venv-gpu with PyPI's torch (the CUDA build on Linux) and bitsandbytes, tries to add mamba-ssm (its CUDA
# kernel; skipped with a note when it cannot be installed), then runs benchmarks/gpu_check.py under an 8-minute limit:
# mamba-ssm's scan against hpeft's chunked scan (forward, gradients, times), LoRA steps against full fine-tuning
# and HF peft, NF4 QLoRA and bf16-mixed fits of each task. The JSON holds every figure, or the error of a check.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_out/gpu_check.json}
VENV=${VENV:-.venv-gpu}
make setup VENV="$VENV" TORCH="${TORCH:-torch==2.13.0}"
if [ "${MAMBA_SSM:-1}" = 1 ] && ! "$VENV/bin/python" -c "import mamba_ssm" 2>/dev/null; then
    "$VENV/bin/pip" install -q --no-build-isolation mamba-ssm causal-conv1d \
        || echo "gpu_check: mamba-ssm did not install; the scan check compares hpeft's scans only" >&2
fi
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
timeout 480 "$VENV/bin/python" -m benchmarks.gpu_check --out "$OUT" ${QUICK:+--quick}
