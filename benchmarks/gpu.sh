#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command (under 5 minutes on one GPU):
#   1. NES, n = 50,000, d = 64, batch 16,000, binary: seconds and the fraction of the GPU's fp32
#      matmul rate measured in the same run (TF32 off), with toy CDG over every weight beside it;
#   2. XNOR-ResNet c = 16, conv:-2 CDG, binary weights: seconds for 2,000 weights and per batch
#      (all weights of the layer, extrapolated).
#
#   bash benchmarks/gpu.sh                 # on a machine with CUDA
#   bash benchmarks/gpu.sh --device cpu    # the same commands, scaled down, as a smoke run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
if [[ "${1:-}" == "--device" ]]; then DEVICE="${2:?--device needs cpu or cuda}"; fi
PY="${PYTHON:-.venv/bin/python}"
if [[ "$DEVICE" == cuda ]]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: CUDA is not available (use --device cpu for a smoke run)")'
  "$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
  NES=(--samples 50000 --plain-coordinates 8 --repeats 3)
  XNOR=(--sample 2000 --loop-sample 10 --pretrain-steps 20)
else
  echo "gpu.sh: smoke run on the CPU (sizes scaled down; these are not GPU figures)"
  NES=(--samples 500 --plain-coordinates 2 --repeats 1 --threads 2)
  XNOR=(--sample 64 --loop-sample 2 --pretrain-steps 2)
fi
start=$SECONDS
"$PY" benchmarks/bench_kernels.py --device "$DEVICE" --dims 64 --batch 16000 "${NES[@]}"
"$PY" benchmarks/bench_xnor_cdg.py --device "$DEVICE" --channels 16 --layers conv:-2 --weights binary "${XNOR[@]}"
echo "gpu.sh: $((SECONDS - start)) s in all on $DEVICE"
