"""Does the paper hold on our runs? Claim by claim, from the same aggregation as the tables.

    python -m bitfit_experiments.claims RUNS_DIR [--epoch-selection best|last] [--data-dir GLUE_DIR] [--out FILE]

Each claim prints HOLDS, FAILS or UNTESTED (the runs it needs are missing) with the numbers behind it and the
paper's own numbers on the same tasks (BERT-base, Table 3). Averages are the paper's Avg. (MNLI m/mm as one
task) over the tasks BOTH compared methods have, so a missing task never tilts a comparison. A difference no larger
than the seeds' own spread (mean over those tasks of the larger of the two std's) is flagged "within seed noise":
such a HOLDS or FAILS says little either way.
Where BitFit and Full-FT ran at 3 or more training sizes of a task, two claims read the curve as the paper reads
its Figure 2: BitFit - Full-FT falls as the training set grows, and BitFit is ahead at the smallest size. Runs made
with --eval-train also test the paper's generalization-gap remark (train minus dev, smaller for BitFit).
The "close" and "far" thresholds below are ours -- the paper says "marginally lower", "much worse" in words.
With the GLUE files (--data-dir, default $GLUE_DIR) the report ends with each task's majority-class baseline and
every method's score beside it: a method at that baseline has not learned the task, whatever the claims say.

Layer: report.
"""
import os
import statistics

from scipy.stats import spearmanr

from . import tables
from ..core.config import PAPER_NOTATION
from ..core.errors import OneLineParser, UsageError, exit_on_usage_error
from .figures import cell_headline, mean_bias_changes, table_cells
from ..artifacts.io import atomic_write_text, check_writable

CLOSE = 1.5     # points of Avg.: "comparable" / "only marginally lower" (paper: BitFit +0.1, b_m2,b_q -1.3)
FAR = 5.0       # points of Avg.: "much worse" (paper: Frozen -20.3 below BitFit)
PAPER_MODEL = "bert-base-cased"


def _avg_pair(rows, model, a, b):
    """Avg. of methods a and b over the tasks both have -> (avg a, avg b, tasks) or None."""
    if (model, a) not in rows or (model, b) not in rows:
        return None
    va, vb = tables.column_values(rows[(model, a)]), tables.column_values(rows[(model, b)])
    tasks = [t for t in tables.PAPER_TASKS if t in rows[(model, a)] and t in rows[(model, b)]]
    if not tasks:
        return None
    return tables.task_average(va, tasks)[0], tables.task_average(vb, tasks)[0], tasks


def _paper_pair(paper, a, b, tasks):
    pa, pb = paper.get((PAPER_MODEL, a)), paper.get((PAPER_MODEL, b))
    if pa is None or pb is None:
        return ""
    return (f"; paper (BERT-base) on the same tasks: {a} {tables.task_average(pa['mean'], tasks)[0]:.1f} vs "
            f"{b} {tables.task_average(pb['mean'], tasks)[0]:.1f}")


def compare(rows, paper, model, a, b, test, claim):
    """One claim about Avg.(a) - Avg.(b): `test(diff)` -> bool."""
    pair = _avg_pair(rows, model, a, b)
    if pair is None:
        missing = [f'"{m}"' for m in (a, b) if (model, m) not in rows]
        return claim, "UNTESTED", (f"no runs of {' and '.join(missing)}" if missing else f'"{a}" and "{b}" share no task')
    va, vb, tasks = pair
    detail = (f"{a} {va:.1f} vs {b} {vb:.1f} ({va - vb:+.1f}) over {len(tasks)} tasks ({' '.join(tasks)})"
              + _paper_pair(paper, a, b, tasks))
    noise = seed_noise(rows[(model, a)], rows[(model, b)], tasks)
    if noise is None:
        detail += "; one seed per cell, noise unknown"
    elif abs(va - vb) <= noise:
        detail += f"; within seed noise (std ~{noise:.1f})"
    return claim, "HOLDS" if test(va - vb) else "FAILS", detail


def seed_noise(row_a, row_b, tasks):
    """Mean over `tasks` of the larger seed std of the two cells (MNLI: its columns averaged); None if no cell
    has two seeds."""
    per_task = []
    for task in tasks:
        cells = [row[task] for row in (row_a, row_b) if row[task]["n"] > 1]
        if cells:
            per_task.append(max(sum(c["std"].values()) / len(c["std"]) for c in cells))
    return sum(per_task) / len(per_task) if per_task else None


