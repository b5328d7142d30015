"""Bias banks: K BitFit runs (or K task packs) on ONE copy of a frozen model, in one forward pass.

Every bias that any member trains holds K rows. Each example of a batch carries its member's index, and each banked
module adds that member's row to its bias-free output:

    Linear     y = x W^T          + rows[member(example)]
    LayerNorm  y = LN(x) * gamma  + rows[member(example)]

A member that does not train a family reads that family's pre-trained value (a b_q member leaves every other bias
bit-identical). Each member has its own task head (a copy of the head modules, initialised as its own single run
would be), and the head modules route each example to its member's copy. Nothing couples two members: a member's
rows and head touch only its own examples, its loss is its own mean, its gradient norm is clipped over its own
tensors, and each member has its own optimizer and learning rate.

Batches are laid out in member blocks (rows [start, end) belong to one member), set with `BiasBank.route`.
`member_view(k)` turns the model into member k's plain single-run model (its biases copied in, its head swapped in,
routing off): packs, evaluators and bias-change figures are written by the same code as for a single run.

Numerics: against K separate fp32 runs, a banked member differs by float rounding only (x W^T + b is summed in
another order than the fused addmm, and padding spans the whole bank's batch) -- unless the model has dropout: the
masks are drawn for the bank's batch, so they differ from the separate runs' (deterministic, but not the same run).

Layer: core.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import RESUME_NEUTRAL
from .errors import UsageError
from .selection import split_base_head


@dataclass
class Member:
    """One member of a bank: the biases it trains (name -> tensor, a leaf Parameter when training) and its own copy
    of every head module (top-level module name -> module)."""
    biases: dict
    heads: dict
    name: str = ""
    failed: str | None = None  # why the member stopped (non-finite loss/logits/metrics); None while it runs
    extra: dict = field(default_factory=dict)

    def parameters(self, model_order):
        """Its trainable tensors in the order a single run lists them (`model_order`: the model's parameter names)."""
        own = dict(self.biases)
        for prefix, module in self.heads.items():
            own.update({f"{prefix}.{n}": p for n, p in module.named_parameters()})
        return [own[n] for n in model_order if n in own]

    def named_parameters(self):
        yield from self.biases.items()
        for prefix, module in self.heads.items():
            for n, p in module.named_parameters():
                yield f"{prefix}.{n}", p


def head_modules(model):
    """Names of the model's top-level modules that hold its head (every parameter outside model.base_model)."""
    _, head = split_base_head(model)
    names = list(dict.fromkeys(n.split(".", 1)[0] for n in head))
    if not names:
        raise UsageError("bias bank: the model has no task head outside its base model; load it for sequence "
                         "classification")
    return names


class _BankedHead(nn.Module):
    """A head module of the bank: the examples of each member block go through that member's own copy."""

    def __init__(self, bank, prefix):
        super().__init__()
        self._bank, self._prefix = [bank], prefix  # in a list: not registered as a submodule (no parameters here)

    def forward(self, x, *args, **kwargs):
        bank = self._bank[0]
        outs = [bank.members[k].heads[self._prefix](x[s:e], *args, **kwargs) for k, s, e in bank.blocks]
        width = max(o.shape[-1] for o in outs)
        if all(o.shape[-1] == width for o in outs):
            return torch.cat(outs)
        # Serving tasks with different label counts: each block is padded with NaN past its own labels.
        return torch.cat([F.pad(o, (0, width - o.shape[-1]), value=float("nan")) for o in outs])


class BiasBank:
    """K members over one model (whose own biases and head stay as loaded: the base values)."""

    SUPPORTED = (nn.Linear, nn.LayerNorm)

    def __init__(self, model, members):
        self.model, self.members = model, list(members)
        self.blocks = []            # [(member, start, end)] of the current batch
        self._index = None          # per-example member index of the current batch (LongTensor)
        self._block = self._order = None
        params = dict(model.named_parameters())
        self.slots = [n for n in params if any(n in m.biases for m in self.members)]  # banked biases, model order
        self.prefixes = head_modules(model)
        for m in self.members:
            if sorted(m.heads) != sorted(self.prefixes):
                raise ValueError(f"member {m.name}: heads {sorted(m.heads)} != the model's {self.prefixes}")
        self._modules = {}
        for name in self.slots:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            if not isinstance(module, self.SUPPORTED) or not name.endswith(".bias"):
                raise UsageError(f"bias bank: {name} belongs to a {type(module).__name__}; banks support the biases "
                                 f"of Linear and LayerNorm modules only -- run this model one run at a time")
            self._modules[name] = module
        self._base = {n: params[n] for n in self.slots}
        self._saved_heads = {p: model.get_submodule(p) for p in self.prefixes}
        self._patch()

    # ------------------------------------------------------------------------------------------------ routing

    def route(self, counts):
        """Lay out the next batch: `counts` = [(member index, number of rows)], in row order."""
        self.blocks, start = [], 0
        for k, n in counts:
            self.blocks.append((k, start, start + n))
            start += n
        device = next(self.model.parameters()).device
        self._index = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in counts]).to(device)
        sizes = {n for _, n in counts}
        # Equal blocks (training: every member's batch has the same size) add each member's row by broadcasting over
        # a (members, rows, ...) view: one add forward, one sum backward. Gathering a row per example would cost a
        # scatter-add in the backward pass that took 20% of a CPU step.
        self._block = sizes.pop() if len(sizes) == 1 else None
        order = [k for k, _ in counts]
        self._order = None if order == list(range(len(self.members))) else torch.tensor(order, device=device)

    def rows(self, name):
        """(K, width) tensor of bias `name`: each member's own value, or the base value where it does not train it."""
        base = self._base[name]
        return torch.stack([m.biases.get(name, base) for m in self.members])

    def _add_rows(self, name, out):
        rows = self.rows(name)
        if self._block is not None:
            if self._order is not None:
                rows = rows.index_select(0, self._order)  # (blocks, width): small
            m, width = rows.shape
            view = out.reshape(m, self._block, *out.shape[1:])
            rows = rows.to(out.dtype).view(m, 1, *([1] * (out.dim() - 2)), width)
            return (view + rows).reshape(out.shape)
        r = rows.index_select(0, self._index).to(out.dtype)  # (N, width): a row per example
        return out + r.view(r.shape[0], *([1] * (out.dim() - 2)), r.shape[-1])

    def _patch(self):
        for name, module in self._modules.items():
            module.forward = _banked_forward(self, name, module)
        for prefix in self.prefixes:
            _set_module(self.model, prefix, _BankedHead(self, prefix))

    def close(self):
        """Give the model back as it was loaded (plain forwards, its own head)."""
        for module in self._modules.values():
            if "forward" in module.__dict__:
                del module.forward
        for prefix, head in self._saved_heads.items():
            _set_module(self.model, prefix, head)

    # ------------------------------------------------------------------------------------------------ one member

    @contextmanager
    def member_view(self, k):
        """The model as member k's single run: its bias values and head in place, routing off. Restored after."""
        member = self.members[k]
        saved = {n: self._base[n].detach().clone() for n in member.biases}
        index, blocks = self._index, self.blocks
        self._index, self.blocks = None, []
        try:
            with torch.no_grad():
                for n, value in member.biases.items():
                    self._base[n].copy_(value)
            for prefix, head in member.heads.items():
                _set_module(self.model, prefix, head)
            yield self.model
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    self._base[n].copy_(value)
            for prefix in self.prefixes:
                _set_module(self.model, prefix, _BankedHead(self, prefix))
            self._index, self.blocks = index, blocks


