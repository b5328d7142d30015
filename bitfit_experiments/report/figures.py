"""Figures from a directory of runs:

    python -m bitfit_experiments.figures RUNS_DIR [--out DIR] [--epoch-selection best|last]

  * bias_change_<model>_<task>.png -- the paper's Figures 1, 3-5: mean |b_F - b_0| per bias family and layer,
    BitFit runs at the learning rate the tables select, averaged over seeds (the averaged numbers go beside
    it as .json, which the claims check reads);
  * train_size_<model>_<task>.png -- the GLUE analogue of Figure 2: Full-FT vs BitFit dev score (mean ± std over
    seeds, best lr per size) against the number of training examples;
  * generalization_gap_<model>_<task>.png -- train vs dev headline metric per epoch for Full-FT and BitFit
    (runs made with --eval-train), the paper's "generalization gap" remark made visible.
The same aggregation as the tables picks the runs, so a figure always shows the cells the table reports.

Layer: report.
"""
import os
import statistics

from . import tables
from .repro_plan import fmt_lr
from ..core.errors import OneLineParser, UsageError, exit_on_usage_error
from ..artifacts.io import atomic_save_figure, atomic_write_json, atomic_write_text, check_writable


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt
    return plt


def _slug(*parts):
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)


def mean_bias_changes(cell):
    """Seed-average of bias_changes.json over a cell's runs (None when no run wrote one)."""
    import json
    found = []
    for path in cell["runs"]:
        f = os.path.join(path, "bias_changes.json")
        if os.path.exists(f):
            with open(f, encoding="utf-8") as fh:
                found.append(json.load(fh))
    if not found:
        return None
    families = {fam: [statistics.fmean(vals) for vals in zip(*(c["families"][fam] for c in found))]
                for fam in found[0]["families"]}
    return {"layers": found[0].get("layers"), "families": families, "notation": found[0].get("notation", {}),
            "seeds": len(found), "learning_rate": cell["lr"]}


def table_cells(cells):
    """The cells the table reports: one per (model, method, task), the full training set or its largest subset
    (the CPU preset trains SST-2 on a subset; a training-size sweep has several)."""
    return [cell for row in tables.table_rows(cells).values() for cell in row.values()]


def bias_heatmaps(cells, out):
    from .plots import plot_bias_heatmap  # the run-level plotting module; imported late so this module loads alone
    written = []
    for cell in table_cells(cells):
        if cell["method"] != "BitFit":
            continue
        changes = mean_bias_changes(cell)
        if changes is None:
            continue
        stem = os.path.join(out, "bias_change_" + _slug(cell["model"], cell["task"]))
        atomic_write_json(stem + ".json", changes)
        title = (f"Change in bias components ({cell['task'].upper()} task, {cell['model']}, "
                 f"lr {cell['lr']:g}, {changes['seeds']} seeds)")
        plot_bias_heatmap(changes, stem + ".png", title)
        written.append(stem + ".png")
    return written


def cell_headline(cell):
    """One number per cell (MNLI: mean of matched and mismatched) and its std, x100."""
    cols = list(cell["mean"])
    return statistics.fmean(cell["mean"][c] for c in cols), statistics.fmean(cell["std"][c] for c in cols)


def training_size_curves(cells, results_by_path, out):
    plt = _plt()
    groups = {}
    for cell in cells.values():
        if cell["method"] in ("Full-FT", "BitFit"):
            groups.setdefault((cell["model"], cell["task"]), []).append(cell)
    written = []
    for (model, task), group in sorted(groups.items()):
        if len({c["train_size"] for c in group}) < 2:
            continue  # not a training-size sweep
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        table = {}
        for method, style in (("Full-FT", "o-"), ("BitFit", "s-")):
            points = []
            for c in group:
                if c["method"] == method:
                    # the true number of examples trained on (a "full" run records its whole training set)
                    n = results_by_path[c["runs"][0]].num_train_examples or c["train_size"]
                    points.append((n, *cell_headline(c)))
                    runs = [results_by_path[p] for p in c["runs"]]
                    last = statistics.fmean(statistics.fmean(tables.run_scores(r, "last").values()) for r in runs)
                    epochs = statistics.fmean(len(r.epochs) for r in runs)
                    table.setdefault(n, {})[method] = (*cell_headline(c), c["n"], c["lr"], last, epochs)
            if points:
                points.sort()
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, ms=4, label=method)
        metric = results_by_path[group[0]["runs"][0]].headline_metric
        ax.set_xscale("log")
        # one labelled tick per training size: matplotlib's log ticks (3x10^2, 4x10^2, ...) collide at these sizes
        from matplotlib.ticker import NullFormatter
        ax.set_xticks(sorted(table), [f"{n:,}" for n in sorted(table)])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training examples")
        ax.set_ylabel(f"dev {metric} (x100)")
        ax.set_title(f"{task.upper()}, {model}:\nBitFit vs Full-FT by training size", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, os.path.join(out, "train_size_" + _slug(model, task) + ".png")))
        atomic_write_text(os.path.join(out, "train_size_" + _slug(model, task) + ".md"),
                          _train_size_table(model, task, results_by_path[group[0]["runs"][0]].headline_metric, table))
    return written


