"""Bias banks: K BitFit runs (or K task packs) on ONE copy of a frozen model, in one forward pass.

Every bias that any member trains is one (K, width) tensor: row k is member k's value. Each example of a batch
carries its member's index, and each banked module adds that member's row to its bias-free output:

    Linear     y = x W^T          + rows[member(example)]
    LayerNorm  y = LN(x) * gamma  + rows[member(example)]

A member that does not train a family keeps that family's pre-trained value in its row (its gradient is masked out
and the row never moves: a b_q member leaves every other bias bit-identical). Each member has its own task head; the
heads' tensors are stacked too and applied with torch.func.vmap, each member's examples through its own head.
Nothing couples two members: a member's rows and head touch only its own examples, its loss is its own mean, and
the optimizer (core/bank_optim.py) clips each member's gradient norm over its own rows and head, with its own
learning rate. Stacking the rows (instead of K separate tensors per bias) keeps a step at a handful of kernels per
module whatever K is: on a GPU, where small steps are launch-bound, that is the whole point.

Batches are laid out in member blocks (rows [start, end) belong to one member), set with `BiasBank.route`.
`member_view(k)` turns the model into member k's plain single-run model (its biases copied in, its head swapped in,
routing off): packs, evaluators and bias-change figures are written by the same code as for a single run.

Numerics: against K separate fp32 runs, a banked member differs by float rounding only (x W^T + b is summed in
another order than the fused addmm, and padding spans the whole bank's batch) -- unless the model has dropout: the
masks are drawn for the bank's batch, so they differ from the separate runs' (deterministic, but not the same run).

Layer: core.
"""
import copy
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
    """One member of a bank as it starts: the biases it trains (name -> initial value) and its own copy of every head
    module (top-level module name -> module). Once banked, its values live in the bank's stacked tensors."""
    biases: dict
    heads: dict
    name: str = ""
    failed: str | None = None  # why the member stopped (non-finite loss/logits/metrics); None while it runs
    extra: dict = field(default_factory=dict)

    @property
    def trained(self):
        return tuple(self.biases)


def head_modules(model):
    """Names of the model's top-level modules that hold its head (every parameter outside model.base_model)."""
    _, head = split_base_head(model)
    names = list(dict.fromkeys(n.split(".", 1)[0] for n in head))
    if not names:
        raise UsageError("bias bank: the model has no task head outside its base model; load it for sequence "
                         "classification")
    return names


class _BankedHead(nn.Module):
    """A head module of the bank: each member block goes through that member's own head."""

    def __init__(self, bank, prefix):
        super().__init__()
        self._bank, self._prefix = [bank], prefix  # in a list: not registered as a submodule (no parameters here)

    def forward(self, x, *args, **kwargs):
        return self._bank[0].apply_head(self._prefix, x, *args, **kwargs)


class BiasBank:
    """K members over one model (whose own biases and head stay as loaded: the base values). `trainable`: the stacked
    tensors are leaf Parameters (training) or plain tensors (serving)."""

    SUPPORTED = (nn.Linear, nn.LayerNorm)

    def __init__(self, model, members, trainable=True):
        self.model, self.members = model, list(members)
        self.blocks, self._index, self._block, self._order = [], None, None, None
        params = dict(model.named_parameters())
        self.slots = [n for n in params if any(n in m.biases for m in self.members)]  # banked biases, model order
        self.prefixes = head_modules(model)
        self._modules = {n: self._module(n) for n in self.slots}
        self._base = {n: params[n] for n in self.slots}
        self.rows, self.masks = {}, {}
        for n in self.slots:
            base = params[n].detach()
            stacked = torch.stack([m.biases.get(n, base).detach().to(base) for m in self.members]).clone()
            self.rows[n] = nn.Parameter(stacked, requires_grad=trainable) if trainable else stacked
            self.masks[n] = torch.tensor([[float(n in m.biases)] for m in self.members], dtype=stacked.dtype,
                                         device=stacked.device)  # (K, 1): 1 where the member trains it
        self._saved_heads = {p: model.get_submodule(p) for p in self.prefixes}
        self.heads = {p: _HeadStack(p, [m.heads[p] for m in self.members], trainable) for p in self.prefixes}
        for m in self.members:
            m.heads = {}  # their values now live in the stacks (member_view rebuilds a member's head)
        self._patch()

    def _module(self, name):
        module = self.model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(module, self.SUPPORTED) or not name.endswith(".bias"):
            raise UsageError(f"bias bank: {name} belongs to a {type(module).__name__}; banks support the biases of "
                             f"Linear and LayerNorm modules only -- run this model one run at a time")
        return module

    # ------------------------------------------------------------------------------------------------ tensors

    def parameters(self):
        """Every trainable tensor of the bank, each (K, ...): rows of the banked biases, then the heads' stacks."""
        out = [self.rows[n] for n in self.slots]
        for p in self.prefixes:
            out += list(self.heads[p].params.values())
        return out

    def grad_masks(self):
        """(K, 1, ...) masks aligned with parameters(): which members train each tensor (a head: all of them)."""
        out = [self.masks[n] for n in self.slots]
        for p in self.prefixes:
            out += [None] * len(self.heads[p].params)
        return out

    def member_tensors(self, k):
        """{model parameter name: member k's tensor (a view)} of what member k trains: its biases and its head."""
        out = {n: self.rows[n][k] for n in self.slots if self.masks[n][k, 0] > 0}
        for p in self.prefixes:
            out.update({f"{p}.{n}": t for n, t in self.heads[p].member(k).items()})
        return out

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
        # a (members, rows, ...) view: one add forward, one sum backward. Gathering a row per example costs a
        # scatter-add in the backward pass (20% of a CPU step).
        self._block = sizes.pop() if len(sizes) == 1 else None
        order = [k for k, _ in counts]
        self._order = None if order == list(range(len(self.members))) else torch.tensor(order, device=device)

    def _add_rows(self, name, out):
        rows = self.rows[name]
        if self._block is not None:
            if self._order is not None:
                rows = rows.index_select(0, self._order)  # (blocks, width): small
            m, width = rows.shape
            view = out.reshape(m, self._block, *out.shape[1:])
            rows = rows.to(out.dtype).view(m, 1, *([1] * (out.dim() - 2)), width)
            return (view + rows).reshape(out.shape)
        r = rows.index_select(0, self._index).to(out.dtype)  # (N, width): a row per example
        return out + r.view(r.shape[0], *([1] * (out.dim() - 2)), r.shape[-1])

    def apply_head(self, prefix, x, *args, **kwargs):
        return self.heads[prefix](self, x, *args, **kwargs)

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
        trained = [n for n in self.slots if self.masks[n][k, 0] > 0]
        saved = {n: self._base[n].detach().clone() for n in trained}
        index, blocks = self._index, self.blocks
        self._index, self.blocks = None, []
        try:
            with torch.no_grad():
                for n in trained:
                    self._base[n].copy_(self.rows[n][k])
            for prefix in self.prefixes:
                _set_module(self.model, prefix, self.heads[prefix].module(k, self._saved_heads[prefix]))
            yield self.model
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    self._base[n].copy_(value)
            for prefix in self.prefixes:
                _set_module(self.model, prefix, _BankedHead(self, prefix))
            self._index, self.blocks = index, blocks