def majority_baselines(tasks, data_dir):
    """{column: headline dev metric x100} of always predicting the training split's most frequent label
    (the dev split's when the training file is absent). STS-B (regression) has none."""
    from ..core import data, metrics
    out = {}
    for task in tasks:
        spec = data.get_task(task)
        if spec.is_regression:
            continue
        source = "train" if os.path.isfile(data.split_path(task, "train", data_dir)) else spec.eval_splits[0]
        label = int(data.load_split(task, source, data_dir)["label"].value_counts().idxmax())
        for split in spec.eval_splits:
            refs = data.load_split(task, split, data_dir)["label"].to_numpy()
            value = metrics.compute_metrics(task, [label] * len(refs), refs)[spec.headline]
            column = tables.MNLI_COLUMNS.get(split, task)
            out[column] = (100.0 * value, source)
    return out


def baseline_report(rows, data_dir):
    """Lines: per task, the majority baseline and each method's mean (marked when within 1 point of it)."""
    columns = [c for c in tables.COLUMNS if any(c in tables.column_values(r) for r in rows.values())]
    tasks = sorted({"mnli" if c.startswith("mnli") else c for c in columns}, key=tables.PAPER_TASKS.index)
    base = majority_baselines(tasks, data_dir)
    lines = ["Context: majority-class baseline on dev (always the most frequent training label; "
             "(at baseline) marks a method within 1 point of it: it has not left the baseline)"]
    for col in columns:
        if col not in base:
            continue
        value, source = base[col]
        marks = []
        for (model, method), row in rows.items():
            v = tables.column_values(row).get(col)
            if v is not None:
                marks.append(f"{method} {v:.1f}" + (" (at baseline)" if abs(v - value) <= 1.0 else ""))
        lines.append(f"  {col}: majority {value:.1f}" + (f" (label from {source})" if source != "train" else "")
                     + " | " + ", ".join(marks))
    return lines


def heatmap_claims(cells, model):
    """b_k changes least; b_q and b_m2 change most (the two largest), per task with BitFit bias changes."""
    out = []
    for cell in sorted(table_cells(cells), key=lambda c: c["task"]):
        if cell["model"] != model or cell["method"] != "BitFit":
            continue
        changes = mean_bias_changes(cell)
        if changes is None:
            continue
        fams = changes["families"]
        notation = changes.get("notation") or PAPER_NOTATION
        avg = {f: sum(v) / len(v) for f, v in fams.items()}
        ranked = sorted(avg, key=lambda f: -avg[f])
        names = " > ".join(f"{notation.get(f, f)} {avg[f]:.2g}" for f in ranked)
        least = ranked[-1] == "key"
        most = set(ranked[:2]) == {"query", "intermediate"}
        # Expected by construction, not only observed: b_k adds the same q.b_k to every attention score of a query,
        # which softmax cancels, so its gradient is zero up to rounding (tests/test_end_to_end.py checks it).
        why = "; b_k's gradient is 0 up to rounding (softmax cancels q.b_k, the same for every key)" if least else ""
        out.append((f"[{cell['task']}] heatmap: b_k changes least", "HOLDS" if least else "FAILS", names + why))
        out.append((f"[{cell['task']}] heatmap: b_q and b_m2 change most", "HOLDS" if most else "FAILS", names))
    if not out:
        out.append(("heatmap: b_k least, b_q and b_m2 most", "UNTESTED", "no BitFit run wrote bias_changes.json"))
    return out


