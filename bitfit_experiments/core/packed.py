"""Padding-free batches (`--batch-layout packed`): the examples of a batch laid end to end in one row.

The batches are the padded path's own (same `batch_order`); only their layout changes. A batch of B examples with
lengths l_1..l_B becomes one row of sum(l_i) tokens, with position ids restarting at 0 per example (at
padding_idx + 1 for RoBERTa-style embeddings, as they number them) and each example's own token type ids. So every
linear layer, LayerNorm and embedding lookup -- nearly all of the FLOPs -- runs on real tokens only.

Attention must not cross examples. It goes through transformers' attention interface: for the duration of a
forward the model's attention implementation is switched to `bitfit_packed`, which scatters q/k/v of the row into a
(B, heads, max_len, d) block, calls the model's own sdpa/eager attention with a key-padding mask, and gathers the
result back into the row. Attention is the only step that sees padding (its cost is the padded path's).
A forward hook on the encoder hands the head each example's FIRST token (as a (B, 1, hidden) "sequence"), so the
model's own pooler/classifier reads what it reads on a padded batch.

Support is decided from the model's structure (an `embeddings` + `encoder` base model, a forward that takes
position_ids, sdpa/eager attention) and then checked by behaviour: a probe compares packed and padded logits on
the split's shortest and longest examples. Where either fails (decoders' last-token heads, DistilBERT, DeBERTa's
relative attention), `support` says why and the run falls back to the padded layout.

Layer: core.
"""
import contextvars
import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface

from .batching import collate
from .trainer import predict_logits, train_epoch

IMPLEMENTATION = "bitfit_packed"
INNER = ("sdpa", "eager")  # the attention implementations that packed attention wraps
PROBE_TOLERANCE = 1e-4  # relative to the largest |logit| of the fp32 probe: rounding is ~1e-6, a leak far more


@dataclass
class _Packing:
    slots: torch.Tensor   # (L,) long: token t of the row sits at slots[t] of the flattened (B, max_len) block
    valid: torch.Tensor   # (B, max_len) bool: the block's real tokens
    inner: str            # the model's own attention implementation
    calls: list           # one entry per attention call (shows that the model's attention went through here)


_ACTIVE = contextvars.ContextVar("bitfit_packed", default=None)


# ------------------------------------------------------------------------------------------------------ batches

def collate_packed(enc, indices, pad_token_id=None):
    """One batch as a single row: input_ids/position_ids/token_type_ids of shape (1, L), L = sum of the lengths,
    plus `slots` and `valid` (where each token sits in a padded block, for attention), `first` (the row offset of
    each example's first token) and `labels`. pad_token_id is unused (nothing is padded); kept for collate's
    signature."""
    lens = enc.lengths[indices]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    width = int(lens.max())
    offsets = np.concatenate([np.arange(n) for n in lens])  # position of each token inside its example
    rows = np.repeat(np.arange(len(indices)), lens)
    batch = {"input_ids": torch.as_tensor(np.concatenate([enc.input_ids[i] for i in indices]))[None],
             "position_ids": torch.from_numpy(offsets)[None],
             "slots": torch.from_numpy(rows * width + offsets),
             "valid": torch.from_numpy(np.arange(width) < lens[:, None]),
             "first": torch.from_numpy(starts)}
    if enc.token_type_ids is not None:
        batch["token_type_ids"] = torch.as_tensor(np.concatenate([enc.token_type_ids[i] for i in indices]))[None]
    batch["labels"] = enc.labels[torch.as_tensor(indices, dtype=torch.long)]
    return batch


# ------------------------------------------------------------------------------------------------------ attention

def _packed_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention of a packed row (1, heads, L, d), computed per example by the model's own implementation."""
    p = _ACTIVE.get()
    p.calls.append(1)
    batch, width = p.valid.shape

    def block(x):  # (1, heads, L, d) -> (B, heads, max_len, d), zeros where the block is padding
        rows = x[0].transpose(0, 1)
        out = rows.new_zeros((batch * width,) + rows.shape[1:]).index_copy(0, p.slots, rows)
        return out.view(batch, width, *rows.shape[1:]).transpose(1, 2)
    keep = p.valid[:, None, None, :]
    # sdpa takes a boolean keep-mask; eager adds its mask to the scores (transformers' conventions for each)
    mask = keep if p.inner == "sdpa" else torch.zeros(keep.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~keep, torch.finfo(query.dtype).min)
    out, _ = _inner_attention(module, p.inner)(module, block(query), block(key), block(value), mask, **kwargs)
    out = out.reshape((batch * width,) + out.shape[2:])  # (B, max_len, heads, d) -> the block's token rows
    return out.index_select(0, p.slots)[None], None


