"""The sweep scripts: dry-run counts equal tasks x methods x lrs x seeds, and the resumable/parallel/SLURM
machinery, driven with a fake run_glue.py that records its calls (no training)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_RUN_GLUE = r'''
import json, os, sys
args = sys.argv[1:]
get = lambda flag: args[args.index(flag) + 1]
out = get("-o")
if os.path.exists(out) and os.listdir(out):
    sys.exit(2)  # like run_glue.py: refuses a non-empty output directory
os.makedirs(out, exist_ok=True)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args + ["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "")]) + "\n")
status = "failed" if get("-t") == os.environ.get("FAKE_FAIL_TASK") else "complete"
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"status": status}, f)
sys.exit(0 if status == "complete" else 1)
'''


def sweep(script, tmp_path, **env):
    fake = tmp_path / "fake_run_glue.py"
    fake.write_text(FAKE_RUN_GLUE)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    full_env.update({"PYTHON": sys.executable, "RUN_GLUE": str(fake), "RUNS_DIR": str(tmp_path / "runs"),
                     "FAKE_LOG": str(tmp_path / "calls.jsonl"), "MODEL": "/fake/minilm", "REPORT": "0"})
    full_env.update(env)
    return subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=full_env, capture_output=True,
                          text=True, timeout=120)


def dry_run_lines(script, tmp_path, **env):
    p = sweep(script, tmp_path, DRY_RUN="1", **env)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def calls(tmp_path):
    log = tmp_path / "calls.jsonl"
    return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("script, expected", [
    ("table1.sh", 8 * 2 * 4 * 5),
    ("table2.sh", 8 * 2 * 4 * 5 * 2 + 8 * 2 * 1 * 5),  # RoBERTa-base: one fixed rate per method
    ("table3.sh", 8 * 8 * 4 * 5),
    ("train_size_curve.sh", 7 * 2 * 4 * 5),            # 7 training sizes
    ("cpu_repro.sh", 5 * 8 * 2 * 3),
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


def test_cpu_repro_order_follows_the_priorities(tmp_path):
    lines = dry_run_lines("cpu_repro.sh", tmp_path)
    runs = [l.split(" -o ")[1].split()[0].split("/runs/minilm/")[1] for l in lines]
    first = runs[:16]  # every Table 3 method on RTE and MRPC, seed 0, first learning rate of each grid
    assert {r.split("/")[0] for r in first} == {"full_ft", "bitfit", "bm2_bq", "bm2", "bq", "frozen",
                                                "rand_uniform", "rand_row_col"}
    assert all(r.split("/")[1] in ("rte", "mrpc") and r.endswith("seed0") for r in first)
    rte_mrpc = [i for i, r in enumerate(runs) if r.split("/")[1] in ("rte", "mrpc")]
    assert rte_mrpc == list(range(len(rte_mrpc))) and len(rte_mrpc) == 2 * 8 * 2 * 3
    assert all("--train-size 2000" in l for l in lines if " -t sst2 " in l)
    assert all(("--train-size" in l) == (" -t sst2 " in l) for l in lines)


def test_resume_skips_complete_and_redoes_incomplete(tmp_path):
    env = dict(TASKS="rte", SEEDS="0 1", METHODS="bitfit", LRS_BIAS="1e-3")
    runs = tmp_path / "runs" / "bert-base-cased" / "bitfit" / "rte" / "lr1e-3"
    (runs / "seed0").mkdir(parents=True)
    (runs / "seed0" / "results.json").write_text(json.dumps({"status": "complete"}))
    (runs / "seed1").mkdir(parents=True)
    (runs / "seed1" / "results.json").write_text(json.dumps({"status": "running"}))  # killed mid-run
    (runs / "seed1" / "partial.bin").write_text("x")
    p = sweep("table3.sh", tmp_path, **env)
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert len(done) == 1 and done[0][done[0].index("-s") + 1] == "1"
    assert not (runs / "seed1" / "partial.bin").exists()
    assert "skip (complete)" in p.stdout and "redo (incomplete)" in p.stdout
    sweep("table3.sh", tmp_path, **env)  # everything complete now: nothing runs
    assert len(calls(tmp_path)) == 1


def test_failed_runs_do_not_stop_the_sweep(tmp_path):
    p = sweep("table1.sh", tmp_path, TASKS="cola rte", SEEDS="0", LRS_FULL="2e-5", LRS_BIAS="1e-3",
              FAKE_FAIL_TASK="cola")
    assert p.returncode == 0
    assert len(calls(tmp_path)) == 4 and "FAILED" in p.stderr
    p = sweep("table1.sh", tmp_path, TASKS="cola rte", SEEDS="0", LRS_FULL="2e-5", LRS_BIAS="1e-3")
    assert len(calls(tmp_path)) == 6  # only the 2 failed cola runs are redone


def test_gpu_workers_and_slurm_array(tmp_path):
    p = sweep("table1.sh", tmp_path, TASKS="rte mrpc", SEEDS="0 1", LRS_FULL="2e-5", LRS_BIAS="1e-3", GPUS="0 1")
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert len(done) == 8  # each run exactly once, across both workers
    assert {c[c.index("-d") + 1] for c in done} <= {"0", "1"} and all("-d" in c for c in done)
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    env = dict(TASKS="rte", SEEDS="0 1 2", LRS_FULL="2e-5", LRS_BIAS="1e-3", RUNS_DIR=str(slurm / "runs"),
               FAKE_LOG=str(slurm / "calls.jsonl"))
    submit = sweep("table1.sh", tmp_path, DRY_RUN="1", SLURM="1", **env)
    assert submit.stdout.startswith("sbatch --array=0-5 ")
    p = sweep("table1.sh", tmp_path, SLURM_ARRAY_TASK_ID="4", **env)
    assert p.returncode == 0, p.stderr
    one = calls(slurm)
    assert len(one) == 1 and "-d" not in one[0]
    assert sweep("table1.sh", tmp_path, SLURM_ARRAY_TASK_ID="6", **env).returncode == 2


def test_cpu_workers_split_the_cores(tmp_path):
    p = sweep("table1.sh", tmp_path, TASKS="rte mrpc", SEEDS="0 1", LRS_FULL="2e-5", LRS_BIAS="1e-3", CPU_WORKERS="2")
    assert p.returncode == 0, p.stderr
    done = calls(tmp_path)
    assert len(done) == 8 and len({c[c.index("-o") + 1] for c in done}) == 8  # each run once, across both workers
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # what nproc counts
    assert all("-d" not in c and c[-1] == f"OMP_NUM_THREADS={threads}" for c in done)
    assert "2 CPU workers" in p.stdout
