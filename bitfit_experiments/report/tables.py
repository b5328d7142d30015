"""Aggregate a directory of runs into the paper's GLUE tables, with the paper's number beside each of ours.

    python -m bitfit_experiments.tables RUNS_DIR [--out DIR] [--epoch-selection best|last] [--paper-table 1|2|3|lora|auto]

What a cell is, step by step (the paper only says "mean±std over 5 seeds, minimal search over 4 learning rates"):
  1. Every results.json under RUNS_DIR (any depth) is one run. Only status "complete" counts; the others are listed
     as ignored. A run's identity comes from its config/results (model, fine-tune type + bias terms, task, lr,
     seed, train size), never from the directory name.
  2. A run's score is its headline metric (the paper's Table 5 metric) at the selected epoch: the best dev epoch
     (what the official code's learning curves report) or the last epoch.
  3. Per (model, method, task, train size) the learning rate with the best mean score over seeds wins (MNLI: by
     the matched split, the split the runs pick their best epoch on; always on the headline metric, also where the
     table shows another paper's metric, so a cell is the same runs in every table); the cell is mean ± sample std
     (ddof=1) over that learning rate's seeds. With --lr-selection pilot (the converged reproduction's protocol: a pilot over
     rates on the first seed, the other seeds only at the pilot's rate), the rate is the one whose first-seed run
     scores best (ties: the higher last-epoch score, then the lower rate; the rule of report/repro_plan.py), so
     that one lucky pilot run at another rate never displaces the rate the seeds were run at.
  4. Avg. is the paper's: the mean of the 8 tasks with MNLI-m and MNLI-mm averaged into one. A row that misses
     tasks gets the average over the tasks it has, and the paper's number beside it is recomputed over the
     same tasks, so the two stay comparable.
The paper's numbers come from results/paper/*.csv (data, not code).

Layer: report.
"""
import csv
import math
import os
import statistics

from ..artifacts.io import atomic_write_text, check_writable
from ..artifacts.record import find_runs
from ..core.config import PAPER_NOTATION
from ..core.errors import OneLineParser, UsageError, exit_on_usage_error

PAPER_TASKS = ["qnli", "sst2", "mnli", "cola", "mrpc", "stsb", "rte", "qqp"]  # the paper's column order; WNLI excluded
COLUMNS = ["qnli", "sst2", "mnli_m", "mnli_mm", "cola", "mrpc", "stsb", "rte", "qqp"]
COLUMN_TITLES = {"qnli": "QNLI", "sst2": "SST-2", "mnli_m": "MNLIm", "mnli_mm": "MNLImm", "cola": "CoLA",
                 "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "qqp": "QQP"}
METHOD_ORDER = ["Full-FT", "BitFit", "b_m2, b_q", "b_m2", "b_q", "Frozen", "rand uniform", "rand row/col", "LoRA", "IA3",
                "BitFit+LoRA"]
# The order the paper uses when it names a pair of families ("b_m2, b_q"); the notation is core.config's.
PAIR_ORDER = ["intermediate", "query", "key", "value", "attention_output", "attention_layernorm", "output",
              "output_layernorm"]
MNLI_COLUMNS = {"dev_matched": "mnli_m", "dev_mismatched": "mnli_mm"}  # MNLI's dev splits -> table columns
PAPER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "results", "paper")
# When a model is not in the chosen paper table (e.g. MiniLM on CPU), compare with this model's rows.
REFERENCE_MODEL = {1: "bert-large-cased", 2: "bert-base-cased", 3: "bert-base-cased", "lora": "roberta-base"}
# The LoRA paper's Table 2 (results/paper/lora_table2.csv) reports these tasks on other metrics than BitFit's.
PAPER_METRICS = {"lora": {"mrpc": "accuracy", "qqp": "accuracy", "stsb": "pearson"}}


