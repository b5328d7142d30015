"""Instruction data for run_instruct.py: alpaca-format records, the prompt template, response-only labels.

Records are objects with "instruction", "output" and optionally "input" (strings; other fields are ignored), read
from a local .json file (a list of records, as alpaca_data.json) or .jsonl file (one record per line), or from a
Hugging Face hub dataset id (its "train" split, through `datasets.load_dataset`).

The prompt template (the BLOOMZ BitFit tutorial's "Human: ... Assistant:" format):

    "Human: {instruction}\\n\\nAssistant: "              when the record has no input
    "Human: {instruction}\\n{input}\\n\\nAssistant: "     when it has one

and the model learns to continue it with `{output}` followed by the EOS token (so that generation learns to stop).
Prompt and response are tokenized separately and concatenated: the boundary is then exact (a BPE merge across it
cannot blur which tokens are the response), and generation sees the same prompt tokens as training. The loss covers
the response tokens only: every prompt token gets label -100. Examples longer than --max-seq-length are cut at the
end; one whose response is cut away entirely (a prompt of max-seq-length tokens or more) has nothing to learn and is
dropped and counted.

Layer: core.
"""
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError, first_line

PROMPT_TEMPLATE = "Human: {instruction}\n\nAssistant: "
PROMPT_TEMPLATE_WITH_INPUT = "Human: {instruction}\n{input}\n\nAssistant: "
PROMPT_TEMPLATES = {"without_input": PROMPT_TEMPLATE, "with_input": PROMPT_TEMPLATE_WITH_INPUT}
IGNORE_INDEX = -100  # the label of tokens outside the loss (cross_entropy's ignore_index)
# Greedy generations of the trained model for these go to samples.jsonl (one with an input, to show that template).
FIXED_PROMPTS = (
    {"instruction": "Give three tips for staying healthy.", "input": ""},
    {"instruction": "What is the capital of France?", "input": ""},
    {"instruction": "Translate the sentence into French.", "input": "Good morning, how are you?"},
    {"instruction": "Write a short poem about the sea.", "input": ""},
)


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str


def format_prompt(instruction, input=""):
    """The prompt for one record (the template above); the response follows it directly."""
    if input:
        return PROMPT_TEMPLATE_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_TEMPLATE.format(instruction=instruction)


# ---------------------------------------------------------------------------------------------- reading records

def _looks_like_path(source):
    return source.endswith((".json", ".jsonl")) or os.path.isabs(source) or source.startswith((".", "~")) \
        or source.count("/") > 1 or os.path.exists(source)


def load_records(source):
    """[Record] from a local .json/.jsonl file or a hub dataset id; every problem is a one-line UsageError."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        raise UsageError(f"--data {source} is a directory; give a .json or .jsonl file of alpaca-format records")
    if os.path.isfile(path):
        rows = _read_local(source, path)
    elif _looks_like_path(source):
        raise UsageError(f"--data {source}: no such file; give a local .json/.jsonl file or a hub dataset id such "
                         f"as yahma/alpaca-cleaned")
    else:
        rows = _read_hub(source)
    records = [_check_record(row, where) for where, row in rows]
    if len(records) < 2:
        raise UsageError(f"--data {source} holds {len(records)} record(s); at least 2 are needed (train + eval)")
    return records


def _read_local(source, path):
    """[(where, row)] of a local file: a JSON list, or JSON Lines (one object per line, blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UsageError(f"--data {source} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON") from None
    except OSError as e:
        raise UsageError(f"--data {source}: cannot read it ({e.strerror or type(e).__name__})") from None
    if not path.endswith(".jsonl") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--data {source} is not valid JSON (line {e.lineno}: {e.msg})") from None
        return [(f"{source} record {i + 1}", row) for i, row in enumerate(rows)]
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{source} line {number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UsageError(f"--data {source} line {number} is not valid JSON ({e.msg}); a .jsonl file holds "
                                 f"one record object per line") from None
    return out


def _read_hub(dataset_id):
    """[(where, row)] of a hub dataset's train split (needs the network or a local datasets cache)."""
    try:
        import datasets
        split = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # offline, unknown id, no train split
        raise UsageError(f"--data {dataset_id}: could not load it from the Hugging Face hub ({type(e).__name__}: "
                         f"{first_line(e)}); check the id and your connection, or give a local .json/.jsonl "
                         f"file") from None
    return [(f"{dataset_id} row {i + 1}", row) for i, row in enumerate(split)]


def _check_record(row, where):
    if not isinstance(row, dict):
        raise UsageError(f"{where} is not an object with instruction/input/output fields")
    for key in ("instruction", "output"):
        if not isinstance(row.get(key), str):
            problem = "is missing" if key not in row else f"is not a string ({type(row[key]).__name__})"
            raise UsageError(f"{where}: '{key}' {problem}; every record needs instruction and output strings")
    extra = row.get("input", "")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        raise UsageError(f"{where}: 'input' is not a string ({type(extra).__name__})")
    if not row["instruction"].strip():
        raise UsageError(f"{where}: 'instruction' is empty")
    return Record(row["instruction"], extra, row["output"])


def split_records(records, eval_size, seed):
    """(train, eval): a seeded random held-out set of `eval_size` records (a share if < 1, else a count). The split
    depends only on (records, eval_size, seed), never on the tokenizer or the sequence length."""
    n = len(records)
    k = max(1, int(round(eval_size * n))) if eval_size < 1 else int(eval_size)
    if k >= n:
        raise UsageError(f"--eval-size {eval_size} holds out {k} of {n} records, leaving none to train on; give a "
                         f"smaller --eval-size")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


# ---------------------------------------------------------------------------------------------- tokens

@dataclass
class LMEncoded:
    """A tokenized instruction split: row i is example i (unpadded); labels are -100 on prompt tokens."""
    input_ids: list       # list[list[int]]
    labels: list          # list[list[int]]
    lengths: np.ndarray   # int64 token count per example
    dropped: int = 0      # examples left out: nothing of the response fit into max_seq_length

    def __len__(self):
        return len(self.input_ids)


def encode_records(tokenizer, records, max_seq_length):
    """Tokenize prompt (with the tokenizer's special tokens, e.g. a BOS) and response (+ EOS, no specials) apart,
    concatenate, cut at max_seq_length; label -100 on the prompt."""
    if not records:
        return LMEncoded([], [], np.zeros(0, dtype=np.int64))
    prompts = tokenizer([format_prompt(r.instruction, r.input) for r in records])["input_ids"]
    responses = tokenizer([r.output for r in records], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids, labels, dropped = [], [], 0
    for prompt, response in zip(prompts, responses):
        tokens = (list(prompt) + list(response) + eos)[:max_seq_length]
        if len(tokens) <= len(prompt):
            dropped += 1
            continue
        ids.append(tokens)
        labels.append([IGNORE_INDEX] * len(prompt) + tokens[len(prompt):])
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return LMEncoded(ids, labels, lengths, dropped)


def collate_lm(enc, indices, pad_token_id):
    """One batch, right-padded to its longest example: input_ids, attention_mask and labels (-100 on padding)."""
    lens = enc.lengths[indices]
    width = int(lens.max()) if len(lens) else 0
    input_ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    labels = np.full((len(indices), width), IGNORE_INDEX, dtype=np.int64)
    for row, i in enumerate(indices):
        input_ids[row, :lens[row]] = enc.input_ids[i]
        labels[row, :lens[row]] = enc.labels[i]
    return {"input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy((np.arange(width) < lens[:, None]).astype(np.int64)),
            "labels": torch.from_numpy(labels)}
