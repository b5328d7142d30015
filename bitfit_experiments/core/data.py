"""GLUE tasks and splits, read into one DataFrame layout: columns idx, text_a, text_b, label.

Two sources give the same frame:
  * `data_dir` -- the original GLUE distribution (`<data-dir>/<Task>/<split>.tsv`, as written by GLUE's
    download_glue_data.py; MNLI's diagnostic set is `<data-dir>/diagnostic/diagnostic.tsv`);
  * no `data_dir` -- the Hugging Face hub dataset `nyu-mll/glue`.
Label ids are the hub's in both cases, so a model trained from one source can be evaluated on the other.

The TSVs are read the way the GLUE/BERT processors read them: tab-separated, quoting OFF. CoLA, SST-2, STS-B and MRPC
contain unbalanced `"` characters; with CSV quoting on, rows silently merge and the counts come out wrong. Empty
strings and texts like "null"/"NA" are kept as text (QQP has such questions).

Layer: core.
"""
import csv
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import UsageError, first_line


@dataclass(frozen=True)
class TaskSpec:
    name: str                   # our CLI name, e.g. 'rte'
    glue_dir: str               # folder in the GLUE distribution, e.g. 'RTE'
    hub_config: str             # config of nyu-mll/glue
    label_names: tuple | None   # index == hub label id; None for regression (stsb)
    headline: str               # the paper's Table 5 metric key
    eval_splits: tuple = ("dev",)
    test_splits: tuple = ("test",)

    @property
    def is_regression(self):
        return self.label_names is None

    @property
    def num_labels(self):
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def splits(self):
        return ("train",) + self.eval_splits + self.test_splits


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

TASKS = {t.name: t for t in [
    TaskSpec("cola", "CoLA", "cola", ("unacceptable", "acceptable"), "matthews_correlation"),
    TaskSpec("mnli", "MNLI", "mnli", _NLI3, "accuracy", ("dev_matched", "dev_mismatched"),
             ("test_matched", "test_mismatched", "ax")),
    TaskSpec("mrpc", "MRPC", "mrpc", ("not_equivalent", "equivalent"), "f1"),
    TaskSpec("qnli", "QNLI", "qnli", _NLI2, "accuracy"),
    TaskSpec("qqp", "QQP", "qqp", ("not_duplicate", "duplicate"), "f1"),
    TaskSpec("rte", "RTE", "rte", _NLI2, "accuracy"),
    TaskSpec("sst2", "SST-2", "sst2", ("negative", "positive"), "accuracy"),
    TaskSpec("stsb", "STS-B", "stsb", None, "spearmanr"),
    # WNLI's TSV and hub agree on 0 = not_entailment, 1 = entailment (the opposite order of RTE/QNLI).
    TaskSpec("wnli", "WNLI", "wnli", ("not_entailment", "entailment"), "accuracy"),
]}


def get_task(name):
    try:
        return TASKS[str(name).lower()]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None


# --- the GLUE distribution's file formats -----------------------------------------------------------------------
# How each task's header names the columns. Files with a header are read by column name (robust to extra
# columns); CoLA train/dev have no header and are read by position. A label column missing from a test file is
# expected (test rows are unlabeled); missing from train/dev it is an error.
_COLUMNS = {  # task: (index column or None, text_a, text_b or None, label column, how labels are written)
    "cola": ("index", "sentence", None, None, "int"),
    "sst2": ("index", "sentence", None, "label", "int"),
    "mrpc": ("index", "#1 String", "#2 String", "Quality", "int"),
    "stsb": ("index", "sentence1", "sentence2", "score", "float"),
    "qqp": ("id", "question1", "question2", "is_duplicate", "int"),
    "mnli": ("index", "sentence1", "sentence2", "gold_label", "name"),
    "qnli": ("index", "question", "sentence", "label", "name"),
    "rte": ("index", "sentence1", "sentence2", "label", "name"),
    "wnli": ("index", "sentence1", "sentence2", "label", "int"),
}
_COLA_NO_HEADER = {"label": 1, "text_a": 3}  # source, label, original label, sentence


def split_path(task, split, data_dir):
    """Where the GLUE distribution keeps a split: `<data-dir>/<Task>/<split>.tsv` (ax: diagnostic/diagnostic.tsv)."""
    spec = get_task(task)
    if split == "ax":
        return os.path.join(data_dir, "diagnostic", "diagnostic.tsv")
    return os.path.join(data_dir, spec.glue_dir, f"{split}.tsv")


def load_split(task, split, data_dir=None):
    """One split as a DataFrame: idx (int64), text_a (str), text_b (str, or None for single-sentence tasks),
    label (int64 hub label id, -1 for unlabeled test rows; float32 score for stsb, NaN when unlabeled).
    df.attrs["skipped_malformed_rows"]: rows of the original QQP train.tsv skipped as malformed (0 elsewhere)."""
    spec = get_task(task)
    if split not in spec.splits:
        raise UsageError(f"task {spec.name} has no split {split!r}; choose one of: {', '.join(spec.splits)}")
    labeled = split not in spec.test_splits
    if data_dir is None:
        return _load_hub(spec, split, labeled)
    return _read_tsv(spec, split, split_path(spec.name, split, data_dir), labeled)


