"""The fast paths compute the same thing as the official pipeline's.

1. Dynamic padding: a batch padded to its longest sequence and the same batch padded to 128 (as the official code
   does) give the same loss and the same bias gradients -- padding is masked out.
2. Cached frozen features: the head trained on cached base-model outputs gets the same gradients as through the
   full forward pass in eval mode (the official encoder runs in train mode; with dropout off they must agree).
"""
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from transformers.modeling_outputs import SequenceClassifierOutput

from bitfit_experiments.core import features, selection
from bitfit_experiments.core.batching import collate, encode
from bitfit_experiments.core.trainer import compute_loss, predict_logits
from tests.conftest import make_tiny_tokenizer
from tests.model_configs import tiny_bert, tiny_roberta

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=132)

SENTENCES = pd.DataFrame({
    "idx": range(6),
    "text_a": ["the man is playing .", "a cat sat on the mat , a dog sat on the mat .", "it was good !",
               "someone", "the film was very bad", "a woman plays"],
    "text_b": ["a man plays", "the cat sat", "the movie was not good", "something", "it was bad ?", "is it good"],
    "label": np.array([0, 1, 1, 0, 1, 0], dtype=np.int64),
})


def _model(config, seed=0):
    torch.manual_seed(seed)
    return T.AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def _setup(arch):
    """(model, tokenizer) pairs: BERT with segment ids, RoBERTa without (its position ids depend on padding)."""
    if arch == "bert":
        return _model(tiny_bert(num_labels=2, **NO_DROPOUT)), make_tiny_tokenizer()
    tok = make_tiny_tokenizer(token_type_ids=False)
    return _model(tiny_roberta(num_labels=2, pad_token_id=tok.pad_token_id, **NO_DROPOUT)), tok


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    batch = dict(batch)
    labels = batch.pop("labels")
    loss = compute_loss(model(**batch).logits, labels, is_regression=False)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_dynamic_padding_matches_padding_to_128(arch):
    model, tok = _setup(arch)
    selection.apply(model, selection.select(model, "bitfit", ["all"], None, 0))
    model.train()  # dropout is 0 in this config, so train mode is deterministic
    enc = encode(tok, SENTENCES, 128)
    indices = [1, 0, 3, 5]
    dynamic = collate(enc, indices, tok.pad_token_id)
    padded = collate(enc, indices, tok.pad_token_id, pad_to=128)
    assert dynamic["input_ids"].shape[1] == enc.lengths[indices].max() < 128 == padded["input_ids"].shape[1]
    loss_d, grads_d = _loss_and_grads(model, dynamic)
    loss_p, grads_p = _loss_and_grads(model, padded)
    torch.testing.assert_close(loss_d, loss_p, rtol=1e-5, atol=1e-6)
    bias_names = [n for n in grads_d if n.endswith("bias")]
    assert set(grads_d) == set(grads_p) and len(bias_names) > 10
    assert not any(n.endswith("weight") and "classifier" not in n for n in grads_d)  # BitFit: no weight grads
    for name in grads_d:
        torch.testing.assert_close(grads_d[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
    # Sanity: the comparison can fail -- one more real token changes the loss.
    changed = dict(dynamic, attention_mask=dynamic["attention_mask"].clone())
    changed["attention_mask"][2, enc.lengths[3]] = 1
    assert not torch.allclose(_loss_and_grads(model, changed)[0], loss_d)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_cached_features_give_the_full_forward_head_gradients(arch):
    model, tok = _setup(arch)
    selection.apply(model, selection.select(model, "frozen", ["all"], None, 0))
    enc = encode(tok, SENTENCES, 128)
    feats = features.cache_features(model, enc, batch_size=4, device=torch.device("cpu"),
                                    pad_token_id=tok.pad_token_id, progress=False)
    model.eval()
    indices = [4, 1, 2]
    loss_full, grads_full = _loss_and_grads(model, collate(enc, indices, tok.pad_token_id))
    with features.cached_base_model(model, feats):
        loss_cached, grads_cached = _loss_and_grads(model, features.collate_features(feats, indices))
    assert set(grads_full) == set(grads_cached) and grads_full  # the head's parameters only
    assert not any(n.startswith(model.base_model_prefix + ".") for n in grads_full)
    torch.testing.assert_close(loss_cached, loss_full, rtol=1e-5, atol=1e-6)
    for name in grads_full:
        torch.testing.assert_close(grads_cached[name], grads_full[name], rtol=1e-4, atol=1e-6, msg=name)
    # The real base model is back after the block, and whole-split predictions agree.
    assert isinstance(model.base_model, T.PreTrainedModel)
    kw = dict(batch_size=4, device=torch.device("cpu"), pad_token_id=tok.pad_token_id, progress=False)
    np.testing.assert_allclose(features.predict_head_logits(model, feats, **kw), predict_logits(model, enc, **kw),
                               rtol=1e-4, atol=1e-5)


def test_cached_head_keeps_its_dropout():
    tok = make_tiny_tokenizer()
    model = _model(tiny_bert(num_labels=2, hidden_dropout_prob=0.5))
    selection.apply(model, selection.select(model, "frozen", ["all"], None, 0))
    enc = encode(tok, SENTENCES, 128)
    feats = features.cache_features(model, enc, batch_size=8, device=torch.device("cpu"),
                                    pad_token_id=tok.pad_token_id, progress=False)
    batch = features.collate_features(feats, list(range(6)))
    batch.pop("labels")
    with features.cached_base_model(model, feats):
        model.train()
        a, b = model(**batch).logits, model(**batch).logits
        model.eval()
        c, d = model(**batch).logits, model(**batch).logits
    assert not torch.allclose(a, b) and torch.equal(c, d)


class _MeanPoolHead(T.BertPreTrainedModel):
    """A head that averages every token: caching token 0 would be wrong, and cache_features must say so."""
    base_model_prefix = "bert"

    def __init__(self, config):
        super().__init__(config)
        self.bert = T.BertModel(config)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kw):
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True)
        return SequenceClassifierOutput(logits=self.classifier(out[0].mean(1)))


def test_cache_refuses_a_head_that_reads_more_than_token_0_and_a_trainable_base():
    tok = make_tiny_tokenizer()
    enc = encode(tok, SENTENCES, 128)
    torch.manual_seed(0)
    odd = _MeanPoolHead(tiny_bert(num_labels=2, **NO_DROPOUT))
    for p in odd.bert.parameters():
        p.requires_grad_(False)
    kw = dict(batch_size=4, device=torch.device("cpu"), pad_token_id=tok.pad_token_id, progress=False)
    with pytest.raises(ValueError, match="reads more"):
        features.cache_features(odd, enc, **kw)
    bitfit, _ = _setup("bert")
    selection.apply(bitfit, selection.select(bitfit, "bitfit", ["all"], None, 0))
    with pytest.raises(ValueError, match="frozen base model"):
        features.cache_features(bitfit, enc, **kw)


def test_padded_collate_is_a_drop_in_for_the_official_pipeline():
    """partial(collate, pad_to=128) is how the benchmark emulates the official data path."""
    model, tok = _setup("bert")
    enc = encode(tok, SENTENCES, 128)
    kw = dict(batch_size=4, device=torch.device("cpu"), pad_token_id=tok.pad_token_id, progress=False)
    official = predict_logits(model, enc, collate_fn=partial(collate, pad_to=128), sort_by_length=False, **kw)
    np.testing.assert_allclose(predict_logits(model, enc, **kw), official, rtol=1e-4, atol=1e-5)