def _train_size_table(model, task, metric, table):
    """The training-size curve as numbers: per size, each method's mean ± std over seeds (n seeds, its lr); the
    difference of the means; the same from the last epochs' scores (no epoch chosen on the dev set); and the mean
    number of epochs, i.e. of dev scores the best epoch was chosen among -- a run trained longer has more chances
    of a lucky one, so where the two differences part, the epoch choice is what moved the first."""
    lines = [f"# {task.upper()}, {model}: dev {metric} (x100) by training size, mean ± std over seeds", "",
             "| training examples | Full-FT | BitFit | BitFit - Full-FT | the same, last epochs | epochs: Full-FT / "
             "BitFit |", "|---|---|---|---|---|---|"]
    for n in sorted(table):
        row = table[n]
        cells = [f"{row[m][0]:.1f} ± {row[m][1]:.1f} ({row[m][2]} seed{'s' * (row[m][2] != 1)}, lr "
                 f"{fmt_lr(row[m][3])})" if m in row else "missing" for m in ("Full-FT", "BitFit")]
        both = len(row) == 2
        diff = f"{row['BitFit'][0] - row['Full-FT'][0]:+.1f}" if both else ""
        last = f"{row['BitFit'][4] - row['Full-FT'][4]:+.1f}" if both else ""
        epochs = " / ".join(f"{row[m][5]:.1f}" if m in row else "-" for m in ("Full-FT", "BitFit"))
        lines.append(f"| {n:,} | {cells[0]} | {cells[1]} | {diff} | {last} | {epochs} |")
    return "\n".join(lines) + "\n"


def _save(plt, fig, path):
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path


def _curve_ragged(results_list, split):
    """Per epoch up to the longest run (runs trained longer in place have more epochs than their seeds): the mean,
    the sample std (ddof 1; 0 for one run) and the number of runs that reached that epoch, of the headline metric
    (x100) on one split."""
    key = results_list[0].headline_metric
    n = max(len(r.epochs) for r in results_list)
    per_epoch = [[100 * r.epochs[i].metrics[split][key] for r in results_list if i < len(r.epochs)] for i in range(n)]
    return ([statistics.fmean(v) for v in per_epoch], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch],
            [len(v) for v in per_epoch])


def _curve(results_list, split):
    """Mean over seeds per epoch, on the epochs every run has."""
    mean, _, count = _curve_ragged(results_list, split)
    return mean[:count.count(len(results_list))]


def _curve_std(results_list, split):
    """Sample std over seeds per epoch, on the epochs every run has."""
    _, std, count = _curve_ragged(results_list, split)
    return std[:count.count(len(results_list))]


