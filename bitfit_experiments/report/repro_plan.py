"""The plan of the converged CPU reproduction (scripts/cpu_repro.sh): which runs should exist, given the runs done.

Layer: report (reads finished runs; writes nothing). The sweep script asks it for the run list again and again; each
answer depends on what is complete, so the learning-rate pilot grows as its results come in:

1. pilot, seed 0: BitFit and Full-FT on every task, first at two points of the paper's grid (bias-only 4e-4 and
   1e-3, Full-FT 2e-5 and 5e-5). While the best rate of a (method, task) sits on the edge of the rates run so far,
   the next point past that edge is added: the paper's grid first ({1,4,7,10}e-4, {1,2,3,5}e-5), then one step
   beyond it (above: the grid's top spacing, 1.3e-3 and 7e-5; below: its bottom ratio, 2.5e-5 and 5e-6) and no
   further. "Best" = the best-epoch dev headline metric; ties go to the higher last-epoch score, then the lower rate.
2. seeds: BitFit and Full-FT at their best pilot rate with the remaining seeds (1, 2).
3. others: every other Table-3 method, and LoRA, IA3 and BitFit+LoRA, seed 0, at BitFit's best pilot rate on that
   task (the pilot covers BitFit and Full-FT only; the other rows share the bias-only grid); method by method over
   every task, in OTHER_METHODS' order.
4. curve: BitFit and Full-FT on SST-2 at several training sizes, 3 seeds, at their SST-2 best pilot rate, each
   judged over the protocol's number of steps (below).

Every run of every phase also follows the protocol's convergence rule: a complete run whose best dev epoch is one of
its last two is not finished -- it is planned again with EXTEND_STEP (2) more epochs, up to MAX_EPOCHS (20, the
paper's "up to 20 epochs"); a run whose dev score has not moved at all (the same value every epoch) is planned to
MAX_EPOCHS at once, and the sweep trains it longer in place (`--resume -e N` from its kept checkpoint,
bit-identical to a run started with N epochs). Until then it counts as pending: no pilot decision, seed or
dependent run is taken on a score that is still rising.

The curve's smaller training sets are judged over the same number of optimizer steps as the protocol's size
(`step_scale`): at n examples the window, the extension and the cap are counted in epochs of the protocol's size
(2,000 examples = 125 steps), i.e. multiplied by 2000/n. An epoch of 250 examples is 16 steps; without the scaling
such a run would be stopped at 20 epochs = 320 steps, while BitFit on SST-2 at 2,000 examples peaked after 875 --
the cap alone would decide the small-data end of the curve, the regime the paper's claim is about, against the
method that learns more slowly per step. Every run still starts at EPOCHS (10), the protocol's minimum.

Every seed after the first starts once the first seed's run at the same method, task, training size and rate is
finished (in the seeds phase: the pilot run that chose the rate), and trains at least as many epochs as it did.
The paper trains every seed for the same number of epochs; the rule above alone let a seed stop at 10 epochs
because its noise put its best epoch before its last two, while the same setting's first seed had needed 20.
Found on CoLA BitFit 4e-4: seeds 0 and 2 sat at MCC 0 for 9-10 epochs and then rose to 21.8 and 17.6 by epochs
17-18; seed 1 had one epoch at 6.6 (epoch 8), so it was stopped at 10, still at the majority baseline. The rule
was added in session 8, after the seeds phase had run; it applies to both methods alike, and the scores the seeds
had at their first length are kept in README's Status.

A phase's runs appear as soon as what they depend on is known, so the workers are never idle waiting for a whole
phase. Output: one line per run, "method task train_size lr seed epochs", in priority order.
"""
import json
import math
import os
import sys
from ..core.errors import OneLineParser, exit_on_usage_error

BIAS_GRID = (1e-4, 4e-4, 7e-4, 1e-3)
FULL_GRID = (1e-5, 2e-5, 3e-5, 5e-5)
PILOT_START = {"bias": (4e-4, 1e-3), "full": (2e-5, 5e-5)}
# in the order they run: method by method over every task, so each method's row fills in whole; the PEFT rows first
# (all issue 12 still waits for), then Table 3's others
OTHER_METHODS = ("lora", "ia3", "bitfit_lora", "bm2_bq", "bm2", "bq", "frozen", "rand_uniform", "rand_row_col")
EPOCHS = 10        # the protocol's first length of every run
WINDOW = 2         # a run whose best epoch is one of its last WINDOW epochs is still rising
EXTEND_STEP = 2    # epochs added while it is
MAX_EPOCHS = 20    # the paper: "8 or fewer epochs for most tasks, and up to 20 epochs on the others"
HEADLINE = {"cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearmanr", "rte": "accuracy",
            "qnli": "accuracy", "qqp": "f1", "mnli": "accuracy", "wnli": "accuracy"}


