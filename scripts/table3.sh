#!/usr/bin/env bash
# Table 3: BERT-base x {Full-FT, BitFit, b_m2+b_q, b_m2, b_q, Frozen, rand uniform, rand row/col} on the 8 GLUE
# tasks, the paper's grids (bias-only grid for every method but Full-FT), 5 seeds. Full-FT and BitFit also
# evaluate the train split each epoch (--eval-train) for the generalization-gap figure (EVAL_TRAIN=0 to skip).
# Runs: 8 tasks x 8 methods x 4 lrs x 5 seeds = 1280.
# Usage: [GPUS="0 1"] [DRY_RUN=1] [SLURM=1] [PER_TASK_LR=1] [TASKS=...] [METHODS=...] scripts/table3.sh   (see sweep_lib.sh)
source "$(dirname "$0")/sweep_lib.sh"
RUNS_DIR="$(abs_path "${RUNS_DIR:-$REPO/results/table3/runs}")"  # empty: the default
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO/results/table3}")"
EVAL_TRAIN="${EVAL_TRAIN:-1}"
# TASKS= or METHODS= (set but empty): none of them.
add_grid bert-base-cased bert-base-cased "${METHODS-$TABLE3_METHODS}" "${TASKS-$GLUE_TASKS}"
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR" --paper-table 3
add_report "$PYTHON" -m bitfit_experiments.figures "$RUNS_DIR" --out "$OUT_DIR/figures"
add_report "$PYTHON" -m bitfit_experiments.claims "$RUNS_DIR" --out "$OUT_DIR/claims.txt"
run_all
run_report
