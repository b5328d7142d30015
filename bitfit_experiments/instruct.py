"""One run of run_instruct.py: instruction tuning of a causal LM with BitFit or full fine-tuning, in the three steps
of a GLUE run (experiment.py): `prepare` (inputs checked, data, model, selection, optimizer, the record; writes
nothing), `fit` (per epoch: train, eval loss and perplexity, record, checkpoint) and `write_artifacts` (samples.jsonl,
the pack, "complete").

Layer: run. Shares the GLUE run's machinery: RunLock (one run per output directory), the epoch-end checkpoint of
artifacts/checkpoint.py (exact --resume: trainable tensors, optimizer, scheduler and RNG states; the data order of an
epoch depends only on (seed, epoch)), failures and interrupts recorded in results.json, task packs' tensors.
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from .artifacts import lm_pack, packs
from .artifacts.instruct_record import InstructEpoch, InstructRecord
from .artifacts.io import atomic_write_json, atomic_write_text, library_versions
from .artifacts.record import RecordError, load_config_args
from .core import instruct_data, selection
from .core.causal_lm import greedy_generate, lm_eval_loss, lm_train_epoch, load_causal_lm, select_for_lm
from .core.decoders import pair_pad_token
from .core.errors import UsageError
from .core.instruct_config import INSTRUCT_RESUME_NEUTRAL, InstructConfig
from .core.model import load_tokenizer, model_identity, resolve_device
from .core.trainer import build_optimizer, build_scheduler, epoch_generator, set_seed
# The GLUE run's failure recording and clean-up of half-written temporaries, shared on purpose: one behaviour.
from .experiment import RunState, complete, continue_same_run, execute

SAMPLES_FILE = "samples.jsonl"


@dataclass
class InstructRun(RunState):
    """Everything the three steps share."""
    config: InstructConfig
    device: torch.device
    tokenizer: object
    model: torch.nn.Module
    sel: selection.Selection
    snap: packs.Snapshot
    record: InstructRecord
    train_enc: object
    eval_enc: object
    guard: object = None
    trainable: list = None
    optimizer: object = None
    scheduler: object = None
    scaler: object = None
    start_epoch: int = 1


def run(config):
    """Train one configuration (its output directory locked for the duration); returns its InstructRecord."""
    return execute(config, _check_output, prepare, _write_config, fit, write_artifacts)


def _check_output(config):
    """A fresh run needs an empty directory; --resume a run_instruct run of the same configuration. Returns the
    directory's previous InstructRecord (or None)."""
    out = config.output_path
    has_run = os.path.exists(os.path.join(out, "config.json"))
    if not config.resume or not has_run:
        if os.path.isdir(out) and os.listdir(out):
            what = "is not empty" if not config.resume else "holds no run (no config.json)"
            raise UsageError(f"--output-path {out} {what}; choose a new directory so that nothing there is "
                             f"overwritten")
        return None
    try:
        saved = InstructConfig.from_dict(load_config_args(out))
    except (RecordError, UsageError, TypeError):
        raise UsageError(f"--resume: {os.path.join(out, 'config.json')} is not a run_instruct.py config (damaged, "
                         f"or a run_glue.py run); give the run's own directory") from None
    diff = saved.differences(config, ignore=INSTRUCT_RESUME_NEUTRAL | ({"epochs"} if config.epochs >= saved.epochs
                                                                       else set()))
    return continue_same_run(out, diff, InstructRecord)


# ------------------------------------------------------------------------------------------------------ prepare

