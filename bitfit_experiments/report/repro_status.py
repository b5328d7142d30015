"""The converged reproduction's progress as a markdown table, made from the run records (never typed by hand).

    python -m bitfit_experiments.report.repro_status RUNS_DIR [--out FILE]

One row per run directory under RUNS_DIR/<model>/<method>/<task>-n<size>/lr<rate>/seed<s>, complete or not: the dev
headline metric per epoch (x100; the best epoch in bold), the training loss of the first and last epoch, the best
epoch and its score, whether it was trained longer in place (the convergence rule) and the training time. Then
the planner's decisions so far: the best pilot rate per (method, task), BitFit vs Full-FT at those rates over the
seeds complete so far, and what it would run next.

Layer: report (reads finished runs; writes only --out).
"""
import glob
import json
import os
import sys
from statistics import fmean, median_high

from ..artifacts.io import atomic_write_text, check_writable
from ..core.errors import OneLineParser, UsageError, exit_on_usage_error
from . import repro_plan

METHOD_TITLE = {"full_ft": "Full-FT", "bitfit": "BitFit", "bm2_bq": "b_m2, b_q", "bm2": "b_m2", "bq": "b_q",
                "frozen": "Frozen", "rand_uniform": "rand uniform", "rand_row_col": "rand row/col", "lora": "LoRA",
                "ia3": "IA3", "bitfit_lora": "BitFit+LoRA"}
TASK_ORDER = ["rte", "mrpc", "stsb", "cola", "sst2"]
METRIC_TITLE = {"accuracy": "acc", "f1": "F1", "spearmanr": "Spearman", "matthews_correlation": "MCC"}


def _load(path):
    try:
        with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
            r = json.load(f)
        return r if isinstance(r, dict) else None
    except (OSError, ValueError):
        return None


def find(runs_dir):
    """[(method, task, size, lr, seed, path, record)] for every run directory of the planner's layout
    (repro_plan.run_dir: <model>/<method>/<task>-n<size>/lr<rate>/seed<s>) with a readable results.json."""
    out = []
    for path in glob.glob(os.path.join(glob.escape(runs_dir), "*", "*", "*-n*", "lr*", "seed*")):
        record = _load(path)
        rest, seed = os.path.split(path)
        rest, lr = os.path.split(rest)
        rest, cell = os.path.split(rest)
        method = os.path.basename(rest)
        task, _, size = cell.partition("-n")
        if record is not None and size.isdigit() and seed[4:].isdigit():
            out.append((method, task, int(size), float(lr[2:]), int(seed[4:]), path, record))
    order = {m: i for i, m in enumerate(METHOD_TITLE)}
    return sorted(out, key=lambda r: (TASK_ORDER.index(r[1]) if r[1] in TASK_ORDER else 99, r[2],
                                      order.get(r[0], 99), r[3], r[4]))


def row(method, task, size, lr, seed, record):
    key = record.get("headline_metric") or repro_plan.HEADLINE[task]
    split = (record.get("eval_splits") or ["dev"])[0]
    epochs = record.get("epochs") or []
    best = record.get("best_epoch")
    scores = []
    for e in epochs:
        v = 100 * e["metrics"][split][key]
        scores.append(f"**{v:.1f}**" if e["epoch"] == best and record.get("status") == "complete" else f"{v:.1f}")
    loss = f"{epochs[0]['train_loss']:.3f} -> {epochs[-1]['train_loss']:.3f}" if epochs else ""
    status = record.get("status", "?")
    if status == "complete":
        result = f"{best_score(task, record):.1f} (epoch {best} of {record['last_epoch']})"
    else:
        result = f"{status}, {len(epochs)} epoch{'s' if len(epochs) != 1 else ''} so far"
    longer = record.get("resumed_after_epochs") or []
    hours = (record.get("total_train_time_sec") or 0) / 3600
    title = f"{task.upper()} {METHOD_TITLE.get(method, method)} lr {repro_plan.fmt_lr(lr)} seed {seed}"
    if size and size != 2000:
        title += f", {size:,} examples"
    return (f"| {title} | {METRIC_TITLE.get(key, key)} {' '.join(scores)} | {loss} | {result} | "
            f"{', '.join(str(n) for n in longer) or '-'} | {hours:.2f} |")


