"""Tokenize a split once, then cut it into padded batches -- the per-step path, kept lean.

A split is tokenized in one batched call without padding (`encode`); each batch is padded only to its own longest
sequence (`collate`). With length grouping (`batch_order`) similar lengths share a batch, so little compute is spent
on padding. `pad_to=128` in collate reproduces the official BitFit pipeline, which pads every sequence to 128.

Layer: core.
"""
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError


@dataclass
class Encoded:
    """A tokenized split. Row i of every field is example i of the DataFrame it came from."""
    input_ids: list          # list[list[int]], unpadded
    token_type_ids: list | None  # None for tokenizers without segment ids (RoBERTa)
    labels: torch.Tensor     # long class ids (-1 unlabeled), or float32 scores for regression (NaN unlabeled)
    lengths: np.ndarray      # int64 token count per example

    def __len__(self):
        return len(self.input_ids)


def encode(tokenizer, df, max_seq_length):
    """Tokenize text_a (and text_b for pair tasks) with truncation to max_seq_length, no padding."""
    text_a = [str(t) for t in df["text_a"].tolist()]
    text_b = df["text_b"].tolist() if "text_b" in df else [None] * len(text_a)
    pair = any(t is not None for t in text_b)
    if pair:
        text_b = ["" if t is None else str(t) for t in text_b]
    labels = np.asarray(df["label"].to_numpy())
    labels = torch.as_tensor(labels.astype(np.float32 if np.issubdtype(labels.dtype, np.floating) else np.int64))
    if not text_a:
        return Encoded([], None, labels, np.zeros(0, dtype=np.int64))
    # Truncation=True is 'longest_first' for pairs: the longer text loses tokens first, as in the official code.
    out = tokenizer(text_a, text_b if pair else None, truncation=True, max_length=max_seq_length)
    input_ids = out["input_ids"]
    token_type_ids = out["token_type_ids"] if "token_type_ids" in out else None
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    return Encoded(input_ids, token_type_ids, labels, lengths)


def batch_order(lengths, batch_size, shuffle, generator=None, group_by_length=False):
    """The batches of one pass, as lists of example indices.

    Evaluation (shuffle=False): sequential; with group_by_length the examples are sorted by length, longest first
    (the largest batch comes first, so an out-of-memory shows at once). The caller must put the predictions back
    in example order, e.g. `result[np.concatenate(batches)] = outputs`.
    Training (shuffle=True): torch.randperm(generator); with group_by_length, Hugging Face's LengthGroupedSampler:
    the permutation is cut into megabatches of 50 * batch_size (fewer for tiny sets), each sorted by length
    descending, and the longest example is swapped to the front so the first batch is the largest.
    The last batch may be smaller (nothing is dropped).
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    lengths = np.asarray(lengths)
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable") if group_by_length else np.arange(n)
        order = order.tolist()
    elif not group_by_length:
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = _length_grouped_indices(lengths, batch_size, generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _length_grouped_indices(lengths, batch_size, generator):
    # transformers.trainer_pt_utils.get_length_grouped_indices, written out (same RNG draws, same result).
    mega_batch_mult = max(1, min(len(lengths) // (batch_size * 4), 50))
    megabatch_size = mega_batch_mult * batch_size
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatches = [sorted(indices[i:i + megabatch_size], key=lambda j: lengths[j], reverse=True)
                   for i in range(0, len(indices), megabatch_size)]
    if not megabatches:
        return []
    maxima = [lengths[mb[0]] for mb in megabatches]
    k = int(np.argmax(maxima))
    megabatches[0][0], megabatches[k][0] = megabatches[k][0], megabatches[0][0]
    return [i for mb in megabatches for i in mb]


def collate(enc, indices, pad_token_id, pad_to=None):
    """Tensors for one batch, right-padded to the longest sequence in it (or to `pad_to`, if longer)."""
    lens = enc.lengths[indices]
    width = int(lens.max()) if len(lens) else 0
    if pad_to is not None:
        width = max(width, pad_to)
    input_ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    token_type = np.zeros((len(indices), width), dtype=np.int64) if enc.token_type_ids is not None else None
    for row, i in enumerate(indices):
        input_ids[row, :lens[row]] = enc.input_ids[i]
        if token_type is not None:
            token_type[row, :lens[row]] = enc.token_type_ids[i]
    batch = {"input_ids": torch.from_numpy(input_ids),
             "attention_mask": torch.from_numpy((np.arange(width) < lens[:, None]).astype(np.int64))}
    if token_type is not None:
        batch["token_type_ids"] = torch.from_numpy(token_type)
    batch["labels"] = enc.labels[torch.as_tensor(indices, dtype=torch.long)]
    return batch
