#!/usr/bin/env bash
# Training-size curve (the GLUE analogue of the paper's Figure 2, which used SQuAD): BitFit vs Full-FT on one task
# (TASK, default sst2) trained on increasing random subsets (--train-size; "full" = the whole training set).
# Runs: len(TRAIN_SIZES) x 2 methods x 4 lrs x 5 seeds = 7 x 2 x 4 x 5 = 280 by default.
# Usage: [TASK=sst2] [TRAIN_SIZES="100 500 ..."] [MODEL=bert-base-cased] [GPUS=...] [DRY_RUN=1] [SLURM=1] scripts/train_size_curve.sh
source "$(dirname "$0")/sweep_lib.sh"
RUNS_DIR="$(abs_path "${RUNS_DIR:-$REPO/results/train_size_curve/runs}")"  # empty: the default
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO/results/train_size_curve}")"
TASK="${TASK:-sst2}"
MODEL="${MODEL:-bert-base-cased}"
TRAIN_SIZES="${TRAIN_SIZES:-100 300 1000 3000 10000 30000 full}"
for seed in $SEEDS; do
    for size in $TRAIN_SIZES; do
        [[ "$size" == full ]] && size=""
        for method in full_ft bitfit; do
            lrs="$(lrs_for "$MODEL" "$method" "$TASK")" || exit 2
            for lr in $lrs; do
                add_run "$MODEL" "$(basename "$MODEL")" "$method" "$TASK" "$lr" "$seed" "$size"
            done
        done
    done
done
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR"
add_report "$PYTHON" -m bitfit_experiments.figures "$RUNS_DIR" --out "$OUT_DIR/figures"
run_all
run_report