def prepare(config, previous=None):
    """Data, model, selection, optimizer and a fresh record (or the checkpoint's, with --resume; `previous` is the
    directory's earlier record). Writes nothing."""
    records = instruct_data.load_records(config.data)  # bad data is refused before the model is loaded
    train_records, eval_records = instruct_data.split_records(records, config.eval_size, config.seed)
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model_name)
    model = load_causal_lm(config.model_name)
    pair_pad_token(tokenizer, model)
    _check_max_seq_length(config, model)
    sel = select_for_lm(model, config.fine_tune_type, config.bias_terms)
    report = selection.param_report(model, sel, config.bias_terms)
    train_enc = instruct_data.encode_records(tokenizer, train_records, config.max_seq_length)
    eval_enc = instruct_data.encode_records(tokenizer, eval_records, config.max_seq_length)
    if not len(train_enc) or not len(eval_enc):
        raise UsageError(f"--max-seq-length {config.max_seq_length}: no response token of the "
                         f"{'training' if not len(train_enc) else 'held-out'} records fits after its prompt; give a "
                         f"larger --max-seq-length")
    selection.apply(model, sel)
    snap = packs.snapshot(model, sel)  # base hash + original values: the pack stores only the difference
    device = resolve_device(config.gpu_device)
    model.to(device)
    record = _new_record(config, report, train_enc, eval_enc)
    run_ = InstructRun(config, device, tokenizer, model, sel, snap, record, train_enc, eval_enc)
    run_.guard = selection.MaskGuard(model, sel) if sel.masks else None
    run_.trainable = [p for p in model.parameters() if p.requires_grad]
    run_.optimizer = build_optimizer(run_.trainable, config.optimizer, config.learning_rate, config.weight_decay)
    steps = -(-len(train_enc) // config.batch_size) * config.epochs
    run_.scheduler = build_scheduler(run_.optimizer, "constant", steps)
    run_.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" and device.type == "cuda" else None
    if config.resume:
        run_.continue_from_checkpoint(previous)
    return run_


def _check_max_seq_length(config, model):
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and config.max_seq_length > limit:
        raise UsageError(f"--max-seq-length {config.max_seq_length} exceeds the {limit} positions of "
                         f"'{config.model_name}'; pass --max-seq-length {limit} or less")


def _new_record(config, report, train_enc, eval_enc):
    return InstructRecord(
        model_name=config.model_name, data=config.data, fine_tune_type=config.fine_tune_type,
        bias_terms=list(config.bias_terms), learning_rate=config.learning_rate, seed=config.seed,
        max_seq_length=config.max_seq_length, prompt_template=dict(instruct_data.PROMPT_TEMPLATES),
        num_train_examples=len(train_enc), num_eval_examples=len(eval_enc),
        dropped_examples={"train": train_enc.dropped, "eval": eval_enc.dropped},
        trainable_params=report["trainable_params"], total_params=report["total_params"],
        trainable_share=report["trainable_share"])


# ------------------------------------------------------------------------------------------------------ fit

def fit(run_):
    """Per epoch: train, eval loss and perplexity on the held-out split, record, checkpoint."""
    c, record = run_.config, run_.record
    pad = run_.tokenizer.pad_token_id
    for epoch in range(run_.start_epoch, c.epochs + 1):
        start = time.perf_counter()
        loss = lm_train_epoch(run_.model, run_.train_enc, run_.optimizer, run_.scheduler, run_.guard,
                              batch_size=c.batch_size, generator=epoch_generator(c.seed, epoch), device=run_.device,
                              pad_token_id=pad, params=run_.trainable, precision=c.precision, scaler=run_.scaler,
                              progress=not c.no_progress, desc=f"epoch {epoch}/{c.epochs}")
        train_time = time.perf_counter() - start
        eval_loss = lm_eval_loss(run_.model, run_.eval_enc, batch_size=c.eval_batch_size, device=run_.device,
                                 pad_token_id=pad, precision=c.precision, progress=not c.no_progress)
        if not math.isfinite(eval_loss):
            raise FloatingPointError(f"the eval loss is {eval_loss} (try a lower --learning-rate)")
        record.add_epoch(InstructEpoch(epoch=epoch, train_loss=loss, eval_loss=eval_loss,
                                       eval_perplexity=_perplexity(eval_loss), epoch_time_sec=train_time,
                                       eval_time_sec=time.perf_counter() - start - train_time))
        run_.end_epoch(epoch)
        print(f"epoch {epoch}: train loss {loss:.4f}  eval loss {eval_loss:.4f}  perplexity "
              f"{_perplexity(eval_loss):.2f}  ({train_time:.1f}s)", flush=True)


def _perplexity(loss):
    return float(torch.tensor(loss, dtype=torch.float64).exp())


# ------------------------------------------------------------------------------------------------------ artifacts

def write_artifacts(run_):
    """After the last epoch: greedy samples for the fixed prompts, the pack; then "complete"."""
    c, record, out = run_.config, run_.record, run_.out
    if c.max_new_tokens:
        samples = greedy_generate(run_.model, run_.tokenizer, instruct_data.FIXED_PROMPTS,
                                  max_new_tokens=c.max_new_tokens, device=run_.device)
        atomic_write_text(os.path.join(out, SAMPLES_FILE),
                          "".join(json.dumps({"epoch": record.last_epoch, **s}, ensure_ascii=False) + "\n"
                                  for s in samples))
        record.samples = len(samples)
    last = record.epochs[-1]
    manifest = lm_pack.write_lm_pack(os.path.join(out, "pack"), run_.model, run_.snap, run_.sel,
                                     base_model=c.model_name, extra={
                                         "kind": "causal_lm", "max_seq_length": c.max_seq_length,
                                         "prompt_template": dict(instruct_data.PROMPT_TEMPLATES),
                                         "eval_loss": last.eval_loss, "eval_perplexity": last.eval_perplexity,
                                         "last_epoch": record.last_epoch})
    complete(run_, manifest)


def _write_config(run_):
    os.makedirs(run_.out, exist_ok=True)
    atomic_write_json(os.path.join(run_.out, "config.json"), {
        "args": run_.config.to_dict(), "model": model_identity(run_.config.model_name),
        "versions": library_versions(), "device": str(run_.device), "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv)})
    run_.save_record()
