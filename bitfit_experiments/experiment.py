"""One run of run_glue.py, top to bottom: check inputs, load data and model, choose the trainable parameters,
train with dev evaluation after every epoch, and write every output file.

Order matters for the "nothing is lost" rule: everything that can fail because of user input (output dir, data
files, model path, bias terms) is checked BEFORE the first byte is written.
"""
import json
import os
import resource
import sys
import time
from functools import partial

import numpy as np
import torch

from . import data, metrics, packs, selection
from .checkpoint import load_checkpoint, remove_checkpoint, restore_checkpoint, save_checkpoint
from .batching import collate, encode
from .errors import UsageError
from .evaluator import GLUEEvaluator
from .features import cache_features, predict_head_logits, train_head_epoch
from .io_utils import atomic_write_json, library_versions
from .model import load_model, load_tokenizer, model_identity, resolve_device
from .plots import plot_bias_heatmap, plot_learning_curves
from .submission import write_server_file
from .trainer import build_optimizer, build_scheduler, predict_logits, set_seed, train_epoch


def check_output_dir(path):
    """As the official code: refuse an output directory that already holds something (writability and "is a
    file" are checked with the flags, in cli.validate)."""
    if os.path.isdir(path) and os.listdir(path):
        raise UsageError(f"--output-path {path} is not empty; choose a new directory (or delete this one) so that "
                         f"no earlier result is overwritten")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def bias_changes(model, initial, families):
    """Mean |b_f - b_0| per family and layer: the quantity of the paper's Figure 1. `initial` holds the original
    values of the trained tensors (the pack snapshot); a family that did not train changed by exactly 0."""
    params = dict(model.named_parameters())
    out = {family: [float((params[name].detach().float().cpu() - initial[name].float()).abs().mean())
                    if name in initial else 0.0 for _, name in entries]
           for family, entries in families.items()}
    return {"layers": max((len(v) for v in out.values()), default=0), "families": out,
            "notation": {f: selection.PAPER_NOTATION[f] for f in out}}


# Flags that may differ between a run and its resumption without changing its numbers.
_RESUME_NEUTRAL = {"resume", "checkpoint", "keep_checkpoint", "verbose", "no_progress", "gpu_device", "eval_batch_size", "save_evaluator",
                   "predict_test", "output_path"}