def _read_rows(path, split):
    """[(line number, fields)] of the non-blank lines of a GLUE TSV. Every way the file can be unreadable is a
    one-line UsageError naming the file, with the real line or byte."""
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a GLUE file; --data-dir must hold the original GLUE layout "
                         f"<data-dir>/<Task>/<split>.tsv")
    if not os.path.isfile(path):
        raise UsageError(f"GLUE file not found: {path}; --data-dir must hold the original GLUE layout "
                         f"<data-dir>/<Task>/<split>.tsv (e.g. RTE/dev.tsv, MNLI/dev_matched.tsv, diagnostic/diagnostic.tsv)")
    reader = None
    try:
        # utf-8-sig strips MRPC's byte-order mark and is plain UTF-8 for the other files.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE)
            # Quoting is off, so one record is one physical line and line_num is its line in the file.
            rows = [(reader.line_num, r) for r in reader if r]
    except UnicodeDecodeError:
        byte, line = _first_bad_byte(path)
        raise UsageError(f"{path} is not valid UTF-8 (byte {byte}, line {line}); use the original GLUE files, "
                         f"which are UTF-8") from None
    except csv.Error as e:  # the only one with quoting off: a field longer than csv.field_size_limit()
        raise UsageError(f"{path} line {reader.line_num}: {e}; this is not a GLUE TSV (binary data, or lines "
                         f"without line breaks) -- re-download the GLUE {split} file") from None
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror or type(e).__name__}); make the file readable or "
                         f"re-download it") from None
    if not rows:
        raise UsageError(f"{path} is empty; re-download the GLUE {split} file")
    return rows


