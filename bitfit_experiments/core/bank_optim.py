"""The optimizer of a bias bank: K members' AdamW (or Adam) steps, gradient clipping and schedules at once.

Every tensor is stacked over the members (K, ...). Per member, this is trainer.py's recipe for a single run: its
gradient norm over its own rows and head, clipped at max_grad_norm; its own learning rate under the shared schedule;
the AdamW update of torch.optim.AdamW (foreach form: decoupled weight decay, lerp for the first moment, bias
corrections from the step count) -- the same arithmetic, so a member follows its separate run up to float rounding.
Rows a member does not train (its mask is 0) get no gradient, no update and no weight decay: they stay bit-identical.
A failed member's rows are frozen the same way (`freeze`).

Layer: core.
"""
import math

import torch

from .trainer import lr_lambda


class BankAdamW:
    """`params`: the bank's stacked tensors; `masks`: per tensor a (K, 1) 0/1 mask of the members that train it (None:
    all); `lrs`: the K learning rates."""

    def __init__(self, params, masks, lrs, *, name="adamw", weight_decay=0.0, eps=None, schedule="constant",
                 total_steps=1, warmup_ratio=0.0, max_grad_norm=1.0):
        self.params, self.name = list(params), name
        device, dtype = self.params[0].device, self.params[0].dtype
        self.k = self.params[0].shape[0]
        self.masks = [torch.ones(self.k, 1, device=device, dtype=dtype) if m is None else m for m in masks]
        self.base_lrs = torch.tensor(lrs, dtype=torch.float64)
        self.eps = (1e-6 if name == "adamw" else 1e-8) if eps is None else eps
        self.betas, self.weight_decay, self.max_grad_norm = (0.9, 0.999), weight_decay, max_grad_norm
        self.factor = lr_lambda(schedule, total_steps, warmup_ratio)
        self.alive = torch.ones(self.k, 1, device=device, dtype=dtype)
        self.step_count = 0  # optimizer steps taken (shared: every running member steps together)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._refresh()

    def freeze(self, k):
        """Member k stops: its rows never move again."""
        self.alive[k] = 0
        self._refresh()

    def _refresh(self):
        """Per tensor, the (K, 1, ...) factor 1 where the member trains it and runs, else 0; and views of a
        (K,) vector shaped for each tensor. Kept as lists so that each step is a few foreach kernels, whatever K."""
        self._live = [(m * self.alive).view(self.k, *([1] * (p.dim() - 1))) for p, m in zip(self.params, self.masks)]

    def _per_tensor(self, column):
        return [column.view(self.k, *([1] * (p.dim() - 1))) for p in self.params]

    @torch.no_grad()
    def clip(self):
        """Per member: scale its gradients so that their norm over its own tensors is at most max_grad_norm (as
        torch.nn.utils.clip_grad_norm_ on a single run's parameters). Returns the K norms."""
        grads = []
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        torch._foreach_mul_(grads, self._live)  # rows a member does not train carry no gradient
        flat = torch.cat([g.reshape(self.k, -1) for g in grads], 1).float()
        norms = flat.pow(2).sum(1).sqrt()
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
        torch._foreach_mul_(grads, self._per_tensor(coef))
        return norms

    @torch.no_grad()
    def step(self):
        """One AdamW step of every running member (after clip), at lr_k x the schedule's factor."""
        factor = self.factor(self.step_count)
        self.step_count += 1
        t = self.step_count
        beta1, beta2 = self.betas
        device, dtype = self.params[0].device, self.params[0].dtype
        lr = (self.base_lrs * factor).to(device, dtype)
        grads = [p.grad for p in self.params]
        if self.weight_decay and self.name == "adamw":  # decoupled, on the live rows only
            decay = torch._foreach_mul(self._live, self._per_tensor(lr * self.weight_decay))
            torch._foreach_mul_(decay, -1.0)
            torch._foreach_add_(decay, 1.0)
            torch._foreach_mul_(self.params, decay)
        elif self.weight_decay:  # Adam's L2 term, on the live rows only
            l2 = torch._foreach_mul(self.params, self._live)
            grads = torch._foreach_add(grads, l2, alpha=self.weight_decay)
        torch._foreach_lerp_(self.exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sq, beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(1 - beta2 ** t))
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(self.exp_avg, denom)
        torch._foreach_mul_(update, self._per_tensor(lr / (1 - beta1 ** t)))
        torch._foreach_mul_(update, self._live)
        torch._foreach_sub_(self.params, update)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    # ------------------------------------------------------------------------------------------------ checkpoint

    def state_tensors(self):
        out = {}
        for i, (ea, eas) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            out[f"exp_avg.{i}"], out[f"exp_avg_sq.{i}"] = ea, eas
        out["alive"] = self.alive
        return out

    def load_state(self, tensors, step_count):
        with torch.no_grad():
            for i, (ea, eas) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
                ea.copy_(tensors[f"exp_avg.{i}"])
                eas.copy_(tensors[f"exp_avg_sq.{i}"])
            self.alive.copy_(tensors["alive"])
        self.step_count = int(step_count)
        self._refresh()