def method_name(fine_tune_type, bias_terms=None):
    """The paper's row label for a run, from its fine-tune type and bias terms."""
    fixed = {"full_ft": "Full-FT", "frozen": "Frozen", "rand_uniform": "rand uniform", "rand_row_col": "rand row/col",
             "lora": "LoRA", "ia3": "IA3", "bitfit_lora": "BitFit+LoRA"}
    if fine_tune_type in fixed:
        return fixed[fine_tune_type]
    if fine_tune_type != "bitfit":
        return str(fine_tune_type)
    terms = set(bias_terms or ["all"])
    if "all" in terms:
        return "BitFit"
    known = sorted((t for t in terms if t in PAPER_NOTATION), key=PAIR_ORDER.index)
    return ", ".join([PAPER_NOTATION[t] for t in known] + sorted(t for t in terms if t not in PAPER_NOTATION))


def model_tag(model_name):
    """Hub ids stay as they are; a local path becomes its most telling directory name."""
    name = str(model_name).rstrip("/")
    if os.sep not in name and not name.startswith("."):
        return name
    parts = [p for p in name.split(os.sep) if p]
    generic = {"model", "models", "snapshot", "snapshots", "hf", "checkpoint"}
    for part in reversed(parts):
        if part not in generic:
            return part
    return parts[-1] if parts else name


# ---------------------------------------------------------------------------------------------------------------
# loading runs

def load_runs(runs_dir):
    """-> (complete runs, ignored runs). A run is a dict: path, model, method, task, lr, seed, train_size and its
    RunRecord under "results". A record or config that cannot be read is listed as ignored, never fatal."""
    if not os.path.isdir(runs_dir):
        raise UsageError(f"runs directory {runs_dir!r} does not exist; pass the directory the sweep wrote (e.g. "
                         f"results/cpu_repro/runs)")
    found, unreadable = find_runs(runs_dir)
    ignored = [{"path": path, "status": "unreadable", "reason": reason} for path, reason in unreadable]
    runs = []
    for path, record, args in found:
        if not record.complete:
            ignored.append({"path": path, "status": record.status, "reason": record.failure_reason})
            continue
        try:
            run = {
                "path": path,
                "model": model_tag(args.get("model_name", record.model_name)),
                "method": method_name(args.get("fine_tune_type", record.fine_tune_type),
                                      args.get("bias_terms", record.bias_terms)),
                "task": args.get("task_name", record.task),
                "lr": float(args.get("learning_rate", record.learning_rate)),
                "seed": args.get("seed", record.seed),
                "train_size": args.get("train_size", record.train_size),
                "results": record,
            }
            run_scores(record, "best")  # a "complete" record we cannot score is reported, not crashed on
        except (KeyError, TypeError, ValueError, IndexError) as e:
            ignored.append({"path": path, "status": "malformed", "reason": f"{type(e).__name__}: {e}"})
            continue
        runs.append(run)
    return runs, ignored


def run_scores(record, selection, metric_of=None):
    """{column: headline metric x100} of one RunRecord at the best or last epoch, e.g. {"rte": 66.1} or
    {"mnli_m": 80.2, "mnli_mm": 81.0}. `metric_of` {task: metric} reports another metric of that epoch (the best
    epoch is still the one of the run's own headline metric)."""
    if selection not in ("best", "last"):
        raise UsageError(f"epoch selection {selection!r} is unknown; use 'best' or 'last'")
    metrics = record.best if selection == "best" else record.last
    key, splits = (metric_of or {}).get(record.task, record.headline_metric), record.eval_splits
    if record.task == "mnli":
        return {MNLI_COLUMNS[s]: 100.0 * metrics[s][key] for s in splits if s in MNLI_COLUMNS}
    return {record.task: 100.0 * metrics[splits[0]][key]}


# ---------------------------------------------------------------------------------------------------------------
# aggregation (shared by the tables, the claims and the figures)

def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


LR_SELECTIONS = ("mean", "pilot")
LR_TEXT = {"mean": "best mean over seeds per cell",
           "pilot": "the pilot's, per cell (the best run of the first seed; the other seeds ran at that rate only)"}
LR_HELP = ("how a cell's learning rate is chosen: mean (the best mean over seeds; every rate has every seed) or pilot "
           "(the best run of the lowest seed, the other seeds run at that rate only: scripts/cpu_repro.sh)")