def training_size_claims(cells, model):
    """The paper's Figure 2 reading, on every task with BitFit and Full-FT at 3 or more training sizes: "a reverse
    correlation between BitFit ability to reach Full-FT performance, and training set size ... BitFit dominates
    over Full-FT in the smaller-data regime". `cells`: the whole aggregation, every training size."""
    by_task = {}
    for cell in cells.values():
        if cell["model"] == model and cell["method"] in ("BitFit", "Full-FT") and cell["train_size"] is not None:
            by_task.setdefault(cell["task"], {}).setdefault(cell["train_size"], {})[cell["method"]] = cell
    out = []
    for task, by_size in sorted(by_task.items()):
        sizes = sorted(n for n, pair in by_size.items() if len(pair) == 2)
        if len(sizes) < 3:
            continue  # not a training-size curve (the table's one size, or a curve still being run)
        diff, noise = {}, {}
        for n in sizes:
            (bitfit, b_std), (full, f_std) = (cell_headline(by_size[n][m]) for m in ("BitFit", "Full-FT"))
            diff[n] = bitfit - full
            # the seeds' spread at this size: unknown with one seed per method
            noise[n] = max(b_std, f_std) if max(by_size[n][m]["n"] for m in ("BitFit", "Full-FT")) > 1 else None
        curve = ", ".join(f"{n:,} {diff[n]:+.1f}" for n in sizes)
        # a flat curve has no rank correlation (scipy: nan); it does not fall with size either
        rho = spearmanr(sizes, [diff[n] for n in sizes]).statistic if len(set(diff.values())) > 1 else 0.0
        known = [v for v in noise.values() if v is not None]
        spread = max(diff.values()) - min(diff.values())
        flag = ("; seeds' noise unknown (one seed per cell)" if not known else
                f"; within seed noise (the differences span {spread:.1f}, std ~{statistics.fmean(known):.1f})"
                if spread <= statistics.fmean(known) else "")
        out.append((f"[{task}] training size: BitFit - Full-FT falls as the training set grows (the paper's reverse "
                    f"correlation)", "HOLDS" if rho < 0 else "FAILS",
                    f"BitFit - Full-FT by training examples: {curve}; rank correlation with size {rho:+.2f}" + flag))
        small = sizes[0]
        at_small = ("; seeds' noise unknown" if noise[small] is None else
                    f"; within seed noise (std ~{noise[small]:.1f})" if abs(diff[small]) <= noise[small] else "")
        out.append((f"[{task}] training size: BitFit is at or above Full-FT at the smallest size (\"dominates in the "
                    f"smaller-data regime\")", "HOLDS" if diff[small] >= 0 else "FAILS",
                    f"at {small:,} examples BitFit - Full-FT {diff[small]:+.1f}" + at_small))
    return out


def generalization_gap_claim(rows, records, model, selection):
    """"the generalization gap -- the difference between training error and test error -- is substantially smaller
    for the BitFit models": train minus dev headline metric at each run's selected epoch, mean over seeds, then over
    the tasks where both methods' runs evaluated their training set (run_glue.py --eval-train)."""
    claim = "BitFit's generalization gap (train - dev) is smaller than Full-FT's"
    gaps = {}
    for method in ("BitFit", "Full-FT"):
        for task, cell in rows.get((model, method), {}).items():
            runs = [records[p] for p in cell["runs"]]
            picked = [r.best if selection == "best" else r.last for r in runs]
            if all("train" in m for m in picked):
                key, dev = runs[0].headline_metric, runs[0].eval_splits[0]
                gaps.setdefault(task, {})[method] = 100.0 * statistics.fmean(
                    m["train"][key] - m[dev][key] for m in picked)
    tasks = [t for t in tables.PAPER_TASKS if len(gaps.get(t, {})) == 2]
    if not tasks:
        return claim, "UNTESTED", "no BitFit and Full-FT runs of one task both evaluated their training set (--eval-train)"
    mean = {m: statistics.fmean(gaps[t][m] for t in tasks) for m in ("BitFit", "Full-FT")}
    per_task = ", ".join(f"{t} {gaps[t]['BitFit']:.1f} vs {gaps[t]['Full-FT']:.1f}" for t in tasks)
    return (claim, "HOLDS" if mean["BitFit"] < mean["Full-FT"] else "FAILS",
            f"gap (points, at the selected epoch) BitFit {mean['BitFit']:.1f} vs Full-FT {mean['Full-FT']:.1f} over "
            f"{len(tasks)} tasks ({per_task})")


