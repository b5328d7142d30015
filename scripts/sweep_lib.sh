# Shared machinery of the sweep scripts (sourced, not run). A sweep script builds its run list with add_run /
# add_grid, registers its report steps with add_report, then calls run_all and run_report. Everything is steered by
# environment variables:
#
#   DRY_RUN=1          print one line per run (the exact run_glue.py command) and exit; nothing is run or written
#   GPUS="0 1 2 3"     one worker per listed GPU, each running one run at a time (-d N); empty: CPU workers
#   CPU_WORKERS=2      without GPUS: that many runs at a time, the cores split between them (default 1)
#   BANK=K             train bitfit runs that differ only in learning rate, seed and --bias-terms as bias banks of
#                      at most K (run_bank.py: one model, one pass per step for all; bitfit_experiments/bank_plan.py
#                      groups them); every other run goes alone. Each member still writes its own run directory.
#   SLURM=1            submit the sweep to SLURM instead (see "SLURM" below); SBATCH_ARGS="--gres=gpu:1 -p gpu ..."
#                      go to every array, SBATCH_REPORT_ARGS (default: SBATCH_ARGS) to the report job;
#                      SLURM_MAX_PARALLEL=N: at most N runs of the sweep at a time
#   EPOCHS=16 BATCH=16 SEEDS="0 1 2 3 4"   the paper's batch size, the official code's epochs, 5 seeds
#   TASKS="..."        restrict the GLUE tasks (set but empty: none)
#   LRS_FULL / LRS_BIAS   the paper's grids, {1,2,3,5}e-5 for Full-FT and {1,4,7,10}e-4 for everything else
#   LRS_LORA / LRS_IA3    grids of the peft methods (lora and bitfit_lora; ia3), see scripts/table_peft.sh
#   PER_TASK_LR=1      bias-only methods use the paper's per-task BitFit rate (results/paper/table6_lr.csv)
#   BUDGET_MINUTES=N   stop starting new runs N minutes after the sweep began (the run list is in priority order)
#   DATA_DIR=path      local GLUE files (--data-dir); MAX_SEQ_LENGTH; EXTRA_ARGS (appended to every run)
#   RUNS_DIR, OUT_DIR  where the runs go and where the report (tables, figures, claims) goes; empty: the default
#   PYTHON, RUN_GLUE   the interpreter and the training CLI (tests substitute a fake one)
#   REPORT=0           skip the tables/figures/claims written after the sweep
#   EXTEND=1           a complete run with fewer epochs than its command's -e is trained longer in place
#                      (--resume from the checkpoint it kept with --keep-checkpoint), not skipped; without a kept
#                      checkpoint it is reported as failed. Default 0: a complete run is skipped whatever its length.
#
# Resumability: a run whose results.json says "complete" is skipped; a run killed after an epoch-end checkpoint
# continues from it (run_glue.py --resume, exact); any other existing run directory (failed, killed in its first
# epoch, half-written) is emptied and redone -- run_glue.py refuses non-empty output directories. A run that another
# process is running is left alone: run_glue.py holds an exclusive lock on its run directory for the whole run (a
# flock on the directory itself), and the sweep judges (and empties) a run directory only while holding that lock
# itself. The kernel drops the lock when its holder dies (kill -9, scancel), so a killed run is free to resume. Each
# run's console output is appended to <run dir>.log beside it. Runs: RUNS_DIR/<model-tag>/<method>/<task>/lr<lr>/seed<s>.
#
# SLURM (SLURM=1): the run list is fixed at submission: the runs not yet complete are written to
# RUNS_DIR/slurm/<submission>/runs.txt, one run_glue.py command per line, and array task k of an array that starts
# at line OFFSET does line OFFSET+k (task.sh beside it; every path in it is absolute, since SLURM runs a copy from
# its spool directory). A list longer than the cluster's MaxArraySize (scontrol show config; default 1001) becomes
# several arrays. A report job (report.sh, --dependency=afterany on every array) then writes the tables, figures and
# claims; it never submits anything. Each task trains with the CPUs SLURM gave it (SLURM_CPUS_PER_TASK, else
# SLURM_CPUS_ON_NODE) and, when SLURM gave it a GPU (CUDA_VISIBLE_DEVICES; the submitter's own value is not passed
# on), on that GPU. Logs: RUNS_DIR/slurm/<submission>/logs/. Resubmitting is always safe (see Resumability).

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
BANK="${BANK:-1}"
SLURM_MAX_PARALLEL="${SLURM_MAX_PARALLEL:-}"
SBATCH_ARGS="${SBATCH_ARGS:-}"
SBATCH_REPORT_ARGS="${SBATCH_REPORT_ARGS-$SBATCH_ARGS}"
REPORT="${REPORT:-1}"
EXTEND="${EXTEND:-0}"
PER_TASK_LR="${PER_TASK_LR:-0}"
BUDGET_MINUTES="${BUDGET_MINUTES:-}"
DATA_DIR="${DATA_DIR:-}"
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
LRS_FULL="${LRS_FULL:-1e-5 2e-5 3e-5 5e-5}"
LRS_BIAS="${LRS_BIAS:-1e-4 4e-4 7e-4 1e-3}"
LRS_LORA="${LRS_LORA:-2e-4 4e-4 5e-4 1e-3}"  # around the LoRA paper's RoBERTa-base rates (4e-4, 5e-4)
LRS_IA3="${LRS_IA3:-1e-3 3e-3 1e-2}"         # around T-Few's IA3 rate (3e-3)
GLUE_TASKS="qnli sst2 mnli cola mrpc stsb rte qqp"  # the paper's 8 (WNLI excluded, as in the paper)
KNOWN_TASKS="cola mnli mrpc qnli qqp rte sst2 stsb wnli"
TABLE3_METHODS="full_ft bitfit bm2_bq bm2 bq frozen rand_uniform rand_row_col"
PEFT_METHODS="lora ia3 bitfit_lora"  # built on peft; not in the paper (scripts/table_peft.sh)