def _first(record, selection):
    """The score a learning rate is chosen on: the headline metric's first column (MNLI: matched, the split of the
    best epoch)."""
    return list(run_scores(record, selection).values())[0]


def choose_lr(by_lr, selection="best", lr_selection="mean"):
    """The learning rate of a cell from {lr: [runs]}, on the runs' headline metric. mean: the best mean over that
    rate's seeds (ties: the smaller rate). pilot: the best run of the lowest seed (the pilot's), ties by the higher
    last-epoch score, then the smaller rate; rates without a run of that seed do not compete."""
    if lr_selection == "mean":
        mean = {lr: statistics.fmean(_first(r["results"], selection) for r in rs) for lr, rs in by_lr.items()}
        return max(sorted(mean), key=lambda lr: mean[lr])
    if lr_selection != "pilot":
        raise UsageError(f"learning-rate selection {lr_selection!r} is unknown; use one of {', '.join(LR_SELECTIONS)}")
    seed = min(r["seed"] for rs in by_lr.values() for r in rs)
    pilot = {lr: next(r for r in rs if r["seed"] == seed) for lr, rs in by_lr.items()
             if any(r["seed"] == seed for r in rs)}
    return max(sorted(pilot), key=lambda lr: (_first(pilot[lr]["results"], selection),
                                              _first(pilot[lr]["results"], "last"), -lr))


def aggregate(runs, selection="best", metric_of=None, lr_selection="mean"):
    """One cell per (model, method, task, train_size): its learning rate (choose_lr), then mean/std over its seeds.

    Returns {key: cell}; a cell has model, method, task, train_size, lr, seeds, n, scores {column: [per seed]},
    mean {column}, std {column}, by_lr {lr: (mean selection score, n seeds)}, param_share, runs (paths).
    """
    groups = {}
    for run in runs:
        key = (run["model"], run["method"], run["task"], run["train_size"])
        groups.setdefault(key, {}).setdefault(run["lr"], []).append(run)
    cells = {}
    for key, by_lr in groups.items():
        summary = {}
        for lr, lr_runs in sorted(by_lr.items()):
            # Select on the split each run picks its best epoch on (MNLI: matched); first column = that split.
            summary[lr] = (statistics.fmean(_first(r["results"], selection) for r in lr_runs), len(lr_runs))
        # The rate is chosen on the runs' own headline metric, as their best epoch is, whatever metric the table then
        # shows (--paper-table lora: MRPC accuracy): a cell is the same runs beside every paper.
        best_lr = choose_lr(by_lr, selection, lr_selection)
        chosen = sorted(by_lr[best_lr], key=lambda r: (str(r["seed"]), r["path"]))
        scores = {}
        for r in chosen:
            for col, v in run_scores(r["results"], selection, metric_of).items():
                scores.setdefault(col, []).append(v)
        shares = [r["results"].paper_param_share for r in chosen]
        shares = [s for s in shares if s is not None]
        cells[key] = {
            "model": key[0], "method": key[1], "task": key[2], "train_size": key[3], "lr": best_lr,
            "seeds": [r["seed"] for r in chosen], "n": len(chosen), "scores": scores,
            "mean": {c: _mean_std(v)[0] for c, v in scores.items()},
            "std": {c: _mean_std(v)[1] for c, v in scores.items()},
            "by_lr": summary, "param_share": statistics.fmean(shares) if shares else None,
            "runs": [r["path"] for r in chosen],
        }
    return cells


def at_train_size(cells, size):
    """The cells a table reports when it is asked for one training size: a (model, method, task) that has a cell at
    `size` keeps only that one (the converged reproduction trains every task on 2,000 examples and SST-2 also at the
    sizes of its training-size curve); one without keeps its own (table_rows then picks the largest). None: all."""
    if size is None:
        return cells
    have = {k[:3] for k in cells if k[3] == size}
    return {k: c for k, c in cells.items() if k[:3] not in have or k[3] == size}