# Whose measured epoch time stands in for a method not yet run: the weight-training baselines back-propagate into
# every weight matrix as Full-FT does; the bias-only and adapter methods cost about what BitFit does (Frozen, with
# its cached features, much less: counted as BitFit, an upper bound).
COST_PROXY = {"full_ft": "full_ft", "rand_uniform": "full_ft", "rand_row_col": "full_ft"}


def estimate_hours(runs, plan):
    """(worker-hours the planner's current list needs, runs with nothing comparable measured yet). Per run: its
    epochs still to train (a run resumed or trained longer only costs its new ones) x (its training-set size x the
    median training seconds per example + the median seconds of one dev evaluation), both measured on the complete
    runs of the same task and cost class. The evaluation does not shrink with the training set: at the curve's 250
    examples it is most of an epoch."""
    train, evals = {}, {}
    for method, task, _, _, _, _, rec in runs:
        if rec.get("status") != "complete" or not rec.get("num_train_examples"):
            continue
        key = (COST_PROXY.get(method, "bitfit"), task)
        for e in rec.get("epochs") or []:
            train.setdefault(key, []).append(e["epoch_time_sec"] / rec["num_train_examples"])
            evals.setdefault(key, []).append(e.get("eval_time_sec", 0.0))
    started = {(m, t, n, repro_plan.fmt_lr(lr), s): len(rec.get("epochs") or []) for m, t, n, lr, s, _, rec in runs}
    total, unknown = 0.0, 0
    for phase in plan.values():
        for method, task, n, lr, seed, epochs in phase:
            key = (COST_PROXY.get(method, "bitfit"), task)
            if key not in train:
                unknown += 1
                continue
            left = epochs - started.get((method, task, n, repro_plan.fmt_lr(lr), seed), 0)
            total += (median_high(train[key]) * n + median_high(evals[key])) * max(left, 0)
    return total / 3600, unknown


def best_score(task, record, which="best"):
    """The best-epoch (or, with which="last", the last epoch's) dev headline metric of a complete run (x100)."""
    key = record.get("headline_metric") or repro_plan.HEADLINE[task]
    return 100 * record[which][(record.get("eval_splits") or ["dev"])[0]][key]


def comparison(runs, best, size):
    """BitFit vs Full-FT where both pilots are decided: each at its pilot rate, the complete seeds' best-epoch dev
    scores, their means and the difference of the means -- what the headline claim will be judged on, so far.
    Seed 0 chose each method's rate among 3+ rates, so its score at that rate is the best of several noisy ones
    (optimistic); the seeds after it were not used to choose, so their difference is also given on its own. The
    best epoch is itself a choice on the dev set, and a run trained longer has more epochs to choose among (BitFit's
    runs are the longer ones), so the difference of the last epochs' scores -- no choice at all -- is given too."""
    done = [(m, t, repro_plan.fmt_lr(lr), s, rec) for m, t, n, lr, s, _, rec in runs
            if n == size and rec.get("status") == "complete"]
    score = {(m, t, r, s): best_score(t, rec) for m, t, r, s, rec in done}
    final = {(m, t, r, s): best_score(t, rec, "last") for m, t, r, s, rec in done}
    out = []
    for task in TASK_ORDER:
        if ("bitfit", task) not in best or ("full_ft", task) not in best:
            continue
        (blr, b), (flr, f) = (_at_pilot_rate(score, method, task, best) for method in ("bitfit", "full_ft"))
        later = [[v for seed, v in seeds.items() if seed != 0] for seeds in (b, f)]
        unchosen = f"{fmean(later[0]) - fmean(later[1]):+.1f}" if all(later) else "-"
        last_b, last_f = (_at_pilot_rate(final, method, task, best)[1] for method in ("bitfit", "full_ft"))
        out.append(f"| {task.upper()} | {blr}: {' '.join(f'{v:.1f}' for v in b.values())} | {flr}: "
                   f"{' '.join(f'{v:.1f}' for v in f.values())} | {fmean(b.values()) - fmean(f.values()):+.1f} | "
                   f"{unchosen} | {fmean(last_b.values()) - fmean(last_f.values()):+.1f} | {len(b)} / {len(f)} |")
    if not out:
        return []
    return ["", "BitFit vs Full-FT so far, each at its pilot rate (best-epoch dev score x100 per seed; the claim is "
            "judged at 3 seeds each). Seed 0 chose the rate, so its score is the best of several; the seeds after it "
            "were not used to choose:", "",
            "| task | BitFit (rate: seeds) | Full-FT (rate: seeds) | BitFit - Full-FT (means) | the same, seeds 1+ only "
            "| the same, last epochs (no epoch chosen) | seeds |", "|---|---|---|---|---|---|---|"] + out


