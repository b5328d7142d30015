"""A run that cannot be trusted never says "complete": non-finite weights, a crash after training started, and
signals are recorded in results.json, with a non-zero exit; leftovers of killed writes are cleaned on --resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT, write_tiny_rte


def _cmd(out, model_dir, glue, *extra, task="rte"):
    return [sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "-o", str(out), "-t", task, "-m", model_dir,
            "--data-dir", glue, "-f", "bitfit", "-e", "2", "-b", "8", "--no-progress", *extra]


def _record(out):
    return json.loads((out / "results.json").read_text())


def test_weights_blown_up_in_one_step_end_failed_not_complete(tmp_path, tiny_model_dir):
    """lr 1e30: one Adam step moves every bias by ~1e30; the loss of that step is finite, the model is not."""
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=8, n_dev=8, n_test=4)
    out = tmp_path / "o"
    proc = subprocess.run(_cmd(out, tiny_model_dir, glue, "-l", "1e30", "-e", "1"), capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: run failed:") and "Traceback" not in proc.stderr
    r = _record(out)
    assert r["status"] == "failed" and "not finite" in r["failure_reason"]
    assert not (out / "pack").exists()  # nothing pretends to be a usable result
    assert "FloatingPointError" in (out / "failure.txt").read_text()


def test_a_crash_after_training_records_failed_with_the_reason(tmp_path, tiny_model_dir):
    """STS-B with a dev split of one row: Pearson/Spearman cannot be computed after the first epoch."""
    root = tmp_path / "glue" / "STS-B"
    root.mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = [f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\ta man plays .\ta person plays .\t{i % 5}.0\n" for i in range(8)]
    (root / "train.tsv").write_text(header + "".join(rows))
    (root / "dev.tsv").write_text(header + rows[0])
    out = tmp_path / "o"
    proc = subprocess.run(_cmd(out, tiny_model_dir, str(tmp_path / "glue"), task="stsb"), capture_output=True,
                          text=True)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 1:  # it started: the record says why it stopped
        assert _record(out)["status"] == "failed" and _record(out)["failure_reason"]


def test_sigterm_records_interrupted_keeps_the_checkpoint_and_resume_finishes_identically(tmp_path, tiny_model_dir):
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=1200, n_dev=16, n_test=4)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(_cmd(tmp_path / "ref", tiny_model_dir, glue, "-e", "3"), env=env, capture_output=True,
                         text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "o"
    proc = subprocess.Popen(_cmd(out, tiny_model_dir, glue, "-e", "3"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint.safetensors").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    r = _record(out)
    assert r["status"] == "interrupted" and (out / "checkpoint.safetensors").exists()
    # a killed atomic write leaves a temporary sibling: the next --resume removes it, and only it
    (out / ".results.json.abc123.tmp").write_text("half")
    (out / ".pack.k3j4h5g6").mkdir()
    resumed = subprocess.run(_cmd(out, tiny_model_dir, glue, "-e", "3", "--resume"), env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not (out / ".results.json.abc123.tmp").exists() and not (out / ".pack.k3j4h5g6").exists()
    a, b = _record(tmp_path / "ref"), _record(out)
    assert b["status"] == "complete"
    assert [(e["train_loss"], e["metrics"]) for e in a["epochs"]] == [(e["train_loss"], e["metrics"])
                                                                       for e in b["epochs"]]


def test_rerun_from_config_is_bit_identical_and_checks_the_model(tmp_path, tiny_model_dir):
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=32, n_dev=16, n_test=4)
    first = tmp_path / "first"
    assert subprocess.run(_cmd(first, tiny_model_dir, glue, "-s", "5", "--keep-checkpoint"),
                          capture_output=True).returncode == 0
    config = json.loads((first / "config.json").read_text())
    assert config["model"]["sha256"].startswith("sha256:") and config["model"]["weights"] == ["model.safetensors"]
    # the model moved: the recorded path is gone, a copy elsewhere is named explicitly
    moved = tmp_path / "moved_model"
    shutil.copytree(tiny_model_dir, moved)
    rerun = subprocess.run([sys.executable, "-m", "bitfit_experiments.rerun", str(first), "--out",
                            str(tmp_path / "again"), "--model-name", str(moved)], capture_output=True, text=True,
                           cwd=REPO_ROOT)
    assert rerun.returncode == 0 and rerun.stdout.strip().startswith("IDENTICAL"), rerun.stdout + rerun.stderr
    assert "tensors of its kept checkpoint" in rerun.stdout  # the trained tensors are compared too, byte for byte
    # a committed checkpoint whose trained tensors differ (by one ulp) while its record matches is caught
    from bitfit_experiments.rerun import checkpoint_difference
    import safetensors.torch as st
    import torch
    ckpt = st.load_file(str(first / "checkpoint.safetensors"))
    name = next(k for k in sorted(ckpt) if ckpt[k].is_floating_point() and ckpt[k].numel())
    ckpt[name].view(-1)[0] = torch.nextafter(ckpt[name].view(-1)[0], torch.tensor(float("inf")))
    st.save_file(ckpt, str(tmp_path / "again" / "0" / "checkpoint.safetensors"))
    assert checkpoint_difference(str(first), str(tmp_path / "again" / "0")) == (f"checkpoint tensor {name} differs", 0)
    # other weights under the same name are refused: one line, exit 2, nothing written
    weights = st.load_file(str(moved / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    st.save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    cfg = str(first / "config.json")
    bad = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "--config", cfg, "-o",
                          str(tmp_path / "x"), "--model-name", str(moved)], capture_output=True, text=True)
    assert bad.returncode == 2 and "weights" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    no_out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "--config", cfg],
                            capture_output=True, text=True)
    assert no_out.returncode == 2 and "-o NEW_DIR" in no_out.stderr
    # explicit flags override the saved ones
    from bitfit_experiments import cli
    c = cli.parse_config(["--config", cfg, "-o", str(tmp_path / "y"), "-e", "5"])
    assert c.epochs == 5 and c.seed == 5 and c.data_dir == glue and not c.resume


def test_portable_cpu_numerics_are_the_default_and_recorded(tmp_path, tiny_model_dir):
    """The AVX2 code paths by default (a run re-runs bit-identically on another x86-64 CPU); native on request."""
    glue = write_tiny_rte(str(tmp_path / "glue"), n_train=8, n_dev=8, n_test=4)
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    for numerics, want in (("portable", "AVX2"), ("native", None)):
        out = tmp_path / numerics
        proc = subprocess.run(_cmd(out, tiny_model_dir, glue, "-e", "1", "--cpu-numerics", numerics), env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        cpu = json.loads((out / "config.json").read_text())["cpu"]
        assert cpu["MKL_CBWR"] == want
        if want:
            assert cpu["aten_capability"] == "AVX2" and cpu["ATEN_CPU_CAPABILITY"] == "avx2"