TRAIN_SIZE_HELP = ("the training size the table reports where a task was run at several (a training-size curve beside "
                   "the table's runs); default: the full training set, else the largest subset")


def table_rows(cells):
    """{(model, method): {task: cell}}, one cell per task: the full training set when there is one, else the
    largest subset (training-size sweeps put several subsets of one task in the same runs dir)."""
    rows = {}
    for cell in cells.values():
        row = rows.setdefault((cell["model"], cell["method"]), {})
        size = math.inf if cell["train_size"] is None else cell["train_size"]
        old = row.get(cell["task"])
        if old is None or size > (math.inf if old["train_size"] is None else old["train_size"]):
            row[cell["task"]] = cell
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return dict(sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1])))


def column_values(row):
    """{column: mean} of a table row (MNLI contributes two columns)."""
    return {col: v for cell in row.values() for col, v in cell["mean"].items()}


def task_average(values, tasks=None):
    """The paper's Avg.: mean over tasks, MNLI = (m + mm) / 2. -> (average or None, tasks used)."""
    per_task = {}
    for task in tasks or PAPER_TASKS:
        if task == "mnli":
            if "mnli_m" in values and "mnli_mm" in values:
                per_task[task] = (values["mnli_m"] + values["mnli_mm"]) / 2
        elif task in values:
            per_task[task] = values[task]
    if not per_task:
        return None, []
    return statistics.fmean(per_task.values()), [t for t in PAPER_TASKS if t in per_task]


# ---------------------------------------------------------------------------------------------------------------
# the paper's numbers

def load_paper(table):
    """{(model, method): {"param_share": float, "mean": {column: x}, "std": {column: x}}} of the authors' dev rows."""
    path = os.path.join(PAPER_DIR, "lora_table2.csv" if table == "lora" else f"table{table}.csv")
    if not os.path.exists(path):
        raise UsageError(f"paper table file {path} is missing; restore results/paper/ from the repository")
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["split"] != "dev" or (table != "lora" and r["source"] != "own"):
                continue
            share = float(r["param_share"]) if r.get("param_share") else None
            row = rows.setdefault((r["model"], r["method"]), {"param_share": share, "mean": {}, "std": {},
                                                                "trainable": r.get("trainable")})
            row["mean"][r["column"]] = float(r["mean"])
            if r.get("std"):
                row["std"][r["column"]] = float(r["std"])
    return rows


def choose_paper_table(rows):
    """auto: Table 3 if any subset/random/frozen method ran, Table 2 for BERT-base or RoBERTa, Table 1 for BERT-large
    alone; other models (MiniLM) are compared with BERT-base, i.e. Table 3."""
    methods = {m for _, m in rows}
    models = {m for m, _ in rows}
    if methods - {"Full-FT", "BitFit"}:
        return 3
    if models & {"bert-base-cased", "roberta-base"}:
        return 2
    if models == {"bert-large-cased"}:
        return 1
    return 3


def paper_row(paper, table, model, method):
    """The paper row to put beside ours, and the model it belongs to (a stand-in when the paper lacks ours)."""
    if (model, method) in paper:
        return paper[(model, method)], model
    ref = REFERENCE_MODEL[table]
    return paper.get((ref, method)), ref


def paper_average(prow, tasks):
    """The printed Avg. when we cover all 8 tasks; otherwise the paper's own numbers averaged over our tasks."""
    if prow is None or not tasks:
        return None
    if set(tasks) == set(PAPER_TASKS):
        return prow["mean"].get("avg")
    return task_average(prow["mean"], tasks)[0]


# ---------------------------------------------------------------------------------------------------------------
# rendering

def _fmt_share(share):
    if share is None:
        return None
    return "100%" if share >= 99.95 else f"{share:.3g}%"


