#!/usr/bin/env bash
# Table 1 (dev rows): BERT-large, Full-FT and BitFit on the 8 GLUE tasks, the paper's learning-rate grids, 5 seeds.
# Runs: 8 tasks x 2 methods x 4 lrs x 5 seeds = 320 (PER_TASK_LR=1: BitFit at the Table 6 rate -> 200).
# Usage: [GPUS="0 1 2 3"] [DRY_RUN=1] [SLURM=1] [PER_TASK_LR=1] [EPOCHS=16] [TASKS=...] scripts/table1.sh   (see sweep_lib.sh)
source "$(dirname "$0")/sweep_lib.sh"
RUNS_DIR="$(abs_path "${RUNS_DIR:-$REPO/results/table1/runs}")"  # empty: the default
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO/results/table1}")"
add_grid bert-large-cased bert-large-cased "full_ft bitfit" "${TASKS-$GLUE_TASKS}"  # TASKS= (empty): no task
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR" --paper-table 1
run_all
run_report
