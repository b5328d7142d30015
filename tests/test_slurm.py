"""The sweeps' SLURM=1 path on a real SLURM: a private one-node cluster on localhost (scripts/slurm_local.sh: munged,
slurmctld, slurmd, 2 CPUs, MaxArraySize 3 so that a 4-run sweep becomes 2 arrays), real run_glue.py runs of a small
random BERT (train-size 32, 2 epochs, so that a checkpoint exists mid-run). Skipped, with the reason, where the
cluster cannot start (SLURM or munge not installed, not root); .ci/run installs both.

The dev set is large enough (2,500 examples) that an epoch's evaluation takes seconds: that is the window in which
a second submission meets a run in progress, and in which scancel catches a run between its checkpoint and its end.
Every wait is bounded; the cluster is stopped however the test ends."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from bitfit_experiments.artifacts.lock import is_locked
from conftest import REPO_ROOT, make_tiny_tokenizer, write_tiny_rte

pytestmark = pytest.mark.slurm

SLURM_LOCAL = os.path.join(REPO_ROOT, "scripts", "slurm_local.sh")
SWEEP = os.path.join(REPO_ROOT, "scripts", "train_size_curve.sh")
JOB_TIMEOUT = 420  # seconds for the jobs of one submission (each run takes ~10-20 s here on 2 shared cores)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    check = subprocess.run(["bash", SLURM_LOCAL, "check"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        pytest.skip((check.stdout + check.stderr).strip().splitlines()[0])
    root = tmp_path_factory.mktemp("slurm_cluster")
    env = dict(os.environ, SLURM_LOCAL_CPUS="2", SLURM_LOCAL_MAX_ARRAY_SIZE="3")
    try:
        start = subprocess.run(["bash", SLURM_LOCAL, "start", str(root)], env=env, capture_output=True, text=True,
                               timeout=240)
        assert start.returncode == 0, f"the local SLURM did not start:\n{start.stdout}{start.stderr}"
        yield str(root / "slurm.conf")
    finally:
        subprocess.run(["bash", SLURM_LOCAL, "stop", str(root)], capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A random BERT of 4 layers x 256 (3M parameters): small, but its evaluation of the dev set takes seconds."""
    import torch
    from transformers import BertConfig, BertModel
    path = str(tmp_path_factory.mktemp("bert_256x4"))
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_tiny_rte(str(tmp_path_factory.mktemp("glue")), n_train=64, n_dev=2500, n_test=8)


