"""Which parameters train for every fine-tune type, the paper's %Param figures, random masks, MaskGuard."""
import json

import pytest
import torch
import transformers as T

from bitfit_experiments.core import selection as S
from bitfit_experiments.core.config import ADAPTER_TYPES
from bitfit_experiments.core.errors import UsageError
from model_configs import (BERT_BASE_CASED, BERT_LARGE_CASED, ROBERTA_BASE, tiny_albert, tiny_bert,
                           tiny_deberta_v2, tiny_distilbert, tiny_roberta)

# Written out independently of selection.py's tables (paper Table 4 + the other schemes' HF names).
BERT_SUFFIX = {
    "query": "attention.self.query.bias", "key": "attention.self.key.bias", "value": "attention.self.value.bias",
    "attention_output": "attention.output.dense.bias", "attention_layernorm": "attention.output.LayerNorm.bias",
    "intermediate": "intermediate.dense.bias", "output": "output.dense.bias",
    "output_layernorm": "output.LayerNorm.bias",
}
DISTIL_SUFFIX = {
    "query": "attention.q_lin.bias", "key": "attention.k_lin.bias", "value": "attention.v_lin.bias",
    "attention_output": "attention.out_lin.bias", "attention_layernorm": "sa_layer_norm.bias",
    "intermediate": "ffn.lin1.bias", "output": "ffn.lin2.bias", "output_layernorm": "output_layer_norm.bias",
}
DEBERTA_SUFFIX = {**BERT_SUFFIX, "query": "attention.self.query_proj.bias", "key": "attention.self.key_proj.bias",
                  "value": "attention.self.value_proj.bias"}


def build(cfg, cls=T.AutoModelForSequenceClassification):
    torch.manual_seed(0)
    return cls.from_config(cfg)


def names(model):
    return [n for n, _ in model.named_parameters()]


@pytest.fixture(scope="module")
def bert():
    return build(tiny_bert())


@pytest.fixture(scope="module")
def roberta():
    return build(tiny_roberta())


BERT_HEAD = {"classifier.weight", "classifier.bias"}
ROBERTA_HEAD = {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                "classifier.out_proj.bias"}


# ------------------------------------------------------------------------------------------------ trainable sets

def test_full_ft_frozen_and_bitfit_all(bert, roberta):
    for model, prefix, head in [(bert, "bert.", BERT_HEAD), (roberta, "roberta.", ROBERTA_HEAD)]:
        assert set(S.select(model, "full_ft").trainable) == set(names(model))
        assert set(S.select(model, "frozen").trainable) == head
        every_bias = {n for n in names(model) if n.startswith(prefix) and n.endswith("bias")}
        assert f"{prefix}embeddings.LayerNorm.bias" in every_bias
        assert set(S.select(model, "bitfit", ["all"]).trainable) == every_bias | head
        assert S.select(model, "bitfit").masks == {}


@pytest.mark.parametrize("family", list(BERT_SUFFIX))
def test_each_family_exact_bert_and_roberta(bert, roberta, family):
    suffix = BERT_SUFFIX[family]
    sel = S.select(bert, "bitfit", [family])
    expected = {f"bert.encoder.layer.{i}.{suffix}" for i in range(2)} | {"bert.pooler.dense.bias"} | BERT_HEAD
    assert set(sel.trainable) == expected
    # RoBERTa's classification model has no pooler; its head is classifier.dense + classifier.out_proj.
    sel = S.select(roberta, "bitfit", [family])
    assert set(sel.trainable) == {f"roberta.encoder.layer.{i}.{suffix}" for i in range(2)} | ROBERTA_HEAD


def test_output_is_b_m3_only_and_combinations(bert):
    sel = set(S.select(bert, "bitfit", ["output"]).trainable)
    assert "bert.encoder.layer.0.output.dense.bias" in sel
    assert "bert.encoder.layer.0.attention.output.dense.bias" not in sel  # the official code's substring match would
    assert "bert.encoder.layer.0.output.LayerNorm.bias" not in sel
    sel = set(S.select(bert, "bitfit", "query,intermediate").trainable)
    assert sel == ({f"bert.encoder.layer.{i}.{BERT_SUFFIX[f]}" for i in range(2) for f in ("query", "intermediate")}
                   | {"bert.pooler.dense.bias"} | BERT_HEAD)
    # every family together = all layer biases + pooler; `all` additionally has the embeddings LayerNorm bias
    every = set(S.select(bert, "bitfit", list(BERT_SUFFIX)).trainable)
    assert set(S.select(bert, "bitfit", ["all"]).trainable) - every == {"bert.embeddings.LayerNorm.bias"}


