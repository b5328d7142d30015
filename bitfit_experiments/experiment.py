"""One run of run_glue.py in three steps: `prepare` (inputs checked, data, model, selection, optimizer, the run
record), `fit` (the epoch loop: train, evaluate, record, checkpoint) and `write_artifacts` (figures, pack, test
files, "complete").

Layer: run (above core, artifacts and report). Order matters for the "nothing is lost" rule: everything that can
fail because of user input (output dir, data files, model path, bias terms) is checked BEFORE the first byte is
written, and a run that cannot be trusted (a non-finite loss, logit, metric or weight; any crash) ends "failed" with
its reason, never "complete".
"""
import math
import os
import re
import shutil
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch

from .artifacts import packs
from .artifacts.checkpoint import load_checkpoint, remove_checkpoint, restore_checkpoint, save_checkpoint
from .artifacts.evaluator import GLUEEvaluator
from .artifacts.io import atomic_write_json, atomic_write_text, library_versions
from .artifacts.lock import RunLock
from .artifacts.record import EpochRecord, PackSummary, RecordError, RunRecord, load_config_args
from .artifacts.submission import write_server_file
from .core import adapters, data, metrics, packed, selection
from .core.batching import collate, encode
from .core.config import ADAPTER_TYPES, PAPER_NOTATION, RESUME_NEUTRAL, RunConfig
from .core.decoders import pair_pad_token
from .core.errors import UsageError, first_line
from .core.features import cache_features, predict_head_logits, train_head_epoch
from .core.model import cpu_numerics, load_model, load_tokenizer, model_identity, peak_memory_mb, resolve_device
from .core.trainer import build_optimizer, build_scheduler, epoch_generator, predict_logits, set_seed, train_epoch
from .report.plots import plot_bias_heatmap, plot_learning_curves


class RunState:
    """What the state of a GLUE run (Run) and of an instruction-tuning run (instruct.InstructRun) both offer: the
    output directory and the record's save (_recording_failures uses these)."""

    @property
    def out(self):
        return self.config.output_path

    def save_record(self):
        self.record.save(os.path.join(self.out, "results.json"))

    # Fields of the fresh record that describe this process, not the run's history: kept over the checkpoint's.
    KEPT_ON_RESUME = ()

    def continue_from_checkpoint(self, previous):
        """--resume: the model, optimizer, schedule and record of the directory's last checkpoint, and the epoch to
        go on from. Without a checkpoint the run stopped before its first epoch ended and starts from scratch -- unless
        it is complete (`previous`) and asked for more epochs: that needs the checkpoint --keep-checkpoint keeps."""
        ckpt = load_checkpoint(self.out) if os.path.isdir(self.out) else None
        if ckpt is None:
            if previous is not None and previous.complete:
                raise UsageError(f"--resume -e {self.config.epochs}: {self.out} is complete after fewer epochs and "
                                 f"has no checkpoint to continue from (it was not run with --keep-checkpoint); train "
                                 f"a new run with -e {self.config.epochs}")
            return
        done, saved = restore_checkpoint(ckpt, model=self.model, trainable_names=self.sel.trainable,
                                         optimizer=self.optimizer, scheduler=self.scheduler)
        kept = {name: getattr(self.record, name) for name in self.KEPT_ON_RESUME}
        self.record = type(self.record).from_dict(saved)
        self.record.status, self.record.failure_reason, self.record.pack = "running", None, None
        for name, value in kept.items():
            setattr(self.record, name, value)
        self.record.resumed_after_epochs = self.record.resumed_after_epochs + [done]
        self.start_epoch = done + 1
        print(f"resuming {self.out} after epoch {done}", flush=True)

    def end_epoch(self, epoch):
        """After an epoch's record is added: the peak memory so far, the checkpoint (each epoch but the last, which
        keeps one only with --keep-checkpoint) and results.json."""
        c, record = self.config, self.record
        record.peak_memory_mb = max(record.peak_memory_mb or 0.0, peak_memory_mb(self.device))
        if c.checkpoint and (epoch < c.epochs or c.keep_checkpoint):
            save_checkpoint(self.out, epoch=epoch, model=self.model, trainable_names=self.sel.trainable,
                            optimizer=self.optimizer, scheduler=self.scheduler, results=record.to_dict())
        self.save_record()


