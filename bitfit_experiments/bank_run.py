"""A bias bank of K BitFit runs, trained in one pass over one frozen model (core/bank.py), each member writing its
own ordinary run directory: config.json (which also names the bank and its members), results.json, params.json,
the per-epoch curve, pack, evaluator and test files -- what tables, claims and figures read.

    python -m bitfit_experiments.bank --bank-dir BANK_DIR --runs RUNS_FILE     # one run_glue argument line each
    python -m bitfit_experiments.bank --bank-dir BANK_DIR -- ARGS... -- ARGS...

BANK_DIR holds bank.json (the members, in order) and the bank's one checkpoint. Running the same command again
resumes after the last finished epoch (after kill -9 too) and ends with the same numbers. Re-running a member by its
config (`run_glue.py --config MEMBER/config.json -o NEW`) re-executes the whole bank into NEW, one subdirectory per
member, and every member is reproduced bit-identically.

Layer: run (above core, artifacts and report).
"""
import copy
import json
import os
import sys
import time
from contextlib import ExitStack

import numpy as np
import torch

from . import experiment
from .artifacts import packs
from .artifacts.checkpoint import (BANK_FORMAT, load_checkpoint, remove_checkpoint, restore_bank_checkpoint,
                                   save_bank_checkpoint)
from .artifacts.io import atomic_write_json, atomic_write_text, library_versions
from .artifacts.lock import RunLock
from .artifacts.record import EpochRecord, RunRecord
from .core import bank as banks, data, metrics, selection
from .core.bank_train import predict_bank_logits, train_bank_epoch
from .core.config import RESUME_NEUTRAL, RunConfig
from .core.errors import UsageError
from .core.model import cpu_numerics, load_model, model_identity, peak_memory_mb, resolve_device
from .core.bank_optim import BankAdamW
from .core.trainer import epoch_generator, set_seed

BANK_FILE = "bank.json"


def member_name(i, c):
    """A member's subdirectory name when the bank is re-executed from a config: order, learning rate, seed, terms."""
    return f"{i:02d}_lr{c.learning_rate:g}_s{c.seed}_{'+'.join(c.bias_terms)}"


class Bank:
    """Everything a bank's steps share: the member configs, runs (experiment.Run, one per member) and the bank."""

    def __init__(self, configs, bank_dir):
        self.configs, self.bank_dir = list(configs), bank_dir
        self.runs, self.bank, self.encs, self.eval_encs = [], None, [], []
        self.optimizer = None
        self.start_epoch, self.device, self.tokenizer, self.task = 1, None, None, None

    @property
    def members(self):
        return self.bank.members


# ------------------------------------------------------------------------------------------------------ entry

def run_bank(configs, bank_dir):
    """Train the members as one bank (every directory locked meanwhile); returns their RunRecords, in order."""
    banks.check_members(configs)
    paths = [bank_dir] + [c.output_path for c in configs]
    created = [p for p in paths if not os.path.exists(p)]
    with ExitStack() as locks:
        for path in paths:
            locks.enter_context(RunLock(path))
        try:
            resuming = _check_directories(configs, bank_dir)
        except UsageError:
            locks.close()
            for p in created:  # refused before writing anything: leave no trace
                if os.path.isdir(p) and not os.listdir(p):
                    os.rmdir(p)
            raise
        done = [_complete_record(c) for c in configs] if resuming else [None] * len(configs)
        if all(r is not None for r in done):
            print(f"{bank_dir}: every member is complete; nothing to do")
            return done
        if any(done) and load_checkpoint(bank_dir, expected=BANK_FORMAT) is None:
            left = [c.output_path for c, r in zip(configs, done) if r is None]
            raise UsageError(f"bank {bank_dir} has finished (its checkpoint is gone) without {left[0]}"
                             f"{f' and {len(left) - 1} more' if len(left) > 1 else ''}; run those alone")
        b = prepare(configs, bank_dir, resume=resuming)
        _write_configs(b)
        with _recording_failures(b):
            fit(b)
            write_artifacts(b)
        return [r.record for r in b.runs]


