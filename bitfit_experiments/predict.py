"""Predict with a task pack applied onto its base model, or export the pair as a plain Hugging Face model folder.

    python -m bitfit_experiments.predict --base MODEL --pack runs/rte/pack --input glue/RTE/dev.tsv
    python -m bitfit_experiments.predict --base MODEL --pack runs/rte/pack --input RTE/test.tsv --task-split test \
        --output rte_test.tsv
    python -m bitfit_experiments.predict --base MODEL --pack runs/rte/pack \
        --sentences "A man plays a guitar. ||| A person plays music."
    python -m bitfit_experiments.predict --base MODEL --pack runs/rte/pack --export rte_model/
    python -m bitfit_experiments.predict --base MODEL --pack rte/pack sst2/pack stsb/pack --input requests.jsonl

Several bias-only packs (bitfit, frozen) on one base serve mixed-task requests: --input is a JSONL file (or a TSV
with a header) whose rows give `task`, `sentence1` and optionally `sentence2`. Rows of different tasks share each
batch (a bias bank: core/bank.py); the output has one row per input, in input order: index, task, label and the
probabilities (JSON; a regression task gives its score).

Predictions (a TSV: index, prediction, one logit column per label) go to --output or stdout; the pack summary and, on
a labeled split, the metrics go to stderr, so stdout stays a clean table.

Layer: run.
"""
import io
import json
import os
import sys
import tempfile

import numpy as np
import pandas as pd

from .core import data, metrics

from .artifacts import packs
from .cli import OneLineParser
from .core.errors import UsageError, exit_on_usage_error
from .artifacts.io import atomic_write_text, check_new_directory, check_writable
from .core.model import resolve_device

PAIR_SEPARATOR = " ||| "


def parse_args(argv=None):
    p = OneLineParser(prog="python -m bitfit_experiments.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base model the pack was trained on (hub id or local folder)")
    p.add_argument("--pack", required=True, nargs="+", help="a run's pack folder (pack.safetensors + manifest.json); "
                   "several bias-only packs serve a mixed-task --input (one pack per task)")
    p.add_argument("--input", help="a GLUE-format TSV of the pack's task (e.g. RTE/dev.tsv); with several packs, a "
                   "mixed-task JSONL (or TSV with a header) whose rows give task, sentence1 and optionally sentence2")
    p.add_argument("--task-split", help="which split's format --input has (default: the task's first dev split; "
                                        "test = unlabeled)")
    p.add_argument("--sentences", nargs="+", metavar="TEXT",
                   help=f"raw inputs; write a pair as 'first{PAIR_SEPARATOR}second'")
    p.add_argument("--output", help="write the predictions TSV here (default: stdout)")
    p.add_argument("--export", metavar="DIR", help="also write a plain Hugging Face model folder (weights + config "
                                                   "with labels + tokenizer); DIR must be new or empty")
    p.add_argument("--batch-size", type=int, default=64, help="prediction batch size (does not change results)")
    p.add_argument("--gpu-device", type=int, default=None, help="run on cuda:N; absent: CPU")
    args = p.parse_args(argv)
    args.mixed = len(args.pack) > 1 or bool(args.input and args.input.endswith(".jsonl"))
    if args.mixed and (args.sentences or args.export or args.task_split):
        p.error("several packs serve a mixed-task --input file only (no --sentences, --export or --task-split)")
    if args.mixed and not args.input:
        p.error("several packs need --input: a JSONL or TSV file whose rows name their task")
    if not args.mixed:
        args.pack = args.pack[0]
    if not (args.input or args.sentences or args.export):
        p.error("give --input FILE, --sentences TEXT ..., or --export DIR")
    if args.input and args.sentences:
        p.error("--input and --sentences are alternatives; give one")
    return args


