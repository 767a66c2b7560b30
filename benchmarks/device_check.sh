#!/usr/bin/env bash
# The GPU checks of the inference engine, prepared as one device call (see docs/performance.md, "Inference").
#
#   bash benchmarks/device_check.sh prepare   # here (network): wheels the GPU image lacks, into .whl/ (git-ignored)
#   bash benchmarks/device_check.sh run       # on the GPU machine, from the repository root, with .whl carried
#
# `run` writes gpu.txt, cuda_tests.log and bench.jsonl under $OUT (or ./device-out when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  prepare)
    # The GPU image has torch, pandas, statsmodels, scipy, jinja2, typer, rich, pyarrow, pytest; not these
    # (pure-Python wheels, any platform). Python there is 3.12.
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
      "monai==1.6.1" "nibabel==5.4.2" "pydicom==3.0.1" || exit 1
    ls -l .whl
    ;;
  run)
    out="${OUT:-device-out}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)" | tee -a "$out/gpu.txt"
    # the CUDA tests (AMP vs CPU agreement, a real out-of-memory retry, reference grid from the GPU)
    timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" -W default -rs tests/inference/test_inference_cuda.py 2>&1 | tee "$out/cuda_tests.log"
    # the GPU benchmark: 200 cases, AMP as on the model card, then off; 1 and 4 prefetch/write workers
    for args in "--workers 1" "--workers 4" "--workers 4 --amp off"; do
      timeout 150 python3 benchmarks/bench_inference.py --device cuda --n-cases 200 $args | tee -a "$out/bench.jsonl"
    done
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
