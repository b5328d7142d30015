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

Decoders (GPT-2, BLOOM, GPT-NeoX/Pythia, OPT, Qwen2) have schemes too. GPT-2, BLOOM and GPT-NeoX keep query, key and
value in one fused bias per layer; `--bias-terms query` then trains exactly the query entries of it (FUSED_QKV says
where they are), as a masked tensor.

Partially trainable parameters (the random baselines, a fused q/k/v bias of which only some families train) carry a
boolean mask. requires_grad is per tensor, so the entries outside the mask are kept bit-identical by MaskGuard: zero
their gradients after backward, and copy their original values back after every optimizer step (AdamW's decoupled
weight decay, or Adam state built up from L2-regularised gradients, would otherwise move them).

Layer: core.
"""
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import BIAS_TERMS, FINE_TUNE_TYPES, PAPER_NOTATION
from .adapters import ADAPTER_TYPES, canonical_name, is_adapter_param
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
    # Decoders (pre-LayerNorm): the LayerNorm in front of the attention block is attention_layernorm (b_LN1), the
    # one in front of the MLP output_layernorm (b_LN2) -- the same sublayer each belongs to in BERT, at its input
    # instead of its output. Query, key and value of gpt2 / bloom / gpt_neox are one fused tensor: FUSED_QKV.
    "gpt2": {  # GPT-2 (Conv1D layers, weight (in, out))
        "query": "attn.c_attn.bias", "key": "attn.c_attn.bias", "value": "attn.c_attn.bias",
        "attention_output": "attn.c_proj.bias", "attention_layernorm": "ln_1.bias",
        "intermediate": "mlp.c_fc.bias", "output": "mlp.c_proj.bias", "output_layernorm": "ln_2.bias",
    },
    "bloom": {  # BLOOM, BLOOMZ
        "query": "self_attention.query_key_value.bias", "key": "self_attention.query_key_value.bias",
        "value": "self_attention.query_key_value.bias", "attention_output": "self_attention.dense.bias",
        "attention_layernorm": "input_layernorm.bias", "intermediate": "mlp.dense_h_to_4h.bias",
        "output": "mlp.dense_4h_to_h.bias", "output_layernorm": "post_attention_layernorm.bias",
    },
    "gpt_neox": {  # GPT-NeoX, Pythia
        "query": "attention.query_key_value.bias", "key": "attention.query_key_value.bias",
        "value": "attention.query_key_value.bias", "attention_output": "attention.dense.bias",
        "attention_layernorm": "input_layernorm.bias", "intermediate": "mlp.dense_h_to_4h.bias",
        "output": "mlp.dense_4h_to_h.bias", "output_layernorm": "post_attention_layernorm.bias",
    },
    # LLaMA-style names: Qwen2 (biases on q/k/v only; o_proj, the MLP and RMSNorm have none), and LLaMA / Mistral
    # built with attention_bias=True. Listed before opt: on Qwen2 both match q/k/v alone, and the tie goes to the
    # first scheme.
    "llama": {"query": "self_attn.q_proj.bias", "key": "self_attn.k_proj.bias", "value": "self_attn.v_proj.bias",
              "attention_output": "self_attn.o_proj.bias"},
    "opt": {  # OPT (its per-layer final_layer_norm is the MLP's input LayerNorm; the decoder's own one is not in a layer)
        "query": "self_attn.q_proj.bias", "key": "self_attn.k_proj.bias", "value": "self_attn.v_proj.bias",
        "attention_output": "self_attn.out_proj.bias", "attention_layernorm": "self_attn_layer_norm.bias",
        "intermediate": "fc1.bias", "output": "fc2.bias", "output_layernorm": "final_layer_norm.bias",
    },
}
# Schemes whose query, key and value biases are one fused tensor per layer, and how its entries are laid out (read off
# transformers' own split of the fused projection's output):
#   blocks    [q | k | v], each `hidden` wide -- GPT2Attention: c_attn(x).split(split_size=hidden, dim=2)
#   per_head  [head, (q, k, v), head_dim]     -- BloomAttention._reshape: view(..., num_heads, 3, head_dim);
#             GPTNeoXAttention: view(..., -1, 3 * head_size) then chunk(3, dim=-1)
FUSED_QKV = {"gpt2": "blocks", "bloom": "per_head", "gpt_neox": "per_head"}
QKV_FAMILIES = ("query", "key", "value")  # their order inside a fused tensor


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
        # canonical_name: a bias inside an adapter-wrapped layer is '<module>.base_layer.bias'
        hits = [(int(m.group(1)), n) for n in bias_names if (m := pat.search(canonical_name(n)))]
        out[fam] = sorted(hits)
    return out


def naming_scheme(model):
    """The scheme whose table matches the most base-model biases, its query biases among them; None if none does."""
    base, _ = split_base_head(model)
    biases = [n for n in base if n.endswith("bias")]
    best, best_count = None, 0
    for scheme in NAMING_SCHEMES:
        matches = _scheme_matches(scheme, biases)
        if not matches["query"]:  # a stray suffix match (ALBERT's `<i>.attention.dense.bias` is GPT-NeoX's b_m1
            continue              # suffix) is no scheme: every scheme names its layers' query biases
        count = sum(len(v) for v in matches.values())
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


def qkv_slice_mask(layout, numel, num_heads, family):
    """BoolTensor (numel,): the entries of a fused q/k/v bias that belong to `family` under `layout` (FUSED_QKV)."""
    which = QKV_FAMILIES.index(family)
    if numel % 3 or (layout == "per_head" and (not num_heads or numel % (3 * num_heads))):
        raise ValueError(f"a fused q/k/v bias of {numel} entries cannot be split in 3 x {num_heads} heads")
    if layout == "blocks":
        mask = torch.zeros(3, numel // 3, dtype=torch.bool)
        mask[which] = True
    elif layout == "per_head":
        mask = torch.zeros(num_heads, 3, numel // (3 * num_heads), dtype=torch.bool)
        mask[:, which] = True
    else:
        raise ValueError(f"unknown fused q/k/v layout {layout!r}")
    return mask.reshape(-1)


def fused_qkv_masks(model):
    """{(family, param name): BoolTensor} for each query/key/value bias that shares its tensor with the other two
    (GPT-2, BLOOM, GPT-NeoX): True on the family's own entries. Empty for schemes with separate q/k/v biases."""
    layout = FUSED_QKV.get(naming_scheme(model))
    if layout is None:
        return {}
    heads = getattr(model.config, "num_attention_heads", None)
    params = dict(model.named_parameters())
    families = bias_families(model)
    return {(fam, name): qkv_slice_mask(layout, params[name].numel(), heads, fam).view(params[name].shape)
            for fam in QKV_FAMILIES for _, name in families[fam]}


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
    if fine_tune_type in ADAPTER_TYPES:  # the adapters were injected already (adapters.inject)
        adapters = [n for n in base if is_adapter_param(n)]
        if not adapters:
            raise ValueError(f"{fine_tune_type}: no adapter parameters in the model; call adapters.inject first")
        biases = _bitfit_biases(model, base, ("all",)) if fine_tune_type == "bitfit_lora" else []
        return done(adapters + biases + head)
    if fine_tune_type == "bitfit":
        biases = _bitfit_biases(model, base, terms)
        return done(biases + head, _fused_subset_masks(model, terms, biases))
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
        kind = getattr(getattr(model, "config", None), "model_type", None)
        raise UsageError(f"--fine-tune-type bitfit: this model{f' ({kind})' if kind else ''} has no bias parameters "
                         f"at all -- its linear layers are built with bias=False and its norms have none (as in "
                         f"LLaMA and Mistral) -- so BitFit has nothing to train; use full_ft (or lora) instead")
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


