"""The frozen-feature probe reads the three read-outs of one forward pass, in split order, and scores them."""
import numpy as np
import torch

from bitfit_experiments.core import data
from bitfit_experiments.core.batching import collate, encode
from bitfit_experiments.core.model import load_model, load_tokenizer
from bitfit_experiments.report import probe


def test_readouts_are_the_pooler_the_first_token_and_the_masked_mean(tiny_model_dir, tiny_glue_dir):
    task = data.get_task("rte")
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, task).eval()
    enc = encode(tok, data.load_split("rte", "dev", tiny_glue_dir), 128)
    feats = probe.features(model, enc, tok.pad_token_id, batch_size=5)  # length-sorted batches, rows in split order
    for i in (0, 7, len(enc) - 1):  # each example alone: no padding at all
        b = collate(enc, [i], tok.pad_token_id)
        b.pop("labels")
        with torch.no_grad():
            o = model.base_model(**b)
        assert np.allclose(feats["pooler"][i], o.pooler_output[0].numpy(), atol=1e-5)
        assert np.allclose(feats["first token"][i], o.last_hidden_state[0, 0].numpy(), atol=1e-5)
        assert np.allclose(feats["mean of tokens"][i], o.last_hidden_state[0].mean(0).numpy(), atol=1e-5)


def test_probe_scores_a_separable_readout_perfectly_and_noise_at_chance():
    task = data.get_task("sst2")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = np.c_[y * 4.0 - 2.0 + rng.normal(0, 0.1, 200), rng.normal(size=(200, 3))]
    assert probe.probe_score(task, x[:100], y[:100], x[100:], y[100:]) == 1.0
    noise = rng.normal(size=(200, 4))
    assert probe.probe_score(task, noise[:100], y[:100], noise[100:], y[100:]) < 0.7