def _banked_forward(bank, name, module):
    """The module's forward without its bias, plus each example's member row; the plain forward when not routing."""
    plain = type(module).forward

    if isinstance(module, nn.LayerNorm):
        def forward(x):
            if bank._index is None:
                return plain(module, x)
            out = F.layer_norm(x, module.normalized_shape, module.weight, None, module.eps)
            return bank._add_rows(name, out)
    else:
        def forward(x):
            if bank._index is None:
                return plain(module, x)
            return bank._add_rows(name, F.linear(x, module.weight))
    return forward


def _set_module(model, path, module):
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ---------------------------------------------------------------------------------------------- building members

def new_member(model, bias_names, head, *, name="", trainable=True):
    """A member that trains `bias_names` (starting from the model's current values) with `head` ({prefix: module},
    e.g. copied from a model loaded with the member's seed)."""
    params = dict(model.named_parameters())
    biases = {}
    for n in bias_names:
        t = params[n].detach().clone()
        biases[n] = nn.Parameter(t, requires_grad=True) if trainable else t
    for module in head.values():
        module.requires_grad_(trainable)
    return Member(biases, dict(head), name=name)


# ---------------------------------------------------------------------------------------------- who can share a bank

# What may differ between the members of one bank; every other setting is the bank's (one model, task, batch size,
# epochs, ...). Flags that change no number (RESUME_NEUTRAL) may differ too.
MEMBER_FIELDS = frozenset({"learning_rate", "seed", "bias_terms", "output_path"})

_NOT_BANKABLE = {
    "frozen": "frozen trains only the head, on cached encoder features -- already far cheaper than a bank; run it "
              "alone",
    "full_ft": "full_ft trains weight matrices, not biases; run it alone",
    "rand_uniform": "rand_uniform trains entries of weight matrices, not biases; run it alone",
    "rand_row_col": "rand_row_col trains rows/columns of weight matrices, not biases; run it alone",
}


def check_members(configs):
    """Refuse (UsageError, one line) a set of RunConfigs that cannot train as one bank."""
    if not configs:
        raise UsageError("bias bank: no member runs given")
    for c in configs:
        if c.fine_tune_type != "bitfit":
            why = _NOT_BANKABLE.get(c.fine_tune_type,
                                    f"{c.fine_tune_type} trains adapter weights that banks do not hold; run it alone")
            raise UsageError(f"bias bank: --fine-tune-type {why} (only bitfit, with any --bias-terms, can be banked)")
        if c.batch_layout == "packed":
            raise UsageError("bias bank: --batch-layout packed is not supported in a bank; use padded batches")
        if c.batch_layout == "auto":  # a bank's batches are padded member blocks; config.json records it
            c.batch_layout = "padded"
        if c.precision == "fp16":
            raise UsageError("bias bank: fp16 needs one loss scaler per member; use --precision bf16 or fp32")
        if c.list_params:
            raise UsageError("bias bank: --list-params trains nothing; run it alone")
    first, ignore = configs[0], MEMBER_FIELDS | RESUME_NEUTRAL
    for c in configs[1:]:
        diff = first.differences(c, ignore=ignore)
        if diff:
            k, a, b = diff[0]
            raise UsageError(f"bias bank: members differ in {k} ({a!r} vs {b!r}); one bank shares everything but "
                             f"the learning rate, the seed and --bias-terms -- put them in separate banks")
    outs = [os.path.abspath(c.output_path) for c in configs]
    if len(set(outs)) != len(outs):
        raise UsageError("bias bank: two members have the same --output-path; give each its own directory")
