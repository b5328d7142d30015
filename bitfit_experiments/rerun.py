"""Re-execute committed runs from their config.json and check that every number comes out bit-identical.

    python -m bitfit_experiments.rerun RUN_DIR [RUN_DIR ...] --out NEW_ROOT [--model-name M] [--data-dir D]

Layer: run (an entry point over run_glue.py). Each run is re-executed as a reviewer would, through
`run_glue.py --config RUN_DIR/config.json -o NEW_ROOT/<i>` (plus --model-name/--data-dir for paths that differ on
this machine), in its own process with the thread count the run recorded. Then the per-epoch training loss and every
dev metric, and the best/last epochs, are compared for exact equality (timings are not compared), and, where the
committed run kept its checkpoint (--keep-checkpoint), every tensor in it -- the trained parameters and the
optimizer state -- byte for byte. Prints one line per run, IDENTICAL or DIFFERENT (with the first difference), and
exits 1 if any differs.
"""
import json
import os
import subprocess
import sys

from .artifacts.record import RecordError, RunRecord
from .core.errors import OneLineParser, UsageError, exit_on_usage_error

RUN_GLUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run_glue.py")


def numbers(record):
    """What must be reproduced exactly: per-epoch loss and metrics, and the epoch selection."""
    return {"epochs": [(e.epoch, e.train_loss, e.metrics) for e in record.epochs],
            "best_epoch": record.best_epoch, "last_epoch": record.last_epoch}


def first_difference(a, b):
    if a["best_epoch"] != b["best_epoch"] or a["last_epoch"] != b["last_epoch"]:
        return f"best/last epoch {a['best_epoch']}/{a['last_epoch']} vs {b['best_epoch']}/{b['last_epoch']}"
    for x, y in zip(a["epochs"], b["epochs"]):
        if x != y:
            return f"epoch {x[0]}: loss {x[1]!r} vs {y[1]!r}, metrics {x[2]} vs {y[2]}"
    return f"{len(a['epochs'])} vs {len(b['epochs'])} epochs"


def checkpoint_difference(committed_dir, new_dir):
    """(first difference or None, tensors compared) between the kept checkpoints of two runs: every tensor, byte for
    byte (its metadata holds timings and is not compared). (None, 0) when the committed run kept none."""
    a, b = (os.path.join(d, "checkpoint.safetensors") for d in (committed_dir, new_dir))
    if not os.path.exists(a):
        return None, 0
    if not os.path.exists(b):
        return "the re-run kept no checkpoint", 0
    from safetensors.torch import load_file  # here: the comparison of numbers above needs no torch
    from .artifacts.packs import raw_bytes
    ta, tb = load_file(a), load_file(b)
    if ta.keys() != tb.keys():
        return f"checkpoint tensors {sorted(set(ta) ^ set(tb))[:3]} are in one checkpoint only", 0
    for name in sorted(ta):
        x, y = ta[name], tb[name]
        if (x.dtype, x.shape) != (y.dtype, y.shape) or raw_bytes(x) != raw_bytes(y):
            return f"checkpoint tensor {name} differs", 0
    return None, len(ta)


def rerun(run_dir, out, overrides=()):
    """Re-execute one run into `out`; returns (identical, message)."""
    try:
        committed = RunRecord.load(run_dir)
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            threads = json.load(f).get("torch_threads")
    except (RecordError, OSError, ValueError) as e:
        raise UsageError(f"{run_dir}: not a readable run ({e})") from None
    if not committed.complete:
        return False, f"the committed run is {committed.status}, not complete"
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, RUN_GLUE, "--config", os.path.join(run_dir, "config.json"), "-o", out, "--no-progress",
           *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return False, f"the re-run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    a, b = numbers(committed), numbers(RunRecord.load(out))
    if a != b:
        return False, "DIFFERENT: " + first_difference(a, b)
    difference, tensors = checkpoint_difference(run_dir, out)
    if difference:
        return False, "DIFFERENT: " + difference
    return True, "IDENTICAL" + (f" (and the {tensors} tensors of its kept checkpoint)" if tensors else "")


@exit_on_usage_error
def main(argv=None):
    p = OneLineParser(prog="python -m bitfit_experiments.rerun", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (each with config.json and results.json)")
    p.add_argument("--out", required=True, help="a new directory; run i is re-executed into OUT/<i>")
    p.add_argument("--model-name", help="the model folder on this machine, if the recorded path differs")
    p.add_argument("--data-dir", help="the GLUE folder on this machine, if the recorded path differs")
    a = p.parse_args(argv)
    if os.path.exists(a.out) and os.listdir(a.out):
        raise UsageError(f"--out {a.out} is not empty; give a new directory")
    overrides = [x for flag, v in (("--model-name", a.model_name), ("--data-dir", a.data_dir)) if v for x in (flag, v)]
    failures = 0
    for i, run_dir in enumerate(a.runs):
        ok, message = rerun(run_dir, os.path.join(a.out, str(i)), overrides)
        failures += not ok
        print(f"{message:>9}  {run_dir}" if ok else f"{message}  {run_dir}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
