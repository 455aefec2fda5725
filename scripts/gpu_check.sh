#!/usr/bin/env bash
# Build pyprune with its CUDA kernels, run the GPU tests and the GPU benchmark,
# and write bench/results/ctc_gpu.md. Run on a machine with a CUDA GPU and a
# CUDA build of torch:  bash scripts/gpu_check.sh [output-dir]
set -euo pipefail
out=${1:-bench/results}
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
PYPRUNE_BUILD_EXT=1 PYPRUNE_BUILD_CUDA=1 pip install --no-build-isolation -e . 2>&1 | tail -2
python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.log"
python -m pytest -q tests 2>&1 | tail -3
pyprune bench ctc --device cuda --json "$out/ctc_gpu.json" | tee "$out/ctc_gpu.md"
pyprune bench levenshtein --device cuda --json "$out/levenshtein_gpu.json" | tee "$out/levenshtein_gpu.md"
pyprune bench block_sparse --device cuda --json "$out/block_sparse_gpu.json" | tee "$out/block_sparse_gpu.md"
