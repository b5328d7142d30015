"""Prediction files for the GLUE test server (gluebenchmark.com): one `<Task>.tsv` per test split, zipped by the user.

Format: header `index<TAB>prediction`, one row per test example. The server wants label strings for the NLI tasks
(MNLI, AX, QNLI, RTE), 0/1 for the others, and a score in [0, 5] for STS-B. A file with the wrong number of rows is
rejected by the server, so the count is checked here before anything is written.
"""
import os

import numpy as np

from .data import get_task
from .errors import UsageError
from .io_utils import atomic_open

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