def slurm_env(conf):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(SLURM_CONF=conf, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def submit(conf, model, glue_dir, runs, out, seeds, **extra):
    """SLURM=1 train_size_curve.sh: Full-FT and BitFit on RTE, train-size 32, one rate, 2 epochs, per seed."""
    env = slurm_env(conf)
    env.update(SLURM="1", PYTHON=sys.executable, MODEL=model, DATA_DIR=glue_dir, TASK="rte", TRAIN_SIZES="32",
               SEEDS=seeds, LRS_FULL="1e-3", LRS_BIAS="1e-3", EPOCHS="2", EXTRA_ARGS="--no-progress",
               RUNS_DIR=str(runs), OUT_DIR=str(out), **extra)
    p = subprocess.run(["bash", SWEEP], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def squeue(conf, *args):
    return subprocess.run(["squeue", "-h", *args], env=slurm_env(conf), capture_output=True, text=True,
                          timeout=30).stdout


def wait_until(predicate, timeout, what, conf=None):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            queue = squeue(conf, "-o", "%i %T %r") if conf else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}; squeue:\n{queue}")
        time.sleep(0.2)


def wait_for_jobs(conf, timeout=JOB_TIMEOUT):
    wait_until(lambda: squeue(conf).strip() == "", timeout, "the jobs to end", conf)


def run_dirs(runs, model, seeds):
    """The sweep's run directories, in its order (the model's folder name tags them)."""
    return [os.path.join(runs, os.path.basename(model), method, "rte-n32", "lr1e-3", f"seed{s}")
            for s in seeds for method in ("full_ft", "bitfit")]


def results(run):
    try:
        with open(os.path.join(run, "results.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def submission_logs(stdout):
    return re.search(r"logs:\s+(\S+)/logs/", stdout).group(1) + "/logs"


def read_logs(folder):
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


def test_a_sweep_on_a_real_slurm(cluster, slow_model, glue, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    dirs = run_dirs(str(runs), slow_model, [0, 1])

    # 1. A 4-run sweep, one run at a time; resubmitted while its first run is in progress.
    first = submit(cluster, slow_model, glue, runs, out, "0 1", SLURM_MAX_PARALLEL="1")
    assert "as 2 job array(s)" in first and "report job" in first  # 4 runs > MaxArraySize 3
    wait_until(lambda: is_locked(dirs[0]) and os.path.exists(os.path.join(dirs[0], "config.json")), 180,
               "the first run to start", cluster)
    assert results(dirs[0]).get("status") == "running"
    second = submit(cluster, slow_model, glue, runs, out, "0 1", SLURM_MAX_PARALLEL="1")
    assert "submitted 4 runs" in second
    wait_for_jobs(cluster)

    tasks_first, tasks_second = read_logs(submission_logs(first)), read_logs(submission_logs(second))
    task_logs = {**tasks_first, **tasks_second}
    assert sum(n.endswith(".out") and not n.startswith("report") for n in task_logs) == 8
    assert not any("redo" in t or "FAILED" in t for t in task_logs.values()), task_logs
    for d in dirs:
        r = results(d)
        assert r.get("status") == "complete", d
        assert r["resumed_after_epochs"] == [] and r["last_epoch"] == 2
        assert {"config.json", "params.json", "pack"} <= set(os.listdir(d)), f"files of {d} were deleted"
        log = open(d + ".log").read()
        assert log.count("epoch 1:") == 1, f"{d} was trained more than once:\n{log}"
        # the CPUs SLURM allotted to the task (1), not the node's 2
        assert json.load(open(os.path.join(d, "config.json")))["torch_threads"] == 1
    # the second submission met the run in progress and left it alone
    assert any("another process is running it" in t for t in tasks_second.values()), tasks_second
    reports = [t for n, t in task_logs.items() if n.startswith("report-")]
    assert len(reports) == 2 and all("report: written to " + str(out) in t for t in reports), reports
    table = (out / "table.md").read_text()
    assert "BitFit" in table and "Full-FT" in table

    # 2. Resubmitted when complete: nothing runs and no run is touched; only the report job is submitted.
    before = {d: (os.stat(os.path.join(d, "results.json")).st_mtime_ns, open(d + ".log").read()) for d in dirs}
    third = submit(cluster, slow_model, glue, runs, out, "0 1")
    assert "all 4 runs" in third and "job array" not in third and "report job" in third
    wait_for_jobs(cluster)
    assert {d: (os.stat(os.path.join(d, "results.json")).st_mtime_ns, open(d + ".log").read()) for d in dirs} == before
    assert "report: written" in "".join(read_logs(submission_logs(third)).values())

    # 3. scancel in the middle of a run (after its epoch-1 checkpoint): the resubmission resumes it.
    runs2, out2 = tmp_path / "runs2", tmp_path / "out2"
    run0, run1 = run_dirs(str(runs2), slow_model, [0])
    submit(cluster, slow_model, glue, runs2, out2, "0")
    wait_until(lambda: os.path.exists(os.path.join(run0, "checkpoint.safetensors")), 180,
               "the first epoch's checkpoint", cluster)
    jobs = sorted(set(squeue(cluster, "-o", "%F").split()))
    subprocess.run(["scancel", *jobs], env=slurm_env(cluster), check=True, timeout=30)
    wait_for_jobs(cluster, timeout=120)
    wait_until(lambda: not is_locked(run0), 60, "the cancelled run to let go of its lock")
    # "interrupted" (run_glue.py records SIGTERM) or still "running" (a SIGKILL leaves it so)
    assert results(run0).get("status") in ("interrupted", "running"), \
        "the run finished before scancel reached it (too fast a machine for this test's timing?)"
    assert os.path.exists(os.path.join(run0, "checkpoint.safetensors"))
    fourth = submit(cluster, slow_model, glue, runs2, out2, "0")
    assert "submitted 2 runs" in fourth
    wait_for_jobs(cluster)
    r0 = results(run0)
    assert r0.get("status") == "complete" and r0["resumed_after_epochs"] == [1]
    assert results(run1).get("status") == "complete"
    logs = "".join(read_logs(submission_logs(fourth)).values())
    assert "resume (killed after a checkpoint): " + run0 in logs
    assert (out2 / "table.md").exists()