def dev_learning_curves(cells, results_by_path, out):
    """Per (model, task): the dev headline metric per epoch, mean ± std over the seeds of the chosen learning rate,
    BitFit vs Full-FT -- whether the curves have flattened is what 'trained to convergence' means."""
    plt = _plt()
    pairs = {}
    for cell in table_cells(cells):
        if cell["method"] in ("Full-FT", "BitFit"):
            pairs.setdefault((cell["model"], cell["task"]), {})[cell["method"]] = cell
    written = []
    for (model, task), methods in sorted(pairs.items()):
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        for method, color in (("Full-FT", "tab:red"), ("BitFit", "tab:blue")):
            if method not in methods:
                continue
            cell = methods[method]
            runs = [results_by_path[p] for p in cell["runs"]]
            split = runs[0].eval_splits[0]
            mean, std, count = _curve_ragged(runs, split)
            epochs = list(range(1, len(mean) + 1))
            full = count.count(len(runs))  # epochs every seed reached; after them a dashed tail
            ax.plot(epochs[:full], mean[:full], "-o", ms=3, color=color,
                    label=f"{method} (lr {cell['lr']:g}, {len(runs)} seed{'s' if len(runs) > 1 else ''})")
            if full < len(epochs):  # some seeds were trained longer (the convergence rule): fewer seeds there
                ax.plot(epochs[full - 1:], mean[full - 1:], "--o", ms=2, color=color, alpha=0.8,
                        label=f"{method}: epochs {full + 1}-{len(epochs)}, only the seeds trained longer")
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.15)
        metric = results_by_path[next(iter(methods.values()))["runs"][0]].headline_metric
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"dev {metric} (x100)")
        ax.set_title(f"{task.upper()}, {model}:\ndev {metric} per epoch, mean ± std over seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(plt, fig, os.path.join(out, "dev_curve_" + _slug(model, task) + ".png")))
    return written


def generalization_gap(cells, results_by_path, out):
    plt = _plt()
    pairs = {}
    for cell in table_cells(cells):
        if cell["method"] in ("Full-FT", "BitFit"):
            runs = [results_by_path[p] for p in cell["runs"]]
            if all(r.epochs and "train" in r.epochs[0].metrics for r in runs):
                pairs.setdefault((cell["model"], cell["task"]), {})[cell["method"]] = (cell, runs)
    written = []
    for (model, task), methods in sorted(pairs.items()):
        if len(methods) < 2:
            continue
        fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(9.0, 3.6))
        for method, color in (("Full-FT", "tab:red"), ("BitFit", "tab:blue")):
            cell, runs = methods[method]
            dev_split = runs[0].eval_splits[0]
            train, dev = _curve(runs, "train"), _curve(runs, dev_split)
            epochs = range(1, len(train) + 1)
            label = f"{method} (lr {cell['lr']:g})"
            ax.plot(epochs, train, "--", color=color, label=f"{label} train")
            ax.plot(epochs, dev, "-", color=color, label=f"{label} dev")
            gap_ax.plot(epochs, [t - d for t, d in zip(train, dev)], "-o", ms=3, color=color, label=method)
        metric = methods["BitFit"][1][0].headline_metric
        ax.set_title(f"{task.upper()}, {model}: train vs dev {metric}", fontsize=9)
        gap_ax.set_title("generalization gap (train - dev)", fontsize=9)
        from matplotlib.ticker import MaxNLocator
        for a in (ax, gap_ax):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.set_xlabel("epoch")
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
        written.append(_save(plt, fig, os.path.join(out, "generalization_gap_" + _slug(model, task) + ".png")))
    return written


def make_figures(runs_dir, out, selection="best", lr_selection="mean", train_size=None):
    """Every figure that applies. `train_size`: the size the per-task figures show where a task has several (the
    training-size curve itself shows them all)."""
    runs, _ = tables.load_runs(runs_dir)
    if not runs:
        raise UsageError(f"no complete run under {runs_dir!r}; run a sweep first or point at its output directory")
    cells = tables.aggregate(runs, selection, lr_selection=lr_selection)
    at_size = tables.at_train_size(cells, train_size)
    results_by_path = {r["path"]: r["results"] for r in runs}
    return (bias_heatmaps(at_size, out) + training_size_curves(cells, results_by_path, out)
            + dev_learning_curves(at_size, results_by_path, out) + generalization_gap(at_size, results_by_path, out))


def main(argv=None):
    ap = OneLineParser(prog="python -m bitfit_experiments.figures", description=__doc__.split("\n")[0])
    ap.add_argument("runs_dir", help="a folder of run directories (searched recursively for results.json)")
    ap.add_argument("--out", default=None, help="directory for the figures (default: RUNS_DIR/figures)")
    ap.add_argument("--epoch-selection", choices=["best", "last"], default="best",
                    help="each run's score: its best dev epoch (the paper) or its last epoch")
    ap.add_argument("--lr-selection", choices=tables.LR_SELECTIONS, default="mean", help=tables.LR_HELP)
    ap.add_argument("--table-train-size", type=int, help=tables.TRAIN_SIZE_HELP)
    args = ap.parse_args(argv)
    if args.out:  # before the runs are read: a file, or a path under one, is refused in one line
        check_writable(args.out, "--out")
    written = make_figures(args.runs_dir, args.out or os.path.join(args.runs_dir, "figures"), args.epoch_selection,
                           args.lr_selection, args.table_train_size)
    for path in written:
        print(path)
    if not written:
        print("no figure applies to these runs (need BitFit runs with bias_changes.json, several --train-size "
              "values, or Full-FT and BitFit runs made with --eval-train)")


if __name__ == "__main__":
    exit_on_usage_error(main)()
