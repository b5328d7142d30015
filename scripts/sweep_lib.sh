# Shared machinery of the sweep scripts (sourced, not run). A sweep script builds its run list with add_run /
# add_grid, then calls run_all. Everything is steered by environment variables:
#
#   DRY_RUN=1          print one line per run (the exact run_glue.py command) and exit; nothing is run or checked
#   GPUS="0 1 2 3"     one worker per listed GPU, each running one run at a time (-d N); empty: CPU workers
#   CPU_WORKERS=2      without GPUS: that many runs at a time, the cores split between them (default 1)
#   SLURM=1            submit the sweep as `sbatch --array=0-(N-1)` (SBATCH_ARGS="--gres=gpu:1 ..." passed through);
#                      inside the array job, SLURM_ARRAY_TASK_ID selects the one run to do
#   EPOCHS=16 BATCH=16 SEEDS="0 1 2 3 4"   the paper's batch size, the official code's epochs, 5 seeds
#   TASKS="..."        restrict the GLUE tasks
#   LRS_FULL / LRS_BIAS   the paper's grids, {1,2,3,5}e-5 for Full-FT and {1,4,7,10}e-4 for everything else
#   PER_TASK_LR=1      bias-only methods use the paper's per-task BitFit rate (results/paper/table6_lr.csv)
#   BUDGET_MINUTES=N   stop starting new runs N minutes after the sweep began (the run list is in priority order)
#   DATA_DIR=path      local GLUE files (--data-dir); MAX_SEQ_LENGTH; EXTRA_ARGS (appended to every run)
#   PYTHON, RUN_GLUE   the interpreter and the training CLI (tests substitute a fake one)
#   REPORT=0           skip the tables/figures/claims written after a local sweep
#
# Resumability: a run whose results.json says "complete" is skipped; a run killed after an epoch-end checkpoint
# continues from it (run_glue.py --resume, exact); any other existing run directory (failed, killed in its first
# epoch, half-written) is deleted and redone -- run_glue.py refuses non-empty output directories. Each run's
# console output goes to <run dir>.log beside it. Run directories: RUNS_DIR/<model-tag>/<method>/<task>/lr<lr>/seed<s>.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
RUN_GLUE="${RUN_GLUE:-$REPO/run_glue.py}"
EPOCHS="${EPOCHS:-16}"
BATCH="${BATCH:-16}"
SEEDS="${SEEDS:-0 1 2 3 4}"
GPUS="${GPUS:-}"
DRY_RUN="${DRY_RUN:-0}"
SLURM="${SLURM:-0}"
PER_TASK_LR="${PER_TASK_LR:-0}"
BUDGET_MINUTES="${BUDGET_MINUTES:-}"
DATA_DIR="${DATA_DIR:-}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
LRS_FULL="${LRS_FULL:-1e-5 2e-5 3e-5 5e-5}"
LRS_BIAS="${LRS_BIAS:-1e-4 4e-4 7e-4 1e-3}"
GLUE_TASKS="qnli sst2 mnli cola mrpc stsb rte qqp"  # the paper's 8 (WNLI excluded, as in the paper)
TABLE3_METHODS="full_ft bitfit bm2_bq bm2 bq frozen rand_uniform rand_row_col"

RUN_DIRS=()
RUN_CMDS=()

# run_glue.py flags of a method tag (the tags name the run directories; the tables read config.json, not these).
method_flags() {
    case "$1" in
        full_ft) echo "-f full_ft" ;;
        bitfit) echo "-f bitfit --bias-terms all" ;;
        bm2_bq) echo "-f bitfit --bias-terms intermediate query" ;;
        bm2) echo "-f bitfit --bias-terms intermediate" ;;
        bq) echo "-f bitfit --bias-terms query" ;;
        frozen | rand_uniform | rand_row_col) echo "-f $1" ;;
        *) echo "error: unknown method tag '$1'; use one of: $TABLE3_METHODS" >&2; return 2 ;;
    esac
}