def build_table(rows, paper, table):
    """Rows of display cells, shared by Markdown and LaTeX: [(model, method, [(ours, std, n, paper, diff)...])]."""
    out = []
    for (model, method), row in rows.items():
        prow, ref = paper_row(paper, table, model, method)
        values = column_values(row)
        cells = []
        shares = [c["param_share"] for c in row.values() if c["param_share"] is not None]
        ours_share = statistics.fmean(shares) if shares else None
        cells.append(("param", _fmt_share(ours_share),
                      (_fmt_share(prow["param_share"]) or prow.get("trainable")) if prow else None))
        for col in COLUMNS:
            task = "mnli" if col.startswith("mnli") else col
            cell = row.get(task)
            ours = values.get(col)
            std = cell["std"].get(col) if cell else None
            n = cell["n"] if cell else 0
            p = prow["mean"].get(col) if prow else None
            cells.append((col, ours, std, n, p))
        avg, tasks = task_average(values)
        cells.append(("avg", avg, None, len(tasks), paper_average(prow, tasks)))
        out.append({"model": model, "method": method, "reference": ref, "cells": cells, "tasks": tasks})
    return out


def _fmt_value(ours, std, n, p, latex=False):
    pm = r"$\pm$" if latex else "±"
    if ours is None:
        left = "missing"
    else:
        left = f"{ours:.1f}" + (f"{pm}{std:.1f}" if std is not None and n > 1 else "")
    if p is None:
        return left
    right = f"{p:.1f}"
    if ours is not None:
        right += f" ({ours - p:+.1f})"
    return f"{left} / {right}"


def _tex(s):
    return (s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            .replace("#", r"\#"))


def _train_size_notes(rows):
    """One note per training-set size, not one per cell: which cells trained on a subset, and of how many examples."""
    sizes = {c["train_size"] for row in rows.values() for c in row.values()}
    if sizes <= {None}:
        return []
    if len(sizes) == 1:
        return [f"every cell: trained on a seeded random subset of {sizes.pop()} training examples (dev sets whole)."]
    notes = []
    for (model, method), row in rows.items():
        by_size = {}
        for task, c in row.items():
            by_size.setdefault(c["train_size"], []).append(task)
        notes += [f"{model} / {method}: trained on a seeded random subset of {n} examples ({', '.join(tasks)})."
                  for n, tasks in by_size.items() if n is not None]
    return notes