def _at_pilot_rate(score, method, task, best):
    """(the pilot's rate as spelled, {seed: score} in seed order) of one (method, task)."""
    lr = repro_plan.fmt_lr(best[method, task])
    return lr, {seed: v for (m, t, r, seed), v in sorted(score.items()) if (m, t, r) == (method, task, lr)}


def render(runs_dir, tasks, size, curve_sizes):
    runs = find(runs_dir)
    done = sum(r[6].get("status") == "complete" for r in runs)
    hours = sum((r[6].get("total_train_time_sec") or 0) for r in runs) / 3600
    lines = ["| run | dev per epoch (x100; best in bold) | train loss, first -> last epoch | best | resumed after epoch "
             "(an interruption, or trained longer) | hours |", "|---|---|---|---|---|---|"]
    lines += [row(m, t, n, lr, s, rec) for m, t, n, lr, s, _, rec in runs]
    lines += ["", f"{done} complete of {len(runs)} started; {hours:.1f} worker-hours of training so far "
              "(2 one-thread workers: wall time is about half)."]
    plan, best = repro_plan.plan(runs_dir, tasks, size, [0, 1, 2], curve_sizes)
    if best:
        lines += ["", "Best pilot rate so far (seed 0, best-epoch dev score; the planner's rule): "
                  + ", ".join(f"{METHOD_TITLE[m]} {t.upper()} {repro_plan.fmt_lr(lr)}" for (m, t), lr in sorted(
                      best.items(), key=lambda kv: (TASK_ORDER.index(kv[0][1]), kv[0][0])))]
        lines += comparison(runs, best, size)
    left = sum(len(v) for v in plan.values())
    hours_left, unknown = estimate_hours(runs, plan)
    estimate = (f" About {hours_left:.1f} worker-hours (~{hours_left / 2:.1f} h of wall time with 2 workers) for the "
                f"runs with a comparable measured run" + (f"; {unknown} runs have none yet" if unknown else "") + ".")
    nxt = [f"{METHOD_TITLE.get(m, m)} {t.upper()} lr {repro_plan.fmt_lr(lr)} seed {s}" + (f" ({e} epochs)" if e != 10 else "")
           for phase in ("pilot", "seeds", "others", "curve") for m, t, _, lr, s, e in plan[phase]][:8]
    lines += ["", f"The planner's list now: {left} runs" + (f"; first: {'; '.join(nxt)}" if nxt else "") + "."
              + estimate + " The list grows as the pilot and the convergence rule decide, and as a setting's seed 0 "
              "finishes (its seeds 1-2 follow it)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = OneLineParser(prog="python -m bitfit_experiments.report.repro_status",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("runs_dir", help="the reproduction's runs (as repro_plan's)")
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--tasks", nargs="+", default=TASK_ORDER, help="GLUE tasks, in the table's order")
    ap.add_argument("--train-size", type=int, default=2000, help="the protocol's training-set size per task")
    ap.add_argument("--curve-sizes", type=int, nargs="*", default=[250, 500, 1000, 2000, 4000],
                    help="SST-2 sizes of the training-size curve (for the planner's list)")
    a = ap.parse_args(argv)
    if not os.path.isdir(a.runs_dir):
        raise UsageError(f"runs directory {a.runs_dir!r} does not exist; pass the reproduction's runs directory "
                         f"(e.g. results/cpu_repro/runs)")
    if a.out:
        check_writable(a.out, "--out", kind="file")
    text = render(a.runs_dir, a.tasks, a.train_size, a.curve_sizes)
    if a.out:
        atomic_write_text(a.out, text)
    sys.stdout.write(text)


if __name__ == "__main__":
    exit_on_usage_error(main)()