def test_apply_sets_requires_grad_exactly(bert):
    for ft in [t for t in S.FINE_TUNE_TYPES if t not in ADAPTER_TYPES]:  # adapters: tests/test_adapters.py
        sel = S.select(bert, ft)
        S.apply(bert, sel)
        assert {n for n, p in bert.named_parameters() if p.requires_grad} == set(sel.trainable)
        assert set(sel.masks) <= set(sel.trainable)
    S.apply(bert, S.select(bert, "full_ft"))


@pytest.mark.parametrize("cfg,table,prefix", [(tiny_distilbert(), DISTIL_SUFFIX, "distilbert.transformer.layer"),
                                              (tiny_deberta_v2(), DEBERTA_SUFFIX, "deberta.encoder.layer")])
def test_family_mapping_other_schemes(cfg, table, prefix):
    model = build(cfg)
    fams = S.bias_families(model)
    assert set(fams) == set(table)
    for fam, suffix in table.items():
        assert fams[fam] == [(i, f"{prefix}.{i}.{suffix}") for i in range(2)]
    head = {n for n in names(model) if not n.startswith(prefix.split(".")[0] + ".")}
    assert set(S.select(model, "bitfit", ["key"]).trainable) == {n for _, n in fams["key"]} | head


def test_families_ordered_by_layer():
    model = build(tiny_bert(num_hidden_layers=12))
    fams = S.bias_families(model)
    assert [i for i, _ in fams["query"]] == list(range(12))  # numeric, not string, order (10 after 9)


def test_usage_errors(bert):
    with pytest.raises(UsageError, match="unknown --bias-terms"):
        S.select(bert, "bitfit", ["query", "querry"])
    with pytest.raises(UsageError, match="unknown --fine-tune-type"):
        S.select(bert, "bias_only")
    with pytest.raises(UsageError, match="only applies to --fine-tune-type bitfit"):
        S.select(bert, "full_ft", ["query"])
    with pytest.raises(UsageError, match="between 1 and"):
        S.select(bert, "rand_uniform", rand_mask_size=10**9)


def test_subset_on_unmapped_architecture():
    model = build(tiny_albert())
    assert S.bias_families(model) == {}
    with pytest.raises(UsageError) as e:
        S.select(model, "bitfit", ["query"])
    msg = str(e.value)
    assert "--bias-terms all" in msg and "albert_layers.<i>." in msg and "\n" not in msg
    sel = S.select(model, "bitfit", ["all"])
    base_biases = {n for n in names(model) if n.startswith("albert.") and n.endswith("bias")}
    assert set(sel.trainable) == base_biases | {"classifier.weight", "classifier.bias"}


# ------------------------------------------------------------------------------------------------ paper %Param

def meta_model(cfg_dict, config_cls=T.BertConfig, cls=T.BertForSequenceClassification):
    with torch.device("meta"):
        return cls(config_cls(**cfg_dict))


def test_paper_percent_bert_base_and_large():
    model = meta_model(BERT_BASE_CASED)
    # One %Param definition for every method (trainable base entries / base size): BitFit trains 102,912 = 0.0950%
    # (the paper prints 0.09, counting the 12 layers' 101,376 alone); the subsets match the paper's figures.
    expected = {("all",): "0.10%", ("query", "intermediate"): "0.04%", ("intermediate",): "0.03%",
                ("query",): "0.01%"}
    for terms, pct in expected.items():
        rep = S.param_report(model, S.select(model, "bitfit", terms), terms)
        assert rep["paper_percent_param_str"] == pct, terms
        assert f"paper %Param: {pct}" in S.format_report(rep)
    rep = S.param_report(model, S.select(model, "bitfit"), ["all"])
    json.dumps(rep)
    assert rep["base_model_params"] == 108_310_272
    assert sum(r["params"] for r in rep["families"]) == 101_376
    assert rep["trainable_base_params"] == 102_912 == S.default_rand_mask_size(model)
    assert {r["name"]: r["params"] for r in rep["other"]}["pooler bias"] == 768
    assert rep["trainable_params"] == 102_912 + 768 * 2 + 2  # + classifier weight and bias
    rep = S.param_report(model, S.select(model, "bitfit", ["query", "intermediate"]), ["query", "intermediate"])
    assert rep["trainable_base_params"] == 46_080 + 768  # + pooler bias
    assert S.param_report(model, S.select(model, "frozen"))["paper_percent_param_str"] == "0.00%"
    assert S.param_report(model, S.select(model, "full_ft"))["paper_percent_param_str"] == "100.00%"

    large = meta_model(BERT_LARGE_CASED)
    rep = S.param_report(large, S.select(large, "bitfit"))
    assert rep["paper_percent_param_str"] == "0.08%"
    assert rep["base_model_params"] == 333_579_264 and rep["trainable_base_params"] == 272_384
    assert rep["total_params"] == 333_579_264 + 1024 * 2 + 2
    assert rep["paper_param_share"] == pytest.approx(100 * 272_384 / 333_579_264)
    assert rep["trainable_share"] == pytest.approx(100 * 272_384 / 333_579_264)