# The learning rates of (model, method, task): the grid, or with PER_TASK_LR=1 the paper's Table 6 rate for every
# bias-only method (the paper gives per-task rates for BitFit only; Full-FT keeps its grid).
lrs_for() {
    local model="$1" method="$2" task="$3"
    if [[ "$method" == full_ft ]]; then
        echo "$LRS_FULL"
    elif [[ "$PER_TASK_LR" == 1 ]]; then
        local lr
        lr="$(awk -F, -v t="$task" -v m="$model" '$1 == t && $2 == m {print $4}' "$REPO/results/paper/table6_lr.csv")"
        if [[ -z "$lr" ]]; then
            echo "error: PER_TASK_LR=1 but the paper's Table 6 has no rate for $model/$task (it covers bert-base-cased and bert-large-cased); unset PER_TASK_LR" >&2
            return 2
        fi
        echo "$lr"
    else
        echo "$LRS_BIAS"
    fi
}

# add_run MODEL MODEL_TAG METHOD TASK LR SEED [TRAIN_SIZE] [extra run_glue.py args...]
add_run() {
    local model="$1" tag="$2" method="$3" task="$4" lr="$5" seed="$6" size="${7:-}"
    shift 6; [[ $# -gt 0 ]] && shift
    local dir="$RUNS_DIR/$tag/$method/$task${size:+-n$size}/lr$lr/seed$seed"
    local flags cmd
    flags="$(method_flags "$method")"
    cmd="$(printf '%q ' "$PYTHON" "$RUN_GLUE" -o "$dir" -t "$task" -m "$model")$flags"
    cmd+=" $(printf '%q ' -l "$lr" -s "$seed" -e "$EPOCHS" -b "$BATCH" --max-seq-length "$MAX_SEQ_LENGTH")"
    [[ -n "$size" ]] && cmd+="$(printf '%q ' --train-size "$size")"
    [[ -n "$DATA_DIR" ]] && cmd+="$(printf '%q ' --data-dir "$DATA_DIR")"
    [[ $# -gt 0 ]] && cmd+="$(printf '%q ' "$@")"
    cmd+="$EXTRA_ARGS"
    RUN_DIRS+=("$dir")
    RUN_CMDS+=("${cmd% }")
}

# add_grid MODEL MODEL_TAG "METHODS" "TASKS" [fixed lr for every method; empty = lrs_for] -- seeds outermost, so
# a sweep cut short still has every cell with its first seeds. Methods full_ft and bitfit get --eval-train when
# EVAL_TRAIN=1 (the generalization-gap figure needs train metrics per epoch).
add_grid() {
    local model="$1" tag="$2" methods="$3" tasks="$4" fixed_lr="${5:-}"
    local seed task method lr lrs extra
    for seed in $SEEDS; do
        for task in $tasks; do
            for method in $methods; do
                lrs="${fixed_lr:-$(lrs_for "$model" "$method" "$task")}" || exit 2
                extra=()
                [[ "${EVAL_TRAIN:-0}" == 1 && ( "$method" == full_ft || "$method" == bitfit ) ]] && extra=(--eval-train)
                for lr in $lrs; do
                    add_run "$model" "$tag" "$method" "$task" "$lr" "$seed" "" "${extra[@]}"
                done
            done
        done
    done
}

is_complete() {
    [[ -f "$1/results.json" ]] && "$PYTHON" -c 'import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("status") == "complete" else 1)' "$1/results.json" 2>/dev/null
}

# run_one INDEX [GPU]: skip a complete run; continue a killed one from its epoch-end checkpoint (--resume);
# wipe and redo anything else (failed, or killed before its first checkpoint).
run_one() {
    local i="$1" gpu="${2:-}" dir="${RUN_DIRS[$1]}" cmd="${RUN_CMDS[$1]}"
    if is_complete "$dir"; then
        echo "[$i] skip (complete): $dir"
        return 0
    fi
    if [[ -f "$dir/checkpoint.safetensors" && -f "$dir/results.json" ]] && ! grep -q '"status": "failed"' "$dir/results.json"; then
        echo "[$i] resume (killed after a checkpoint): $dir"
        cmd+=" --resume"
    elif [[ -e "$dir" ]]; then
        echo "[$i] redo (incomplete): $dir"
        rm -rf -- "$dir"
    fi
    mkdir -p "$(dirname "$dir")"
    [[ -n "$gpu" ]] && cmd+=" -d $gpu"
    echo "[$i] run${gpu:+ on GPU $gpu}: $dir"
    if eval "$cmd" >"$dir.log" 2>&1 && is_complete "$dir"; then
        return 0
    fi
    echo "[$i] FAILED (see $dir.log): $dir" >&2
    return 1
}

# One worker: walk the list in order, claiming each run with an atomic mkdir so parallel workers never share one.
worker() {
    local gpu="$1" claims="$2" deadline="$3" i failed=0
    for ((i = 0; i < ${#RUN_DIRS[@]}; i++)); do
        if [[ -n "$deadline" && $(date +%s) -ge $deadline ]]; then
            echo "budget of $BUDGET_MINUTES min used up: not starting more runs (rerun the script to continue)"
            break
        fi
        mkdir "$claims/$i" 2>/dev/null || continue
        run_one "$i" "$gpu" || failed=$((failed + 1))
    done
    return $((failed > 0))
}

run_all() {
    local n=${#RUN_DIRS[@]}
    if [[ "$SLURM" == 1 && -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        local script
        script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
        # --export=ALL: the array tasks rebuild the same list from the same environment.
        local submit="sbatch --array=0-$((n - 1))${SLURM_MAX_PARALLEL:+%$SLURM_MAX_PARALLEL} --export=ALL ${SBATCH_ARGS:-} $script"
        if [[ "$DRY_RUN" == 1 ]]; then echo "$submit"; else eval "$submit"; fi
        SWEEP_DONE=0
        return 0
    fi
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%s\n' "${RUN_CMDS[@]}"
        echo "# $n runs" >&2
        SWEEP_DONE=0
        return 0
    fi
    if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        local i="$SLURM_ARRAY_TASK_ID"
        if ((i < 0 || i >= n)); then
            echo "error: SLURM_ARRAY_TASK_ID=$i is outside the sweep's 0..$((n - 1)); submit with --array=0-$((n - 1))" >&2
            exit 2
        fi
        run_one "$i" "${GPUS:+0}"  # slurm exposes the allocated GPU as device 0
        SWEEP_DONE=0  # the other runs belong to the other array tasks
        return 0
    fi
    local claims deadline="" pids=() failed=0 gpu
    claims="$(mktemp -d)"
    [[ -n "$BUDGET_MINUTES" ]] && deadline=$(($(date +%s) + BUDGET_MINUTES * 60))
    echo "sweep: $n runs into $RUNS_DIR (${GPUS:+GPUs $GPUS}${GPUS:-CPU})"
    if [[ -z "$GPUS" && "${CPU_WORKERS:-1}" -le 1 ]]; then
        worker "" "$claims" "$deadline" || failed=1
    elif [[ -z "$GPUS" ]]; then
        # Several single-run workers on the CPU, the cores split between them: small-batch BERT steps scale poorly
        # across threads, so two 1-thread runs do more work than one 2-thread run on 2 cores.
        local w threads=$(( $(nproc) / CPU_WORKERS ))
        ((threads >= 1)) || threads=1
        echo "sweep: $CPU_WORKERS CPU workers x $threads thread(s)"
        for ((w = 0; w < CPU_WORKERS; w++)); do
            (export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; worker "" "$claims" "$deadline") &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    else
        for gpu in $GPUS; do
            worker "$gpu" "$claims" "$deadline" &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    fi
    rm -rf -- "$claims"
    SWEEP_DONE=1
    ((failed == 0)) || echo "sweep: some runs failed; rerun the script to redo them" >&2
    return 0
}

# report RUNS_DIR OUT_DIR [--paper-table N]: the tables (and figures and claims where they apply) of what ran.
report() {
    [[ "${SWEEP_DONE:-0}" == 1 && "${REPORT:-1}" == 1 ]] || return 0
    local runs="$1" out="$2"
    shift 2
    (cd "$REPO" && "$PYTHON" -m bitfit_experiments.tables "$runs" --out "$out" "$@") || echo "tables failed" >&2
}
