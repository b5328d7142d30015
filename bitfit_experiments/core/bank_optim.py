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

    def freeze(self, k):
        """Member k stops: its rows never move again."""
        self.alive[k] = 0

    def _shaped(self, column, p):
        return column.view(self.k, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def clip(self):
        """Per member: scale its gradients so that their norm over its own tensors is at most max_grad_norm (as
        torch.nn.utils.clip_grad_norm_ on a single run's parameters). Returns the K norms."""
        grads = []
        for p, m in zip(self.params, self.masks):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            g.mul_(self._shaped(m * self.alive, p))  # rows a member does not train carry no gradient
            p.grad = g
            grads.append(g)
        sq = sum(g.float().pow(2).reshape(self.k, -1).sum(1) for g in grads)
        norms = sq.sqrt()
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
        for g in grads:
            g.mul_(self._shaped(coef, g))
        return norms

    @torch.no_grad()
    def step(self):
        """One AdamW step of every running member (after clip), at lr_k x the schedule's factor."""
        factor = self.factor(self.step_count)
        self.step_count += 1
        t = self.step_count
        beta1, beta2 = self.betas
        lr = (self.base_lrs * factor).to(self.params[0].device, self.params[0].dtype).view(self.k, 1)
        step_size = lr / (1 - beta1 ** t)
        bc2_sqrt = math.sqrt(1 - beta2 ** t)
        for p, m, ea, eas in zip(self.params, self.masks, self.exp_avg, self.exp_avg_sq):
            live = self._shaped(m * self.alive, p)
            g = p.grad
            if self.weight_decay and self.name == "adamw":
                p.mul_(1 - self._shaped(lr * self.weight_decay, p) * live)
            elif self.weight_decay:
                g = g + self.weight_decay * p * live
            ea.lerp_(g, 1 - beta1)
            eas.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (eas.sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_(self._shaped(step_size, p) * live * ea / denom)

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
