"""Which parameters train, for every fine-tune type (--fine-tune-type, --bias-terms, --rand-mask-size).

    full_ft       everything
    bitfit        the chosen bias families of the encoder layers + the pooler bias + the classifier head
                  (`--bias-terms all` = every bias of the base model, incl. the embeddings LayerNorm bias)
    frozen        the classifier head only
    rand_uniform  N random distinct entries of the encoder body (embeddings, layers, pooler) + the head
    rand_row_col  one random column or int(rows/cols) random rows of every body weight matrix, all LayerNorm
                  gains, + the head (paper.md §1.3, the official code's random baselines)

"Head" = every parameter that is not under `model.base_model` (classifier.*, RoBERTa's classifier.dense/out_proj,
DistilBERT's pre_classifier, DeBERTa-v2's top-level pooler). "Base model" = embeddings + encoder layers + pooler.

Bias families are recognised from parameter *names* with one suffix table per naming scheme (never from the model's
class name), anchored on the layer index: the suffix must follow `.<int>.` directly. That makes the selection
exact: `output` is `<layer>.output.dense.bias` (b_m3) only. The official code matches substrings, so its `output`
also trains `attention.output.dense.bias` (b_m1) and the attention LayerNorm; we deliberately do not.

Partially trainable parameters (the random baselines) carry a boolean mask. requires_grad is per tensor, so the
entries outside the mask are kept bit-identical by MaskGuard: zero their gradients after backward, and copy their
original values back after every optimizer step (AdamW's decoupled weight decay, or Adam state built up from
L2-regularised gradients, would otherwise move them).

Layer: core.
"""
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import BIAS_FAMILIES, BIAS_TERMS, FINE_TUNE_TYPES, PAPER_NOTATION
from .errors import UsageError


# family -> parameter-name suffix after the layer index, per naming scheme.
_BERT = {
    "query": "attention.self.query.bias", "key": "attention.self.key.bias", "value": "attention.self.value.bias",
    "attention_output": "attention.output.dense.bias", "attention_layernorm": "attention.output.LayerNorm.bias",
    "intermediate": "intermediate.dense.bias", "output": "output.dense.bias",
    "output_layernorm": "output.LayerNorm.bias",
}
NAMING_SCHEMES = {
    "bert": _BERT,  # BERT, RoBERTa, ELECTRA, MiniLM, ...
    "distilbert": {
        "query": "attention.q_lin.bias", "key": "attention.k_lin.bias", "value": "attention.v_lin.bias",
        "attention_output": "attention.out_lin.bias", "attention_layernorm": "sa_layer_norm.bias",
        "intermediate": "ffn.lin1.bias", "output": "ffn.lin2.bias", "output_layernorm": "output_layer_norm.bias",
    },
    "deberta_v2": {**_BERT, "query": "attention.self.query_proj.bias", "key": "attention.self.key_proj.bias",
                   "value": "attention.self.value_proj.bias"},
}


@dataclass
class Selection:
    trainable: list            # names of params with requires_grad (fully or partially trainable), model order
    masks: dict = field(default_factory=dict)   # partially trainable name -> BoolTensor, True where trainable
    fine_tune_type: str = ""
    bias_terms: tuple = ("all",)


# ---------------------------------------------------------------------------------------------- model structure

def base_prefix(model):
    """Name prefix of model.base_model's parameters ('' if the model is a bare encoder)."""
    base = getattr(model, "base_model", model)
    for name, module in model.named_modules():
        if module is base:
            return name + "." if name else ""
    raise ValueError("model.base_model is not a submodule of the model")


def split_base_head(model):
    """(base-model parameter names, head parameter names), each in model order."""
    prefix = base_prefix(model)
    base, head = [], []
    for name, _ in model.named_parameters():
        (base if name.startswith(prefix) else head).append(name)
    return base, head


def _is_pooler(name):
    return "pooler" in name.split(".")


def _scheme_matches(scheme, bias_names):
    """family -> [(layer, name)] for one naming scheme; the suffix must follow the layer index directly."""
    out = {}
    for fam, suffix in NAMING_SCHEMES[scheme].items():
        pat = re.compile(r"(?:^|\.)(\d+)\." + re.escape(suffix) + "$")
        hits = [(int(m.group(1)), n) for n in bias_names if (m := pat.search(n))]
        out[fam] = sorted(hits)
    return out


def naming_scheme(model):
    """The scheme whose table matches the most base-model biases, or None if no scheme matches any."""
    base, _ = split_base_head(model)
    biases = [n for n in base if n.endswith("bias")]
    best, best_count = None, 0
    for scheme in NAMING_SCHEMES:
        count = sum(len(v) for v in _scheme_matches(scheme, biases).values())
        if count > best_count:
            best, best_count = scheme, count
    return best