def test_roberta_base_counts():
    model = meta_model(ROBERTA_BASE, T.RobertaConfig, T.RobertaForSequenceClassification)
    rep = S.param_report(model, S.select(model, "bitfit"))
    # paper.md §4: 124,645,632 incl. a pooler; the classification model has none (590,592 = 768*768 + 768 fewer).
    assert rep["base_model_params"] == 124_645_632 - 590_592
    assert sum(r["params"] for r in rep["families"]) == 101_376
    assert rep["paper_percent_param_str"] == "0.08%"  # the paper prints 0.09% (paper.md §4)


# ------------------------------------------------------------------------------------------------ random masks

def base_names(model):
    return S.split_base_head(model)[0]


def trainable_entries(model, sel, only):
    params = dict(model.named_parameters())
    return {n: int(sel.masks[n].sum()) if n in sel.masks else params[n].numel()
            for n in sel.trainable if n in only}


def test_allocate_largest_remainder():
    assert S._allocate([5, 3, 2], 7) == [4, 2, 1]  # quotas 3.5, 2.1, 1.4 -> floors 3,2,1 + the .5 remainder
    assert sum(S._allocate([1000, 7, 13, 999_983], 12_345)) == 12_345


def test_rand_uniform_exact_distinct_and_proportional(bert):
    base = base_names(bert)
    params = dict(bert.named_parameters())
    total = sum(params[n].numel() for n in base)
    n = 1000
    sel = S.select(bert, "rand_uniform", rand_mask_size=n, seed=3)
    per = trainable_entries(bert, sel, set(base))
    assert sum(per.values()) == n  # masks are boolean, so entries are distinct by construction
    for name in base:
        assert abs(per.get(name, 0) - n * params[name].numel() / total) < 1, name
    assert BERT_HEAD <= set(sel.trainable) and not BERT_HEAD & set(sel.masks)
    # default N = BitFit's budget in the base model
    sel = S.select(bert, "rand_uniform", seed=0)
    n_bias = sum(params[n].numel() for n in base if n.endswith("bias"))
    assert sum(trainable_entries(bert, sel, set(base)).values()) == n_bias == S.default_rand_mask_size(bert)


def test_sample_distinct_large_tensor_path():
    g = torch.Generator().manual_seed(0)
    idx = S._sample_distinct(5_000_000, 20_000, g)
    assert idx.numel() == 20_000 == idx.unique().numel() and idx.min() >= 0 and idx.max() < 5_000_000
    assert idx.float().mean().item() == pytest.approx(2_500_000, rel=0.05)  # not biased to small indices