def _check_directories(configs, bank_dir):
    """True if bank_dir already holds this bank (resume); a new bank needs an empty bank directory and empty
    member directories (nothing a user owns is overwritten)."""
    path = os.path.join(bank_dir, BANK_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = [RunConfig.from_dict(m["args"]) for m in json.load(f)["members"]]
        except (OSError, ValueError, KeyError, TypeError, UsageError):
            raise UsageError(f"{path} is damaged; delete {bank_dir} to start the bank again") from None
        same = len(saved) == len(configs) and all(not a.differences(b, ignore=RESUME_NEUTRAL)
                                                  for a, b in zip(saved, configs))
        if not same:
            raise UsageError(f"--bank-dir {bank_dir} holds another bank (other members or settings); use a new bank "
                             f"directory")
        for c in configs:
            experiment.remove_leftover_temporaries(c.output_path)
        return True
    for d in [bank_dir] + [c.output_path for c in configs]:
        if os.listdir(d):
            raise UsageError(f"{d} is not empty; a new bank needs empty directories (choose new ones) so that no "
                             f"earlier result is overwritten")
    return False


def _complete_record(config):
    try:
        r = RunRecord.load(config.output_path)
    except Exception:
        return None
    return r if r.complete and r.last_epoch >= config.epochs else None


# ------------------------------------------------------------------------------------------------------ prepare

def prepare(configs, bank_dir, resume=False):
    """Load the model once (and each distinct seed's head), the members' data, selections, optimizers, records."""
    b, first = Bank(configs, bank_dir), configs[0]
    b.task = data.get_task(first.task_name)
    heads, model = _load_heads(b)
    b.device = resolve_device(first.gpu_device)
    model.requires_grad_(False)
    model.to(b.device)
    members, sels = [], []
    for k, c in enumerate(configs):
        sel = selection.select(model, "bitfit", c.bias_terms, None, c.seed)
        if sel.masks:
            raise UsageError("bias bank: --bias-terms that train part of a fused q/k/v bias cannot be banked; run "
                             "them one at a time")
        head = {p: copy.deepcopy(m).to(b.device) for p, m in heads[c.seed].items()}
        head_names = set(selection.split_base_head(model)[1])
        members.append(banks.new_member(model, [n for n in sel.trainable if n not in head_names], head,
                                        name=member_name(k, c)))
        sels.append(sel)
    b.bank = banks.BiasBank(model, members)
    _member_runs(b, model, sels)
    c, steps = first, -(-len(b.encs[0].lengths) // first.batch_size) * first.epochs
    b.optimizer = BankAdamW(b.bank.parameters(), b.bank.grad_masks(), [m.learning_rate for m in configs],
                            name=c.optimizer, weight_decay=c.weight_decay, schedule=c.lr_schedule,
                            total_steps=steps, warmup_ratio=c.warmup_ratio)
    set_seed(first.seed)  # the bank's own dropout stream
    if resume:
        _continue_from_checkpoint(b)
    return b


def _load_heads(b):
    """{seed: {head module: module}} -- each distinct seed's head drawn exactly as its single run draws it -- and
    the model (loaded with the first member's seed). A checkpoint lacking base tensors (drawn per seed) cannot be
    shared by members with different seeds."""
    heads, model = {}, None
    for c in b.configs:
        if c.seed in heads:
            continue
        set_seed(c.seed)
        if model is None:
            b.tokenizer, model = experiment._load_model(c, b.task)
            loaded = model
        else:
            loaded = load_model(c.model_name, b.task, allow_weight_mismatch=c.allow_weight_mismatch)
        heads[c.seed] = {p: loaded.get_submodule(p) for p in banks.head_modules(loaded)}
    _, head_names = selection.split_base_head(model)
    drawn = [n for n in model.newly_initialized if n not in set(head_names)]
    if drawn and len(heads) > 1:
        raise UsageError(f"bias bank: the checkpoint lacks {drawn[0]}, which each seed draws anew; members with "
                         f"different seeds cannot share it -- bank one seed at a time")
    return heads, model


def _member_runs(b, model, sels):
    """One experiment.Run per member: its data, record and snapshot."""
    by_seed, snap0 = {}, None
    for k, (c, sel) in enumerate(zip(b.configs, sels)):
        if c.seed not in by_seed:
            by_seed[c.seed] = experiment._load_data(c, b.task, b.tokenizer)
        train_df, (train_enc, eval_encs), test_dfs = by_seed[c.seed]
        with b.bank.member_view(k):  # the member's own single-run model: its head counts, its values snapshot
            report = selection.param_report(model, sel, c.bias_terms)
            if snap0 is None:
                snap0 = packs.snapshot(model, sel, newly_initialized=model.newly_initialized)
                snap = snap0
            else:
                state = model.state_dict()
                snap = packs.Snapshot(snap0.base_hash, {n: state[n].detach().cpu().clone() for n in sel.trainable},
                                      snap0.newly_initialized)
        record = experiment._new_record(c, b.task, report, train_df)
        b.runs.append(experiment.Run(c, b.task, b.device, b.tokenizer, model, sel, report, snap, record,
                                     test_dfs=test_dfs))
        b.encs.append(train_enc)
        b.eval_encs.append(dict(eval_encs))


def _continue_from_checkpoint(b):
    ckpt = load_checkpoint(b.bank_dir, expected=BANK_FORMAT)
    if ckpt is None:
        return
    done, saved = restore_bank_checkpoint(ckpt, bank=b.bank, optimizer=b.optimizer)
    for r, d in zip(b.runs, saved):
        r.record = RunRecord.from_dict(d)
        r.record.resumed_after_epochs = r.record.resumed_after_epochs + [done]
        if r.record.status != "failed":
            r.record.status, r.record.failure_reason = "running", None
    b.start_epoch = done + 1
    print(f"resuming bank {b.bank_dir} after epoch {done}", flush=True)


# ------------------------------------------------------------------------------------------------------ fit

def fit(b):
    """The epoch loop of the whole bank: train every running member one epoch, evaluate, record, checkpoint."""
    c = b.configs[0]
    for epoch in range(b.start_epoch, c.epochs + 1):
        start = time.perf_counter()
        gens = [epoch_generator(m.seed, epoch) for m in b.configs]
        losses = train_bank_epoch(b.bank, b.encs, gens, b.optimizer,
                                  batch_size=c.batch_size, device=b.device, pad_token_id=b.tokenizer.pad_token_id,
                                  is_regression=b.task.is_regression, precision=c.precision,
                                  group_by_length=c.group_by_length, on_failure=lambda k: _fail(b, k))
        train_time = time.perf_counter() - start
        split_metrics = evaluate(b)
        eval_time = time.perf_counter() - start - train_time
        for k, r in enumerate(b.runs):
            if b.members[k].failed is None and not _finite_member(b, k):
                b.members[k].failed = "FloatingPointError: a trained bias or head became non-finite"
                _fail(b, k)
            if b.members[k].failed is not None:
                continue
            r.record.add_epoch(EpochRecord(epoch=epoch, train_loss=losses[k], epoch_time_sec=train_time,
                                           eval_time_sec=eval_time, metrics=split_metrics[k]))
            r.record.peak_memory_mb = max(r.record.peak_memory_mb or 0.0, peak_memory_mb(b.device))
            r.save_record()
        if c.checkpoint and (epoch < c.epochs or c.keep_checkpoint):
            save_bank_checkpoint(b.bank_dir, epoch=epoch, bank=b.bank, optimizer=b.optimizer,
                                 results=[r.record.to_dict() for r in b.runs])
        alive = [k for k in range(len(b.runs)) if b.members[k].failed is None]
        shown = "  ".join(f"{b.members[k].name} {b.runs[k].record.headline('last'):.4f}" for k in alive)
        print(f"epoch {epoch} ({train_time:.1f}s): {shown}", flush=True)


def evaluate(b):
    """{member: {split: metrics}}; a member with a non-finite logit or metric is marked failed."""
    out = {k: {} for k in range(len(b.runs))}
    c = b.configs[0]
    for split in b.eval_encs[0]:
        logits = predict_bank_logits(b.bank, {k: e[split] for k, e in enumerate(b.eval_encs)},
                                     batch_size=c.eval_batch_size, device=b.device,
                                     pad_token_id=b.tokenizer.pad_token_id, precision=c.precision)
        for k, lg in logits.items():
            m = _split_metrics(b, split, lg, b.eval_encs[k][split].labels.numpy())
            if isinstance(m, str):
                b.members[k].failed = m
                _fail(b, k)
            else:
                out[k][split] = m
    return out


def _split_metrics(b, split, logits, labels):
    if not np.isfinite(logits).all():
        return f"FloatingPointError: the model's {split} logits are not finite (try a lower --learning-rate)"
    result = metrics.compute_metrics(b.task.name, metrics.logits_to_predictions(b.task.name, logits), labels)
    bad = [k for k, v in result.items() if not np.isfinite(v)]
    if bad:
        return f"FloatingPointError: the {split} {', '.join(bad)} is not finite (try a lower --learning-rate)"
    return result


def _finite_member(b, k):
    return all(bool(torch.isfinite(t).all()) for t in b.bank.member_tensors(k).values())


def _fail(b, k):
    """Member k stops (its rows frozen): its record says "failed" with the reason; the others go on."""
    b.optimizer.freeze(k)
    r = b.runs[k]
    r.record.status, r.record.failure_reason = "failed", b.members[k].failed
    r.save_record()
    atomic_write_text(os.path.join(r.out, "failure.txt"), b.members[k].failed + "\n")
    print(f"member {b.members[k].name} failed: {b.members[k].failed}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ artifacts

def write_artifacts(b):
    """Each member that did not fail writes what its single run writes, from its own view of the model."""
    for k, r in enumerate(b.runs):
        if b.members[k].failed is not None:
            continue
        with b.bank.member_view(k):
            experiment.write_artifacts(r)
    if not b.configs[0].keep_checkpoint:
        remove_checkpoint(b.bank_dir)


def _write_configs(b):
    members = [{"name": m.name, "args": c.to_dict()} for m, c in zip(b.members, b.configs)]
    atomic_write_json(os.path.join(b.bank_dir, BANK_FILE), {"format": "bitfit-glue-bank/1", "members": members})
    common = {"model": model_identity(b.configs[0].model_name), "versions": library_versions(),
              "device": str(b.device), "torch_threads": torch.get_num_threads(), "cpu": cpu_numerics(),
              "command": " ".join(sys.argv)}
    for k, r in enumerate(b.runs):
        os.makedirs(r.out, exist_ok=True)
        bank = {"dir": os.path.abspath(b.bank_dir), "member": b.members[k].name, "index": k, "members": members}
        atomic_write_json(os.path.join(r.out, "config.json"), {"args": r.config.to_dict(), **common, "bank": bank})
        atomic_write_json(os.path.join(r.out, "params.json"), r.report)
        if r.record.status != "failed":
            r.save_record()


def _recording_failures(b):
    """A crash or signal ends every member that has neither failed nor completed: "failed" with the reason (and
    failure.txt with the traceback; the exception is swallowed, as for a single run) or "interrupted"."""
    return experiment.recording_failures(lambda status, reason, trace: _end_unfinished(b, status, reason, trace))


def _end_unfinished(b, status, reason, trace):
    for k, r in enumerate(b.runs):
        if b.members[k].failed is not None or r.record.complete:
            continue
        r.record.status, r.record.failure_reason = status, reason
        r.save_record()
        if trace is not None:
            atomic_write_text(os.path.join(r.out, "failure.txt"), trace)