def bias_families(model):
    """family -> [(layer_index, param_name)] ordered by layer; {} if the model's names match no known scheme."""
    scheme = naming_scheme(model)
    if scheme is None:
        return {}
    base, _ = split_base_head(model)
    return _scheme_matches(scheme, [n for n in base if n.endswith("bias")])


def _bias_pattern(bias_names, limit=3):
    pats = list(dict.fromkeys(re.sub(r"\.\d+\.", ".<i>.", n) for n in bias_names))
    more = f", ... ({len(pats)} patterns)" if len(pats) > limit else ""
    return ", ".join(pats[:limit]) + more


def _parse_bias_terms(bias_terms):
    if isinstance(bias_terms, str):
        bias_terms = [t for t in re.split(r"[,\s]+", bias_terms) if t]
    terms = tuple(dict.fromkeys(bias_terms))
    if not terms:
        raise UsageError(f"--bias-terms is empty; give one or more of: {', '.join(BIAS_TERMS)}")
    unknown = [t for t in terms if t not in BIAS_TERMS]
    if unknown:
        raise UsageError(f"unknown --bias-terms {', '.join(unknown)}; choose from: {', '.join(BIAS_TERMS)}")
    return ("all",) if "all" in terms else terms


# ---------------------------------------------------------------------------------------------- selection

def select(model, fine_tune_type, bias_terms=("all",), rand_mask_size=None, seed=0):
    """Decide which parameters (and which entries of them) train. Works on meta-device models (no data read)."""
    if fine_tune_type not in FINE_TUNE_TYPES:
        raise UsageError(f"unknown --fine-tune-type {fine_tune_type!r}; choose from: {', '.join(FINE_TUNE_TYPES)}")
    terms = _parse_bias_terms(bias_terms)
    if fine_tune_type != "bitfit" and terms != ("all",):
        raise UsageError(f"--bias-terms only applies to --fine-tune-type bitfit (got {fine_tune_type}); drop it")
    if fine_tune_type != "rand_uniform" and rand_mask_size is not None:
        raise UsageError(f"--rand-mask-size only applies to --fine-tune-type rand_uniform (got {fine_tune_type})")

    params = dict(model.named_parameters())
    base, head = split_base_head(model)
    order = {n: i for i, n in enumerate(params)}

    def done(names, masks=None):
        return Selection(sorted(set(names), key=order.get), masks or {}, fine_tune_type, terms)

    if fine_tune_type == "full_ft":
        return done(params)
    if fine_tune_type == "frozen":
        return done(head)
    if fine_tune_type == "bitfit":
        return done(_bitfit_biases(model, base, terms) + head)
    if fine_tune_type == "rand_uniform":
        n = default_rand_mask_size(model) if rand_mask_size is None else int(rand_mask_size)
        masks = _rand_uniform_masks(params, base, n, seed)
    else:
        masks = _rand_row_col_masks(model, params, base, seed)
    # A mask that covers its whole tensor is just a fully trainable tensor; an empty one is a frozen tensor.
    full = [name for name, m in masks.items() if bool(m.all())]
    partial = {name: m for name, m in masks.items() if not bool(m.all()) and bool(m.any())}
    return done(full + list(partial) + head, partial)


def _bitfit_biases(model, base, terms):
    biases = [n for n in base if n.endswith("bias")]
    if not biases:
        raise UsageError("this model has no bias parameters, so BitFit cannot train anything; "
                         "use another --fine-tune-type")
    if terms == ("all",):
        return biases  # as the official code: every bias, incl. embeddings LayerNorm and pooler
    families = bias_families(model)
    if not families:
        raise UsageError(f"--bias-terms {' '.join(terms)}: this model's bias names ({_bias_pattern(biases)}) "
                         f"match no known naming scheme ({', '.join(NAMING_SCHEMES)}); only `--bias-terms all` "
                         f"works on this architecture")
    chosen = []
    for t in terms:
        if not families[t]:
            raise UsageError(f"--bias-terms {t}: this model has no {t} ({PAPER_NOTATION[t]}) biases; "
                             f"choose among those it has or use `all`")
        chosen += [n for _, n in families[t]]
    return chosen + [n for n in biases if _is_pooler(n)]


def default_rand_mask_size(model):
    """BitFit's budget: the number of parameters `--bias-terms all` trains in the base model (all its biases)."""
    params = dict(model.named_parameters())
    base, _ = split_base_head(model)
    return sum(params[n].numel() for n in base if n.endswith("bias"))