def _rows(runs_dir, selection, lr_selection="mean", train_size=None):
    """-> (the cells at the table's training size, their table rows, every cell, {run path: RunRecord})."""
    runs, _ = tables.load_runs(runs_dir)
    if not runs:
        raise UsageError(f"no complete run under {runs_dir!r}; run a sweep first or point at its output directory")
    every = tables.aggregate(runs, selection, lr_selection=lr_selection)
    cells = tables.at_train_size(every, train_size)
    return cells, tables.table_rows(cells), every, {r["path"]: r["results"] for r in runs}


def check_claims(runs_dir, selection="best", lr_selection="mean", train_size=None):
    """-> list of (model, claim, status, detail)."""
    return claims_from(*_rows(runs_dir, selection, lr_selection, train_size), selection=selection)


def claims_from(cells, rows, every=None, records=None, selection="best"):
    """check_claims on an aggregation already made (tables.aggregate, tables.table_rows). `every`: the aggregation
    before it was cut to one training size, for the training-size claims (default: `cells`); `records`: {run path:
    RunRecord}, for the generalization gap (without it that claim is not made)."""
    paper = tables.load_paper(3)
    results = []
    for model in sorted({m for m, _ in rows}):
        claims = [
            compare(rows, paper, model, "BitFit", "Full-FT", lambda d: d >= -CLOSE,
                    f"BitFit matches Full-FT on average (within {CLOSE} points or better)"),
            compare(rows, paper, model, "b_m2, b_q", "BitFit", lambda d: d >= -CLOSE,
                    f"b_m2, b_q alone is close to BitFit (within {CLOSE} points)"),
            compare(rows, paper, model, "b_m2", "b_m2, b_q", lambda d: d < 0, "b_m2 alone is lower than b_m2, b_q"),
            compare(rows, paper, model, "b_q", "b_m2, b_q", lambda d: d < 0, "b_q alone is lower than b_m2, b_q"),
            compare(rows, paper, model, "rand uniform", "BitFit", lambda d: d < 0,
                    "random uniform parameters (same budget) are below BitFit"),
            compare(rows, paper, model, "rand row/col", "BitFit", lambda d: d < 0,
                    "random rows/columns (same budget) are below BitFit"),
            compare(rows, paper, model, "Frozen", "BitFit", lambda d: d <= -FAR,
                    f"Frozen is far below BitFit (by {FAR} points or more)"),
        ] + heatmap_claims(cells, model) + training_size_claims(every or cells, model)
        if records is not None:
            claims.append(generalization_gap_claim(rows, records, model, selection))
        results += [(model, *c) for c in claims]
    return results


def render(results, selection, context=()):
    lines = [f"Paper claims on these runs (epoch selection: {selection}; Avg. over the tasks both sides have)", ""]
    for model, claim, status, detail in results:
        lines.append(f"{status:9s} {model}: {claim}")
        lines.append(f"          {detail}")
    counts = {s: sum(r[2] == s for r in results) for s in ("HOLDS", "FAILS", "UNTESTED")}
    noisy = sum("within seed noise" in r[3] for r in results)
    lines += ["", "summary: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
              + (f" ({noisy} within seed noise)" if noisy else "")]
    if context:
        lines += [""] + list(context)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = OneLineParser(prog="python -m bitfit_experiments.claims", description=__doc__.split("\n")[0])
    ap.add_argument("runs_dir", help="a folder of run directories (searched recursively for results.json)")
    ap.add_argument("--epoch-selection", choices=["best", "last"], default="best",
                    help="each run's score: its best dev epoch (the paper) or its last epoch")
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"),
                    help="GLUE files for the majority-class baselines (default: $GLUE_DIR; none: no baselines)")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--lr-selection", choices=tables.LR_SELECTIONS, default="mean", help=tables.LR_HELP)
    ap.add_argument("--table-train-size", type=int, help=tables.TRAIN_SIZE_HELP)
    args = ap.parse_args(argv)
    if args.out:  # before the runs are read: a directory, or a path under a file, is refused in one line
        check_writable(args.out, "--out", kind="file")
    # the runs are read once
    cells, rows, every, records = _rows(args.runs_dir, args.epoch_selection, args.lr_selection, args.table_train_size)
    results = claims_from(cells, rows, every, records, args.epoch_selection)
    context = baseline_report(rows, args.data_dir) if args.data_dir else ()
    text = render(results, args.epoch_selection, context)
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    exit_on_usage_error(main)()
