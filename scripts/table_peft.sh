#!/usr/bin/env bash
# BitFit beside LoRA, IA3 and BitFit+LoRA, measured in one harness (the LoRA paper's Table 2 compared them under
# setups that were not identical): RoBERTa-base, Full-FT / BitFit / LoRA (r 8, alpha 8, query+value) / IA3 /
# BitFit+LoRA on the 8 GLUE tasks, the same data, seeds, epochs and evaluation; grids: Full-FT {1,2,3,5}e-5, BitFit
# {1,4,7,10}e-4, LoRA and BitFit+LoRA LRS_LORA {2,4,5,10}e-4, IA3 LRS_IA3 {1,3,10}e-3; 5 seeds.
# Runs: 8 tasks x (4 + 4 + 4 + 3 + 4) lrs x 5 seeds = 760. The table sets the LoRA paper's published rows beside
# ours, on its metrics (MRPC/QQP accuracy, STS-B Pearson): results/table_peft/table.md.
# Usage: [GPUS="0 1 2 3"] [DRY_RUN=1] [SLURM=1] [EPOCHS=16] [TASKS=...] [METHODS=...] scripts/table_peft.sh
source "$(dirname "$0")/sweep_lib.sh"
RUNS_DIR="$(abs_path "${RUNS_DIR:-$REPO/results/table_peft/runs}")"  # empty: the default
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO/results/table_peft}")"
MODEL="${MODEL:-roberta-base}"
add_grid "$MODEL" "$(basename "$MODEL")" "${METHODS-full_ft bitfit $PEFT_METHODS}" "${TASKS-$GLUE_TASKS}"
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR" --paper-table lora
run_all
run_report
