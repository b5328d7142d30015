"""Frozen encoder, run once: cache what the classification head reads, then train the head alone on it.

With `-f frozen` nothing under `model.base_model` trains, so every epoch of the plain loop recomputes the same encoder
forward only to feed a head of a few thousand parameters. Here the base model runs ONCE per split (eval mode, length-
sorted batches), and the head trains through the model's own forward with the base model temporarily replaced by a
stub that returns the cached outputs -- so the head's code and its dropout are exactly the model's.

What is cached, read from the base model's output (never from the model's name): every 2-D field (e.g. BERT's
pooler_output) whole, and of every sequence field (e.g. last_hidden_state) only token 0, because sequence
classification heads read the first token. `cache_features` verifies that on a few examples against the full forward
and refuses a head that reads more (e.g. a last-token head); the caller then uses the plain loop.

Difference from the official code: it runs the frozen encoder in train mode, so its dropout perturbs the features
every epoch; cached features are the eval-mode (dropout-off) ones. The head's dropout stays. Exact official
behaviour: do not cache (`--no-cache-features`).

Layer: core.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batching import Encoded, batch_order, collate
from .trainer import autocast_context, predict_logits, to_device, train_epoch


@dataclass
class Features:
    """Cached base-model outputs of a tokenized split; row i is example i. Quacks like `batching.Encoded` for
    `batch_order` (same `lengths`, so a seeded shuffle draws the same batches as the uncached run) and `labels`."""
    fields: dict             # output field -> float32 tensor on the device: (n, H) or (n, 1, H) (token 0 only)
    output_cls: type         # the ModelOutput class the base model returned, rebuilt by the stub
    labels: torch.Tensor
    lengths: np.ndarray

    def __len__(self):
        return len(self.lengths)


def collate_features(feats, indices, pad_token_id=None):
    """A head-only batch: the example indices ride in `input_ids` to the stub, which looks their features up."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    return {"input_ids": idx[:, None], "labels": feats.labels[idx]}


class _CachedBaseModel(nn.Module):
    """Stands in for model.base_model: returns the cached outputs of the requested rows, ignores everything else."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, input_ids=None, *args, **kwargs):
        rows = input_ids[:, 0]
        return self.feats.output_cls(**{k: v[rows] for k, v in self.feats.fields.items()})


@contextmanager
def cached_base_model(model, feats):
    """Swap model.base_model for the stub for the duration of the block (restored even on error)."""
    prefix = getattr(model, "base_model_prefix", "")
    original = getattr(model, prefix, None) if prefix else None
    if not isinstance(original, nn.Module) or original is not model.base_model:
        raise ValueError("feature caching needs a model with a separate base model and head "
                         "(a *ForSequenceClassification model)")
    setattr(model, prefix, _CachedBaseModel(feats))
    try:
        yield model
    finally:
        setattr(model, prefix, original)


def check_frozen_base(model):
    trainable = [n for n, p in model.base_model.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"feature caching needs a frozen base model, but {len(trainable)} of its parameters train "
                         f"(e.g. {trainable[0]})")


@torch.no_grad()
def _base_outputs(model, enc, indices_batches, *, device, pad_token_id, precision, progress=False, desc="features"):
    from tqdm.auto import tqdm
    base = model.base_model
    chunks, positions, output_cls = {}, [], None
    for indices in tqdm(indices_batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        batch = to_device(collate(enc, indices, pad_token_id), device)
        batch.pop("labels")
        width = batch["input_ids"].shape[1]
        with autocast_context(device, precision):
            out = base(**batch, return_dict=True)
        output_cls = type(out)
        for key, value in out.items():
            if not torch.is_tensor(value):
                continue  # e.g. past_key_values; heads of classification models do not read them
            if value.dim() >= 3 and value.shape[1] == width:
                value = value[:, :1]  # sequence field: the head reads token 0 only (checked in cache_features)
            chunks.setdefault(key, []).append(value.float())
        positions.extend(indices)
    fields = {}
    for key, parts in chunks.items():
        stacked = torch.cat(parts)
        ordered = torch.empty_like(stacked)
        ordered[torch.as_tensor(positions, device=stacked.device)] = stacked  # back to example order
        fields[key] = ordered
    return fields, output_cls


CHECK_EXAMPLES = 4  # examples that go through both paths before caching (see cache_features)


def cache_features(model, enc, *, batch_size, device, pad_token_id, precision="fp32", progress=True,
                   desc="features"):
    """Run the frozen base model once over a tokenized split (eval mode) and return its `Features`.

    Before the pass, the first CHECK_EXAMPLES examples go through the cached path and through the full model (both
    fp32, eval mode); if the logits differ, the head reads more than what is cached and a ValueError says so.
    """
    check_frozen_base(model)
    was_training = model.training
    model.eval()
    try:
        if len(enc):
            _check_head_reads_cached(model, enc, min(CHECK_EXAMPLES, len(enc)), device, pad_token_id)
        order = batch_order(enc.lengths, batch_size, shuffle=False, group_by_length=True)
        fields, output_cls = _base_outputs(model, enc, order, device=device, pad_token_id=pad_token_id,
                                           precision=precision, progress=progress, desc=desc)
    finally:
        model.train(was_training)
    return Features(fields, output_cls, enc.labels, np.asarray(enc.lengths))


@torch.no_grad()
def _check_head_reads_cached(model, enc, n, device, pad_token_id):
    # The n longest examples: a head that reads a later token (e.g. the last one) agrees with the first-token cache
    # on one-token examples, so short ones would prove nothing.
    picked = np.argsort(-np.asarray(enc.lengths), kind="stable")[:n].tolist()
    enc = Encoded([enc.input_ids[i] for i in picked],
                  None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in picked],
                  enc.labels[torch.as_tensor(picked, dtype=torch.long)], np.asarray(enc.lengths)[picked])
    indices = list(range(n))
    full = model(**{k: v for k, v in to_device(collate(enc, indices, pad_token_id), device).items()
                    if k != "labels"}).logits.float()
    fields, output_cls = _base_outputs(model, enc, [indices], device=device, pad_token_id=pad_token_id,
                                       precision="fp32")
    small = Features(fields, output_cls, enc.labels[:n], np.asarray(enc.lengths[:n]))
    with cached_base_model(model, small):
        cached = model(**{k: v for k, v in to_device(collate_features(small, indices), device).items()
                          if k != "labels"}).logits.float()
    if not torch.allclose(full, cached, rtol=1e-4, atol=1e-5):
        raise ValueError(f"this model's head reads more than the cached first-token / pooled outputs (max logit "
                         f"difference {float((full - cached).abs().max()):.3g}); train without feature caching")


@contextmanager
def _one_cpu_thread(device):
    """The head's ops are far below any size where intra-op threads pay; on a busy CPU every parallel region waits
    for a descheduled partner thread (measured here: a 8x2 log_softmax took ~8 ms with 2 threads), so run them
    on one thread."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_head_epoch(model, feats, optimizer, scheduler, guard, **kwargs):
    """`trainer.train_epoch` on cached features: same arguments, same return value (the mean training loss)."""
    check_frozen_base(model)
    with cached_base_model(model, feats), _one_cpu_thread(kwargs["device"]):
        return train_epoch(model, feats, optimizer, scheduler, guard, collate_fn=collate_features, **kwargs)


def predict_head_logits(model, feats, **kwargs):
    """`trainer.predict_logits` on cached features: logits in the split's order."""
    with cached_base_model(model, feats), _one_cpu_thread(kwargs["device"]):
        return predict_logits(model, feats, collate_fn=collate_features, **kwargs)