@pytest.mark.parametrize("ft", ["rand_uniform", "rand_row_col"])
def test_random_masks_seeded(bert, ft):
    a, b, c = (S.select(bert, ft, seed=s) for s in (0, 0, 1))
    assert a.trainable == b.trainable and a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.masks.keys() != c.masks.keys() or any(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_rand_row_col_structure():
    model = build(tiny_bert(intermediate_size=64))  # intermediate 64x32 -> 2 rows when rows are chosen
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    saw = set()
    for seed in range(6):
        sel = S.select(model, "rand_row_col", seed=seed)
        assert BERT_HEAD <= set(sel.trainable) and not BERT_HEAD & set(sel.masks)
        for name in base_names(model):
            p = params[name]
            owner = modules[name.rsplit(".", 1)[0]]
            m = sel.masks.get(name, torch.ones(p.shape, dtype=torch.bool) if name in sel.trainable
                              else torch.zeros(p.shape, dtype=torch.bool))
            if isinstance(owner, torch.nn.Embedding) or name.endswith("bias") or "embeddings" in name.split("."):
                assert not m.any(), name  # incl. the embeddings LayerNorm gain: the official mask skips them
            elif isinstance(owner, torch.nn.LayerNorm):
                assert m.all(), name
            else:
                rows, cols = p.shape
                full_cols = m.all(dim=0).nonzero().flatten()
                full_rows = m.all(dim=1).nonzero().flatten()
                if len(full_cols) == 1 and m.sum() == rows:
                    saw.add("col")
                else:
                    assert rows >= cols and len(full_rows) == rows // cols and m.sum() == (rows // cols) * cols
                    saw.add("rows")
                if rows < cols:
                    assert len(full_cols) == 1 and m.sum() == rows
    assert saw == {"col", "rows"}


def test_rand_row_col_count_on_bert_base_is_the_official_one():
    """12 layers x (4 x 768 + 3072 + 768 matrix entries + 2 x 768 LayerNorm gains) + 768 for the pooler."""
    model = meta_model(BERT_BASE_CASED)
    rep = S.param_report(model, S.select(model, "rand_row_col", seed=0))
    assert rep["trainable_base_params"] == 12 * (4 * 768 + 3072 + 768 + 2 * 768) + 768 == 102_144
    assert rep["paper_percent_param_str"] == "0.09%"  # the paper's rand row/col %Param


# ------------------------------------------------------------------------------------------------ MaskGuard

def train_steps(model, sel, opt_cls, guard=True, steps=3, **opt_kw):
    S.apply(model, sel)
    g = S.MaskGuard(model, sel) if guard else None
    opt = opt_cls([p for p in model.parameters() if p.requires_grad], lr=1e-2, **opt_kw)
    torch.manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(100, (4, 8))
        loss = model(input_ids=ids, labels=torch.randint(2, (4,))).loss
        opt.zero_grad()
        loss.backward()
        if g:
            g.zero_masked_grads()
            for name, m in sel.masks.items():
                assert not dict(model.named_parameters())[name].grad[~m].any()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if g:
            g.restore()


@pytest.mark.parametrize("ft", ["rand_uniform", "rand_row_col", "bitfit"])
@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.AdamW, {"weight_decay": 0.01}),
                                        (torch.optim.Adam, {"weight_decay": 0.01}), (torch.optim.Adam, {})])
def test_mask_guard_bit_identical(ft, opt_cls, kw):
    model = build(tiny_bert())
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel = S.select(model, ft, seed=0)
    train_steps(model, sel, opt_cls, **kw)
    trainable = set(sel.trainable)
    for name, p in model.named_parameters():
        if name not in trainable:
            assert torch.equal(p, before[name]), name
        elif name in sel.masks:
            m = sel.masks[name]
            assert torch.equal(p[~m], before[name][~m]), name
            assert not torch.equal(p[m], before[name][m]), name
        else:
            assert not torch.equal(p, before[name]), name


def test_without_guard_masked_entries_move():
    # The guard is what keeps them fixed: AdamW's decoupled weight decay moves every entry of a tensor.
    model = build(tiny_bert())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel = S.select(model, "rand_uniform", seed=0)
    train_steps(model, sel, torch.optim.AdamW, guard=False, weight_decay=0.01)
    moved = [n for n, m in sel.masks.items() if not torch.equal(dict(model.named_parameters())[n][~m],
                                                                before[n][~m])]
    assert moved


def test_report_is_json_and_readable(bert):
    for ft in [t for t in S.FINE_TUNE_TYPES if t not in ADAPTER_TYPES]:  # adapters: tests/test_adapters.py
        rep = S.param_report(bert, S.select(bert, ft))
        assert json.loads(json.dumps(rep)) == rep
        text = S.format_report(rep)
        assert "b_m2" in text and "pooler bias" in text and "head" in text
    rep = S.param_report(bert, S.select(bert, "bitfit", ["query"]), ["query"])
    sel_rows = {r["name"] for r in rep["families"] if r["selected"]}
    assert sel_rows == {"query"}
    assert rep["trainable_base_params"] == 2 * 32 + 32  # two query biases + pooler bias