def _fused_subset_masks(model, terms, chosen):
    """Masks for the fused q/k/v biases of which only some families train (`--bias-terms query` on GPT-2 trains
    the query third of c_attn.bias): the union of the chosen families' entries. A fused tensor whose three families
    are all chosen trains whole and needs no mask."""
    if terms == ("all",):
        return {}
    masks = {}
    for (fam, name), mask in fused_qkv_masks(model).items():
        if fam in terms and name in chosen:
            masks[name] = masks[name] | mask if name in masks else mask.clone()
    return {name: m for name, m in masks.items() if not bool(m.all())}


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
    """Official random row/column baseline: per weight matrix of the encoder and pooler one random column (coin
    flip, or forced when rows < cols) or int(rows/cols) random rows; their LayerNorm gains fully; biases frozen.
    As the official code, whose mask covers only encoder and pooler names, nothing under the embeddings trains
    (tables, position/type tables, and the embeddings LayerNorm gain): 102,144 entries on bert-base."""
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
        if "embeddings" in name.split("."):
            pass  # the official mask never reaches the embeddings module
        elif name in norm_gains and p.dim() == 1:
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


def _family_counts(params, selection, family, hits, fused):
    """(entries, trainable entries) of one bias family, counting only the family's own slice of a fused tensor."""
    total = trainable = 0
    for _, name in hits:
        own = fused.get((family, name))
        if own is None:
            total += params[name].numel()
            trainable += _count(params, selection, name)
            continue
        chosen = selection.masks.get(name)
        if chosen is None:
            chosen = torch.full(own.shape, name in set(selection.trainable), dtype=torch.bool)
        total += int(own.sum())
        trainable += int((own & chosen.to(own.device)).sum())
    return total, trainable