def fmt_lr(lr):
    """1.3e-3, 4e-4, 2.5e-5: the spelling of the run directories (lr<rate>)."""
    exp = math.floor(math.log10(lr) + 1e-9)
    mant = round(lr / 10 ** exp, 6)
    return f"{mant:g}e{exp}"


def extended_grid(grid):
    """The paper's grid plus one step past each edge (above: the top spacing; below: the bottom ratio, since a
    spacing step would reach 0)."""
    grid = sorted(grid)
    low = grid[0] * grid[0] / grid[1]
    high = grid[-1] + (grid[-1] - grid[-2])
    return [float(fmt_lr(low))] + grid + [float(fmt_lr(high))]


def run_dir(runs_dir, method, task, size, lr, seed):
    return os.path.join(runs_dir, "minilm", method, f"{task}-n{size}", f"lr{fmt_lr(lr)}", f"seed{seed}")


def _asked(path):
    """The epochs a started run was asked for (its config.json), 0 when unknown."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return int(json.load(f)["args"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _done(path):
    """The epochs a complete run trained, 0 when it is not complete."""
    try:
        with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
            r = json.load(f)
        return int(r["last_epoch"]) if r.get("status") == "complete" else 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def step_scale(size, n):
    """How many epochs of n examples make one epoch of the protocol's `size` (the same optimizer steps); at least 1:
    a larger training set gets the protocol's epochs unchanged, never fewer than its minimum."""
    return max(1, round(size / n))


def state(path, task, epochs=EPOCHS, max_epochs=MAX_EPOCHS, scale=1):
    """What a run needs: (epochs to plan, None) while it is missing, running or must be trained longer, else
    (None, (best-epoch dev headline, last-epoch dev headline)). Longer = its best epoch is one of its last
    WINDOW * scale and it has fewer than max_epochs * scale: then EXTEND_STEP * scale more (an extension never
    shortens a run). `scale` (step_scale) counts those in epochs of the protocol's training-set size."""
    try:
        with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, ValueError):
        return epochs, None
    if not isinstance(r, dict) or r.get("status") != "complete":
        return max(epochs, _asked(path)), None  # a run being trained longer keeps its longer length
    done = int(r["last_epoch"])
    if done < epochs:  # asked for more than it has (a larger EPOCHS than when it ran)
        return epochs, None
    cap = max_epochs * scale
    if int(r["best_epoch"]) > done - WINDOW * scale and done < cap:
        return min(done + EXTEND_STEP * scale, cap), None
    split = r["eval_splits"][0]
    key = r.get("headline_metric") or HEADLINE[task]
    if done < cap and _flat(r, split, key):
        return cap, None
    return None, (r["best"][split][key], r["last"][split][key])


def _flat(record, split, key):
    """True when every epoch scored exactly the same (a run that never left where it started, typically the
    majority-class baseline). Its best epoch is then its first by the tie rule, which the last-two-epochs test reads
    as a peak long past; but a flat line is no evidence of convergence -- on CoLA, BitFit at 4e-4 sat at MCC 0 for 9
    epochs, then rose -- so such a run is trained to the cap, the paper's "up to 20 epochs" for slow tasks."""
    scores = [e["metrics"][split][key] for e in record.get("epochs") or []]
    return len(scores) > 1 and len(set(scores)) == 1


def pilot(runs_dir, method, task, size, grid, start, seed=0, epochs=EPOCHS, max_epochs=MAX_EPOCHS):
    """(runs to run now as [(lr, epochs)], best rate or None while the pilot is not finished)."""
    full = extended_grid(grid)
    tried = sorted(set(float(fmt_lr(x)) for x in start))
    while True:
        states = {lr: state(run_dir(runs_dir, method, task, size, lr, seed), task, epochs, max_epochs) for lr in tried}
        pending = [(lr, n) for lr, (n, _) in states.items() if n is not None]
        if pending:
            return pending, None
        scores = {lr: sc for lr, (_, sc) in states.items()}
        best = max(tried, key=lambda lr: (scores[lr][0], scores[lr][1], -lr))
        i = full.index(best)
        nxt = None
        if best == tried[-1] and i + 1 < len(full):
            nxt = full[i + 1]
        elif best == tried[0] and i > 0:
            nxt = full[i - 1]
        if nxt is None or nxt in tried:
            return [], best
        tried = sorted(tried + [nxt])


