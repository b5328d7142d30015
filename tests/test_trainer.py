"""The training loop: the fast data paths train to the same parameters as the official ones, BitFit moves only
biases and the head, and a diverging loss stops the run."""
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T

from bitfit_experiments.core import features, selection
from bitfit_experiments.core.batching import collate, encode
from bitfit_experiments.core.trainer import (build_optimizer, build_scheduler, epoch_generator, predict_logits,
                                             train_epoch)
from tests.conftest import make_tiny_tokenizer
from tests.model_configs import tiny_bert

CPU = torch.device("cpu")
WORDS = "the a man woman cat dog sat on mat good bad movie film it was very not".split()


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    text_a = [" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(n)]
    text_b = [" ".join(rng.choice(WORDS, rng.integers(1, 6))) for _ in range(n)]
    return pd.DataFrame({"idx": range(n), "text_a": text_a, "text_b": text_b,
                         "label": (rng.random(n) < 0.5).astype(np.int64)})


def _model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_bert(num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                    max_position_embeddings=132)
    return T.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa")


def _train(model, enc, *, epochs=1, seed=0, **kw):
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(trainable, "adamw", 1e-2)
    sched = build_scheduler(opt, "constant", 1)
    losses = []
    epoch_fn = kw.pop("epoch_fn", train_epoch)
    for epoch in range(epochs):
        gen = epoch_generator(seed, epoch + 1)  # the run's shuffle of epoch e
        losses.append(epoch_fn(model, enc, opt, sched, None, batch_size=4, generator=gen, device=CPU, pad_token_id=0,
                               is_regression=False, trainable_params=trainable, progress=False, **kw))
    return losses


def test_dynamic_padding_trains_to_the_same_parameters_as_padding_to_128():
    tok = make_tiny_tokenizer()
    enc = encode(tok, _data(), 128)
    runs = []
    for collate_fn in (collate, partial(collate, pad_to=128)):
        model = _model()
        selection.apply(model, selection.select(model, "bitfit", ["all"], None, 0))
        losses = _train(model, enc, epochs=2, group_by_length=False, collate_fn=collate_fn)
        runs.append((losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, params_a), (loss_b, params_b) = runs
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bitfit_moves_only_biases_and_head():
    tok = make_tiny_tokenizer()
    enc = encode(tok, _data(), 128)
    model = _model(dropout=0.1)
    sel = selection.select(model, "bitfit", ["all"], None, 0)
    selection.apply(model, sel)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, = _train(model, enc)
    assert np.isfinite(loss)
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == p.requires_grad, name  # every trainable tensor moved; nothing else did
        assert p.requires_grad == (name in sel.trainable)


def test_cached_frozen_epoch_equals_the_full_loop_without_dropout():
    """With dropout 0 the official train-mode encoder equals eval mode, so caching must not change anything."""
    tok = make_tiny_tokenizer()
    enc = encode(tok, _data(), 128)
    results = []
    for cached in (False, True):
        model = _model()
        selection.apply(model, selection.select(model, "frozen", ["all"], None, 0))
        if cached:
            feats = features.cache_features(model, enc, batch_size=5, device=CPU, pad_token_id=0, progress=False)
            losses = _train(model, feats, epochs=3, epoch_fn=features.train_head_epoch)
            logits = features.predict_head_logits(model, feats, batch_size=7, device=CPU, pad_token_id=0,
                                                  progress=False)
        else:
            losses = _train(model, enc, epochs=3)
            logits = predict_logits(model, enc, batch_size=7, device=CPU, pad_token_id=0, progress=False)
        results.append((losses, logits))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)
    assert results[0][0][-1] < results[0][0][0]  # it does learn something


def test_prediction_order_does_not_depend_on_length_sorting():
    tok = make_tiny_tokenizer()
    enc = encode(tok, _data(), 128)
    model = _model()
    kw = dict(batch_size=5, device=CPU, pad_token_id=0, progress=False)
    sorted_ = predict_logits(model, enc, **kw)
    plain = predict_logits(model, enc, sort_by_length=False, **kw)
    one_by_one = np.concatenate([predict_logits(model, encode(tok, _data().iloc[[i]], 128), **kw)
                                 for i in range(len(enc))])
    np.testing.assert_allclose(sorted_, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sorted_, one_by_one, rtol=1e-4, atol=1e-5)
    assert not np.allclose(sorted_[0], sorted_[1])  # distinct rows, so a permutation would be caught


def test_non_finite_loss_stops_the_epoch():
    tok = make_tiny_tokenizer()
    enc = encode(tok, _data(), 128)
    model = _model()
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="learning-rate"):
        _train(model, enc)
