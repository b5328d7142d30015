"""A causal LM for instruction tuning: loading, which parameters train, the training step, eval loss, generation.

Layer: core. The recipe is run_glue's (trainer.py): AdamW/Adam, constant learning rate, gradient clipping at 1.0,
MaskGuard for partially trainable tensors (a fused q/k/v bias of which only `--bias-terms query` trains), the data
order of epoch e drawn from (seed, e). Only the loss differs: next-token cross-entropy over the response tokens
(labels -100 elsewhere), computed here in float32 from the logits.

Loss bookkeeping: a training step minimises the mean over the response tokens of its batch (what HF's causal-LM
loss does); an epoch's train_loss is the mean of its steps' losses (as run_glue's). The eval loss is the mean over
every response token of the held-out split (token-weighted, so batch boundaries do not matter) and the perplexity
is exp(eval loss).

BitFit here trains the base model's biases only: unlike a GLUE classifier, a causal LM's output layer is pretrained
(and often tied to the input embeddings), so it stays frozen.
"""
import math
import os

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import selection
from .batching import batch_order
from .errors import UsageError, first_line
from .instruct_data import IGNORE_INDEX, collate_lm, format_prompt
from .model import _quiet_transformers, check_model_name, weight_mismatch
from .trainer import autocast_context, optimizer_step, to_device


def load_causal_lm(name, dtype=torch.float32):
    """AutoModelForCausalLM from a hub id or a local folder; a config that does not describe the weights is refused
    (training would start from random tensors)."""
    from transformers import AutoModelForCausalLM
    path = check_model_name(name)
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, torch_dtype=dtype)
    except Exception as e:
        fix = ("check that config.json describes these weights and that no file is truncated" if os.path.isdir(path)
               else "use a local model directory or check the hub id and your connection")
        raise UsageError(f"could not load causal LM '{name}' ({type(e).__name__}: {first_line(e)}); {fix}") from None
    problem = weight_mismatch(model, info)
    if problem:
        raise UsageError(f"--model-name {name}: config.json does not match the weights ({problem}); fix config.json")
    return model


def select_for_lm(model, fine_tune_type, bias_terms=("all",)):
    """selection.select for a causal LM: full_ft trains everything; bitfit the chosen biases of the base model
    (masks for a fused q/k/v bias), never the pretrained output layer."""
    sel = selection.select(model, fine_tune_type, bias_terms)
    if fine_tune_type == "bitfit":
        _, head = selection.split_base_head(model)
        sel.trainable = [n for n in sel.trainable if n not in set(head)]
    return sel


# ---------------------------------------------------------------------------------------------- loss and training

def lm_loss_sum(logits, labels):
    """(summed next-token cross-entropy over the labelled positions, their count): position t predicts token t+1."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, (target != IGNORE_INDEX).sum()


def lm_train_step(model, batch, optimizer, scheduler, guard, params, *, device, precision="fp32", scaler=None,
                  max_grad_norm=1.0):
    """trainer.train_step with the LM loss: forward -> mean response-token loss -> backward -> zero the gradients
    outside masks -> clip -> step -> restore the masked-out entries -> zero grad. Returns the loss (device tensor)."""
    labels = batch.pop("labels")
    with autocast_context(device, precision):
        logits = model(**batch).logits
    total, count = lm_loss_sum(logits, labels)
    loss = total / count.clamp(min=1)
    return optimizer_step(loss, optimizer, scheduler, guard, params, scaler=scaler, max_grad_norm=max_grad_norm)


def lm_train_epoch(model, enc, optimizer, scheduler, guard, *, batch_size, generator, device, pad_token_id,
                   params, precision="fp32", scaler=None, progress=True, desc="train"):
    """One pass over the training split in the seeded random order; returns the mean of the steps' losses. A
    non-finite loss stops the run (FloatingPointError)."""
    model.train()
    order = batch_order(enc.lengths, batch_size, shuffle=True, generator=generator)
    total = torch.zeros((), device=device)
    bar = tqdm(order, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step, indices in enumerate(bar):
        batch = to_device(collate_lm(enc, indices, pad_token_id), device)
        total += lm_train_step(model, batch, optimizer, scheduler, guard, params, device=device,
                               precision=precision, scaler=scaler)
        running = total.item() / (step + 1)
        if not math.isfinite(running):
            raise FloatingPointError(f"the training loss became {running} at step {step + 1} of this epoch (try a "
                                     f"lower --learning-rate)")
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    return total.item() / max(1, len(order))


@torch.no_grad()
def lm_eval_loss(model, enc, *, batch_size, device, pad_token_id, precision="fp32", progress=True, desc="eval"):
    """Mean next-token loss over every response token of the split (eval mode); NaN for an empty split."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for indices in tqdm(batch_order(enc.lengths, batch_size, shuffle=False, group_by_length=True), desc=desc,
                        disable=not progress, leave=False, dynamic_ncols=True):
        batch = to_device(collate_lm(enc, indices, pad_token_id), device)
        labels = batch.pop("labels")
        with autocast_context(device, precision):
            logits = model(**batch).logits
        part, n = lm_loss_sum(logits, labels)
        total += part.double()
        count += int(n)
    return float(total) / count if count else float("nan")


# ---------------------------------------------------------------------------------------------- generation

@torch.no_grad()
def greedy_generate(model, tokenizer, prompts, *, max_new_tokens, device):
    """[{instruction, input, prompt, generation, new_tokens}]: greedy continuations of each prompt, one at a time
    (no padding, so nothing depends on batch composition). Stops at EOS or after max_new_tokens."""
    model.eval()
    out = []
    for p in prompts:
        prompt = format_prompt(p["instruction"], p.get("input", ""))
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        with _quiet_transformers():
            full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        new = full[0, ids.shape[1]:].tolist()
        out.append({"instruction": p["instruction"], "input": p.get("input", ""), "prompt": prompt,
                    "generation": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": len(new)})
    return out
