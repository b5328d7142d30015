"""Prediction files for the GLUE test server (gluebenchmark.com): one `<Task>.tsv` per test split, and the zip of
all eleven that the server takes.

Format: header `index<TAB>prediction`, one row per test example. The server wants label strings for the NLI tasks
(MNLI, AX, QNLI, RTE), 0/1 for the others, and a score in [0, 5] for STS-B. A file with the wrong number of rows is
rejected by the server, so the count is checked here before anything is written.

Which run fills which file is decided above this layer (report/submission.py, by the tables' selection); here a
run's test_predictions/ files are read back and checked (header, values, and the index column against the GLUE test
file, or the published size where the test file is not at hand), placeholders are made for tasks without a run, and
the zip is written.

Layer: artifacts.
"""
import json
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from ..core.data import get_task, load_split, split_path
from ..core.errors import UsageError
from .io import atomic_open

SERVER_FILES = {
    ("cola", "test"): "CoLA.tsv", ("sst2", "test"): "SST-2.tsv", ("mrpc", "test"): "MRPC.tsv",
    ("stsb", "test"): "STS-B.tsv", ("qqp", "test"): "QQP.tsv", ("mnli", "test_matched"): "MNLI-m.tsv",
    ("mnli", "test_mismatched"): "MNLI-mm.tsv", ("mnli", "ax"): "AX.tsv", ("qnli", "test"): "QNLI.tsv",
    ("rte", "test"): "RTE.tsv", ("wnli", "test"): "WNLI.tsv",
}
_LABEL_STRINGS = ("mnli", "qnli", "rte")  # the server reads these as entailment/neutral/contradiction/not_entailment


def write_server_file(task, split, idx, predictions, out_dir, expected_rows):
    """Write the server file for (task, split) into out_dir and return its path.

    `predictions` are class ids (as from metrics.logits_to_predictions) or STS-B scores, in the order of `idx`.
    """
    spec = get_task(task)
    name = SERVER_FILES.get((spec.name, split))
    if name is None:
        valid = ", ".join(f"{t}/{s}" for t, s in SERVER_FILES)
        raise UsageError(f"no GLUE server file for {spec.name}/{split}; server files exist for: {valid}")
    idx, predictions = np.asarray(idx), np.asarray(predictions)
    if not len(idx) == len(predictions) == expected_rows:
        raise UsageError(f"{name}: {len(predictions)} predictions for {len(idx)} indices, but the GLUE {spec.name} "
                         f"{split} set has {expected_rows} rows; predict on the complete, unmodified test file")
    if spec.is_regression:
        values = [f"{v:.3f}" for v in np.clip(predictions.astype(np.float64), 0.0, 5.0)]
    else:
        ids = predictions.astype(np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= spec.num_labels):
            raise ValueError(f"{name}: predicted class ids must be in 0..{spec.num_labels - 1}")
        values = [spec.label_names[i] for i in ids] if spec.name in _LABEL_STRINGS else [str(i) for i in ids]
    path = os.path.join(out_dir, name)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("index\tprediction\n")
        f.writelines(f"{int(i)}\t{v}\n" for i, v in zip(idx, values))
    return path


# --- the server's zip -------------------------------------------------------------------------------------------
# Test-set sizes the server expects (GLUE's published counts; ../shared/reference_rows.md).
SERVER_ROWS = {"AX.tsv": 1104, "CoLA.tsv": 1063, "MNLI-m.tsv": 9796, "MNLI-mm.tsv": 9847, "MRPC.tsv": 1725,
               "QNLI.tsv": 5463, "QQP.tsv": 390965, "RTE.tsv": 3000, "SST-2.tsv": 1821, "STS-B.tsv": 1379,
               "WNLI.tsv": 146}
PREDICTIONS_DIR = "test_predictions"  # where run_glue.py --predict-test writes a run's server files
_HEADER = "index\tprediction"
_SCORE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_INDEX = re.compile(r"[0-9]+")


@dataclass
class ServerFile:
    name: str          # e.g. "MNLI-m.tsv"
    text: str          # the file's content
    source: str        # the run directory it came from, or "placeholder"
    index_from: str    # what the index column was checked against: a test file's path, or "published size"

    @property
    def placeholder(self):
        return self.source == "placeholder"


def expected_index(task, split, data_dir):
    """(index values the server expects, where they came from): the GLUE test file's index column when data_dir has
    it (which must have the published number of rows), else 0..n-1 for the published size n."""
    name = SERVER_FILES[(task, split)]
    path = split_path(task, split, data_dir) if data_dir else None
    if path is None or not os.path.exists(path):
        return list(range(SERVER_ROWS[name])), "published size"
    idx = load_split(task, split, data_dir)["idx"].tolist()
    if len(idx) != SERVER_ROWS[name]:
        raise UsageError(f"{path} has {len(idx)} rows, but the GLUE server expects {SERVER_ROWS[name]} for {name}; "
                         f"use the complete, original GLUE test file")
    return idx, path