AttentionInterface.register(IMPLEMENTATION, _packed_attention)


def _inner_attention(module, name):
    """The function the module itself would call: transformers' registered one, or (eager) its modeling file's
    own `eager_attention_forward`, as the attention modules fall back to it."""
    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[name]


@contextmanager
def _packed_forward(model, slots, valid, first):
    """Within: the model's attention is per-example on packed rows, and its encoder returns each example's first
    token only (so that the head, which reads token 0, reads every example's own)."""
    config = model.config
    packing = _Packing(slots, valid, config._attn_implementation, [])
    token = _ACTIVE.set(packing)

    def first_tokens(_module, _args, output):
        hidden = output[0]
        picked = hidden[0].index_select(0, first)[:, None]
        if isinstance(output, tuple):
            return (picked,) + tuple(output[1:])
        output["last_hidden_state"] = picked
        return output
    handle = model.base_model.encoder.register_forward_hook(first_tokens)
    config._attn_implementation = IMPLEMENTATION
    try:
        yield packing
    finally:
        config._attn_implementation = packing.inner
        handle.remove()
        _ACTIVE.reset(token)


class PackedModel(torch.nn.Module):
    """The model, fed packed batches: `PackedModel(model)(**collate_packed(...)).logits` has one row per example.
    Its parameters are the model's; train()/eval() reach it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        offset = getattr(model.base_model.embeddings, "padding_idx", None)
        # RoBERTa-style embeddings number positions from padding_idx + 1 (what they compute from a padded batch)
        self.position_offset = 0 if offset is None else offset + 1
        self.attention_calls = 0

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids, position_ids, slots, valid, first, token_type_ids=None):
        with _packed_forward(self.model, slots, valid, first) as packing:
            out = self.model(input_ids=input_ids, position_ids=position_ids + self.position_offset,
                             token_type_ids=token_type_ids)
        self.attention_calls = len(packing.calls)  # 0: the model's attention bypassed the packed one
        return out


def train_epoch_packed(model, enc, *args, **kwargs):
    """trainer.train_epoch on packed batches (same batch order, same steps)."""
    kwargs["collate_fn"] = collate_packed
    return train_epoch(PackedModel(model), enc, *args, **kwargs)


def predict_logits_packed(model, enc, **kwargs):
    """trainer.predict_logits on packed batches; logits in the split's original order."""
    kwargs["collate_fn"] = collate_packed
    return predict_logits(PackedModel(model), enc, **kwargs)


# ------------------------------------------------------------------------------------------------------ support

def structural_gap(model):
    """Why the model's structure cannot take packed rows (a short phrase), or None."""
    base = model.base_model
    if not (hasattr(base, "embeddings") and isinstance(getattr(base, "encoder", None), torch.nn.Module)):
        return "the model has no embeddings + encoder base model"
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return "the model's forward takes no position_ids"
    if model.config._attn_implementation not in INNER:
        return f"attention implementation {model.config._attn_implementation!r} is not one of {', '.join(INNER)}"
    return None


def support(model, enc, pad_token_id):
    """None where packed batches give this model the padded batches' logits, else why not (a short phrase).
    Probes the split's shortest and longest examples in eval mode (no RNG is drawn); the training mode is kept."""
    gap = structural_gap(model)
    if gap is not None or len(enc) < 2:
        return gap
    probe = [int(np.argmin(enc.lengths)), int(np.argmax(enc.lengths))]
    if probe[0] == probe[1]:
        probe = [0, 1]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            padded = _logits(model, collate(enc, probe, pad_token_id), device)
            wrapped = PackedModel(model)
            packed = _logits(wrapped, collate_packed(enc, probe), device)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        return f"a packed forward fails ({type(e).__name__})"
    finally:
        model.train(was_training)
    if not wrapped.attention_calls:
        return "its attention does not go through transformers' attention interface"
    if packed.shape != padded.shape or (packed - padded).abs().max() > PROBE_TOLERANCE * padded.abs().max() + 1e-12:
        return "packed and padded logits differ (a head that reads more than the first token, or relative attention)"
    return None


def _logits(model, batch, device):
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    return model(**batch).logits.float().cpu()