def _allocate(sizes, n):
    """Split n over tensors in proportion to their sizes; largest-remainder rounding so the total is exactly n."""
    total = sum(sizes)
    quota = [n * s // total for s in sizes]
    rema = [n * s % total for s in sizes]  # exact integer remainders, no float ties to worry about
    for i in sorted(range(len(sizes)), key=lambda i: (-rema[i], i))[: n - sum(quota)]:
        quota[i] += 1
    return quota


def _sample_distinct(numel, k, g):
    """k distinct indices of range(numel), uniformly at random (without replacement), deterministic given g."""
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    if 2 * k > numel or numel <= 1 << 16:
        return torch.randperm(numel, generator=g)[:k]
    # For a small k out of a huge tensor (word embeddings) a full randperm is wasteful: draw with replacement until
    # k distinct values are found, then keep a random k of them. The process is symmetric under relabelling the
    # indices, so the result is a uniform k-subset.
    idx = torch.empty(0, dtype=torch.long)
    while idx.numel() < k:
        need = k - idx.numel()
        idx = torch.unique(torch.cat([idx, torch.randint(numel, (need + need // 4 + 16,), generator=g)]))
    return idx[torch.randperm(idx.numel(), generator=g)[:k]]


def _rand_uniform_masks(params, base, n, seed):
    total = sum(params[name].numel() for name in base)
    if not 0 < n <= total:
        raise UsageError(f"--rand-mask-size {n} must be between 1 and the base model's {total:,} parameters")
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, k in zip(base, _allocate([params[name].numel() for name in base], n)):
        shape, numel = params[name].shape, params[name].numel()
        m = torch.zeros(numel, dtype=torch.bool)
        m[_sample_distinct(numel, k, g)] = True
        masks[name] = m.view(shape)
    return masks


def _rand_row_col_masks(model, params, base, seed):
    """Official random row/column baseline: per body weight matrix one random column (coin flip, or forced when
    rows < cols) or int(rows/cols) random rows; LayerNorm gains fully; biases and embedding tables frozen.
    The embeddings LayerNorm gain is a LayerNorm gain too, so it trains; with it the count on BERT equals
    BitFit's exactly (102,912 on bert-base)."""
    embedding_tables, norm_gains = set(), set()
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(module, nn.Embedding):
                embedding_tables.add(full)
            elif pname == "weight" and (isinstance(module, nn.LayerNorm) or "norm" in mname.split(".")[-1].lower()):
                norm_gains.add(full)
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name in base:
        p = params[name]
        m = torch.zeros(p.shape, dtype=torch.bool)
        if name in norm_gains and p.dim() == 1:
            m[...] = True
        elif p.dim() == 2 and name not in embedding_tables:
            rows, cols = p.shape
            coin = bool(torch.rand((), generator=g) < 0.5)  # drawn for every matrix, so the stream is fixed
            if coin or rows < cols:
                m[:, torch.randint(cols, (), generator=g)] = True
            else:
                m[torch.randperm(rows, generator=g)[: rows // cols]] = True
        masks[name] = m
    return masks


# ---------------------------------------------------------------------------------------------- applying it

def apply(model, selection):
    """Set requires_grad exactly: True for trainable parameters (fully or partially), False for all others."""
    params = dict(model.named_parameters())
    missing = [n for n in selection.trainable if n not in params]
    if missing:
        raise ValueError(f"selection names parameters the model does not have: {missing[:3]}")
    keep = set(selection.trainable)
    for name, p in params.items():
        p.requires_grad_(name in keep)


class MaskGuard:
    """Keeps the entries outside each mask bit-identical. Create it after moving the model to its device; call
    zero_masked_grads() after backward (before gradient clipping, so the norm sees only real gradients) and
    restore() after every optimizer.step().

    Masks are sparse (BitFit's budget spread over the whole encoder), so both operations work on the flat indices of
    the trainable entries: keep those, then reset everything else with a plain zero_/copy_ -- about 3x faster than
    masked_fill_/masked_scatter_ over the ~99.9% frozen entries."""

    def __init__(self, model, selection):
        params = dict(model.named_parameters())
        self.entries = []  # (param, flat indices of its trainable entries, its original values)
        for name, mask in selection.masks.items():
            p = params[name]
            index = mask.reshape(-1).nonzero().squeeze(1).to(p.device)
            self.entries.append((p, index, p.detach().clone()))

    @torch.no_grad()
    def zero_masked_grads(self):
        for p, index, _ in self.entries:
            if p.grad is not None:
                flat = p.grad.view(-1)
                kept = flat[index]
                flat.zero_()
                flat[index] = kept

    @torch.no_grad()
    def restore(self):
        for p, index, original in self.entries:
            flat = p.view(-1)
            trained = flat[index]
            p.copy_(original)
            flat[index] = trained


# ---------------------------------------------------------------------------------------------- report

def _count(params, selection, name):
    """Trainable entries of one parameter under the selection."""
    if name in selection.masks:
        return int(selection.masks[name].sum())
    return params[name].numel() if name in set(selection.trainable) else 0


def param_report(model, selection, bias_terms=None):
    """Parameter counts per bias family / pooler bias / embeddings biases / head, and the trainable total.
    Shares are of the base model (embeddings + encoder + pooler, no head), the paper's denominator.
    JSON-serialisable."""
    terms = _parse_bias_terms(selection.bias_terms if bias_terms is None else bias_terms)
    params = dict(model.named_parameters())
    base, head = split_base_head(model)
    base_total = sum(params[n].numel() for n in base)
    trainable = set(selection.trainable)
    pct = lambda x: 100.0 * x / base_total if base_total else 0.0

    def row(label, names, selected=None):
        count = sum(params[n].numel() for n in names)
        r = {"name": label, "tensors": len(names), "params": count, "percent": pct(count),
             "trainable_params": sum(_count(params, selection, n) for n in names)}
        if selected is not None:
            r["selected"] = selected
        return r

    families = bias_families(model)
    bitfit = selection.fine_tune_type == "bitfit"
    fam_rows = []
    for fam, hits in families.items():
        sel = bitfit and (terms == ("all",) or fam in terms)
        fam_rows.append({**row(fam, [n for _, n in hits], sel), "notation": PAPER_NOTATION[fam]})
    in_family = {n for hits in families.values() for _, n in hits}
    base_biases = [n for n in base if n.endswith("bias")]
    pooler = [n for n in base_biases if _is_pooler(n)]
    other = [n for n in base_biases if n not in in_family and not _is_pooler(n)]
    other_rows = [row("pooler bias", pooler), row("other base-model biases (embeddings LayerNorm, ...)", other),
                  row("head (all parameters)", head)]

    base_trainable = sum(_count(params, selection, n) for n in base)
    head_trainable = sum(_count(params, selection, n) for n in head)
    # The paper's %Param column: for BitFit the selected bias families of the encoder layers only (0.09% on
    # bert-base = 101,376 / 108,310,272); otherwise the trainable share of the base model.
    if bitfit and families:
        paper = pct(sum(r["params"] for r in fam_rows if r["selected"]))
    else:
        paper = pct(base_trainable)
    return {
        "fine_tune_type": selection.fine_tune_type,
        "bias_terms": list(terms),
        "naming_scheme": naming_scheme(model),
        "base_model_params": base_total,
        "head_params": sum(params[n].numel() for n in head),
        "families": fam_rows,
        "other": other_rows,
        "trainable_params": base_trainable + head_trainable,
        "trainable_base_params": base_trainable,
        "trainable_head_params": head_trainable,
        "trainable_tensors": len(trainable),
        "partially_trainable_tensors": len(selection.masks),
        "trainable_base_percent": pct(base_trainable),
        "paper_percent_param": paper,
        "paper_percent_param_str": f"{paper:.2f}%",
        # The names results.json and the tables use (percentages, of the base model like everything above).
        "total_params": base_total + sum(params[n].numel() for n in head),
        "trainable_share": pct(base_trainable),
        "paper_param_share": paper,
    }


def format_report(report):
    """The report as a readable text table (printed by --list-params)."""
    lines = [f"fine-tune type: {report['fine_tune_type']}   bias terms: {' '.join(report['bias_terms'])}   "
             f"naming scheme: {report['naming_scheme'] or 'none (only --bias-terms all)'}",
             f"{'':3}{'family':<52}{'paper':>6}{'tensors':>9}{'params':>13}{'% model':>10}{'trainable':>12}"]
    for r in report["families"] + report["other"]:
        mark = "*" if r["trainable_params"] else " "
        lines.append(f" {mark} {r['name']:<52}{r.get('notation', ''):>6}{r['tensors']:>9}{r['params']:>13,}"
                     f"{r['percent']:>9.4f}%{r['trainable_params']:>12,}")
    lines += [
        f"base model (embeddings + encoder + pooler): {report['base_model_params']:,} parameters; "
        f"head: {report['head_params']:,}",
        f"trainable: {report['trainable_params']:,} ({report['trainable_base_params']:,} in the base model = "
        f"{report['trainable_base_percent']:.4f}%, {report['trainable_head_params']:,} in the head); "
        f"{report['trainable_tensors']} tensors, {report['partially_trainable_tensors']} partially (masked)",
        f"paper %Param: {report['paper_percent_param_str']}",
    ]
    return "\n".join(lines)
