"""The training loop, written out: AdamW/Adam over the trainable parameters, constant learning rate, gradient
clipping at 1.0, cross-entropy (MSE on one output for STS-B) -- the recipe of the official BitFit code.

Everything here works on tokenized splits (`batching.Encoded`) and plain tensors; orchestration (files, epochs,
metrics) lives in experiment.py.

Layer: core.
"""
import math
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import batch_order, collate


def set_seed(seed):
    """Seed every RNG a run touches: python, numpy (data subsets), torch (head init, dropout, masks)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_generator(seed, epoch):
    """The RNG of epoch `epoch`'s shuffle: it depends only on (seed, epoch), so every epoch sees a new order, the same
    run always sees the same orders, and a resumed run needs no saved data-order state."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def build_optimizer(params, name, lr, weight_decay=0.0, eps=None):
    """The official code uses transformers' AdamW (eps 1e-6, no weight decay); `adam` is torch's Adam (eps 1e-8)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, eps=1e-6 if eps is None else eps, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, eps=1e-8 if eps is None else eps, weight_decay=weight_decay)


def lr_lambda(schedule, total_steps, warmup_ratio=0.0):
    """The learning-rate factor of optimizer step `step` (0-based): 1 for `constant` (the official code: no
    scheduler), else linear warm-up then linear decay to 0."""
    if schedule == "constant":
        return lambda step: 1.0
    warmup = int(round(warmup_ratio * total_steps))

    def linear(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return linear


def build_scheduler(optimizer, schedule, total_steps, warmup_ratio=0.0):
    """`constant` (the official code: no scheduler) or `linear` warm-up then linear decay to 0."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps, warmup_ratio))


def autocast_context(device, precision):
    """Mixed precision: the forward/backward run in bf16/fp16, the trainable parameters stay fp32."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def compute_loss(logits, labels, is_regression):
    if is_regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def to_device(batch, device):
    # pinned host memory + non_blocking lets the copy overlap with the previous step's kernels on GPU.
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return batch


def train_step(model, batch, optimizer, scheduler, guard, params, *, device, is_regression, precision="fp32",
               scaler=None, max_grad_norm=1.0):
    """One optimizer step on one collated batch (already on the device). Returns the loss as a device tensor
    (no host sync). The step is: forward -> loss -> backward -> zero the gradients outside random masks -> clip at
    1.0 -> optimizer step -> restore the masked-out entries (so Adam state or weight decay cannot move them) ->
    zero grad."""
    labels = batch.pop("labels")
    with autocast_context(device, precision):
        logits = model(**batch).logits
    loss = compute_loss(logits, labels, is_regression)
    return optimizer_step(loss, optimizer, scheduler, guard, params, scaler=scaler, max_grad_norm=max_grad_norm)


def optimizer_step(loss, optimizer, scheduler, guard, params, *, scaler=None, max_grad_norm=1.0):
    """The recipe's step after the loss, shared by every loop: backward -> zero the gradients outside masks -> clip
    at `max_grad_norm` -> optimizer step -> scheduler step -> restore the masked-out entries -> zero grad. Returns
    the loss detached (a device tensor: no host sync)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if guard is not None:
        guard.zero_masked_grads()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    if guard is not None:
        guard.restore()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_epoch(model, enc, optimizer, scheduler, guard, *, batch_size, generator, device, pad_token_id,
                is_regression, precision="fp32", scaler=None, group_by_length=False, max_grad_norm=1.0,
                trainable_params=None, progress=True, desc="train", collate_fn=collate):
    """One pass over the training split. Returns the mean training loss.

    The running loss stays on the device; the host reads it only every `sync_every` steps, so the GPU is never
    stalled by a per-step `.item()`. A non-finite loss stops the run (checked at those reads and at the end).
    `collate_fn(enc, indices, pad_token_id)` builds a batch: `batching.collate` (dynamic padding), a
    `functools.partial(collate, pad_to=128)` for the official fixed padding, or `features.collate_features`.
    """
    model.train()
    order = batch_order(enc.lengths, batch_size, shuffle=True, generator=generator, group_by_length=group_by_length)
    params = trainable_params if trainable_params is not None else [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros((), device=device)
    sync_every = 1 if device.type == "cpu" else 50
    bar = tqdm(order, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step, indices in enumerate(bar):
        batch = to_device(collate_fn(enc, indices, pad_token_id), device)
        total += train_step(model, batch, optimizer, scheduler, guard, params, device=device,
                            is_regression=is_regression, precision=precision, scaler=scaler,
                            max_grad_norm=max_grad_norm)
        if (step + 1) % sync_every == 0 or step + 1 == len(order):
            running = total.item() / (step + 1)
            if not math.isfinite(running):
                raise FloatingPointError(f"the training loss became {running} at step {step + 1} of this epoch "
                                         f"(try a lower --learning-rate)")
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    return total.item() / max(1, len(order))


@torch.no_grad()
def predict_logits(model, enc, *, batch_size, device, pad_token_id, precision="fp32", progress=True, desc="eval",
                   collate_fn=collate, sort_by_length=True):
    """Logits for every example of a tokenized split, in the split's original order.

    Batches are formed from length-sorted examples (less padding, same numbers: padding is masked out), and the
    predictions are put back in the original order. `sort_by_length=False` keeps the split's order (the official
    pipeline, used by the benchmark).
    """
    model.eval()
    order = batch_order(enc.lengths, batch_size, shuffle=False, generator=None, group_by_length=sort_by_length)
    outputs, positions = [], []
    for indices in tqdm(order, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        batch = to_device(collate_fn(enc, indices, pad_token_id), device)
        batch.pop("labels", None)
        with autocast_context(device, precision):
            logits = model(**batch).logits
        outputs.append(logits.float().cpu())
        positions.extend(indices)
    if not outputs:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    logits = torch.cat(outputs).numpy()
    result = np.empty_like(logits)
    result[np.asarray(positions)] = logits
    return result
