#!/usr/bin/env bash
# Table 2: BERT-base, BERT-large (the paper's grids) and RoBERTa-base (the paper's fixed rates: Full-FT 1e-5,
# bias-only 1e-4; override with RO_LR_FULL / RO_LR_BIAS) x Full-FT, BitFit, 8 GLUE tasks, 5 seeds.
# Runs: 8 x 2 x 4 x 5 (BERT-base) + 8 x 2 x 4 x 5 (BERT-large) + 8 x 2 x 1 x 5 (RoBERTa) = 720.
# Usage: [GPUS="0 1"] [DRY_RUN=1] [SLURM=1] [PER_TASK_LR=1] [TASKS=...] scripts/table2.sh   (see sweep_lib.sh)
source "$(dirname "$0")/sweep_lib.sh"
RUNS_DIR="$(abs_path "${RUNS_DIR:-$REPO/results/table2/runs}")"  # empty: the default
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO/results/table2}")"
tasks="${TASKS-$GLUE_TASKS}"  # TASKS= (empty): no task
add_grid bert-base-cased bert-base-cased "full_ft bitfit" "$tasks"
add_grid bert-large-cased bert-large-cased "full_ft bitfit" "$tasks"
add_grid roberta-base roberta-base full_ft "$tasks" "${RO_LR_FULL:-1e-5}"
add_grid roberta-base roberta-base bitfit "$tasks" "${RO_LR_BIAS:-1e-4}"
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR" --paper-table 2
run_all
run_report