class _HeadStack:
    """One head module of every member. Same shapes (training): the members' tensors stacked (K, ...) and applied
    with vmap over equal blocks (one set of kernels for all members), or member by member on their slices. Other
    shapes (serving tasks with different label counts): the members' own modules, member by member."""

    def __init__(self, prefix, modules, trainable):
        self.prefix, self.modules = prefix, None
        shapes = {tuple((n, tuple(p.shape)) for n, p in m.named_parameters()) for m in modules}
        if len(shapes) > 1:
            self.modules, self.params = modules, {}
            for m in modules:
                m.requires_grad_(False)
            return
        self.template = copy.deepcopy(modules[0])
        self.params = {}
        for n, _ in modules[0].named_parameters():
            stacked = torch.stack([m.get_parameter(n).detach() for m in modules]).clone()
            self.params[n] = nn.Parameter(stacked, requires_grad=trainable) if trainable else stacked
        self.buffers = {n: b for n, b in modules[0].named_buffers()}

    def member(self, k):
        if self.modules is not None:
            return dict(self.modules[k].named_parameters())
        return {n: t[k] for n, t in self.params.items()}

    def module(self, k, like):
        """Member k's head as a plain module (a copy filled with its values), for member_view."""
        if self.modules is not None:
            return self.modules[k]
        module = copy.deepcopy(like)
        with torch.no_grad():
            for n, t in self.params.items():
                module.get_parameter(n).copy_(t[k])
        return module

    def __call__(self, bank, x, *args, **kwargs):
        if self.modules is not None:
            return _pad_cat([self.modules[k](x[s:e], *args, **kwargs) for k, s, e in bank.blocks])
        self.template.train(bank.model.training)
        if bank._block is not None:
            params = self.params if bank._order is None else {n: t.index_select(0, bank._order)
                                                               for n, t in self.params.items()}
            m = len(bank.blocks)

            def one(p, xs):
                return torch.func.functional_call(self.template, (p, self.buffers), (xs, *args), kwargs)
            out = torch.func.vmap(one, randomness="different")(params, x.reshape(m, bank._block, *x.shape[1:]))
            return out.reshape(m * bank._block, *out.shape[2:])
        return torch.cat([torch.func.functional_call(self.template, ({n: t[k] for n, t in self.params.items()},
                                                                     self.buffers), (x[s:e], *args), kwargs)
                          for k, s, e in bank.blocks])


def _pad_cat(outs):
    width = max(o.shape[-1] for o in outs)
    if all(o.shape[-1] == width for o in outs):
        return torch.cat(outs)
    # Serving tasks with different label counts: each block is padded with NaN past its own labels.
    return torch.cat([F.pad(o, (0, width - o.shape[-1]), value=float("nan")) for o in outs])


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

def new_member(model, bias_names, head, *, name=""):
    """A member that trains `bias_names` (starting from the model's current values) with `head` ({prefix: module},
    e.g. copied from a model loaded with the member's seed)."""
    params = dict(model.named_parameters())
    return Member({n: params[n].detach().clone() for n in bias_names}, dict(head), name=name)


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
