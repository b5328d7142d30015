"""A whole run through the CLI on a tiny random BERT and a tiny RTE-format dataset: outputs, evaluator round trip,
determinism, NaN handling, and the trainable set surviving training (frozen weights bit-identical)."""
import json
import os
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch

from bitfit_experiments import cli

from bitfit_experiments.core import data
from bitfit_experiments.artifacts.evaluator import GLUEEvaluator
from bitfit_experiments.experiment import run


def tiny_args(out, model_dir, glue_dir, *extra):
    return cli.parse_config(
        ["-o", str(out), "-t", "rte", "-m", model_dir, "--data-dir", glue_dir, "-e", "2", "-b", "8",
         "--no-progress", *extra])


@pytest.mark.parametrize("ftype", ["bitfit", "full_ft", "frozen", "rand_uniform", "rand_row_col"])
def test_every_type_runs_and_writes_outputs(tmp_path, tiny_model_dir, tiny_glue_dir, ftype):
    args = tiny_args(tmp_path / "o", tiny_model_dir, tiny_glue_dir, "-f", ftype, "-l", "1e-3")
    results = run(args)
    out = tmp_path / "o"
    assert results.status == "complete"
    for name in ["config.json", "params.json", "results.json", "learning_curves.png", "pack/pack.safetensors",
                 "pack/manifest.json"]:
        assert (out / name).stat().st_size > 0, name
    assert (out / "bias_changes.png").exists() == (ftype == "bitfit")
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "complete" and len(saved["epochs"]) == 2
    assert saved["cached_features"] == (ftype == "frozen")
    # best = the first argmax of the recorded headline metric on the first dev split; last = the final epoch
    scores = [e["metrics"][saved["eval_splits"][0]][saved["headline_metric"]] for e in saved["epochs"]]
    best = int(np.argmax(scores))
    assert saved["best_epoch"] == saved["epochs"][best]["epoch"] == best + 1 and saved["last_epoch"] == 2
    assert saved["best"] == saved["epochs"][best]["metrics"] and saved["last"] == saved["epochs"][-1]["metrics"]
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["fine_tune_type"] == ftype and config["versions"]["torch"]
    assert not (out / "checkpoint.safetensors").exists()  # removed once complete


def test_frozen_weights_bit_identical_after_training(tmp_path, tiny_model_dir, tiny_glue_dir):
    """BitFit on the CLI path: every weight outside the bias set is bit-identical to the base after training."""
    from transformers import AutoModel
    args = tiny_args(tmp_path / "o", tiny_model_dir, tiny_glue_dir, "-f", "bitfit", "--bias-terms", "query",
                     "intermediate", "-l", "1e-2", "--save-evaluator")
    run(args)
    base = dict(AutoModel.from_pretrained(tiny_model_dir).named_parameters())
    trained = dict(GLUEEvaluator.load(str(tmp_path / "o" / "evaluator")).model.base_model.named_parameters())
    changed = {n for n in base if not torch.equal(base[n], trained[n])}
    assert changed, "training changed nothing"
    allowed = {n for n in base if n.endswith(("attention.self.query.bias", "intermediate.dense.bias", "pooler.dense.bias"))}
    assert changed <= allowed
    assert any("query.bias" in n for n in changed) and any("intermediate.dense.bias" in n for n in changed)
    # the heatmap's numbers: trained families moved, the others exactly not
    fam = json.loads((tmp_path / "o" / "bias_changes.json").read_text())["families"]
    assert all(v > 0 for v in fam["query"] + fam["intermediate"])
    assert all(v == 0.0 for f in ("key", "value", "output", "output_layernorm") for v in fam[f])


def test_evaluator_round_trip_predicts_identically(tmp_path, tiny_model_dir, tiny_glue_dir):
    args = tiny_args(tmp_path / "o", tiny_model_dir, tiny_glue_dir, "-f", "bitfit", "--save-evaluator", "--predict-test")
    results = run(args)
    dev = data.load_split("rte", "dev", tiny_glue_dir)
    loaded = GLUEEvaluator.load(str(tmp_path / "o" / "evaluator"))
    assert loaded.evaluate(dev) == results.last["dev"]  # the restored weights are the last epoch's, exactly
    assert loaded.history == [asdict(e) for e in results.epochs] and loaded.task.name == "rte"
    # the server file holds exactly what the restored evaluator predicts on the test split
    test = data.load_split("rte", "test", tiny_glue_dir)
    server = pd.read_csv(tmp_path / "o" / "test_predictions" / "RTE.tsv", sep="\t")
    labels = np.array(["entailment", "not_entailment"])[loaded.predict(test).argmax(-1)]
    assert list(server["prediction"]) == list(labels) and list(server["index"]) == list(test["idx"])