@dataclass
class Run(RunState):
    """Everything the three steps share."""
    KEPT_ON_RESUME = ("cached_features",)  # whether this process caches the frozen features (a speed choice)
    config: RunConfig
    task: data.TaskSpec
    device: torch.device
    tokenizer: object
    model: torch.nn.Module
    sel: selection.Selection
    report: dict
    snap: packs.Snapshot
    record: RunRecord
    train_data: object = None
    eval_data: dict = field(default_factory=dict)   # split -> what predict_fn reads (tokens or cached features)
    eval_labels: dict = field(default_factory=dict)  # split -> labels
    test_dfs: dict = field(default_factory=dict)
    train_fn: object = train_epoch
    predict_fn: object = predict_logits
    guard: object = None
    trainable: list = field(default_factory=list)
    optimizer: object = None
    scheduler: object = None
    scaler: object = None
    start_epoch: int = 1


# ------------------------------------------------------------------------------------------------------ entry

def run(config):
    """Train and evaluate one configuration (its output directory locked for the duration); returns its RunRecord."""
    if config.list_params:
        raise ValueError("--list-params trains nothing: call list_params(config)")
    return execute(config, _check_output, prepare, _write_config, fit, write_artifacts)


def execute(config, check_output, prepare, write_config, fit, write_artifacts):
    """The life of every run (run_glue's and run_instruct's): lock the output directory, check it, prepare, write
    the config, fit and write the artifacts, with any failure or signal recorded. Returns the run's record."""
    created = not os.path.exists(config.output_path)
    lock = RunLock(config.output_path).acquire()  # one run per output directory
    try:
        previous = check_output(config)
        if previous is not None and previous.complete and previous.last_epoch >= config.epochs:
            print(f"{config.output_path}: this run is already complete; nothing to do")
            return previous
        run_ = prepare(config, previous)
        write_config(run_)
        with _recording_failures(run_):
            fit(run_)
            write_artifacts(run_)
        return run_.record
    except UsageError:
        if created and not os.listdir(config.output_path):  # refused before writing anything: leave no trace
            lock.release()
            os.rmdir(config.output_path)
        raise
    finally:
        lock.release()


def list_params(config):
    """--list-params: the trainable-parameter report of this configuration; nothing is trained or written."""
    task = data.get_task(config.task_name)
    set_seed(config.seed)
    model = load_model(config.model_name, task, allow_weight_mismatch=config.allow_weight_mismatch)
    if config.fine_tune_type in ADAPTER_TYPES:
        adapters.inject(model, config)
    sel = selection.select(model, config.fine_tune_type, config.bias_terms, config.rand_mask_size, config.seed)
    print(selection.format_report(selection.param_report(model, sel, config.bias_terms)))


# ------------------------------------------------------------------------------------------------------ prepare