def read_glue_file(task, split, path):
    """A GLUE-format file at any path, read by data.load_split: a temporary GLUE layout links to it."""
    spec = data.get_task(task)
    split = split or spec.eval_splits[0]
    if split not in spec.splits:
        raise UsageError(f"--task-split {split}: task {spec.name} has the splits {', '.join(spec.splits)}")
    if os.path.isdir(path):
        raise UsageError(f"--input {path} is a directory; pass a GLUE-format TSV of the {spec.name} task")
    if not os.path.isfile(path):
        raise UsageError(f"--input {path}: no such file; pass a GLUE-format TSV of the {spec.name} task")
    with tempfile.TemporaryDirectory() as tmp:
        link = data.split_path(spec.name, split, tmp)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(path), link)
        try:
            return data.load_split(spec.name, split, tmp), split
        except UsageError as e:  # name the user's file, not the temporary link
            raise UsageError(str(e).replace(link, path)) from None


def sentences_frame(sentences):
    pairs = [s.split(PAIR_SEPARATOR, 1) if PAIR_SEPARATOR in s else [s, None] for s in sentences]
    if len({b is None for _, b in pairs}) > 1:
        raise UsageError(f"--sentences mixes single sentences and pairs; write every input as "
                         f"'first{PAIR_SEPARATOR}second' or none")
    return pd.DataFrame({"idx": range(len(pairs)), "text_a": [a for a, _ in pairs], "text_b": [b for _, b in pairs],
                         "label": -1})


def predictions_table(task, df, logits, label_names):
    spec = data.get_task(task)
    preds = metrics.logits_to_predictions(spec.name, logits)
    out = pd.DataFrame({"index": df["idx"].to_numpy()})
    if spec.is_regression:
        out["prediction"] = preds
    else:
        names = label_names or [str(i) for i in range(logits.shape[1])]
        out["prediction"] = [names[i] for i in preds]
        for j, name in enumerate(names):
            out[f"logit_{name}"] = logits[:, j]
    buf = io.StringIO()
    out.to_csv(buf, sep="\t", index=False, float_format="%.9g")  # 9 digits: a float32 logit reads back exactly
    return buf.getvalue()


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_output_is_not_an_input(args):
    """--output replaces one file; never the file being read, nor a file of the pack or the base model."""
    if args.input and os.path.exists(args.output) and os.path.samefile(args.output, args.input):
        raise UsageError(f"--output {args.output} is the --input file; write the predictions to another file")
    packs_given = args.pack if isinstance(args.pack, list) else [args.pack]
    for flag, folder in [("--pack", d) for d in packs_given] + [("--base", args.base)]:
        if os.path.isdir(folder) and _inside(args.output, folder):
            raise UsageError(f"--output {args.output} is inside the {flag} folder {folder}; write the predictions "
                             f"elsewhere")


@exit_on_usage_error
def main(argv=None):
    args = parse_args(argv)
    # Everything the user gave is checked before the (slow) model load and before anything is written.
    if args.output:
        check_writable(args.output, "--output", kind="file")
        check_output_is_not_an_input(args)
    if args.export:
        check_new_directory(args.export, "--export")
    device = resolve_device(args.gpu_device)
    if args.mixed:
        return serve_mixed(args, device)
    pack = packs.read_pack(args.pack)
    m = pack.manifest
    df = split = None
    if args.input:
        df, split = read_glue_file(m["task"], args.task_split, args.input)
    elif args.sentences:
        df = sentences_frame(args.sentences)
    evaluator = packs.load(args.base, pack, device=device)
    print(f"{args.pack}: {m['task']} / {m['fine_tune_type']} on {m['base_model']}; "
          f"{packs.format_summary(m)}", file=sys.stderr)
    if args.export:
        print(f"exported to {packs.export(evaluator, args.export)}", file=sys.stderr)
    if df is None:
        return None
    logits = evaluator.predict(df, batch_size=args.batch_size)
    spec = data.get_task(m["task"])
    labels = df["label"].to_numpy()
    labeled = split is not None and len(df) and not (np.isnan(labels).any() if spec.is_regression else (labels < 0).any())
    if labeled:
        scores = metrics.compute_metrics(spec.name, metrics.logits_to_predictions(spec.name, logits), labels)
        print(f"{split} ({len(df)} rows): " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()), file=sys.stderr)
    write_predictions(args.output, predictions_table(spec.name, df, logits, m.get("label_names")), len(df))
    return logits