def _check_resumable(out, args):
    """--resume: the directory must hold a run of the same configuration. Returns the saved results or None."""
    config_path, results_path = os.path.join(out, "config.json"), os.path.join(out, "results.json")
    if not os.path.exists(config_path):
        if os.path.isdir(out) and os.listdir(out):
            raise UsageError(f"--resume {out}: the directory holds no run (no config.json); give the run's own "
                             f"output directory or a new one")
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            saved_args = json.load(f)["args"]
        if not isinstance(saved_args, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--resume: {config_path} is damaged; delete the directory to start the run again") from None
    current = vars(args)
    neutral = set(_RESUME_NEUTRAL)
    if (saved_args.get("lr_schedule") == current.get("lr_schedule") == "constant"
            and isinstance(saved_args.get("epochs"), int) and current["epochs"] >= saved_args["epochs"]):
        # Training longer: with a constant rate, epochs 1..E of an E'-epoch run are those of an E-epoch run (the
        # data order of an epoch depends only on (seed, epoch)), so a longer run may continue a shorter one.
        neutral.add("epochs")
    diff = sorted(k for k in set(saved_args) | set(current) if k not in neutral
                  and saved_args.get(k) != current.get(k))
    if diff:
        shown = ", ".join(f"{k}: saved {saved_args.get(k)!r} vs now {current.get(k)!r}" for k in diff[:3])
        raise UsageError(f"--resume {out}: that run has another configuration ({shown}); resume it with its own "
                         f"flags or use a new output directory")
    if os.path.exists(results_path):
        try:
            with open(results_path, encoding="utf-8") as f:
                return json.load(f)
        except ValueError:
            return None  # a damaged results.json is rebuilt from the checkpoint
    return None


def previous_complete(out):
    try:
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            return json.load(f).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def run(args, return_evaluator=False):
    """Train and evaluate one configuration; returns results.json's content (and the evaluator if asked)."""
    task = data.get_task(args.task_name)
    device = resolve_device(args.gpu_device)
    out = args.output_path

    # --- inputs: all checked before anything is written -------------------------------------------------------
    if not args.list_params:
        if args.resume:
            previous = _check_resumable(out, args)
            if (previous and previous.get("status") == "complete"
                    and previous.get("last_epoch", 0) >= args.epochs):
                print(f"{out}: this run is already complete; nothing to do")
                return (previous, None) if return_evaluator else previous
        else:
            check_output_dir(out)
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name)
    model = load_model(args.model_name, task)  # head initialised from the seeded torch RNG
    max_positions = min(getattr(model.config, "max_position_embeddings", None) or 10**9,
                        getattr(tokenizer, "model_max_length", None) or 10**9)
    if args.max_seq_length > max_positions:
        raise UsageError(f"--max-seq-length {args.max_seq_length} exceeds the {max_positions} positions model "
                         f"'{args.model_name}' supports; pass --max-seq-length {max_positions} or less")
    sel = selection.select(model, args.fine_tune_type, args.bias_terms, args.rand_mask_size, args.seed)
    report = selection.param_report(model, sel, args.bias_terms)
    if args.list_params:
        print(selection.format_report(report))
        return (None, None) if return_evaluator else None

    train_df = data.subsample(data.load_split(task.name, "train", args.data_dir), args.train_size, args.seed)
    eval_dfs = {split: data.load_split(task.name, split, args.data_dir) for split in task.eval_splits}
    test_dfs = ({split: data.load_split(task.name, split, args.data_dir) for split in task.test_splits}
                if args.predict_test else {})
    # Tokenize once per run: every epoch reuses the same token ids.
    train_enc = encode(tokenizer, train_df, args.max_seq_length)
    eval_encs = {split: encode(tokenizer, df, args.max_seq_length) for split, df in eval_dfs.items()}
    if args.eval_train:
        eval_encs["train"] = train_enc

    # --- model, trainable set, optimizer ------------------------------------------------------------------------
    selection.apply(model, sel)
    # Base hash + original values of what training can change: the task pack stores only the difference.
    snap = packs.snapshot(model, sel, newly_initialized=model.newly_initialized)
    model.to(device)
    guard = selection.MaskGuard(model, sel) if sel.masks else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    progress = not args.no_progress

    # frozen: the encoder never changes, so run it once per split and train the head on its cached outputs.
    train_data, eval_data, train_fn, predict_fn = train_enc, dict(eval_encs), train_epoch, predict_logits
    if args.pad_to_max_length:
        padded = partial(collate, pad_to=args.max_seq_length)
        train_fn, predict_fn = partial(train_epoch, collate_fn=padded), partial(predict_logits, collate_fn=padded)
    cached = False
    if args.fine_tune_type == "frozen" and args.cache_features:
        try:
            cache = partial(cache_features, model, batch_size=args.eval_batch_size, device=device,
                            pad_token_id=tokenizer.pad_token_id, precision=args.precision, progress=progress)
            train_data = cache(train_enc, desc="features train")
            eval_data = {s: train_data if e is train_enc else cache(e, desc=f"features {s}")
                         for s, e in eval_encs.items()}
            train_fn, predict_fn, cached = train_head_epoch, predict_head_logits, True
        except ValueError as e:  # a head that reads more than what is cached: use the plain loop
            print(f"note: {e}; the frozen encoder runs every step", flush=True)
    steps_per_epoch = -(-len(train_enc.lengths) // args.batch_size)
    optimizer = build_optimizer(trainable, args.optimizer, args.learning_rate, args.weight_decay)
    scheduler = build_scheduler(optimizer, args.lr_schedule, steps_per_epoch * args.epochs, args.warmup_ratio)
    scaler = torch.amp.GradScaler("cuda") if (args.precision == "fp16" and device.type == "cuda") else None
    families = selection.bias_families(model) if args.fine_tune_type == "bitfit" else {}

    results = {
        "status": "running", "failure_reason": None, "task": task.name, "model_name": args.model_name,
        "fine_tune_type": args.fine_tune_type, "bias_terms": list(args.bias_terms), "learning_rate": args.learning_rate,
        "seed": args.seed, "train_size": args.train_size, "num_train_examples": len(train_df),
        "headline_metric": task.headline, "eval_splits": list(task.eval_splits),
        "trainable_params": report["trainable_params"], "total_params": report["total_params"],
        "trainable_share": report["trainable_share"], "paper_param_share": report["paper_param_share"],
        "epochs": [], "best_epoch": None, "last_epoch": None, "best": None, "last": None,
        "total_train_time_sec": 0.0, "peak_memory_mb": None, "resumed_after_epochs": [], "cached_features": cached,
    }
    start_epoch = 1
    ckpt = load_checkpoint(out) if args.resume and os.path.isdir(out) else None
    if args.resume and previous_complete(out) and ckpt is None:
        raise UsageError(f"--resume -e {args.epochs}: {out} is complete after fewer epochs and has no checkpoint to "
                         f"continue from (it was not run with --keep-checkpoint); train a new run with -e {args.epochs}")
    if ckpt is not None:
        done, saved = restore_checkpoint(ckpt, model=model, trainable_names=sel.trainable, optimizer=optimizer,
                                         scheduler=scheduler)
        results = saved
        results["status"] = "running"
        results["resumed_after_epochs"] = results.get("resumed_after_epochs", []) + [done]
        start_epoch = done + 1
        print(f"resuming {out} after epoch {done}", flush=True)

    # --- outputs -------------------------------------------------------------------------------------------------
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "config.json"), {
        "args": vars(args), "model": model_identity(args.model_name), "versions": library_versions(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv)})
    atomic_write_json(os.path.join(out, "params.json"), report)
    results_path = os.path.join(out, "results.json")
    atomic_write_json(results_path, results)
    if args.verbose:
        print(selection.format_report(report))

    # --- the loop -------------------------------------------------------------------------------------------------
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            # The shuffle of epoch e depends only on (seed, e), so a resumed run sees the same order.
            generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
            start = time.perf_counter()
            train_loss = train_fn(
                model, train_data, optimizer, scheduler, guard, batch_size=args.batch_size, generator=generator,
                device=device, pad_token_id=tokenizer.pad_token_id, is_regression=task.is_regression,
                precision=args.precision, scaler=scaler, group_by_length=args.group_by_length,
                trainable_params=trainable, progress=progress, desc=f"epoch {epoch}/{args.epochs}")
            epoch_time = time.perf_counter() - start
            epoch_metrics = {}
            for split, enc in eval_encs.items():
                logits = predict_fn(model, eval_data[split], batch_size=args.eval_batch_size, device=device,
                                        pad_token_id=tokenizer.pad_token_id, precision=args.precision,
                                        progress=progress, desc=f"eval {split}")
                epoch_metrics[split] = metrics.compute_metrics(task.name, metrics.logits_to_predictions(task.name, logits),
                                                               enc.labels.numpy())
            results["epochs"].append({"epoch": epoch, "train_loss": train_loss, "epoch_time_sec": epoch_time,
                                      "eval_time_sec": time.perf_counter() - start - epoch_time,
                                      "metrics": epoch_metrics})
            results["total_train_time_sec"] += epoch_time
            _summarise(results, task)
            results["peak_memory_mb"] = max(results["peak_memory_mb"] or 0.0, peak_memory_mb(device))
            if args.checkpoint and (epoch < args.epochs or args.keep_checkpoint):
                save_checkpoint(out, epoch=epoch, model=model, trainable_names=sel.trainable, optimizer=optimizer,
                                scheduler=scheduler, results=results)
            atomic_write_json(results_path, results)
            headline = epoch_metrics[task.eval_splits[0]][task.headline]
            print(f"epoch {epoch}: loss {train_loss:.4f}  {task.eval_splits[0]} {task.headline} {headline:.4f}  "
                  f"({epoch_time:.1f}s)", flush=True)
    except FloatingPointError as e:
        results["status"], results["failure_reason"] = "failed", str(e)
        atomic_write_json(results_path, results)
        raise

    # --- after training -------------------------------------------------------------------------------------------
    plot_learning_curves(results, os.path.join(out, "learning_curves.png"))
    if families:
        changes = bias_changes(model, snap.values, families)
        atomic_write_json(os.path.join(out, "bias_changes.json"), changes)
        plot_bias_heatmap(changes, os.path.join(out, "bias_changes.png"),
                          title=f"Change in bias components ({task.name.upper()})")
    evaluator = GLUEEvaluator(model, tokenizer, task, config=vars(args), history=results["epochs"],
                              max_seq_length=args.max_seq_length)
    if args.save_evaluator:
        evaluator.save(os.path.join(out, "evaluator"))
    for split, df in test_dfs.items():
        logits = evaluator.predict(df, batch_size=args.eval_batch_size, precision=args.precision, progress=progress)
        write_server_file(task.name, split, df["idx"].to_numpy(), metrics.logits_to_predictions(task.name, logits),
                          os.path.join(out, "test_predictions"), expected_rows=len(df))
    # The pack holds the last-epoch weights, so its dev metrics are the last epoch's.
    manifest = packs.write_pack(os.path.join(out, "pack"), model, snap, sel, base_model=args.model_name, task=task,
                                dev_metrics=results["last"], max_seq_length=args.max_seq_length,
                                extra={"best_epoch": results["best_epoch"], "last_epoch": results["last_epoch"]})
    print(packs.format_summary(manifest), flush=True)
    results["pack"] = {k: manifest[k] for k in ("pack_bytes", "full_model_bytes", "ratio_to_full_model",
                                                "stored_values", "fixups")}
    results["status"] = "complete"
    atomic_write_json(results_path, results)
    if not args.keep_checkpoint:
        remove_checkpoint(out)
    return (results, evaluator) if return_evaluator else results


def _summarise(results, task):
    """Best epoch by the paper's metric on the first dev split (MNLI: matched), and the last epoch."""
    key = task.eval_splits[0]
    scores = [e["metrics"][key][task.headline] for e in results["epochs"]]
    best = int(np.nanargmax(scores)) if not np.all(np.isnan(scores)) else len(scores) - 1
    results["best_epoch"] = results["epochs"][best]["epoch"]
    results["last_epoch"] = results["epochs"][-1]["epoch"]
    results["best"] = results["epochs"][best]["metrics"]
    results["last"] = results["epochs"][-1]["metrics"]
