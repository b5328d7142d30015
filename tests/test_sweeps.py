"""The sweep scripts: dry-run counts equal tasks x methods x lrs x seeds, and the resumable/parallel/SLURM
machinery, driven with a fake run_glue.py that records its calls (no training) and, for SLURM=1, a fake sbatch that
copies the batch script into a spool directory as slurmd does (tests/test_slurm.py runs a real SLURM)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from bitfit_experiments.artifacts.lock import RunLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Like run_glue.py where the sweeps can tell: it holds run_glue.py's own run lock for the whole run (exit 2 when
# another process holds it), refuses a non-empty directory unless --resume, writes results.json.
FAKE_RUN_GLUE = r'''
import json, os, sys, time
sys.path.insert(0, os.environ["BITFIT_REPO"])
from bitfit_experiments.artifacts.lock import RunLock
from bitfit_experiments.core.errors import UsageError
args = sys.argv[1:]
get = lambda flag: args[args.index(flag) + 1]
out = get("-o")
try:
    lock = RunLock(out).acquire()
except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
if "--resume" not in args and os.listdir(out):
    sys.exit(2)  # like run_glue.py: refuses a non-empty output directory
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args + ["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""), f"START={time.time()}"])
            + "\n")
time.sleep(float(os.environ.get("FAKE_SECONDS", "0")))
if get("-t") == os.environ.get("FAKE_SLOW_TASK"):  # one slow task: a run the other worker must not wait for
    time.sleep(float(os.environ["FAKE_SLOW_SECONDS"]))
    with open(os.environ["FAKE_LOG"] + ".slow_done", "a") as f:
        f.write(f"{time.time()} {out}\n")
status = "failed" if get("-t") == os.environ.get("FAKE_FAIL_TASK") else "complete"
epochs = int(get("-e")) if "-e" in args else 1
with open(os.path.join(out, "results.json"), "w") as f:  # the fields the sweeps and the repro planner read
    json.dump({"status": status, "last_epoch": epochs, "best_epoch": 1, "eval_splits": ["dev"],
               "headline_metric": "m", "best": {"dev": {"m": 0.5}}, "last": {"dev": {"m": 0.5}}}, f)
sys.exit(0 if status == "complete" else 1)
'''

# sbatch as the sweeps use it (--parsable): records its arguments and environment, copies the batch script into a
# spool directory (slurmd runs that copy, not the file that was submitted), answers a new job id. FAKE_SBATCH_FAIL:
# refuse with that message.
FAKE_SBATCH = r'''#!PYTHON
import json, os, shutil, sys
state = os.environ["FAKE_SLURM"]
if os.environ.get("FAKE_SBATCH_FAIL"):
    print("sbatch: error: " + os.environ["FAKE_SBATCH_FAIL"], file=sys.stderr)
    sys.exit(1)
args = sys.argv[1:]
script_at = next(i for i, a in enumerate(args) if not a.startswith("-"))
path = os.path.join(state, "jobs.jsonl")
job = 100 + (sum(1 for _ in open(path)) if os.path.exists(path) else 0)
spool = os.path.join(state, "spool", f"job{job}")
os.makedirs(spool)
shutil.copy(args[script_at], os.path.join(spool, "slurm_script"))
with open(path, "a") as f:
    f.write(json.dumps({"job": job, "options": args[:script_at], "script": args[script_at],
                        "script_args": args[script_at + 1:], "spool": spool,
                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
print(job if "--parsable" in args else f"Submitted batch job {job}")
'''

FAKE_SCONTROL = r'''#!/usr/bin/env bash
[[ "$*" == "show config" && -n "${FAKE_MAX_ARRAY:-}" ]] || exit 1
echo "MaxArraySize            = $FAKE_MAX_ARRAY"
'''


def sweep_env(tmp_path, **env):
    fake = tmp_path / "fake_run_glue.py"
    fake.write_text(FAKE_RUN_GLUE)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "CUDA_VISIBLE_DEVICES"}
    full_env.update({"PYTHON": sys.executable, "RUN_GLUE": str(fake), "RUNS_DIR": str(tmp_path / "runs"),
                     "FAKE_LOG": str(tmp_path / "calls.jsonl"), "MODEL": "/fake/minilm", "REPORT": "0",
                     "BITFIT_REPO": REPO})
    full_env.update(env)
    return full_env


def sweep(script, tmp_path, cwd=None, **env):
    return subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=sweep_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def dry_run_lines(script, tmp_path, **env):
    p = sweep(script, tmp_path, DRY_RUN="1", **env)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def calls(tmp_path):
    log = tmp_path / "calls.jsonl"
    return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []


def omp(call):
    """The OMP_NUM_THREADS the fake run saw."""
    return next(a for a in call if a.startswith("OMP_NUM_THREADS="))


def out_dir(call):
    return call[call.index("-o") + 1]


@pytest.mark.parametrize("script, expected", [
    ("table1.sh", 8 * 2 * 4 * 5),
    ("table2.sh", 8 * 2 * 4 * 5 * 2 + 8 * 2 * 1 * 5),  # RoBERTa-base: one fixed rate per method
    ("table3.sh", 8 * 8 * 4 * 5),
    ("train_size_curve.sh", 7 * 2 * 4 * 5),            # 7 training sizes
    ("table_peft.sh", 8 * (4 + 4 + 4 + 3 + 4) * 5),      # Full-FT, BitFit, LoRA, IA3 (3 rates), BitFit+LoRA
    ("cpu_repro.sh", 5 * 2 * 2),                        # the planner's first round: the pilot's 2 rates per method
])
def test_dry_run_counts(script, expected, tmp_path):
    lines = dry_run_lines(script, tmp_path)
    assert len(lines) == expected
    assert all("run_glue.py -o " in l for l in lines)
    assert len({l.split(" -o ")[1].split()[0] for l in lines}) == expected  # every run has its own directory
    assert not (tmp_path / "runs").exists()


def test_dry_run_respects_overrides_and_per_task_lr(tmp_path):
    lines = dry_run_lines("table3.sh", tmp_path, TASKS="rte mrpc", SEEDS="0 1", METHODS="full_ft bitfit bq")
    assert len(lines) == 2 * 3 * 4 * 2
    per_task = dry_run_lines("table1.sh", tmp_path, PER_TASK_LR="1", TASKS="rte qnli")
    assert len(per_task) == 2 * (4 + 1) * 5  # Full-FT keeps its grid; BitFit at the Table 6 rate
    bitfit = [l for l in per_task if "-f bitfit" in l]
    assert {l.split(" -t ")[1].split()[0] + ":" + l.split(" -l ")[1].split()[0] for l in bitfit} == {"rte:4e-4", "qnli:7e-4"}
    t3 = dry_run_lines("table3.sh", tmp_path, TASKS="rte", SEEDS="0")
    assert sum("--eval-train" in l for l in t3) == 2 * 4  # Full-FT and BitFit only
    assert sum("--bias-terms intermediate query" in l for l in t3) == 4
    p = sweep("table3.sh", tmp_path, DRY_RUN="1", PER_TASK_LR="1", MODEL="x")
    assert p.returncode == 0  # table3 is BERT-base: Table 6 has its rates


def test_empty_task_and_method_lists_mean_none(tmp_path):
    """TASKS= / METHODS= (set but empty) select nothing, instead of falling back to every task or method."""
    assert dry_run_lines("table3.sh", tmp_path, TASKS="") == []
    assert dry_run_lines("table3.sh", tmp_path, METHODS="") == []
    assert dry_run_lines("table1.sh", tmp_path, TASKS="") == []
    assert dry_run_lines("table2.sh", tmp_path, TASKS="") == []
    p = sweep("table3.sh", tmp_path, TASKS="")
    assert p.returncode == 0 and "run list is empty" in p.stdout and not calls(tmp_path)
    assert len(dry_run_lines("table3.sh", tmp_path, TASKS="rte", SEEDS="0")) == 8 * 4  # unset METHODS: all 8
    # an empty path still falls back to its default (it must never reach rm -rf)
    lines = dry_run_lines("table1.sh", tmp_path, RUNS_DIR="", TASKS="rte", SEEDS="0")
    assert all(f" -o {REPO}/results/table1/runs/" in l for l in lines)


def test_misspelt_task_is_one_line_and_exit_2(tmp_path):
    p = sweep("table1.sh", tmp_path, DRY_RUN="1", TASKS="rte mrcp")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "'mrcp'" in p.stderr and "mrpc" in p.stderr and not p.stdout


def test_cpu_repro_first_round_is_the_pilot(tmp_path):
    lines = dry_run_lines("cpu_repro.sh", tmp_path)
    runs = [l.split(" -o ")[1].split()[0].split("/runs/minilm/")[1] for l in lines]
    # BitFit and Full-FT at the pilot's two rates, seed 0, task after task in the script's order
    assert runs[:4] == ["bitfit/rte-n2000/lr4e-4/seed0", "bitfit/rte-n2000/lr1e-3/seed0",
                        "full_ft/rte-n2000/lr2e-5/seed0", "full_ft/rte-n2000/lr5e-5/seed0"]
    assert [r.split("/")[1] for r in runs[::4]] == ["rte-n2000", "mrpc-n2000", "stsb-n2000", "cola-n2000", "sst2-n2000"]
    assert all(r.endswith("/seed0") for r in runs)
    assert all("--train-size 2000" in l and "-e 10 " in l and l.endswith("--no-progress --keep-checkpoint --batch-layout auto")
               for l in lines)


def _complete_run(run, epochs, best_epoch, checkpoint=True):
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "status": "complete", "last_epoch": epochs, "best_epoch": best_epoch, "eval_splits": ["dev"],
        "headline_metric": "accuracy", "best": {"dev": {"accuracy": 0.6}}, "last": {"dev": {"accuracy": 0.6}}}))
    if checkpoint:
        (run / "checkpoint.safetensors").write_text("epoch %d" % epochs)


def test_cpu_repro_trains_a_run_still_rising_longer_in_place(tmp_path):
    """A complete pilot run whose best epoch is its last is continued from its kept checkpoint (--resume -e 12),
    never emptied; without a kept checkpoint it is reported, left as it is, and nothing else waits on it."""
    minilm = tmp_path / "runs" / "minilm"
    rising = minilm / "bitfit" / "rte-n2000" / "lr1e-3" / "seed0"
    _complete_run(rising, 10, 10)
    _complete_run(minilm / "bitfit" / "rte-n2000" / "lr4e-4" / "seed0", 10, 4)
    short = minilm / "full_ft" / "rte-n2000" / "lr2e-5" / "seed0"
    _complete_run(short, 10, 9, checkpoint=False)
    _complete_run(minilm / "full_ft" / "rte-n2000" / "lr5e-5" / "seed0", 10, 3)
    p = sweep("cpu_repro.sh", tmp_path, TASKS="rte", PHASES="pilot")
    first = [c for c in calls(tmp_path) if out_dir(c) == str(rising)]
    assert first and "--resume" in first[0] and first[0][first[0].index("-e") + 1] == "12", calls(tmp_path)
    assert "train longer (to 12 epochs" in p.stdout
    assert "kept no checkpoint" in p.stderr and str(short) in p.stderr
    assert not any(out_dir(c) == str(short) for c in calls(tmp_path))
    assert json.loads((short / "results.json").read_text())["last_epoch"] == 10  # the user's run, untouched
    # EXTEND unset (every other sweep): a complete run is skipped whatever its length
    n = len(calls(tmp_path))
    _complete_run(tmp_path / "runs" / "bert-base-cased" / "bitfit" / "rte" / "lr1e-3" / "seed0", 10, 10)
    rerun = sweep("table3.sh", tmp_path, TASKS="rte", SEEDS="0", METHODS="bitfit", LRS_BIAS="1e-3", EPOCHS="16")
    assert rerun.returncode == 0 and "skip (complete)" in rerun.stdout and len(calls(tmp_path)) == n


def test_cpu_repro_workers_replan_when_free_instead_of_waiting_for_a_round(tmp_path):
    """While one worker is busy with a slow MRPC pilot run, the other takes what RTE's finished pilot points unlock
    (the pilot's next rates) at once, not after every run of the current list has ended; every run goes once; the
    sweep ends when the planner has nothing left."""
    p = sweep("cpu_repro.sh", tmp_path, TASKS="rte mrpc", PHASES="pilot", FAKE_SLOW_TASK="mrpc",
              FAKE_SLOW_SECONDS="6", PLAN_POLL_SECONDS="1")
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    dirs = [out_dir(c) for c in done]
    assert len(dirs) == len(set(dirs)) == 16, dirs  # per task and method: 2 points, the grid's next, one past it
    start = {out_dir(c): float(c[-1].split("=")[1]) for c in done}
    first_slow_end = min(float(l.split()[0]) for l in (tmp_path / "calls.jsonl.slow_done").read_text().splitlines())
    # The fake scores every rate alike, so the pilot grows downwards: RTE's 1e-4 (BitFit) and 1e-5 (Full-FT) exist
    # only once RTE's first points are complete. With a round barrier they would wait for the slow MRPC runs.
    grown = [d for d in dirs if "rte-n2000" in d and ("/lr1e-4/" in d or "/lr1e-5/" in d)]
    assert len(grown) == 2 and all(start[d] < first_slow_end for d in grown)
    assert "nothing left to run" in p.stdout


def test_resume_skips_complete_and_redoes_incomplete(tmp_path):
    env = dict(TASKS="rte", SEEDS="0 1", METHODS="bitfit", LRS_BIAS="1e-3")
    runs = tmp_path / "runs" / "bert-base-cased" / "bitfit" / "rte" / "lr1e-3"
    (runs / "seed0").mkdir(parents=True)
    (runs / "seed0" / "results.json").write_text(json.dumps({"status": "complete"}))
    (runs / "seed1").mkdir(parents=True)
    (runs / "seed1" / "results.json").write_text(json.dumps({"status": "running"}))  # killed mid-run
    (runs / "seed1" / "partial.bin").write_text("x")
    dir_inode = (runs / "seed1").stat().st_ino
    p = sweep("table3.sh", tmp_path, **env)
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert len(done) == 1 and done[0][done[0].index("-s") + 1] == "1"
    assert not (runs / "seed1" / "partial.bin").exists()
    # emptied, not removed: the directory is what the run lock is on, so a process that opens it meanwhile must meet
    # the one the sweep locked
    assert (runs / "seed1").stat().st_ino == dir_inode
    assert "skip (complete)" in p.stdout and "redo (incomplete)" in p.stdout
    sweep("table3.sh", tmp_path, **env)  # everything complete now: nothing runs
    assert len(calls(tmp_path)) == 1


def test_a_run_held_by_another_process_is_left_alone_and_resumes_once_it_is_gone(tmp_path):
    """The lock of a live run (another worker, array task or submission) keeps the sweep off its directory; once
    its holder is gone, the run continues from its checkpoint."""
    env = dict(TASKS="rte", SEEDS="0", METHODS="bitfit", LRS_BIAS="1e-3")
    run = tmp_path / "runs" / "bert-base-cased" / "bitfit" / "rte" / "lr1e-3" / "seed0"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"status": "running"}))
    (run / "checkpoint.safetensors").write_text("epoch 1")
    (run / "in_progress.bin").write_text("x")
    lock = RunLock(str(run)).acquire()  # stands in for the run_glue.py writing there
    try:
        p = sweep("table3.sh", tmp_path, **env)
        assert p.returncode == 0, p.stderr
        assert "another process is running it" in p.stdout and not calls(tmp_path)
        assert sorted(os.listdir(run)) == ["checkpoint.safetensors", "in_progress.bin", "results.json"]
        # no checkpoint: it would have been redone (emptied) had it not been held
        (run / "checkpoint.safetensors").unlink()
        p = sweep("table3.sh", tmp_path, **env)
        assert "another process is running it" in p.stdout and (run / "in_progress.bin").exists()
        (run / "checkpoint.safetensors").write_text("epoch 1")
    finally:
        lock.release()  # the holder dies
    p = sweep("table3.sh", tmp_path, **env)
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert "resume (killed after a checkpoint)" in p.stdout
    assert len(done) == 1 and "--resume" in done[0]
    assert (run / "in_progress.bin").exists()  # resumed in place, not wiped


def test_failed_runs_do_not_stop_the_sweep(tmp_path):
    p = sweep("table1.sh", tmp_path, TASKS="cola rte", SEEDS="0", LRS_FULL="2e-5", LRS_BIAS="1e-3",
              FAKE_FAIL_TASK="cola")
    assert p.returncode == 0
    assert len(calls(tmp_path)) == 4 and "FAILED" in p.stderr
    p = sweep("table1.sh", tmp_path, TASKS="cola rte", SEEDS="0", LRS_FULL="2e-5", LRS_BIAS="1e-3")
    assert len(calls(tmp_path)) == 6  # only the 2 failed cola runs are redone


def test_gpu_workers(tmp_path):
    p = sweep("table1.sh", tmp_path, TASKS="rte mrpc", SEEDS="0 1", LRS_FULL="2e-5", LRS_BIAS="1e-3", GPUS="0 1")
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert len(done) == 8  # each run exactly once, across both workers
    assert {c[c.index("-d") + 1] for c in done} <= {"0", "1"} and all("-d" in c for c in done)


def test_cpu_workers_split_the_cores(tmp_path):
    p = sweep("table1.sh", tmp_path, TASKS="rte mrpc", SEEDS="0 1", LRS_FULL="2e-5", LRS_BIAS="1e-3", CPU_WORKERS="2")
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert len(done) == 8 and len({c[c.index("-o") + 1] for c in done}) == 8  # each run once, across both workers
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # what nproc counts
    assert all("-d" not in c and omp(c) == f"OMP_NUM_THREADS={threads}" for c in done)
    assert "2 CPU workers" in p.stdout


# ------------------------------------------------------------------------------------------------- SLURM=1, faked

@pytest.fixture
def fake_slurm(tmp_path):
    """A bin/ with fake sbatch and scontrol; returns the extra environment of a sweep that uses them."""
    state = tmp_path / "slurm_state"
    (state / "bin").mkdir(parents=True)
    sbatch = state / "bin" / "sbatch"
    sbatch.write_text(FAKE_SBATCH.replace("PYTHON", sys.executable))
    scontrol = state / "bin" / "scontrol"
    scontrol.write_text(FAKE_SCONTROL)
    for f in (sbatch, scontrol):
        f.chmod(0o755)
    return {"SLURM": "1", "FAKE_SLURM": str(state), "PATH": f"{state / 'bin'}:{os.environ['PATH']}"}


def submitted(env):
    path = os.path.join(env["FAKE_SLURM"], "jobs.jsonl")
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def option(job, name):
    values = [o.split("=", 1)[1] for o in job["options"] if o.startswith(name + "=")]
    return values[-1] if values else None


def run_array_task(job, task_id, tmp_path, env, **task_env):
    """What slurmd does for one array task: run the spool copy of the batch script, from the spool directory, in the
    environment sbatch saw (--export=ALL: the submitter's, less the CUDA_VISIBLE_DEVICES the sweep keeps back)."""
    full = {k: v for k, v in sweep_env(tmp_path, **env).items() if k != "CUDA_VISIBLE_DEVICES"}
    full.update({"SLURM_JOB_ID": str(job["job"] * 1000 + task_id), "SLURM_ARRAY_JOB_ID": str(job["job"]),
                 "SLURM_ARRAY_TASK_ID": str(task_id), "SLURM_CPUS_ON_NODE": "1"})
    full.update(task_env)
    return subprocess.run(["bash", os.path.join(job["spool"], "slurm_script"), *job["script_args"]],
                          cwd=job["spool"], env=full, capture_output=True, text=True, timeout=120)


def array_size(job):
    spec = option(job, "--array").split("%")[0]
    first, last = spec.split("-")
    assert first == "0"
    return int(last) + 1


def test_slurm_tasks_run_their_line_of_the_list_fixed_at_submission(tmp_path, fake_slurm):
    grid = dict(TASKS="rte mrpc cola", SEEDS="0 1", LRS_FULL="2e-5", LRS_BIAS="1e-3")  # 3 x 2 methods x 2 = 12 runs
    expected = dry_run_lines("table1.sh", tmp_path, **grid)
    env = dict(fake_slurm, FAKE_MAX_ARRAY="5", SLURM_MAX_PARALLEL="2", REPORT="1", OUT_DIR=str(tmp_path / "out"),
               CUDA_VISIBLE_DEVICES="7")  # the submitter's GPU must not reach the tasks
    p = sweep("table1.sh", tmp_path, **grid, **env)
    assert p.returncode == 0, p.stderr
    jobs = submitted(env)
    arrays, report = jobs[:-1], jobs[-1]
    # 12 runs > MaxArraySize 5: arrays of 5, 5 and 2 (indices 0..4 at most), each starting at its line offset
    assert [array_size(j) for j in arrays] == [5, 5, 2]
    assert [j["script_args"] for j in arrays] == [["0"], ["5"], ["10"]]
    assert all(option(j, "--array").endswith("%2") for j in arrays)
    # with a parallel limit the arrays queue one after another, so the limit holds for the whole sweep
    assert [option(j, "--dependency") for j in arrays] == [None, "afterany:100", "afterany:101"]
    assert option(report, "--dependency") == "afterany:100:101:102"
    assert all(j["cuda"] is None for j in jobs)
    sub = os.path.dirname(arrays[0]["script"])
    assert os.path.dirname(sub) == str(tmp_path / "runs" / "slurm")
    assert open(os.path.join(sub, "runs.txt")).read().splitlines() == expected
    logs = os.path.join(sub, "logs")
    assert os.path.isdir(logs) and all(option(j, "--output").startswith(logs + "/") for j in jobs)
    assert "100" in p.stdout and "102" in p.stdout and "103" in p.stdout and logs in p.stdout and "squeue" in p.stdout
    assert not calls(tmp_path)  # nothing ran at submission

    # The list is fixed: what the environment says when a task starts does not change which run an index means.
    for j in arrays:
        for t in range(array_size(j)):
            task = run_array_task(j, t, tmp_path, env, TASKS="qqp", SEEDS="9", SLURM_CPUS_PER_TASK="3")
            assert task.returncode == 0, task.stdout + task.stderr
    done = calls(tmp_path)
    assert [out_dir(c) for c in done] == [l.split(" -o ")[1].split()[0] for l in expected]  # each once, in order
    assert all("-d" not in c and omp(c) == "OMP_NUM_THREADS=3" for c in done)  # CPUs of the task, not the node
    # a task past the end of the list is one line and exit 2
    bad = run_array_task(arrays[-1], 2, tmp_path, env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "past the end" in bad.stderr

    # The report job (run from its spool copy) writes the tables of what is complete, and never submits or runs the
    # sweep again.
    assert report["script"].endswith("/report.sh") and report["script_args"] == []
    rep = subprocess.run(["bash", report["spool"] + "/slurm_script"], cwd=report["spool"], capture_output=True,
                         text=True, timeout=120, env=dict(sweep_env(tmp_path, **env), SLURM_JOB_ID="103"))
    # The fake runs hold no metrics, so the tables module reads all 12 and refuses to score them (test_slurm.py
    # checks the tables of real runs); the job says which step failed and exits 1.
    assert rep.returncode == 1 and f"under '{tmp_path / 'runs'}' (12 incomplete" in rep.stderr
    assert "report step 1 of 1 failed" in rep.stderr and "written" not in rep.stdout
    assert len(submitted(env)) == 4 and len(calls(tmp_path)) == 12


def test_slurm_task_trains_on_the_gpu_slurm_gave_it(tmp_path, fake_slurm):
    env = dict(fake_slurm, TASKS="rte", SEEDS="0", LRS_FULL="2e-5", LRS_BIAS="1e-3")
    assert sweep("table1.sh", tmp_path, **env).returncode == 0
    array = submitted(env)[0]
    assert run_array_task(array, 0, tmp_path, env, CUDA_VISIBLE_DEVICES="3").returncode == 0  # SLURM's --gres=gpu:1
    assert run_array_task(array, 1, tmp_path, env).returncode == 0                            # no GPU asked for
    gpu, cpu = calls(tmp_path)
    assert gpu[gpu.index("-d") + 1] == "0"  # the allotted GPU is device 0 inside the task
    assert "-d" not in cpu and omp(cpu) == "OMP_NUM_THREADS=1"  # SLURM_CPUS_ON_NODE without --cpus-per-task


def test_slurm_resubmission_skips_complete_runs_and_leaves_running_ones_alone(tmp_path, fake_slurm):
    grid = dict(TASKS="rte", SEEDS="0 1", LRS_FULL="2e-5", LRS_BIAS="1e-3")  # 4 runs
    env = dict(fake_slurm, REPORT="1", **grid)
    assert sweep("table1.sh", tmp_path, **env).returncode == 0
    first = submitted(env)[0]
    assert run_array_task(first, 0, tmp_path, env).returncode == 0
    # run 1 is in progress under a task of the first array while the sweep is submitted again
    held = dry_run_lines("table1.sh", tmp_path, **grid)[1].split(" -o ")[1].split()[0]
    os.makedirs(held)
    open(os.path.join(held, "results.json"), "w").write(json.dumps({"status": "running"}))
    lock = RunLock(held).acquire()
    try:
        p = sweep("table1.sh", tmp_path, **env)
        assert p.returncode == 0, p.stderr
        second = submitted(env)[2]
        assert array_size(second) == 3 and "3 runs (of 4; 1 already complete)" in p.stdout
        task = run_array_task(second, 0, tmp_path, env)  # its first line is the running run
        assert task.returncode == 0 and "another process is running it" in task.stdout
        assert os.listdir(held) == ["results.json"]
    finally:
        lock.release()
    assert len(calls(tmp_path)) == 1
    for t in (1, 2):
        assert run_array_task(second, t, tmp_path, env).returncode == 0
    # the held run's process died before a checkpoint: the next submission holds that run alone, and redoes it
    p = sweep("table1.sh", tmp_path, **env)
    assert p.returncode == 0 and "1 runs (of 4; 3 already complete)" in p.stdout
    task = run_array_task(submitted(env)[4], 0, tmp_path, env)
    assert task.returncode == 0 and "redo (incomplete)" in task.stdout
    assert [out_dir(c) for c in calls(tmp_path)].count(held) == 1
    # everything complete: no array, only the report job
    p = sweep("table1.sh", tmp_path, **env)
    assert p.returncode == 0 and "all 4 runs" in p.stdout and "report job" in p.stdout
    last = submitted(env)[-1]
    assert len(submitted(env)) == 7 and last["script"].endswith("report.sh") and option(last, "--array") is None
    assert option(last, "--dependency") is None and len(calls(tmp_path)) == 4


def test_slurm_empty_list_and_bad_input(tmp_path, fake_slurm):
    p = sweep("table3.sh", tmp_path, TASKS="", REPORT="1", **fake_slurm)
    assert p.returncode == 0 and p.stdout.count("\n") == 1 and "the run list is empty" in p.stdout
    assert not submitted(fake_slurm)  # no sbatch --array=0--1, no report job
    p = sweep("table3.sh", tmp_path, TASKS="rte", SLURM_MAX_PARALLEL="two", **fake_slurm)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "SLURM_MAX_PARALLEL" in p.stderr
    p = sweep("table3.sh", tmp_path, TASKS="rte", FAKE_SBATCH_FAIL="Invalid partition name specified",
              SBATCH_ARGS="-p nope", **fake_slurm)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "Invalid partition name" in p.stderr and "SBATCH_ARGS" in p.stderr and "Traceback" not in p.stderr
    p = sweep("table3.sh", tmp_path, TASKS="rte", SBATCH_ARGS="--comment='unbalanced", **fake_slurm)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "SBATCH_ARGS has unbalanced quotes" in p.stderr
    bare = tmp_path / "bare_bin"  # a PATH without sbatch (this machine may have a real one)
    bare.mkdir()
    for tool in ("bash", "dirname", "basename", "date"):
        os.symlink(shutil.which(tool), bare / tool)
    p = sweep("table3.sh", tmp_path, TASKS="rte", SLURM="1", PATH=str(bare))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "sbatch is not on PATH" in p.stderr


def test_slurm_relative_paths_mean_what_they_meant_at_submission(tmp_path, fake_slurm):
    """RUNS_DIR=runs-slurm (relative, as in the issue's report): SLURM starts tasks elsewhere, so the run list and
    the report hold absolute paths, and the jobs start in the submitting directory (for a relative DATA_DIR)."""
    p = sweep("table1.sh", tmp_path, cwd=tmp_path, RUNS_DIR="runs-slurm", TASKS="rte", SEEDS="0", REPORT="1",
              **fake_slurm)
    assert p.returncode == 0, p.stderr
    jobs = submitted(fake_slurm)
    assert all(option(j, "--chdir") == str(tmp_path) for j in jobs)
    runs_txt = open(os.path.join(os.path.dirname(jobs[0]["script"]), "runs.txt")).read().splitlines()
    assert len(runs_txt) == 8 and all(f" -o {tmp_path}/runs-slurm/bert-large-cased/" in l for l in runs_txt)
    assert f"{tmp_path}/runs-slurm --out" in open(jobs[-1]["script"]).read()


def test_slurm_dry_run_shows_the_submission_and_writes_nothing(tmp_path, fake_slurm):
    env = dict(fake_slurm, FAKE_MAX_ARRAY="1001", REPORT="1")
    lines = dry_run_lines("table3.sh", tmp_path, **env)  # 1280 runs
    assert [l.split(" --array=")[1].split()[0] for l in lines[:2]] == ["0-1000", "0-278"]
    assert lines[1].endswith("task.sh 1001") and "--dependency=afterany:ARRAY1:ARRAY2" in lines[2]
    assert not submitted(env) and not (tmp_path / "runs").exists()


def test_cpu_repro_submits_one_round(tmp_path, fake_slurm):
    p = sweep("cpu_repro.sh", tmp_path, REPORT="1", **fake_slurm)
    assert p.returncode == 0, p.stderr
    jobs = submitted(fake_slurm)
    assert [array_size(j) for j in jobs[:-1]] == [20] and jobs[-1]["script"].endswith("report.sh")
    assert "rerun this command for the next round" in p.stdout
    report_sh = open(jobs[-1]["script"]).read()
    assert all(f"bitfit_experiments.{m}" in report_sh for m in ("tables", "figures", "claims"))
    assert "--paper-table 3" in report_sh and "--paper-table lora" in report_sh
    assert run_array_task(jobs[0], 19, tmp_path, fake_slurm).returncode == 0
    assert "/sst2-n2000/lr5e-5/seed0" in out_dir(calls(tmp_path)[0])


def test_peft_sweep_uses_each_methods_grid(tmp_path):
    lines = dry_run_lines("table_peft.sh", tmp_path, TASKS="rte", SEEDS="0")
    rates = {}
    for line in lines:
        words = line.split()
        rates.setdefault(words[words.index("-f") + 1], set()).add(words[words.index("-l") + 1])
    assert rates == {"full_ft": {"1e-5", "2e-5", "3e-5", "5e-5"}, "bitfit": {"1e-4", "4e-4", "7e-4", "1e-3"},
                     "lora": {"2e-4", "4e-4", "5e-4", "1e-3"}, "bitfit_lora": {"2e-4", "4e-4", "5e-4", "1e-3"},
                     "ia3": {"1e-3", "3e-3", "1e-2"}}
