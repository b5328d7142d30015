"""Nothing is unpickled: evaluators, task packs and resume checkpoints load from safetensors + JSON, and remote
code is never enabled when loading a model."""
import pickle

import pytest
import torch

from bitfit_experiments import cli

from bitfit_experiments.artifacts import packs
from bitfit_experiments.artifacts.evaluator import GLUEEvaluator
from bitfit_experiments.experiment import run


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_run_resume_evaluator_and_pack_never_unpickle(tmp_path, tiny_model_dir, tiny_glue_dir, no_unpickling,
                                                      monkeypatch):
    import transformers
    seen = []
    original = transformers.AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))

    out = tmp_path / "o"
    argv = ["-o", str(out), "-t", "rte", "-m", tiny_model_dir, "--data-dir", tiny_glue_dir, "-f", "bitfit", "-e", "2",
            "--no-progress", "--save-evaluator"]
    # Keep the epoch-1 checkpoint and mark the run unfinished, as if it had been killed in epoch 2 ...
    monkeypatch.setattr("bitfit_experiments.experiment.remove_checkpoint", lambda out_dir: None)
    run(cli.parse_config(argv))
    results_path = out / "results.json"
    results_path.write_text(results_path.read_text().replace('"status": "complete"', '"status": "running"'))
    # ... then resume it: the checkpoint is read back with safetensors.
    results = run(cli.parse_config(argv + ["--resume"]))
    assert results.status == "complete" and results.resumed_after_epochs == [1]
    GLUEEvaluator.load(str(out / "evaluator"))            # evaluator: safetensors + JSON
    packs.load(tiny_model_dir, str(out / "pack"))         # pack: safetensors + JSON
    assert seen and not any(seen), "trust_remote_code was turned on"