RUN_DIRS=()
RUN_CMDS=()
REPORT_CMDS=()

# Bad input: one line naming the problem and the fix, exit code 2.
usage_error() {
    echo "error: $*" >&2
    exit 2
}

[[ "$SLURM" == 0 || "$SLURM" == 1 ]] || usage_error "SLURM=$SLURM: use SLURM=1 (submit to SLURM) or leave it unset"
[[ "$BANK" =~ ^[1-9][0-9]*$ ]] || usage_error "BANK=$BANK: give the most runs per bias bank (a positive number; 1 = no banks)"
[[ -z "$SLURM_MAX_PARALLEL" || "$SLURM_MAX_PARALLEL" =~ ^[1-9][0-9]*$ ]] \
    || usage_error "SLURM_MAX_PARALLEL=$SLURM_MAX_PARALLEL: give a positive number of runs at a time, or unset it"

# abs_path PATH: PATH from the current directory, made absolute (the report steps run from the repository root, and
# SLURM tasks from wherever SLURM starts them).
abs_path() {
    case "$1" in
        /*) echo "$1" ;;
        *) echo "$PWD/$1" ;;
    esac
}

# run_glue.py flags of a method tag (the tags name the run directories; the tables read config.json, not these).
method_flags() {
    case "$1" in
        full_ft) echo "-f full_ft" ;;
        bitfit) echo "-f bitfit --bias-terms all" ;;
        bm2_bq) echo "-f bitfit --bias-terms intermediate query" ;;
        bm2) echo "-f bitfit --bias-terms intermediate" ;;
        bq) echo "-f bitfit --bias-terms query" ;;
        frozen | rand_uniform | rand_row_col | lora | ia3 | bitfit_lora) echo "-f $1" ;;
        *) echo "error: unknown method tag '$1'; use one of: $TABLE3_METHODS $PEFT_METHODS" >&2; return 2 ;;
    esac
}

# The learning rates of (model, method, task): the grid, or with PER_TASK_LR=1 the paper's Table 6 rate for every
# bias-only method (the paper gives per-task rates for BitFit only; Full-FT keeps its grid).
lrs_for() {
    local model="$1" method="$2" task="$3"
    if [[ "$method" == full_ft ]]; then
        echo "$LRS_FULL"
    elif [[ "$method" == lora || "$method" == bitfit_lora ]]; then
        echo "$LRS_LORA"
    elif [[ "$method" == ia3 ]]; then
        echo "$LRS_IA3"
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
    # A misspelt task would otherwise fail every one of its runs (on SLURM: every array task) one by one.
    [[ " $KNOWN_TASKS " == *" $task "* ]] || usage_error "unknown GLUE task '$task' (TASKS?); use some of: $KNOWN_TASKS"
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

# add_report COMMAND [ARGS...]: one step of the report that follows the sweep (tables, figures, claims), run from
# the repository root. Registered before run_all, so that a SLURM submission can hand the steps to its report job.
add_report() {
    REPORT_CMDS+=("$(printf '%q ' "$@")")
}

# is_complete DIR [EPOCHS]: DIR's results.json says "complete" (and, when EPOCHS is given, after at least that many).
is_complete() {
    [[ -f "$1/results.json" ]] && "$PYTHON" -c 'import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r.get("status") == "complete" and int(r.get("last_epoch") or 0) >= int(sys.argv[2] or 0) else 1)' \
        "$1/results.json" "${2:-}" 2>/dev/null
}

# asked_epochs CMD: with EXTEND=1, the -e/--epochs a run command asks for (empty otherwise: length is not judged).
asked_epochs() {
    [[ "$EXTEND" == 1 ]] || return 0
    local -a ARGV
    local RUN_DIR RUN_EPOCHS
    parse_cmd "$1"
    echo "$RUN_EPOCHS"
}

# parse_cmd CMD: the words of a run command, split and unquoted as the shell would run it, into ARGV (the caller's
# array), the run directory it writes (-o) into RUN_DIR and its epochs (-e) into RUN_EPOCHS.
parse_cmd() {
    eval "ARGV=($1)"
    RUN_DIR=""
    RUN_EPOCHS=""
    local k
    for ((k = 0; k + 1 < ${#ARGV[@]}; k++)); do
        [[ "${ARGV[k]}" == -o ]] && RUN_DIR="${ARGV[k + 1]}"
        [[ "${ARGV[k]}" == -e || "${ARGV[k]}" == --epochs ]] && RUN_EPOCHS="${ARGV[k + 1]}"
    done
    return 0
}

# prepare_run DIR [EPOCHS]: what to do with a run directory, judged (and, for a redo, emptied) while holding the run
# lock of run_glue.py (bitfit_experiments.artifacts.lock: a flock on the directory, held for a whole run), so that a
# run another process is writing right now (another worker, another array task, an earlier submission) is never
# judged, emptied or resumed under it. Prints one word: complete, held (another process holds the lock), resume
# (killed after an epoch-end checkpoint), extend (complete after fewer than EPOCHS epochs, with its checkpoint kept),
# short (the same without a checkpoint: nothing to continue from), redo (anything else left behind: emptied now) or
# new. The lock goes when this process ends. The kernel drops a lock when its holder dies (kill -9, scancel), so no
# lock is ever stale.
prepare_run() {
    "$PYTHON" - "$REPO" "$1" "${2:-}" <<'PY'
import json, os, shutil, sys

repo, run, want = sys.argv[1:]
want = int(want or 0)
sys.path.insert(0, repo)  # the lock of the run_glue.py beside this script, installed or not
from bitfit_experiments.artifacts.lock import RunLock
from bitfit_experiments.core.errors import UsageError


def status():
    """The record's status, with a complete run that is shorter than asked for told apart ("short")."""
    try:
        with open(os.path.join(run, "results.json")) as f:
            r = json.load(f)
        if r.get("status") == "complete" and int(r.get("last_epoch") or 0) < want:
            return "short"
        return r.get("status")
    except Exception:
        return None


if status() == "complete":
    print("complete")
    sys.exit()
try:
    lock = RunLock(run).acquire()
except UsageError:
    print("held")
    sys.exit()
now = status()  # it may have ended between the first look and the lock
if now == "complete":
    print("complete")
elif now == "short":  # never emptied: a complete run is the user's; --resume -e N trains it longer from its checkpoint
    print("extend" if os.path.exists(os.path.join(run, "checkpoint.safetensors")) else "short")
elif (os.path.exists(os.path.join(run, "checkpoint.safetensors")) and os.path.exists(os.path.join(run, "results.json"))
      and now != "failed"):
    print("resume")  # (a damaged results.json is rebuilt from the checkpoint by --resume)
else:
    left = os.listdir(run)
    for name in left:  # the contents only: the directory is what the lock is on
        path = os.path.join(run, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    print("redo" if left else "new")
PY
}

# run_busy DIR: true when DIR is complete or another process holds its run lock.
run_busy() {
    "$PYTHON" - "$REPO" "$1" <<'PY'
import json, os, sys

repo, run = sys.argv[1:]
sys.path.insert(0, repo)
from bitfit_experiments.artifacts.lock import is_locked

try:
    with open(os.path.join(run, "results.json")) as f:
        sys.exit(0 if json.load(f).get("status") == "complete" else int(not is_locked(run)))
except (OSError, ValueError, AttributeError):
    sys.exit(int(not is_locked(run)))
PY
}

# plan_banks: with BANK > 1, RUN_CMDS becomes the job list of bitfit_experiments/bank_plan.py (bankable runs grouped
# into run_bank.py commands of at most BANK members, everything else unchanged).
plan_banks() {
    ((BANK > 1 && ${#RUN_CMDS[@]} > 0)) || return 0
    local planned
    planned="$(printf '%s\n' "${RUN_CMDS[@]}" | (cd "$REPO" && "$PYTHON" -m bitfit_experiments.bank_plan \
        --bank "$BANK" --banks-dir "$(abs_path "$RUNS_DIR")/banks" --python "$PYTHON"))" \
        || usage_error "BANK=$BANK: could not group the runs into banks with PYTHON=$PYTHON"
    mapfile -t RUN_CMDS <<<"$planned"
}

# run_bank_one INDEX COMMAND [GPU]: a bias bank (run_bank.py). Skipped while another process holds the bank's lock;
# a new bank first empties its members' leftover directories (as run_one does, under each run's lock).
run_bank_one() {
    local i="$1" cmd="$2" gpu="${3:-}" bank="" k rc=0 action
    local -a ARGV
    eval "ARGV=($cmd)"
    for ((k = 0; k + 1 < ${#ARGV[@]}; k++)); do
        [[ "${ARGV[k]}" == --bank-dir ]] && bank="${ARGV[k + 1]}"
    done
    if "$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[1])
from bitfit_experiments.artifacts.lock import is_locked
sys.exit(0 if is_locked(sys.argv[2]) else 1)' "$REPO" "$bank"; then
        echo "[$i] skip (another process is running this bank): $bank"
        return 0
    fi
    if [[ ! -f "$bank/bank.json" ]]; then
        for ((k = 0; k + 1 < ${#ARGV[@]}; k++)); do
            if [[ "${ARGV[k]}" == -o ]]; then
                action="$(prepare_run "${ARGV[k + 1]}")" || return 1
                [[ "$action" == complete || "$action" == held ]] && { echo "[$i] skip bank ($action member ${ARGV[k + 1]}; rerun the sweep to regroup): $bank"; return 0; }
            fi
        done
    fi
    [[ -n "$gpu" ]] && ARGV+=(-d "$gpu")
    mkdir -p "$(dirname "$bank")"
    echo "[$i] bank${gpu:+ on GPU $gpu}: $bank"
    echo "=== $(date '+%F %T') on $(hostname)${SLURM_JOB_ID:+, SLURM job $SLURM_JOB_ID}: ${ARGV[*]}" >>"$bank.log"
    "${ARGV[@]}" >>"$bank.log" 2>&1 || rc=$?
    ((rc == 0)) && return 0
    echo "[$i] FAILED (see $bank.log): $bank" >&2
    return 1
}

# run_one INDEX COMMAND [GPU]: skip a complete run and one that another process is running; continue a killed one
# from its epoch-end checkpoint (--resume); empty and redo anything else (failed, or killed before its first
# checkpoint). Returns 1 when the run failed.
run_one() {
    local i="$1" cmd="$2" gpu="${3:-}" dir action rc=0
    if [[ "$cmd" == *run_bank.py* ]]; then
        run_bank_one "$@"
        return
    fi
    local -a ARGV
    local RUN_DIR RUN_EPOCHS want=""
    parse_cmd "$cmd"
    dir="$RUN_DIR"
    [[ "$EXTEND" == 1 ]] && want="$RUN_EPOCHS"
    if [[ -z "$dir" || "$dir" == / ]]; then
        echo "[$i] error: no output directory (-o) in the command: $cmd" >&2
        return 1
    fi
    if ! action="$(prepare_run "$dir" "$want")"; then
        echo "[$i] FAILED: could not inspect $dir with $PYTHON" >&2
        return 1
    fi
    case "$action" in
        complete) echo "[$i] skip (complete): $dir"; return 0 ;;
        held) echo "[$i] skip (another process is running it: it holds the run's lock): $dir"; return 0 ;;
        resume) echo "[$i] resume (killed after a checkpoint): $dir"; ARGV+=(--resume) ;;
        extend) echo "[$i] train longer (to $want epochs, from its kept checkpoint): $dir"; ARGV+=(--resume) ;;
        short)
            echo "[$i] FAILED: $dir is complete after fewer than $want epochs and kept no checkpoint to train it longer from (--keep-checkpoint); move it away to run it anew" >&2
            return 1 ;;
        redo) echo "[$i] redo (incomplete): $dir" ;;
    esac
    [[ -n "$gpu" ]] && ARGV+=(-d "$gpu")
    echo "[$i] run${gpu:+ on GPU $gpu}: $dir"
    # run_glue.py takes the lock itself (it cannot inherit one): should another process take the run in between, one
    # of the two run_glue.py finds the lock held and exits 2 without writing anything (handled below). Append to the
    # log: a resumed run keeps the log of its first part, and the loser of that race must not truncate the winner's.
    echo "=== $(date '+%F %T') on $(hostname)${SLURM_JOB_ID:+, SLURM job $SLURM_JOB_ID}: ${ARGV[*]}" >>"$dir.log"
    "${ARGV[@]}" >>"$dir.log" 2>&1 || rc=$?
    if ((rc == 0)) && is_complete "$dir" "$want"; then
        return 0
    fi
    if ((rc == 2)) && [[ "$action" != extend ]] && run_busy "$dir"; then
        echo "[$i] skip (another process started it first): $dir"
        return 0
    fi
    echo "[$i] FAILED (see $dir.log): $dir" >&2
    return 1
}

# One worker: walk the list in order, claiming each run with an atomic mkdir so parallel workers never share one.
worker() {
    local gpu="$1" claims="$2" deadline="$3" i failed=0
    for ((i = 0; i < ${#RUN_CMDS[@]}; i++)); do
        if [[ -n "$deadline" && $(date +%s) -ge $deadline ]]; then
            echo "budget of $BUDGET_MINUTES min used up: not starting more runs (rerun the script to continue)"
            break
        fi
        mkdir "$claims/$i" 2>/dev/null || continue
        run_one "$i" "${RUN_CMDS[$i]}" "$gpu" || failed=$((failed + 1))
    done
    return $((failed > 0))
}

run_all() {
    local n=${#RUN_CMDS[@]}
    SWEEP_DONE=0
    if [[ "$SLURM" == 1 ]]; then
        slurm_submit
        return 0
    fi
    plan_banks
    if [[ "$DRY_RUN" == 1 ]]; then
        ((n == 0)) || printf '%s\n' "${RUN_CMDS[@]}"
        echo "# $n runs${BANK:+$( ((BANK > 1)) && echo " in ${#RUN_CMDS[@]} jobs (banks of at most $BANK)")}" >&2
        return 0
    fi
    if ((n == 0)); then
        echo "sweep: the run list is empty (TASKS or METHODS set but empty?): nothing to run"
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

# run_report: the registered report steps, after a sweep that went through its whole list (REPORT=0: none). A SLURM
# submission hands them to its report job instead; a SLURM sweep with nothing left to run submits that job alone.
run_report() {
    [[ "${SWEEP_DONE:-0}" == 1 && "$REPORT" == 1 && ${#REPORT_CMDS[@]} -gt 0 ]] || return 0
    if [[ "$SLURM" == 1 ]]; then
        slurm_report_only
        return 0
    fi
    local cmd
    for cmd in "${REPORT_CMDS[@]}"; do
        (cd "$REPO" && eval "$cmd") || echo "report step failed: $cmd" >&2
    done
}

# ------------------------------------------------------------------------------------------------------------- SLURM

# The cluster's MaxArraySize (array indices go up to MaxArraySize - 1); SLURM's default when scontrol cannot tell.
slurm_max_array_size() {
    local max
    max="$(scontrol show config 2>/dev/null | awk '$1 == "MaxArraySize" {print $3}')" || true
    [[ "$max" =~ ^[1-9][0-9]*$ ]] && echo "$max" || echo 1001
}

# The indices of the runs not complete yet, in list order (one python for the whole list, not one per run).
incomplete_indices() {
    ((${#RUN_DIRS[@]} > 0)) || return 0
    local k
    for ((k = 0; k < ${#RUN_DIRS[@]}; k++)); do
        printf '%s\t%s\n' "${RUN_DIRS[k]}" "$(asked_epochs "${RUN_CMDS[k]}")"
    done | "$PYTHON" -c 'import json, sys
for i, line in enumerate(sys.stdin.read().splitlines()):
    d, want = line.rsplit("\t", 1)
    try:
        with open(d + "/results.json") as f:
            r = json.load(f)
        done = r.get("status") == "complete" and int(r.get("last_epoch") or 0) >= int(want or 0)
    except Exception:
        done = False
    if not done:
        print(i)'
}

# slurm_new_submission: a fresh RUNS_DIR/slurm/<date>-<pid> (SUB) with its logs/ folder and report.sh. Nothing is
# written under DRY_RUN (SUB is then only the name it would have).
slurm_new_submission() {
    SUB="$RUNS_DIR/slurm/$(date +%Y%m%d-%H%M%S)-$$"
    SWEEP_NAME="bitfit-$(basename "$0" .sh)"
    [[ "$DRY_RUN" == 1 ]] && return 0
    mkdir -p "$SUB/logs"
    SUB="$(cd "$SUB" && pwd)"
    local cmd
    {
        echo '#!/usr/bin/env bash'
        echo "# The report of the sweep that $(basename "$0") submitted on $(date '+%F %T'): the tables, figures and claims"
        echo "# of the runs complete in $RUNS_DIR. It never submits anything; run it again by hand at any time."
        echo "cd $(printf '%q' "$REPO") || exit 1"
        echo 'threads="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"'
        echo 'export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"'
        echo 'failed=0'
        local k=0
        for cmd in "${REPORT_CMDS[@]}"; do
            k=$((k + 1))
            echo "${cmd% } || { echo 'report step $k of ${#REPORT_CMDS[@]} failed (see above)' >&2; failed=1; }"
        done
        echo "((failed)) || echo \"report: written to $(printf '%q' "${OUT_DIR:-$RUNS_DIR}") (\$(date '+%F %T'))\""
        echo 'exit "$failed"'
    } >"$SUB/report.sh"
    chmod +x "$SUB/report.sh"
}

# sbatch_or_die WHAT ARGS...: submit, print nothing, set JOB to the new job id; a refusal ends the script with
# sbatch's own message (bad SBATCH_ARGS are the usual cause) and the jobs already submitted.
sbatch_or_die() {
    local what="$1" out err
    shift
    err="$(mktemp)"
    # The submitter's CUDA_VISIBLE_DEVICES stays behind: in a task it must mean "SLURM gave this task a GPU".
    if ! out="$(env -u CUDA_VISIBLE_DEVICES sbatch --parsable "$@" 2>"$err")"; then
        echo "error: sbatch refused $what: $(grep -v '^$' "$err" | tail -n 1); check SBATCH_ARGS${SUBMITTED:+ (already submitted: jobs $SUBMITTED; scancel them or let them run, then rerun: complete runs are skipped)}" >&2
        rm -f -- "$err"
        exit 2
    fi
    rm -f -- "$err"
    JOB="${out%%;*}"  # --parsable: "id" or "id;cluster"
    [[ "$JOB" =~ ^[0-9]+$ ]] || { echo "error: sbatch answered '$out' for $what, not a job id" >&2; exit 1; }
    SUBMITTED="${SUBMITTED:+$SUBMITTED }$JOB"
}

# show_sbatch ARGS...: what DRY_RUN prints instead of submitting.
show_sbatch() {
    echo "sbatch $(printf '%q ' "$@")" | sed 's/ $//'
}

# slurm_submit: the runs not complete yet as job arrays (split at MaxArraySize), then the report job after them.
slurm_submit() {
    local n=${#RUN_CMDS[@]} max todo=() i
    if ((n == 0)); then
        echo "sweep: the run list is empty (TASKS or METHODS set but empty?): nothing submitted"
        return 0
    fi
    [[ "$DRY_RUN" == 1 ]] || command -v sbatch >/dev/null \
        || usage_error "SLURM=1 but sbatch is not on PATH; run this on the cluster's login node, or unset SLURM"
    local left
    left="$(incomplete_indices)" || usage_error "PYTHON=$PYTHON could not read the runs under $RUNS_DIR; set PYTHON to the project's interpreter"
    [[ -z "$left" ]] || mapfile -t todo <<<"$left"
    if ((${#todo[@]} == 0)); then
        echo "sweep: all $n runs in $RUNS_DIR are complete: no array submitted"
        SWEEP_DONE=1  # the report still follows (run_report), as after a local sweep
        return 0
    fi
    if ((BANK > 1)); then  # the incomplete runs, grouped into banks: the list is then one job per line
        local -a kept=()
        for i in "${todo[@]}"; do kept+=("${RUN_CMDS[$i]}"); done
        RUN_CMDS=("${kept[@]}")
        plan_banks
        todo=()
        for ((i = 0; i < ${#RUN_CMDS[@]}; i++)); do todo+=("$i"); done
    fi
    for i in "${todo[@]}"; do
        [[ "${RUN_CMDS[$i]}" != *$'\n'* ]] || usage_error "a run command holds a line break (EXTRA_ARGS?); the SLURM run list has one command per line"
    done
    [[ -z "$GPUS" ]] || echo "note: GPUS is not used under SLURM=1; ask SLURM for a GPU per task: SBATCH_ARGS=\"--gres=gpu:1\"" >&2
    max="$(slurm_max_array_size)"
    local -a extra report_extra
    eval "extra=($SBATCH_ARGS)" 2>/dev/null || usage_error "SBATCH_ARGS has unbalanced quotes: $SBATCH_ARGS"
    eval "report_extra=($SBATCH_REPORT_ARGS)" 2>/dev/null \
        || usage_error "SBATCH_REPORT_ARGS has unbalanced quotes: $SBATCH_REPORT_ARGS"
    SUBMITTED=""
    slurm_new_submission
    local list="$SUB/runs.txt" m=${#todo[@]}
    if [[ "$DRY_RUN" != 1 ]]; then
        for i in "${todo[@]}"; do printf '%s\n' "${RUN_CMDS[$i]}"; done >"$list"
        {
            echo '#!/usr/bin/env bash'
            echo "# One task of a job array of the sweep that $(basename "$0") submitted on $(date '+%F %T'): the run on line"
            echo "# OFFSET + SLURM_ARRAY_TASK_ID + 1 of runs.txt (OFFSET: this script's argument). SLURM runs a copy of this"
            echo "# file from its spool directory, so every path here is absolute."
            echo "PYTHON=$(printf '%q' "$PYTHON")"
            echo "source $(printf '%q' "$REPO/scripts/sweep_lib.sh")"
            echo "slurm_task $(printf '%q' "$list") \"\${1:-0}\""
        } >"$SUB/task.sh"
        chmod +x "$SUB/task.sh"
    fi
    local off size arrays=() ranges=() prev="" args
    for ((off = 0; off < m; off += max)); do
        size=$((m - off < max ? m - off : max))
        args=(--job-name="$SWEEP_NAME" --array="0-$((size - 1))${SLURM_MAX_PARALLEL:+%$SLURM_MAX_PARALLEL}"
              --output="$SUB/logs/%A_%a.out" --export=ALL --chdir="$PWD")  # relative paths mean what they meant here
        # With a limit, the arrays of a split sweep run one after the other: the limit then holds for the sweep.
        [[ -n "$SLURM_MAX_PARALLEL" && -n "$prev" ]] && args+=(--dependency="afterany:$prev")
        args+=("${extra[@]}" "$SUB/task.sh" "$off")
        if [[ "$DRY_RUN" == 1 ]]; then
            JOB="ARRAY$((${#arrays[@]} + 1))"
            show_sbatch "${args[@]}"
        else
            sbatch_or_die "the array of runs $off-$((off + size - 1))" "${args[@]}"
        fi
        arrays+=("$JOB")
        ranges+=("$JOB (runs $off-$((off + size - 1)))")
        prev="$JOB"
    done
    local report_job=""
    if [[ "$REPORT" == 1 && ${#REPORT_CMDS[@]} -gt 0 ]]; then
        local deps
        deps="$(IFS=:; echo "${arrays[*]}")"
        args=(--job-name="$SWEEP_NAME-report" --dependency="afterany:$deps" --output="$SUB/logs/report-%j.out"
              --export=ALL --chdir="$PWD" "${report_extra[@]}" "$SUB/report.sh")
        if [[ "$DRY_RUN" == 1 ]]; then
            show_sbatch "${args[@]}"
            report_job="REPORT"
        else
            sbatch_or_die "the report job" "${args[@]}"
            report_job="$JOB"
        fi
    fi
    [[ "$DRY_RUN" == 1 ]] && { echo "# $m runs (of $n; $((n - m)) complete) in ${#arrays[@]} array(s) of at most $max" >&2; return 0; }
    local all="${arrays[*]}${report_job:+ $report_job}"
    echo "sweep: submitted $m runs (of $n; $((n - m)) already complete) as ${#arrays[@]} job array(s): ${ranges[*]}${report_job:+; report job $report_job after them}"
    echo "  run list: $list (line k+1 = run k; fixed: edits to the scripts do not change it)"
    echo "  logs:     $SUB/logs/ (<array job>_<task>.out per task${report_job:+, report-$report_job.out}); each run's own output: <run dir>.log"
    echo "  watch:    squeue -j ${all// /,}   tail -f $SUB/logs/*.out"
    [[ -n "$report_job" ]] && echo "  report:   ${OUT_DIR:-$RUNS_DIR} (tables, figures, claims) once job $report_job has run"
    echo "  resubmit: the same command, at any time: complete runs are skipped, running ones left alone, killed ones resume"
}

# slurm_report_only: a SLURM sweep with nothing left to run: the report job alone.
slurm_report_only() {
    [[ "$DRY_RUN" == 1 ]] || command -v sbatch >/dev/null \
        || usage_error "SLURM=1 but sbatch is not on PATH; run this on the cluster's login node, or unset SLURM"
    local -a report_extra
    eval "report_extra=($SBATCH_REPORT_ARGS)" 2>/dev/null \
        || usage_error "SBATCH_REPORT_ARGS has unbalanced quotes: $SBATCH_REPORT_ARGS"
    SUBMITTED=""
    slurm_new_submission
    local args=(--job-name="$SWEEP_NAME-report" --output="$SUB/logs/report-%j.out" --export=ALL --chdir="$PWD"
                "${report_extra[@]}" "$SUB/report.sh")
    if [[ "$DRY_RUN" == 1 ]]; then
        show_sbatch "${args[@]}"
        return 0
    fi
    sbatch_or_die "the report job" "${args[@]}"
    echo "sweep: submitted the report job $JOB alone"
    echo "  logs:     $SUB/logs/ (report-$JOB.out)"
    echo "  watch:    squeue -j $JOB   tail -f $SUB/logs/report-$JOB.out"
    echo "  report:   ${OUT_DIR:-$RUNS_DIR} (tables, figures, claims) once job $JOB has run"
}

# slurm_task LIST OFFSET: the body of one array task (task.sh): the run on line OFFSET + SLURM_ARRAY_TASK_ID + 1.
slurm_task() {
    local list="$1" offset="$2" i n cmd gpu=""
    [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]] \
        || usage_error "task.sh runs as a task of a SLURM job array (SLURM_ARRAY_TASK_ID is unset); submit the sweep with SLURM=1"
    [[ -f "$list" ]] || usage_error "the run list $list is gone; resubmit the sweep (SLURM=1 scripts/<sweep>.sh)"
    i=$((offset + SLURM_ARRAY_TASK_ID))
    n=$(wc -l <"$list")
    ((i < n)) || usage_error "run $i is past the end of $list ($n runs); resubmit the sweep instead of this array"
    cmd="$(sed -n "$((i + 1))p" "$list")"
    # The CPUs SLURM allotted to this task, not the node's (nproc can report the whole node).
    local threads="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
    export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
    # The submitter's CUDA_VISIBLE_DEVICES is not passed on (sbatch_or_die), so a value here is SLURM's GPU
    # allocation, renumbered from 0 inside the task.
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "$CUDA_VISIBLE_DEVICES" != NoDevFiles ]]; then
        gpu=0
    fi
    echo "[$i] SLURM job ${SLURM_JOB_ID:-?} (array ${SLURM_ARRAY_JOB_ID:-?} task $SLURM_ARRAY_TASK_ID) on $(hostname): $threads thread(s)${gpu:+, GPU $CUDA_VISIBLE_DEVICES}"
    run_one "$i" "$cmd" "$gpu" || exit 1
}
