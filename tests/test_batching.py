"""Tokenize-once + per-batch padding: shapes, masks, orders, and equality with Hugging Face's length grouping."""
import numpy as np
import pandas as pd
import torch

from bitfit_experiments.core.batching import Encoded, batch_order, collate, encode

PAIRS = pd.DataFrame({
    "idx": range(4),
    "text_a": ["The man is playing.", "A cat sat on the mat, a dog sat on the mat.", "It was good.", "Someone"],
    "text_b": ["A man plays.", "The cat sat.", "The film was very bad!", "something"],
    "label": np.array([0, 1, 1, 0], dtype=np.int64),
})


def test_encode_pairs_matches_tokenizer(tiny_tokenizer):
    enc = encode(tiny_tokenizer, PAIRS, max_seq_length=12)
    assert len(enc) == 4 and enc.labels.dtype == torch.long and enc.labels.tolist() == [0, 1, 1, 0]
    for i in range(4):
        ref = tiny_tokenizer(PAIRS.text_a[i], PAIRS.text_b[i], truncation=True, max_length=12)
        assert enc.input_ids[i] == ref["input_ids"] and enc.token_type_ids[i] == ref["token_type_ids"]
        assert enc.lengths[i] == len(ref["input_ids"]) <= 12
    assert enc.lengths[1] == 12  # truncated (longest_first)
    assert enc.token_type_ids[0][-1] == 1 and enc.token_type_ids[0][0] == 0


def test_encode_single_sentence_and_regression(tiny_tokenizer):
    df = pd.DataFrame({"idx": [0, 1], "text_a": ["the cat", "a dog sat"], "text_b": [None, None],
                       "label": np.array([1.5, np.nan], dtype=np.float32)})
    enc = encode(tiny_tokenizer, df, 128)
    assert enc.input_ids[0] == [tiny_tokenizer.cls_token_id, *tiny_tokenizer.convert_tokens_to_ids(["the", "cat"]),
                                tiny_tokenizer.sep_token_id]
    assert set(enc.token_type_ids[1]) == {0}  # no second segment
    assert enc.labels.dtype == torch.float32 and enc.labels[0] == 1.5 and torch.isnan(enc.labels[1])
    empty = encode(tiny_tokenizer, df.iloc[:0], 128)
    assert len(empty) == 0 and batch_order(empty.lengths, 4, shuffle=False) == []


def test_encode_without_token_type_ids(tiny_tokenizer_no_segments):
    enc = encode(tiny_tokenizer_no_segments, PAIRS, 128)
    assert enc.token_type_ids is None
    batch = collate(enc, [0, 1], pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_collate_pads_to_longest(tiny_tokenizer):
    enc = encode(tiny_tokenizer, PAIRS, 128)
    batch = collate(enc, [2, 0], pad_token_id=tiny_tokenizer.pad_token_id)
    width = max(enc.lengths[2], enc.lengths[0])
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"].dtype == torch.long
    for row, i in enumerate([2, 0]):
        n = enc.lengths[i]
        assert batch["input_ids"][row, :n].tolist() == enc.input_ids[i]
        assert batch["input_ids"][row, n:].eq(tiny_tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["token_type_ids"][row].tolist() == enc.token_type_ids[i] + [0] * (width - n)
    assert batch["labels"].tolist() == [1, 0]


def test_collate_pad_to_and_pad_id():
    enc = Encoded([[5, 6, 7], [5]], [[0, 0, 1], [0]], torch.tensor([0.5, 2.0]), np.array([3, 1]))
    batch = collate(enc, [0, 1], pad_token_id=9, pad_to=8)
    assert batch["input_ids"].tolist() == [[5, 6, 7] + [9] * 5, [5] + [9] * 7]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1] and batch["input_ids"].shape == (2, 8)
    assert batch["labels"].dtype == torch.float32


def test_eval_order():
    lengths = np.array([3, 9, 1, 9, 5])
    assert batch_order(lengths, 2, shuffle=False) == [[0, 1], [2, 3], [4]]
    grouped = batch_order(lengths, 2, shuffle=False, group_by_length=True)
    assert grouped == [[1, 3], [4, 0], [2]]  # longest first, ties kept in order
    # The caller restores example order from the concatenated batches.
    outputs = np.concatenate([lengths[b] * 10 for b in grouped])
    restored = np.empty_like(outputs)
    restored[np.concatenate(grouped)] = outputs
    assert restored.tolist() == (lengths * 10).tolist()


def test_train_order_is_seeded_permutation():
    lengths = np.arange(37)
    a = batch_order(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    b = batch_order(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    c = batch_order(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(4))
    assert a == b != c
    assert [len(x) for x in a] == [8, 8, 8, 8, 5]
    assert sum(a, []) == torch.randperm(37, generator=torch.Generator().manual_seed(3)).tolist()


def test_length_grouping_matches_huggingface():
    from transformers.trainer_pt_utils import get_length_grouped_indices
    rng = np.random.RandomState(0)
    for n, bs in [(1000, 16), (50, 4), (7, 16), (3001, 32)]:
        lengths = rng.randint(5, 128, size=n).tolist()
        ours = batch_order(lengths, bs, shuffle=True, generator=torch.Generator().manual_seed(n),
                           group_by_length=True)
        ref = get_length_grouped_indices(lengths, bs, generator=torch.Generator().manual_seed(n))
        assert sum(ours, []) == ref
        assert sorted(ref) == list(range(n)) and all(len(b) == bs for b in ours[:-1])
        assert lengths[ours[0][0]] == max(lengths)  # the longest example is in the first batch
    # Grouping really reduces padding compared to a plain shuffle.
    lengths = rng.randint(5, 128, size=2000)
    pad = lambda order: sum(len(b) * lengths[b].max() - lengths[b].sum() for b in order)
    g = torch.Generator().manual_seed(0)
    assert pad(batch_order(lengths, 16, True, g, True)) < 0.2 * pad(batch_order(lengths, 16, True, g, False))