def param_report(model, selection, bias_terms=None):
    """Parameter counts per bias family / pooler bias / embeddings biases / head, and the trainable total.
    Shares are of the base model (embeddings + encoder + pooler, no head), the paper's denominator.
    JSON-serialisable."""
    terms = _parse_bias_terms(selection.bias_terms if bias_terms is None else bias_terms)
    params = dict(model.named_parameters())
    base, head = split_base_head(model)
    base_total = sum(params[n].numel() for n in base if not is_adapter_param(n))  # the plain model's size
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
    fused = fused_qkv_masks(model)
    bitfit = selection.fine_tune_type in ("bitfit", "bitfit_lora")
    fam_rows = []
    for fam, hits in families.items():
        sel = bitfit and (terms == ("all",) or fam in terms)
        r = row(fam, [n for _, n in hits], sel)
        if fused:  # query, key and value share one tensor: each family counts its own entries of it
            r["params"], r["trainable_params"] = _family_counts(params, selection, fam, hits, fused)
            r["percent"] = pct(r["params"])
        fam_rows.append({**r, "notation": PAPER_NOTATION[fam]})
    in_family = {n for hits in families.values() for _, n in hits}
    base_biases = [n for n in base if n.endswith("bias")]
    pooler = [n for n in base_biases if _is_pooler(n)]
    other = [n for n in base_biases if n not in in_family and not _is_pooler(n)]
    other_rows = [row("pooler bias", pooler), row("other base-model biases (embeddings LayerNorm, ...)", other)]
    other_rows += [row(f"{fam} adapters ({selection.fine_tune_type})", names)
                   for fam, names in _adapter_families(model, base).items()]
    other_rows.append(row("head (all parameters)", head))

    base_trainable = sum(_count(params, selection, n) for n in base)
    head_trainable = sum(_count(params, selection, n) for n in head)
    # The %Param column, one definition for every method: the trainable entries of the base model (embeddings,
    # encoder, pooler, adapters; not the task head) over the plain base model's size. BitFit on bert-base trains
    # 102,912 = 0.0950% (-> "0.10"; the paper prints 0.09, the 101,376 biases of the 12 layers alone).
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


def _adapter_families(model, base):
    """family -> adapter parameter names (LoRA A/B, IA3 vectors), by the module they sit on; 'other' if none."""
    adapter = [n for n in base if is_adapter_param(n)]
    if not adapter:
        return {}
    scheme = naming_scheme(model)
    out = {}
    for name in adapter:
        module = canonical_name(name).split(".lora_")[0].split(".ia3_l")[0]
        fam = next((f for f, suffix in NAMING_SCHEMES.get(scheme, {}).items()
                    if re.search(r"(?:^|\.)\d+\." + re.escape(suffix.removesuffix(".bias")) + "$", module)), "other")
        out.setdefault(fam, []).append(name)
    return out


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
