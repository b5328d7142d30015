"""The training loop of a bias bank (core/bank.py): the recipe of trainer.py, per member, on shared batches.

A step stacks one batch of every running member (its own data order, from its own seed) into member blocks, runs
one forward pass, and takes each member's own mean loss. The backward pass is of their sum: no member's gradient
depends on another's, since a member's rows and head touch only its examples. Then one BankAdamW step
(core/bank_optim.py) clips each member's gradient norm at 1.0 over its own tensors and updates it at its own rate.
A member whose loss turns non-finite is marked failed and frozen; the others go on.

Layer: core.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .batching import batch_order, collate
from .trainer import autocast_context, compute_loss, to_device


def stack_batches(batches, pad_token_id):
    """One batch from per-member collated batches: right-padded to the longest of them, concatenated in order."""
    width = max(b["input_ids"].shape[1] for b in batches)
    out = {}
    for key in batches[0]:
        if key == "labels":
            out[key] = torch.cat([b[key] for b in batches])
            continue
        fill = pad_token_id if key == "input_ids" else 0
        out[key] = torch.cat([torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=fill)
                              for b in batches])
    return out


def train_bank_epoch(bank, encs, generators, optimizer, *, batch_size, device, pad_token_id, is_regression,
                     precision="fp32", group_by_length=False, collate_fn=collate, on_failure=None):
    """One epoch of every running member: encs[k] and generators[k] (its epoch's shuffle) per member, one
    BankAdamW for all. Returns {member: mean training loss}; a member whose loss turns non-finite is marked failed
    (`member.failed`, its rows frozen, `on_failure(k)` called) and skipped from then on."""
    members = bank.members
    running = [k for k, m in enumerate(members) if m.failed is None]
    orders = {k: batch_order(encs[k].lengths, batch_size, shuffle=True, generator=generators[k],
                             group_by_length=group_by_length) for k in running}
    steps = max((len(o) for o in orders.values()), default=0)  # equal: the members share the train size
    totals = torch.zeros(len(members), device=device)
    sync_every = 1 if device.type == "cpu" else 50
    bank.model.train()
    for step in range(steps):
        active = [k for k in running if members[k].failed is None]
        if not active:
            break
        parts = [collate_fn(encs[k], orders[k][step], pad_token_id) for k in active]
        losses = bank_step(bank, active, parts, optimizer, device=device, pad_token_id=pad_token_id,
                           is_regression=is_regression, precision=precision)
        totals[active] += losses
        if (step + 1) % sync_every == 0 or step + 1 == steps:
            _mark_non_finite(members, active, totals[active], step, optimizer, on_failure)
    return {k: totals[k].item() / max(1, steps) for k in running if members[k].failed is None}


def bank_step(bank, active, parts, optimizer, *, device, pad_token_id, is_regression, precision="fp32",
              joint=None):
    """One optimizer step of the members `active`, parts[i] being member active[i]'s collated batch. Returns their
    losses (a device tensor, no host sync).

    joint (default on a GPU): all member blocks in one forward/backward pass -- a GPU's small steps are launch-bound,
    so K blocks cost little more than one. Otherwise (the CPU, compute-bound: one big batch padded to its longest
    example and falling out of cache was measured 1.5-2x slower than K small ones) one pass per member block, the
    gradients accumulating in the shared rows, then one optimizer step: the weights are held once and the process
    starts once, and each block is padded as its separate run's batch."""
    joint = device.type != "cpu" if joint is None else joint
    groups = [(active, parts)] if joint else [([k], [p]) for k, p in zip(active, parts)]
    losses = []
    for ks, ps in groups:
        bank.route([(k, len(p["labels"])) for k, p in zip(ks, ps)])
        batch = to_device(stack_batches(ps, pad_token_id), device)
        labels = batch.pop("labels")
        with autocast_context(device, precision):
            logits = bank.model(**batch).logits
        loss = member_losses(bank, logits, labels, is_regression)
        loss.sum().backward()  # d(sum)/d(member k's rows) = d(loss_k)/d(...): no member reaches another's rows
        losses.append(loss.detach())
    optimizer.clip()  # per member: the norm of its own gradients
    optimizer.step()
    optimizer.zero_grad()
    return torch.cat(losses)


def member_losses(bank, logits, labels, is_regression):
    """Each block's own mean loss (trainer.compute_loss per member), for all blocks at once when they are equal."""
    if bank._block is None:
        return torch.stack([compute_loss(logits[s:e], labels[s:e], is_regression) for _, s, e in bank.blocks])
    m = len(bank.blocks)
    if is_regression:
        per = F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="none")
    else:
        per = F.cross_entropy(logits.float(), labels, reduction="none")
    return per.view(m, bank._block).mean(1)


def _mark_non_finite(members, active, totals, step, optimizer, on_failure):
    for k, value in zip(active, totals.detach().float().cpu().tolist()):
        if not math.isfinite(value) and members[k].failed is None:
            members[k].failed = (f"FloatingPointError: the training loss became {value} by step {step + 1} of this "
                                 f"epoch (try a lower --learning-rate)")
            optimizer.freeze(k)
            if on_failure is not None:
                on_failure(k)


@torch.no_grad()
def predict_bank_logits(bank, encs, *, batch_size, device, pad_token_id, precision="fp32", collate_fn=collate,
                        joint=None):
    """{member: logits of every example of encs[member], in the split's order}, for every running member.

    joint (default on a GPU): a batch holds the same number of examples of every member (batch_size split among
    them), each member's taken in its own length-sorted order. Otherwise (the CPU) each batch is one member's."""
    model, members = bank.model, bank.members
    running = [k for k, m in enumerate(members) if m.failed is None and k in encs]
    if not running:
        return {}
    joint = device.type != "cpu" if joint is None else joint
    per = max(1, batch_size // len(running)) if joint else batch_size
    orders = {k: batch_order(encs[k].lengths, per, shuffle=False, group_by_length=True) for k in running}
    if joint:  # step s: every member's s-th batch side by side
        steps = [[(k, s) for k in running if s < len(orders[k])] for s in range(max(map(len, orders.values())))]
    else:  # one member's batch at a time
        steps = [[(k, s)] for k in running for s in range(len(orders[k]))]
    outputs = {k: [] for k in running}
    model.eval()
    for items in steps:
        parts = [collate_fn(encs[k], orders[k][step], pad_token_id) for k, step in items]
        bank.route([(k, len(p["labels"])) for (k, _), p in zip(items, parts)])
        batch = to_device(stack_batches(parts, pad_token_id), device)
        batch.pop("labels")
        with autocast_context(device, precision):
            logits = model(**batch).logits.float().cpu()
        for k, s, e in bank.blocks:
            outputs[k].append(logits[s:e])
    result = {}
    for k in running:
        logits = torch.cat(outputs[k]).numpy()
        placed = np.empty_like(logits)
        placed[np.concatenate(orders[k])] = logits
        result[k] = placed
    return result
