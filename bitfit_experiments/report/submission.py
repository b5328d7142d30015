"""The zip for the GLUE test server, from a directory of runs.

    python -m bitfit_experiments.submission RUNS_DIR --zip glue_submission.zip [--data-dir GLUE_DIR]
        [--epoch-selection last|best] [--method BitFit] [--model TAG]

Which run fills a task's files, step by step:
  1. The runs are read and grouped exactly as the tables do (report/tables.py: load_runs, aggregate, table_rows):
     per (model, method, task) the full training set (else the largest subset) and the learning rate with the best
     mean dev score over seeds.
  2. Of those cells, the task's best mean wins; of its seeds, the run with the best dev score.
  3. That run's test_predictions/ (written by run_glue.py --predict-test) fill the task's server files; AX comes
     from the MNLI run. A best run without them is an error that names it: a weaker run is never substituted.
  4. A task with no run gets a placeholder (the first label for every row), marked as such in the summary and in
     the zip's comment.
The dev score is taken at the LAST epoch by default, because the test predictions are made by the last-epoch model
(what the run ends with); --epoch-selection best ranks runs by their best dev epoch, as the tables do by default.
Every file is checked before the zip is written: header, values, and the index column against the GLUE test file
(from --data-dir, default $GLUE_DIR) or, where that file is not at hand, the published test-set size.

Layer: report (reads runs through the tables' functions; the files and the zip are artifacts/submission.py).
"""
import os

from ..artifacts.io import check_writable
from ..artifacts.submission import collect_server_files, write_submission_zip
from ..core.data import TASKS
from ..core.errors import OneLineParser, UsageError, exit_on_usage_error
from . import tables


def best_runs(runs, selection="last"):
    """{task: run dict} -- the best run per task by the tables' selection (see the module docstring)."""
    cells = tables.aggregate(runs, selection)
    by_path = {r["path"]: r for r in runs}
    best = {}
    for row in tables.table_rows(cells).values():
        for task, cell in row.items():
            score = cell["by_lr"][cell["lr"]][0]
            if task not in best or score > best[task][0]:
                best[task] = (score, cell)
    return {task: _best_seed(cell, by_path, selection) for task, (_, cell) in best.items()}


def _best_seed(cell, by_path, selection):
    """The cell's run with the best score on its first column (MNLI: matched); ties go to the first in cell order."""
    def score(path):
        return list(tables.run_scores(by_path[path]["results"], selection).values())[0]
    return by_path[max(cell["runs"], key=score)]


def _filter(runs, method, model):
    return [r for r in runs if (method is None or r["method"] == method) and (model is None or r["model"] == model)]


def _check_zip_path(path):
    check_writable(path, "--zip", kind="file")
    if os.path.lexists(path):
        raise UsageError(f"--zip {path} already exists; give a new file name (an existing file is never replaced)")


def summary_lines(files, chosen, selection):
    by_path = {r["path"]: r for r in chosen.values()}
    lines = []
    for f in files:
        if f.placeholder:
            lines.append(f"{f.name:<12} PLACEHOLDER (no run of this task): a constant prediction, scores at chance")
            continue
        run = by_path[f.source]
        score = list(tables.run_scores(run["results"], selection).values())[0]
        lines.append(f"{f.name:<12} {run['method']} / {run['model']} lr {run['lr']:g} seed {run['seed']}: dev "
                     f"{score:.1f} ({selection} epoch)  {f.source}")
    return lines


def build_parser():
    ap = OneLineParser(prog="python -m bitfit_experiments.submission", description=__doc__.split("\n")[0])
    ap.add_argument("runs_dir", help="a directory of runs (any depth), as the tables read it")
    ap.add_argument("--zip", required=True, help="the zip to write (a new file)")
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"),
                    help="GLUE files whose test sets the predictions are checked against (default: $GLUE_DIR; a "
                         "missing test file is checked by the published size)")
    ap.add_argument("--epoch-selection", choices=["last", "best"], default="last",
                    help="rank runs by their last (default: the epoch the test predictions come from) or best dev "
                         "epoch")
    ap.add_argument("--method", help="only runs of this table row, e.g. BitFit or Full-FT")
    ap.add_argument("--model", help="only runs of this model tag (as the tables print it)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    _check_zip_path(args.zip)
    runs, _ = tables.load_runs(args.runs_dir)
    runs = _filter(runs, args.method, args.model)
    if not runs:
        raise UsageError(f"no complete run under {args.runs_dir!r}"
                         f"{' for the given --method/--model' if args.method or args.model else ''}; "
                         f"point at a sweep's output directory")
    chosen = best_runs(runs, args.epoch_selection)
    files = collect_server_files({t: (chosen[t]["path"] if t in chosen else None) for t in TASKS}, args.data_dir)
    write_submission_zip(args.zip, files, {"epoch_selection": args.epoch_selection})
    print("\n".join(summary_lines(files, chosen, args.epoch_selection)))
    placeholders = sum(f.placeholder for f in files)
    by_size = [f.name for f in files if f.index_from == "published size"]
    print(f"wrote {args.zip}: {len(files)} files, {placeholders} placeholder(s); index columns checked against the "
          f"GLUE test files" + (f", by published size only for {', '.join(by_size)} (no test file in --data-dir)"
                                if by_size else ""))
    return files


if __name__ == "__main__":
    exit_on_usage_error(main)()