def _first_bad_byte(path):
    """(offset in the file, line) of the first byte that is not UTF-8. The decoder's own offset is relative to the
    chunk it was decoding, so the file is decoded once more as a whole (only on this error path)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")  # a byte-order mark is valid UTF-8, so offsets match the file's
    except UnicodeDecodeError as e:
        return e.start, raw.count(b"\n", 0, e.start) + 1
    return None, None


# QQP's original train.tsv has a few rows split by a newline inside a question: both halves have fewer fields than
# the header. The GLUE/BERT processors skipped such rows (IndexError -> continue); we do the same, for this file only,
# and say how many. Every other short row stays an error.
_SKIP_SHORT_ROWS = {("qqp", "train")}


def _read_tsv(spec, split, path, labeled):
    rows = _read_rows(path, split)
    idx_col, a_col, b_col, label_col, label_kind = _COLUMNS[spec.name]
    if split == "ax":  # the diagnostic set: index, sentence1, sentence2 (MNLI labels, but unlabeled)
        idx_col, a_col, b_col = "index", "sentence1", "sentence2"
    if spec.name == "cola" and split != "test":
        # No header: position is all we have (a wrong file shows up as labels outside 0/1).
        pos = {"idx": None, "text_a": _COLA_NO_HEADER["text_a"], "text_b": None, "label": _COLA_NO_HEADER["label"]}
        label_kind = "int"
    else:
        (_, header), rows = rows[0], rows[1:]
        if not rows:
            raise UsageError(f"{path} has a header but no data rows; re-download the GLUE {split} file")
        wanted = {"idx": idx_col, "text_a": a_col, "text_b": b_col, "label": label_col if labeled else None}
        if spec.name == "cola":
            wanted["label"] = None
        missing = [c for k, c in wanted.items() if c is not None and k != "idx" and c not in header]
        if missing:
            raise UsageError(f"{path} lacks column(s) {', '.join(repr(c) for c in missing)} (header: "
                             f"{' | '.join(header)}); it is not the GLUE {spec.glue_dir} {split} file")
        # The index column is optional (SST-2, MRPC train/dev have none): then idx is the row number, like the hub's.
        pos = {k: (header.index(c) if c is not None and c in header else None) for k, c in wanted.items()}
    need = max(p for p in pos.values() if p is not None) + 1
    rows, skipped = _drop_short_rows(spec, split, path, rows, need)
    df = _frame(spec, label_kind, path, rows, pos)
    df.attrs["skipped_malformed_rows"] = skipped
    return df


def _drop_short_rows(spec, split, path, rows, need):
    """(rows, how many were skipped): short rows are skipped only where the GLUE processors skipped them."""
    short = [line for line, row in rows if len(row) < need]
    if not short:
        return rows, 0
    if (spec.name, split) not in _SKIP_SHORT_ROWS:
        line = short[0]
        fields = len(next(row for n, row in rows if n == line))
        raise UsageError(f"{path} line {line} has {fields} tab-separated field(s), expected at least {need}; "
                         f"the file is truncated or was edited -- re-download it")
    kept = [(line, row) for line, row in rows if len(row) >= need]
    if not kept:
        raise UsageError(f"{path}: every data row has fewer than {need} tab-separated fields; it is not the GLUE "
                         f"{spec.glue_dir} {split} file -- re-download it")
    where = ", ".join(map(str, short[:5])) + (", ..." if len(short) > 5 else "")
    print(f"{path}: skipped {len(short)} malformed row(s) with fewer than {need} tab-separated fields (line(s) "
          f"{where}), as the GLUE processors did", file=sys.stderr, flush=True)
    return kept, len(short)


def _frame(spec, label_kind, path, rows, pos):
    n = len(rows)
    idx = np.arange(n, dtype=np.int64)
    text_a, text_b = [None] * n, [None] * n
    labels = np.full(n, np.nan if spec.is_regression else -1, dtype=np.float32 if spec.is_regression else np.int64)
    name_to_id = {name: i for i, name in enumerate(spec.label_names or ())}
    for i, (line, row) in enumerate(rows):
        text_a[i] = row[pos["text_a"]]
        if pos["text_b"] is not None:
            text_b[i] = row[pos["text_b"]]
        if pos["idx"] is not None:
            value = row[pos["idx"]].strip()
            if not _ASCII_INT.fullmatch(value):
                raise UsageError(f"{path} line {line}: index {row[pos['idx']]!r} is not a non-negative integer; "
                                 f"re-download the file")
            idx[i] = int(value)
        if pos["label"] is not None:
            labels[i] = _parse_label(spec, label_kind, row[pos["label"]], name_to_id, path, line)
    return pd.DataFrame({"idx": idx, "text_a": text_a, "text_b": text_b, "label": labels})


# ASCII digits only: str.isdigit() and int()/float() also accept '²', '٣' and '1_0', which no GLUE file contains.
_ASCII_INT = re.compile(r"[0-9]+")
_ASCII_SCORE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _parse_label(spec, kind, value, name_to_id, path, line):
    value = value.strip()
    if kind == "name":
        if value in name_to_id:
            return name_to_id[value]
    elif kind == "float":
        score = float(value) if _ASCII_SCORE.fullmatch(value) else math.nan
        if 0.0 <= score <= 5.0:
            return score
        raise UsageError(f"{path} line {line}: score {value!r} is not a number in [0, 5]; re-download the file")
    elif _ASCII_INT.fullmatch(value) and int(value) < spec.num_labels:
        return int(value)
    valid = ", ".join(spec.label_names) if kind == "name" else f"0..{spec.num_labels - 1}"
    raise UsageError(f"{path} line {line}: label {value!r} is not one of {valid} for {spec.name}; "
                     f"is this the GLUE {spec.glue_dir} file?")


# --- the Hugging Face hub ---------------------------------------------------------------------------------------
_HUB_TEXT = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
             "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
             "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
             "ax": ("premise", "hypothesis")}


def _hub_split(split):
    if split == "ax":
        return "ax", "test"
    return None, split.replace("dev", "validation")


def _load_hub(spec, split, labeled):
    config, hub_split = _hub_split(split)
    config = config or spec.hub_config
    try:
        import datasets
        ds = datasets.load_dataset("nyu-mll/glue", config, split=hub_split)
    except Exception as e:
        first = first_line(e)
        raise UsageError(f"could not load nyu-mll/glue ({config}, {hub_split}) from the Hugging Face hub "
                         f"({type(e).__name__}: {first}); the hub could not be reached -- pass --data-dir with the "
                         f"GLUE files (<data-dir>/<Task>/<split>.tsv)") from None
    a_col, b_col = _HUB_TEXT[config]
    n = len(ds)
    label = np.asarray(ds["label"])
    if spec.is_regression:
        label = label.astype(np.float32)
        if not labeled:  # the hub writes -1 for unlabeled test scores; NaN cannot be mistaken for a score
            label[:] = np.nan
    else:
        label = label.astype(np.int64)
    df = pd.DataFrame({"idx": np.asarray(ds["idx"], dtype=np.int64), "text_a": list(ds[a_col]),
                       "text_b": list(ds[b_col]) if b_col else [None] * n, "label": label})
    df.attrs["skipped_malformed_rows"] = 0  # the hub's QQP has no malformed rows
    return df


def subsample(df, train_size, seed):
    """A seeded random subset of `train_size` rows (the official code's train_size); None keeps everything."""
    if train_size is None:
        return df
    if not 0 < train_size <= len(df):
        raise UsageError(f"--train-size {train_size} is out of range: the training split has {len(df)} rows; "
                         f"pass a size between 1 and {len(df)}")
    order = np.random.RandomState(seed).permutation(len(df))[:train_size]
    return df.iloc[order].reset_index(drop=True)
