#!/usr/bin/env bash
# The bias-bank benchmark on a GPU, prepared to finish in a few minutes (one H100/H200): K = 1, 4, 8, 16 banked
# members against separate runs, MiniLM-sized and BERT-base-sized encoders, SST-2-like and RTE-like lengths, fp32,
# TF32 and bf16 autocast. Neither GLUE files nor weights travel to such a machine, so the batches are random token
# ids with the real examples' lengths (made here first: python -m bitfit_experiments.bench.bank_bench
# --write-lengths .devbench/lengths.json) and the models are randomly initialised: speed only.
#   OUT=results/benchmark/banks_gpu scripts/gpu_bank_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-results/benchmark/banks_gpu}"
LENGTHS="${LENGTHS:-.devbench/lengths.json}"
[[ -f "$LENGTHS" ]] || { echo "error: $LENGTHS is missing; write it with: python -m bitfit_experiments.bench.bank_bench --write-lengths $LENGTHS" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
PYTHONUNBUFFERED=1 "$PY" -m bitfit_experiments.bench.bank_bench --in-process --gpu-device 0 --lengths-file "$LENGTHS" \
    --models minilm bert-base --lengths sst2 rte --ks 1 4 8 16 --steps "${STEPS:-20}" \
    --precisions ${PRECISIONS:-fp32 tf32 bf16} --out "$OUT"