def test_same_seed_same_metrics_other_seed_differs(tmp_path, tiny_model_dir, tiny_glue_dir):
    a = run(tiny_args(tmp_path / "a", tiny_model_dir, tiny_glue_dir, "-f", "rand_uniform", "-s", "3"))
    b = run(tiny_args(tmp_path / "b", tiny_model_dir, tiny_glue_dir, "-f", "rand_uniform", "-s", "3"))
    c = run(tiny_args(tmp_path / "c", tiny_model_dir, tiny_glue_dir, "-f", "rand_uniform", "-s", "4"))
    strip = lambda r: [(e.train_loss, e.metrics) for e in r.epochs]
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_non_finite_loss_stops_the_run_as_failed(tmp_path, tiny_model_dir, tiny_glue_dir):
    args = tiny_args(tmp_path / "o", tiny_model_dir, tiny_glue_dir, "-f", "full_ft", "-l", "1e20", "--optimizer", "adam")
    assert run(args).status == "failed"
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["status"] == "failed" and "loss became" in saved["failure_reason"]


def test_list_params_prints_report_and_writes_nothing(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing lands in the working directory either
    out = tmp_path / "o"
    cli.main(["-o", str(out), "-t", "rte", "-m", tiny_model_dir, "-f", "bitfit", "--bias-terms", "query",
              "--list-params"])
    text = capsys.readouterr().out
    assert "b_q" in text and "paper %Param" in text
    assert not out.exists()  # the -o it was given is neither created nor locked
    assert not os.listdir(tmp_path)


def test_pad_to_max_length_pads_every_training_and_eval_batch(tmp_path, tiny_model_dir, tiny_glue_dir, monkeypatch):
    from bitfit_experiments.core import batching
    from bitfit_experiments import experiment
    widths = []

    def recording_collate(enc, indices, pad_token_id, pad_to=None):
        batch = batching.collate(enc, indices, pad_token_id, pad_to=pad_to)
        widths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(experiment, "collate", recording_collate)
    args = tiny_args(tmp_path / "o", tiny_model_dir, tiny_glue_dir, "-f", "bitfit", "--max-seq-length", "40",
                     "--pad-to-max-length", "--no-group-by-length", "--eval-train", "--eval-batch-size", "8")
    assert run(args).status == "complete"
    # 2 epochs x (8 training batches + 8 train-eval + 3 dev batches), all 40 wide (the tiny data is shorter)
    assert widths == [40] * (2 * (8 + 8 + 3))
    widths.clear()
    run(tiny_args(tmp_path / "p", tiny_model_dir, tiny_glue_dir, "-f", "bitfit", "--max-seq-length", "40"))
    assert widths == []  # the default path pads each batch to its own longest sequence


@pytest.mark.parametrize("ftype", ["bitfit", "full_ft"])
def test_evaluating_the_training_set_leaves_training_unchanged(tmp_path, tiny_model_dir, tiny_glue_dir, ftype):
    """--eval-train only adds a "train" split to each epoch's evaluation: the same losses, dev metrics and trained
    weights as without it (evaluation draws no random numbers and the data order depends only on seed and epoch), so
    a committed run can be re-run with --eval-train to measure its generalization gap without changing it."""
    from safetensors.torch import load_file
    base = tiny_args(tmp_path / "a", tiny_model_dir, tiny_glue_dir, "-f", ftype, "-l", "1e-3", "--keep-checkpoint")
    plain = run(base)
    withtrain = run(tiny_args(tmp_path / "b", tiny_model_dir, tiny_glue_dir, "-f", ftype, "-l", "1e-3",
                              "--keep-checkpoint", "--eval-train"))
    assert [e.train_loss for e in plain.epochs] == [e.train_loss for e in withtrain.epochs]
    assert [e.metrics["dev"] for e in plain.epochs] == [e.metrics["dev"] for e in withtrain.epochs]
    assert all("train" in e.metrics and "train" not in p.metrics for e, p in zip(withtrain.epochs, plain.epochs))
    a, b = (load_file(str(tmp_path / d / "checkpoint.safetensors")) for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
