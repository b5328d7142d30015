"""--resume after SIGKILL in the middle of an epoch ends with the same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time


from conftest import REPO_ROOT, write_tiny_rte


def _cmd(out, model_dir, glue_dir, *extra):
    return [sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "-o", str(out), "-t", "rte", "-m", model_dir,
            "--data-dir", glue_dir, "-f", "rand_uniform", "-e", "3", "-b", "4", "-l", "3e-3", "-s", "7",
            "--no-progress", *extra]


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir):
    # Enough examples that an epoch lasts a few seconds, so the kill lands inside epoch 2.
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=1200, n_dev=32, n_test=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference = subprocess.run(_cmd(tmp_path / "ref", tiny_model_dir, glue), env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(out, tiny_model_dir, glue), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for the end of epoch 1 (its checkpoint and results are written)
        r = _read(out / "results.json")
        if r and len(r["epochs"]) == 1 and (out / "checkpoint.safetensors").exists():
            break
        time.sleep(0.02)
    time.sleep(0.2)  # inside epoch 2 (an epoch here is 300 steps)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _read(out / "results.json")
    assert killed["status"] == "running" and len(killed["epochs"]) == 1, "the kill did not land in epoch 2"

    resumed = subprocess.run(_cmd(out, tiny_model_dir, glue, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a, b = _read(tmp_path / "ref" / "results.json"), _read(out / "results.json")
    assert b["status"] == "complete" and b["resumed_after_epochs"] == [1]
    assert [(e["train_loss"], e["metrics"]) for e in a["epochs"]] == [(e["train_loss"], e["metrics"]) for e in b["epochs"]]
    assert a["best"] == b["best"] and a["last"] == b["last"]

    # resuming a complete run does nothing; resuming with another configuration is refused
    again = subprocess.run(_cmd(out, tiny_model_dir, glue, "--resume"), env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stdout
    other = subprocess.run(_cmd(out, tiny_model_dir, glue, "--resume", "-s", "8"), env=env, capture_output=True,
                           text=True)
    assert other.returncode == 2 and "another configuration" in other.stderr and "Traceback" not in other.stderr
    assert _read(out / "results.json") == b


def test_train_longer_continues_a_kept_checkpoint_bit_identically(tmp_path, tiny_model_dir):
    """--keep-checkpoint then --resume -e 3 on a complete 2-epoch run == a run started with -e 3 (constant rate)."""
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=48, n_dev=16, n_test=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cmd(out, epochs, *extra):
        return [sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "-o", str(out), "-t", "rte", "-m",
                tiny_model_dir, "--data-dir", glue, "-f", "bitfit", "-e", str(epochs), "-b", "4", "-l", "3e-3",
                "-s", "3", "--no-progress", *extra]
    ref = subprocess.run(cmd(tmp_path / "ref", 3), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "short"
    short = subprocess.run(cmd(out, 2, "--keep-checkpoint"), env=env, capture_output=True, text=True)
    assert short.returncode == 0, short.stderr
    assert _read(out / "results.json")["status"] == "complete" and (out / "checkpoint.safetensors").exists()
    longer = subprocess.run(cmd(out, 3, "--resume", "--keep-checkpoint"), env=env, capture_output=True, text=True)
    assert longer.returncode == 0, longer.stderr
    a, b = _read(tmp_path / "ref" / "results.json"), _read(out / "results.json")
    assert b["status"] == "complete" and b["resumed_after_epochs"] == [2] and b["last_epoch"] == 3
    assert [(e["train_loss"], e["metrics"]) for e in a["epochs"]] == [(e["train_loss"], e["metrics"]) for e in b["epochs"]]
    assert json.load(open(out / "config.json"))["args"]["epochs"] == 3

    # without a kept checkpoint a complete run cannot be continued: one line, exit 2, nothing changed
    plain = tmp_path / "plain"
    assert subprocess.run(cmd(plain, 2), env=env, capture_output=True, text=True).returncode == 0
    before = _read(plain / "results.json")
    refused = subprocess.run(cmd(plain, 3, "--resume"), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--keep-checkpoint" in refused.stderr and "Traceback" not in refused.stderr
    assert _read(plain / "results.json") == before