def prepare(config, previous=None):
    """Load data and model, choose what trains, build the optimizer and the run record (fresh, or continued from the
    checkpoint with --resume; `previous` is the directory's earlier record). Writes nothing."""
    task = data.get_task(config.task_name)
    set_seed(config.seed)
    tokenizer, model = _load_model(config, task)
    if config.fine_tune_type in ADAPTER_TYPES:
        adapters.inject(model, config)  # after the head's initialisation: every type draws the same head
    sel = selection.select(model, config.fine_tune_type, config.bias_terms, config.rand_mask_size, config.seed)
    report = selection.param_report(model, sel, config.bias_terms)
    train_df, encs, test_dfs = _load_data(config, task, tokenizer)
    selection.apply(model, sel)
    # Base hash + original values of what training can change: the task pack stores only the difference.
    snap = packs.snapshot(model, sel, newly_initialized=model.newly_initialized)
    device = resolve_device(config.gpu_device)
    model.to(device)
    record = _new_record(config, task, report, train_df)
    run_ = Run(config, task, device, tokenizer, model, sel, report, snap, record, test_dfs=test_dfs)
    run_.guard = selection.MaskGuard(model, sel) if sel.masks else None
    run_.trainable = [p for p in model.parameters() if p.requires_grad]
    _data_path(run_, *encs)
    _optimizer(run_, steps_per_epoch=-(-len(encs[0].lengths) // config.batch_size))
    if config.resume:
        run_.continue_from_checkpoint(previous)
    return run_


def _check_output(config):
    """A fresh run needs an empty directory; --resume needs a run of the same configuration there. Returns the
    directory's previous RunRecord (or None)."""
    out = config.output_path
    if not config.resume:
        if os.path.isdir(out) and os.listdir(out):
            raise UsageError(f"--output-path {out} is not empty; choose a new directory (or delete this one) so that "
                             f"no earlier result is overwritten")
        return None
    if not os.path.exists(os.path.join(out, "config.json")):
        if os.path.isdir(out) and os.listdir(out):
            raise UsageError(f"--resume {out}: the directory holds no run (no config.json); give the run's own "
                             f"output directory or a new one")
        return None
    saved = _saved_config(out)
    if config.batch_layout == "auto":  # continue with the layout the run used
        config.batch_layout = saved.batch_layout
    return continue_same_run(out, saved.differences(config, ignore=_resume_neutral(saved, config)), RunRecord)


def continue_same_run(out, diff, record_cls):
    """--resume into `out`: refuse another configuration (`diff`, from config.differences); else remove the
    temporaries of killed writes and return the directory's record (None if damaged: the checkpoint rebuilds it)."""
    if diff:
        shown = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, a, b in diff[:3])
        raise UsageError(f"--resume {out}: that run has another configuration ({shown}); resume it with its own "
                         f"flags or use a new output directory")
    remove_leftover_temporaries(out)
    try:
        return record_cls.load(out)
    except RecordError:
        return None


def _saved_config(out):
    try:
        return RunConfig.from_dict(load_config_args(out))
    except (RecordError, UsageError):
        raise UsageError(f"--resume: {os.path.join(out, 'config.json')} is damaged; delete the directory to start "
                         f"the run again") from None


def _resume_neutral(saved, config):
    neutral = set(RESUME_NEUTRAL)
    if saved.lr_schedule == config.lr_schedule == "constant" and config.epochs >= saved.epochs:
        # Training longer: with a constant rate, epochs 1..E of an E'-epoch run are those of an E-epoch run (the
        # data order of an epoch depends only on (seed, epoch)), so a longer run may continue a shorter one.
        neutral.add("epochs")
    return neutral


def _load_model(config, task):
    tokenizer = load_tokenizer(config.model_name)
    # the head is initialised from the seeded torch RNG
    model = load_model(config.model_name, task, allow_weight_mismatch=config.allow_weight_mismatch)
    pair_pad_token(tokenizer, model)  # a decoder's last-token head must skip exactly the id batches are padded with
    max_positions = min(getattr(model.config, "max_position_embeddings", None) or 10**9,
                        getattr(tokenizer, "model_max_length", None) or 10**9)
    if config.max_seq_length > max_positions:
        raise UsageError(f"--max-seq-length {config.max_seq_length} exceeds the {max_positions} positions model "
                         f"'{config.model_name}' supports; pass --max-seq-length {max_positions} or less")
    return tokenizer, model


def _load_data(config, task, tokenizer):
    """(train frame, (train encoding, {split: encoding}), {test split: frame}); tokenized once per run."""
    train_df = data.subsample(data.load_split(task.name, "train", config.data_dir), config.train_size, config.seed)
    eval_dfs = {split: data.load_split(task.name, split, config.data_dir) for split in task.eval_splits}
    test_dfs = ({split: data.load_split(task.name, split, config.data_dir) for split in task.test_splits}
                if config.predict_test else {})
    train_enc = encode(tokenizer, train_df, config.max_seq_length)
    eval_encs = {split: encode(tokenizer, df, config.max_seq_length) for split, df in eval_dfs.items()}
    if config.eval_train:
        eval_encs["train"] = train_enc
    return train_df, (train_enc, eval_encs), test_dfs


def _data_path(run_, train_enc, eval_encs):
    """What the loop feeds the model: token batches (dynamic padding, or padded to --max-seq-length as the official
    code), or for frozen the encoder's cached outputs (the encoder never changes, so it runs once per split)."""
    c = run_.config
    run_.train_data, run_.eval_data = train_enc, dict(eval_encs)
    run_.eval_labels = {split: enc.labels.numpy() for split, enc in eval_encs.items()}
    if c.pad_to_max_length:
        padded = partial(collate, pad_to=c.max_seq_length)
        run_.train_fn, run_.predict_fn = partial(train_epoch, collate_fn=padded), partial(predict_logits,
                                                                                          collate_fn=padded)
    asked = c.batch_layout
    if asked == "auto":  # config.json (written after prepare) records the layout actually used
        c.batch_layout = "packed" if run_.device.type == "cpu" and not c.pad_to_max_length else "padded"
    if c.batch_layout == "packed":  # the same batches, end to end without padding (core/packed.py)
        gap = packed.support(run_.model, train_enc, run_.tokenizer.pad_token_id)
        if gap is None:
            run_.train_fn, run_.predict_fn = packed.train_epoch_packed, packed.predict_logits_packed
        else:
            if asked == "packed":
                print(f"note: --batch-layout packed does not fit this model ({gap}); using padded batches",
                      flush=True)
            c.batch_layout = "padded"
    if c.fine_tune_type != "frozen" or not c.cache_features:
        return
    try:
        cache = partial(cache_features, run_.model, batch_size=c.eval_batch_size, device=run_.device,
                        pad_token_id=run_.tokenizer.pad_token_id, precision=c.precision, progress=not c.no_progress)
        run_.train_data = cache(train_enc, desc="features train")
        run_.eval_data = {s: run_.train_data if e is train_enc else cache(e, desc=f"features {s}")
                          for s, e in eval_encs.items()}
        run_.train_fn, run_.predict_fn = train_head_epoch, predict_head_logits
        run_.record.cached_features = True
        if c.batch_layout == "packed":  # the head trains on cached features: no token batches to lay out
            if asked == "packed":
                print("note: frozen features are cached, so --batch-layout packed does not apply; recorded as padded")
            c.batch_layout = "padded"
    except ValueError as e:  # a head that reads more than what is cached: use the plain loop
        print(f"note: {e}; the frozen encoder runs every step", flush=True)


def _optimizer(run_, steps_per_epoch):
    c = run_.config
    run_.optimizer = build_optimizer(run_.trainable, c.optimizer, c.learning_rate, c.weight_decay)
    run_.scheduler = build_scheduler(run_.optimizer, c.lr_schedule, steps_per_epoch * c.epochs, c.warmup_ratio)
    run_.scaler = torch.amp.GradScaler("cuda") if (c.precision == "fp16" and run_.device.type == "cuda") else None


def _new_record(config, task, report, train_df):
    return RunRecord(
        task=task.name, model_name=config.model_name, fine_tune_type=config.fine_tune_type,
        bias_terms=list(config.bias_terms), learning_rate=config.learning_rate, seed=config.seed,
        train_size=config.train_size, num_train_examples=len(train_df), headline_metric=task.headline,
        eval_splits=list(task.eval_splits), trainable_params=report["trainable_params"],
        total_params=report["total_params"], trainable_share=report["trainable_share"],
        paper_param_share=report["paper_param_share"],
        skipped_malformed_rows=int(train_df.attrs.get("skipped_malformed_rows", 0)))


# ------------------------------------------------------------------------------------------------------ fit

def fit(run_):
    """The epoch loop: train one epoch, evaluate every split, record, checkpoint."""
    c, record = run_.config, run_.record
    for epoch in range(run_.start_epoch, c.epochs + 1):
        start = time.perf_counter()
        loss = run_.train_fn(
            run_.model, run_.train_data, run_.optimizer, run_.scheduler, run_.guard, batch_size=c.batch_size,
            generator=epoch_generator(c.seed, epoch), device=run_.device, pad_token_id=run_.tokenizer.pad_token_id,
            is_regression=run_.task.is_regression, precision=c.precision, scaler=run_.scaler,
            group_by_length=c.group_by_length, trainable_params=run_.trainable, progress=not c.no_progress,
            desc=f"epoch {epoch}/{c.epochs}")
        train_time = time.perf_counter() - start
        split_metrics = evaluate(run_)
        _check_finite_weights(run_)
        record.add_epoch(EpochRecord(epoch=epoch, train_loss=loss, epoch_time_sec=train_time,
                                     eval_time_sec=time.perf_counter() - start - train_time, metrics=split_metrics))
        run_.end_epoch(epoch)
        print(f"epoch {epoch}: loss {loss:.4f}  {record.eval_splits[0]} {record.headline_metric} "
              f"{record.headline('last'):.4f}  ({train_time:.1f}s)", flush=True)


def evaluate(run_):
    """{split: metrics} of the model now; a non-finite logit or metric stops the run (FloatingPointError)."""
    c, out = run_.config, {}
    for split, enc in run_.eval_data.items():
        logits = run_.predict_fn(run_.model, enc, batch_size=c.eval_batch_size, device=run_.device,
                                 pad_token_id=run_.tokenizer.pad_token_id, precision=c.precision,
                                 progress=not c.no_progress, desc=f"eval {split}")
        if not np.isfinite(logits).all():
            raise FloatingPointError(f"the model's {split} logits are not finite (try a lower --learning-rate)")
        preds = metrics.logits_to_predictions(run_.task.name, logits)
        out[split] = metrics.compute_metrics(run_.task.name, preds, run_.eval_labels[split])
        bad = [k for k, v in out[split].items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"the {split} {', '.join(bad)} is not finite (degenerate predictions; try a "
                                     f"lower --learning-rate)")
    return out


def _check_finite_weights(run_):
    for name, p in run_.model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise FloatingPointError(f"parameter {name} became non-finite (try a lower --learning-rate)")


# ------------------------------------------------------------------------------------------------------ artifacts

def write_artifacts(run_):
    """After the last epoch: figures, bias changes (bitfit), evaluator, test-server files, the task pack; then the
    record says "complete" and the checkpoint goes (unless --keep-checkpoint)."""
    c, record, out = run_.config, run_.record, run_.out
    plot_learning_curves(record, os.path.join(out, "learning_curves.png"))
    families = selection.bias_families(run_.model) if c.fine_tune_type == "bitfit" else {}
    if families:
        changes = bias_changes(run_.model, run_.snap.values, families, selection.fused_qkv_masks(run_.model))
        atomic_write_json(os.path.join(out, "bias_changes.json"), changes)
        plot_bias_heatmap(changes, os.path.join(out, "bias_changes.png"),
                          title=f"Change in bias components ({run_.task.name.upper()})")
    evaluator = GLUEEvaluator(run_.model, run_.tokenizer, run_.task, config=c.to_dict(),
                              history=[asdict(e) for e in record.epochs], max_seq_length=c.max_seq_length)
    if c.save_evaluator:
        evaluator.save(os.path.join(out, "evaluator"))
    for split, df in run_.test_dfs.items():
        logits = evaluator.predict(df, batch_size=c.eval_batch_size, precision=c.precision,
                                   progress=not c.no_progress)
        write_server_file(run_.task.name, split, df["idx"].to_numpy(),
                          metrics.logits_to_predictions(run_.task.name, logits),
                          os.path.join(out, "test_predictions"), expected_rows=len(df))
    # The pack holds the last-epoch weights, so its dev metrics are the last epoch's.
    manifest = packs.write_pack(os.path.join(out, "pack"), run_.model, run_.snap, run_.sel, base_model=c.model_name,
                                task=run_.task, dev_metrics=record.last, max_seq_length=c.max_seq_length,
                                extra={"best_epoch": record.best_epoch, "last_epoch": record.last_epoch,
                                       **({"adapter": spec} if (spec := adapters.spec(c)) else {})})
    complete(run_, manifest)


def complete(run_, manifest):
    """The last step of every run, once its pack is written: the pack's summary into the record, "complete", and the
    checkpoint removed (unless --keep-checkpoint)."""
    print(packs.format_summary(manifest), flush=True)
    run_.record.pack = PackSummary(**{k: manifest[k] for k in ("pack_bytes", "full_model_bytes",
                                                               "ratio_to_full_model", "stored_values", "fixups")})
    run_.record.status = "complete"
    run_.save_record()
    if not run_.config.keep_checkpoint:
        remove_checkpoint(run_.out)


def bias_changes(model, initial, families, fused=None):
    """Mean |b_f - b_0| per family and layer: the quantity of the paper's Figure 1. `initial` holds the original
    values of the trained tensors (the pack snapshot); a family that did not train changed by exactly 0. `fused`
    (selection.fused_qkv_masks): a family whose bias is a slice of a fused q/k/v tensor is averaged over its slice."""
    params, fused = dict(model.named_parameters()), fused or {}

    def change(family, name):
        diff = (params[name].detach().float().cpu() - initial[name].float()).abs()
        own = fused.get((family, name))
        return float((diff.reshape(-1)[own.reshape(-1)] if own is not None else diff).mean())
    out = {family: [change(family, name) if name in initial else 0.0 for _, name in entries]
           for family, entries in families.items()}
    return {"layers": max((len(v) for v in out.values()), default=0), "families": out,
            "notation": {f: PAPER_NOTATION[f] for f in out}}


# ------------------------------------------------------------------------------------------------------ bookkeeping

def _write_config(run_):
    os.makedirs(run_.out, exist_ok=True)
    atomic_write_json(os.path.join(run_.out, "config.json"), {
        "args": run_.config.to_dict(), "model": model_identity(run_.config.model_name),
        "versions": library_versions(), "device": str(run_.device), "torch_threads": torch.get_num_threads(),
        "cpu": cpu_numerics(),
        "command": " ".join(sys.argv)})
    atomic_write_json(os.path.join(run_.out, "params.json"), run_.report)
    run_.save_record()
    if run_.config.verbose:
        print(selection.format_report(run_.report))


def _recording_failures(run_):
    """Whatever ends the run early is written into its record: "interrupted" (Ctrl-C, SIGTERM, SIGHUP; the
    checkpoint stays for --resume) or "failed" with the reason (and OUT/failure.txt with the traceback)."""
    def end(status, reason, trace):
        run_.record.status, run_.record.failure_reason = status, reason
        run_.save_record()
        if trace is not None:
            atomic_write_text(os.path.join(run_.out, "failure.txt"), trace)
    return recording_failures(end)


@contextmanager
def recording_failures(end):
    """SIGTERM/SIGHUP become KeyboardInterrupt meanwhile; an interrupt calls end("interrupted", reason, None) and goes
    on, any other exception calls end("failed", reason, traceback) and is swallowed (the record says why)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, _raise_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        end("interrupted", "interrupted by a signal", None)
        raise
    except Exception as e:
        end("failed", f"{type(e).__name__}: {first_line(e, 300)}", traceback.format_exc())
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


_TEMPORARY = re.compile(r"^\..+(\.tmp|\.[A-Za-z0-9_]{8})$")  # atomic_open's files, atomic_directory's folders


def remove_leftover_temporaries(out):
    """Half-written temporaries of a killed write (never the targets themselves, which are replaced by rename)."""
    for name in os.listdir(out):
        if _TEMPORARY.match(name):
            path = os.path.join(out, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