def write_predictions(output, text, n):
    """The predictions to --output (atomically) or stdout."""
    if output:
        atomic_write_text(output, text)
        print(f"wrote {n} predictions to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


# ---------------------------------------------------------------------------------------------- mixed-task requests

def read_requests(path):
    """[(task, sentence1, sentence2 or None)] from a JSONL file or a TSV with a header (task, sentence1[,
    sentence2]; GLUE's convention: tab-separated, no quoting)."""
    if not os.path.isfile(path):
        raise UsageError(f"--input {path}: no such file; give a JSONL or TSV file whose rows name their task")
    rows = []
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    rows.append(_request(_json_line(path, n, line), path, n))
            return rows
        header = f.readline().rstrip("\n").split("\t")
        if "task" not in header or "sentence1" not in header:
            raise UsageError(f"--input {path}: its header must name the columns task and sentence1 (and optionally "
                             f"sentence2), tab-separated")
        for n, line in enumerate(f, 2):
            if line.strip():
                rows.append(_request(dict(zip(header, line.rstrip("\n").split("\t"))), path, n))
    return rows


def _json_line(path, n, line):
    try:
        obj = json.loads(line)
    except ValueError:
        raise UsageError(f"--input {path} line {n} is not JSON; write one object per line") from None
    if not isinstance(obj, dict):
        raise UsageError(f"--input {path} line {n} is not a JSON object with task and sentence1")
    return obj


def _request(obj, path, n):
    task, s1, s2 = obj.get("task"), obj.get("sentence1"), obj.get("sentence2") or None
    if not task or s1 is None:
        raise UsageError(f"--input {path} line {n} lacks task or sentence1; every row needs both")
    try:
        return data.get_task(str(task)).name, str(s1), (None if s2 is None else str(s2))
    except UsageError:
        raise UsageError(f"--input {path} line {n}: unknown task {task!r}; use a GLUE task name such as rte or "
                         f"sst2") from None


def serve_mixed(args, device):
    from .artifacts.serving import MixedTaskServer
    rows = read_requests(args.input)
    loaded = [packs.read_pack(d) for d in args.pack]
    tasks = {data.get_task(p.manifest["task"]).name for p in loaded}
    missing = next(((i, t) for i, (t, _, _) in enumerate(rows) if t not in tasks), None)
    if missing:  # before the (slow) model load
        raise UsageError(f"--input {args.input} row {missing[0] + 1} names task {missing[1]!r}, but no --pack is for "
                         f"it; the packs are for {', '.join(sorted(tasks))}")
    server = MixedTaskServer(args.base, loaded, device=device)
    print(f"{len(args.pack)} packs on {args.base}: tasks {', '.join(server.tasks)}; {len(rows)} requests",
          file=sys.stderr)
    logits = server.predict(rows, batch_size=args.batch_size)
    records = [_answer(i, task, lg, server.specs[task]["labels"]) for i, ((task, _, _), lg) in
               enumerate(zip(rows, logits))]
    as_jsonl = (args.output or args.input).endswith(".jsonl")
    text = ("".join(json.dumps(r) + "\n" for r in records) if as_jsonl else
            "index\ttask\tlabel\tprobabilities\n" + "".join(
                f"{r['index']}\t{r['task']}\t{r['label']}\t{json.dumps(r['probabilities'])}\n" for r in records))
    write_predictions(args.output, text, len(records))
    return logits


def _answer(i, task, logits, label_names):
    if data.get_task(task).is_regression:
        score = float(logits[0])
        return {"index": i, "task": task, "label": score, "probabilities": {"score": score}}
    p = np.exp(logits - logits.max())
    p = p / p.sum()
    names = label_names or [str(j) for j in range(len(p))]
    return {"index": i, "task": task, "label": names[int(np.argmax(p))],
            "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)}}


if __name__ == "__main__":
    main()