def plan(runs_dir, tasks, size, seeds, curve_sizes, others=OTHER_METHODS, epochs=EPOCHS, max_epochs=MAX_EPOCHS):
    """Every run that should be run now, as (method, task, size, lr, seed, epochs), in priority order: pilot, seeds,
    others, curve. A run that is complete and converged is left out; one that must be trained longer is listed with
    its longer length."""
    lines = {p: [] for p in ("pilot", "seeds", "others", "curve")}
    best = {}

    def want(phase, method, task, n, lr, seed, scale=1):
        first = epochs
        if seed != seeds[0]:
            # a later seed waits for seed 0 at the same point to be finished (in the seeds phase it is: the pilot
            # run), then trains at least as long -- started earlier, it could need to be extended from a checkpoint
            # a later session no longer has (Full-FT's are not committed)
            lead = run_dir(runs_dir, method, task, n, lr, seeds[0])
            if state(lead, task, epochs, max_epochs, scale)[0] is not None:
                return
            first = max(epochs, _done(lead))
        todo, _ = state(run_dir(runs_dir, method, task, n, lr, seed), task, first, max_epochs, scale)
        if todo is not None:
            lines[phase].append((method, task, n, lr, seed, todo))

    for task in tasks:
        for method, kind in (("bitfit", "bias"), ("full_ft", "full")):
            grid = BIAS_GRID if kind == "bias" else FULL_GRID
            todo, b = pilot(runs_dir, method, task, size, grid, PILOT_START[kind], seeds[0], epochs, max_epochs)
            lines["pilot"] += [(method, task, size, lr, seeds[0], n) for lr, n in todo]
            if b is not None:
                best[method, task] = b
                for s in seeds[1:]:
                    want("seeds", method, task, size, b, s)
    for m in others:
        for task in tasks:
            if ("bitfit", task) in best:
                want("others", m, task, size, best["bitfit", task], seeds[0])
    if "sst2" in tasks:
        for s in seeds:
            for n in curve_sizes:
                for method in ("bitfit", "full_ft"):
                    if n != size and (method, "sst2") in best:
                        want("curve", method, "sst2", n, best[method, "sst2"], s, step_scale(size, n))
    return lines, best


def main(argv=None):
    p = OneLineParser(description="Print the runs the converged CPU reproduction should have now.")
    p.add_argument("runs_dir", help="the reproduction's runs (<dir>/minilm/<method>/<task>-n<size>/lr<rate>/seed<s>)")
    p.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"], help="GLUE tasks")
    p.add_argument("--train-size", type=int, default=2000, help="the protocol's training-set size per task")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds; the first runs the pilot")
    p.add_argument("--curve-sizes", type=int, nargs="*", default=[250, 500, 1000, 2000, 4000],
                   help="SST-2 training sizes of the training-size curve (none: no curve)")
    p.add_argument("--phases", nargs="+", default=["pilot", "seeds", "others", "curve"],
                   help="which phases' runs to print, in this order")
    p.add_argument("--others", nargs="*", default=list(OTHER_METHODS),
                   help="the methods of the 'others' phase (seed 0, at BitFit's pilot rate)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="the first length of every run")
    p.add_argument("--max-epochs", type=int, default=MAX_EPOCHS,
                   help="no run is trained longer than this (a curve run: this many epochs of the protocol's "
                   "training-set size, in optimizer steps)")
    p.add_argument("--best", action="store_true", help="print the best pilot rate per (method, task) instead")
    a = p.parse_args(argv)
    lines, best = plan(a.runs_dir, a.tasks, a.train_size, a.seeds, a.curve_sizes, a.others, a.epochs, a.max_epochs)
    if a.best:
        for (method, task), lr in sorted(best.items()):
            print(method, task, fmt_lr(lr))
        return
    for phase in a.phases:
        for method, task, n, lr, seed, epochs in lines[phase]:
            print(method, task, n, fmt_lr(lr), seed, epochs)


if __name__ == "__main__":
    sys.exit(exit_on_usage_error(main)())