def _valid_values(task):
    spec = get_task(task)
    if spec.is_regression:
        return None
    return set(spec.label_names) if spec.name in _LABEL_STRINGS else {str(i) for i in range(spec.num_labels)}


def read_server_file(path, task, split, expected):
    """A run's server file, checked line by line: header, `index<TAB>value` rows, values the server accepts, and
    exactly the expected indices. Returns its text."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"{path} is missing; re-run that run with run_glue.py --predict-test") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path} ({getattr(e, 'strerror', None) or type(e).__name__}); re-run that "
                         f"run with run_glue.py --predict-test") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != _HEADER:
        raise UsageError(f"{path} line 1: header is not 'index<TAB>prediction'; it is not a GLUE server file "
                         f"written by run_glue.py --predict-test")
    valid, seen = _valid_values(task), []
    for number, line in enumerate(lines[1:], start=2):
        seen.append(_check_row(path, number, line, valid))
    _check_index(path, seen, expected)
    return text


def _check_row(path, number, line, valid):
    fields = line.split("\t")
    if len(fields) != 2 or not _INDEX.fullmatch(fields[0]):
        raise UsageError(f"{path} line {number}: expected 'index<TAB>prediction', got {line[:60]!r}; re-run with "
                         f"--predict-test")
    value = fields[1]
    ok = value in valid if valid is not None else bool(_SCORE.fullmatch(value)) and 0.0 <= float(value) <= 5.0
    if not ok:
        allowed = ", ".join(sorted(valid)) if valid is not None else "a score in [0, 5]"
        raise UsageError(f"{path} line {number}: prediction {value!r} is not one of {allowed}; re-run with "
                         f"--predict-test")
    return int(fields[0])


def _check_index(path, seen, expected):
    if len(seen) != len(expected) or sorted(seen) != sorted(expected):
        extra = sorted(set(seen) - set(expected))[:1] or sorted(set(expected) - set(seen))[:1]
        raise UsageError(f"{path} has {len(seen)} rows, the GLUE test set {len(expected)}"
                         f"{f' (e.g. index {extra[0]} differs)' if extra else ' (repeated indices)'}; it was "
                         f"predicted on another test file -- re-run with --predict-test on the original GLUE files")


def placeholder_text(task, split, idx):
    """A stand-in the server accepts for a task without a run: the first label (0; STS-B 0.000) for every row.
    It scores at chance or below: it only lets the other tasks be submitted."""
    spec = get_task(task)
    value = "0.000" if spec.is_regression else (spec.label_names[0] if spec.name in _LABEL_STRINGS else "0")
    return _HEADER + "\n" + "".join(f"{int(i)}\t{value}\n" for i in idx)


def collect_server_files(best_runs, data_dir=None):
    """The 11 server files, in SERVER_FILES order. best_runs: {task: run directory or None}; a task without a run
    gets placeholders (all of its files: MNLI's three include AX)."""
    files = []
    for (task, split), name in SERVER_FILES.items():
        expected, index_from = expected_index(task, split, data_dir)
        run = best_runs.get(task)
        if run is None:
            files.append(ServerFile(name, placeholder_text(task, split, expected), "placeholder", index_from))
            continue
        path = os.path.join(run, PREDICTIONS_DIR, name)
        if not os.path.lexists(path):  # a weaker run is never substituted: the user decides
            raise UsageError(f"the best {task} run {run} has no {PREDICTIONS_DIR}/{name}; re-run that configuration "
                             f"with --predict-test (run_glue.py --config {os.path.join(run, 'config.json')} -o NEW_DIR "
                             f"--predict-test) and put it in place of this run, or select runs with --method/--model")
        text = read_server_file(path, task, split, expected)
        files.append(ServerFile(name, text, run, index_from))
    return files


def write_submission_zip(path, files, provenance=None):
    """One flat zip of the server files, written atomically. The zip's comment (invisible to the server) records
    where each file came from and which ones are placeholders. Fixed timestamps: the same files give the same bytes."""
    comment = json.dumps({"placeholders": [f.name for f in files if f.placeholder],
                          "sources": {f.name: f.source for f in files}, **(provenance or {})}, sort_keys=True)
    with atomic_open(path, "wb") as out:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in files:
                info = zipfile.ZipInfo(f.name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, f.text.encode("utf-8"))
            z.comment = comment.encode("utf-8")[:65535]
    return path