def render_markdown(rows, cells, paper, table, ignored, selection, lr_selection="mean"):
    display = build_table(rows, paper, table)
    sel = {"best": "best dev epoch per run", "last": "last epoch"}[selection]
    title = ("the LoRA paper's Table 2 (RoBERTa-base; there MRPC and QQP are accuracy, STS-B Pearson, and our cells "
             "use the same metrics; %Param beside it: trainable parameters without the head)" if table == "lora"
             else f"the paper's Table {table}")
    lines = [f"# Dev-set results vs {title}", "",
             f"Cell: ours mean±std over seeds / paper (ours − paper); metrics ×100, the paper's Table 5 metric. "
             f"Epoch selection: {sel}. Learning rate: "
             f"{LR_TEXT[lr_selection]}. Avg.: 8 tasks, MNLI m/mm "
             f"averaged into one; rows missing tasks average what they have, and the paper's Avg. beside them is "
             f"recomputed over the same tasks.", ""]
    header = ["Model", "Method", "%Param"] + [COLUMN_TITLES[c] for c in COLUMNS] + ["Avg."]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for d in display:
        param = d["cells"][0]
        texts = [f"{param[1] or 'missing'}" + (f" / {param[2]}" if param[2] else "")]
        for col, ours, std, n, p in d["cells"][1:]:
            texts.append(_fmt_value(ours, std, n, p))
        if d["tasks"] and len(d["tasks"]) < len(PAPER_TASKS):
            texts[-1] += f" [{len(d['tasks'])} task{'s' * (len(d['tasks']) > 1)}]"
        lines.append("| " + " | ".join([d["model"], d["method"]] + texts) + " |")
        if d["reference"] != d["model"]:
            notes.append(f"{d['model']}: the paper has no {d['model']}; its {d['reference']} rows are shown.")
    lines += ["", "## Selected learning rate (seeds) per cell", ""]
    tasks_header = ["Model", "Method"] + [COLUMN_TITLES.get(t, t.upper()) if t != "mnli" else "MNLI" for t in PAPER_TASKS]
    lines += ["| " + " | ".join(tasks_header) + " |", "|" + "---|" * len(tasks_header)]
    for (model, method), row in rows.items():
        texts = []
        for task in PAPER_TASKS:
            c = row.get(task)
            texts.append(f"{c['lr']:g} ({c['n']})" if c else "missing")
        lines.append("| " + " | ".join([model, method] + texts) + " |")
    notes += _train_size_notes(rows)
    for (model, method), row in rows.items():
        for task in row:
            if task not in PAPER_TASKS:
                notes.append(f"{model} / {method} / {task}: not a paper column (WNLI is excluded by the paper).")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    lines += ["", f"## Ignored runs ({len(ignored)})", ""]
    lines += [f"- {r['path']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else "") for r in ignored] or ["none"]
    return "\n".join(lines) + "\n"


def render_latex(rows, paper, table, selection):
    display = build_table(rows, paper, table)
    header = ["Model", "Method", r"\%Param"] + [COLUMN_TITLES[c] for c in COLUMNS] + ["Avg."]
    lines = [f"% Dev-set results vs the paper's Table {table}; epoch selection: {selection}. "
             "Cell: ours mean$\\pm$std / paper (ours - paper).",
             r"\begin{tabular}{ll" + "c" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for d in display:
        param = d["cells"][0]
        texts = [_tex(f"{param[1] or 'missing'}" + (f" / {param[2]}" if param[2] else ""))]
        for col, ours, std, n, p in d["cells"][1:]:
            texts.append(_fmt_value(ours, std, n, p, latex=True).replace("missing", "--"))
        lines.append(" & ".join([_tex(d["model"]), _tex(d["method"])] + texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = OneLineParser(prog="python -m bitfit_experiments.tables", description=__doc__.split("\n")[0])
    ap.add_argument("runs_dir", help="a folder of run directories (searched recursively for results.json)")
    ap.add_argument("--out", default=None, help="directory for table.md and table.tex (default: RUNS_DIR)")
    ap.add_argument("--epoch-selection", choices=["best", "last"], default="best",
                    help="best: each run's best dev epoch (the official code's curves); last: its final epoch")
    ap.add_argument("--paper-table", choices=["1", "2", "3", "lora", "auto"], default="auto",
                    help="the table beside ours: the BitFit paper's 1-3, or the LoRA paper's Table 2 (RoBERTa-base "
                    "BitFit / LoRA / Full-FT, on its metrics); auto picks among 1-3 from the runs")
    ap.add_argument("--lr-selection", choices=LR_SELECTIONS, default="mean", help=LR_HELP)
    ap.add_argument("--table-train-size", type=int, help=TRAIN_SIZE_HELP)
    args = ap.parse_args(argv)
    if args.out:  # before the runs are read: a file, or a path under one, is refused in one line
        check_writable(args.out, "--out")
    runs, ignored = load_runs(args.runs_dir)
    if not runs:
        raise UsageError(f"no complete run under {args.runs_dir!r} ({len(ignored)} incomplete/failed); "
                         "run a sweep first (scripts/*.sh) or point at its output directory")
    fixed = None if args.paper_table == "auto" else (args.paper_table if args.paper_table == "lora"
                                                     else int(args.paper_table))
    cells = at_train_size(aggregate(runs, args.epoch_selection, PAPER_METRICS.get(fixed), args.lr_selection),
                          args.table_train_size)
    rows = table_rows(cells)
    table = choose_paper_table(rows) if fixed is None else fixed
    paper = load_paper(table)
    md = render_markdown(rows, cells, paper, table, ignored, args.epoch_selection, args.lr_selection)
    out = args.out or args.runs_dir
    atomic_write_text(os.path.join(out, "table.md"), md)
    atomic_write_text(os.path.join(out, "table.tex"), render_latex(rows, paper, table, args.epoch_selection))
    print(md, end="")


if __name__ == "__main__":
    exit_on_usage_error(main)()
