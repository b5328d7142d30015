"""Decoder-only models (GPT-2, BLOOM, GPT-NeoX/Pythia, OPT, Qwen2) as GLUE classifiers: bias families from parameter
names, the fused q/k/v splits against the modules' own split, exact counts, masks that keep the other entries
bit-identical, the pad token of last-token heads, and a run through run_glue on a tiny GPT-2."""
import json

import pytest
import torch
import transformers as T

from bitfit_experiments.core import selection as S
from bitfit_experiments.core.config import BIAS_FAMILIES
from bitfit_experiments.core.batching import collate, encode
from bitfit_experiments.core.decoders import pair_pad_token
from bitfit_experiments.core.errors import UsageError
from bitfit_experiments.core.trainer import train_step
from decoder_models import (BLOOMZ_1B1, GPT2_SMALL, H, HEADS, LAYERS, OPT_125M, PYTHIA_160M, QWEN2_05B,
                            make_decoder_tokenizer, random_biases, save_decoder, tiny)

FAMILIES = ("gpt2", "bloom", "gpt_neox", "opt", "qwen2")
FUSED = ("gpt2", "bloom", "gpt_neox")

# Written out independently of selection.py: layer prefix and family -> suffix, from the modeling files.
PREFIX = {"gpt2": "transformer.h", "bloom": "transformer.h", "gpt_neox": "gpt_neox.layers",
          "opt": "model.decoder.layers", "qwen2": "model.layers"}
SUFFIX = {
    "gpt2": dict(query="attn.c_attn.bias", key="attn.c_attn.bias", value="attn.c_attn.bias",
                 attention_output="attn.c_proj.bias", attention_layernorm="ln_1.bias", intermediate="mlp.c_fc.bias",
                 output="mlp.c_proj.bias", output_layernorm="ln_2.bias"),
    "bloom": dict(query="self_attention.query_key_value.bias", key="self_attention.query_key_value.bias",
                  value="self_attention.query_key_value.bias", attention_output="self_attention.dense.bias",
                  attention_layernorm="input_layernorm.bias", intermediate="mlp.dense_h_to_4h.bias",
                  output="mlp.dense_4h_to_h.bias", output_layernorm="post_attention_layernorm.bias"),
    "gpt_neox": dict(query="attention.query_key_value.bias", key="attention.query_key_value.bias",
                     value="attention.query_key_value.bias", attention_output="attention.dense.bias",
                     attention_layernorm="input_layernorm.bias", intermediate="mlp.dense_h_to_4h.bias",
                     output="mlp.dense_4h_to_h.bias", output_layernorm="post_attention_layernorm.bias"),
    "opt": dict(query="self_attn.q_proj.bias", key="self_attn.k_proj.bias", value="self_attn.v_proj.bias",
                attention_output="self_attn.out_proj.bias", attention_layernorm="self_attn_layer_norm.bias",
                intermediate="fc1.bias", output="fc2.bias", output_layernorm="final_layer_norm.bias"),
    "qwen2": dict(query="self_attn.q_proj.bias", key="self_attn.k_proj.bias", value="self_attn.v_proj.bias"),
}
OTHER_BIASES = {"gpt2": {"transformer.ln_f.bias"},
                "bloom": {"transformer.word_embeddings_layernorm.bias", "transformer.ln_f.bias"},
                "gpt_neox": {"gpt_neox.final_layer_norm.bias"}, "opt": {"model.decoder.final_layer_norm.bias"},
                "qwen2": set()}


def build(family, cls=T.AutoModelForSequenceClassification, **kw):
    torch.manual_seed(0)
    return random_biases(cls.from_config(tiny(family), **kw))


# ------------------------------------------------------------------------------------------------ families

@pytest.mark.parametrize("family", FAMILIES)
def test_bias_families_come_from_the_parameter_names(family):
    model = build(family)
    fams = S.bias_families(model)
    for fam in BIAS_FAMILIES:
        want = [(i, f"{PREFIX[family]}.{i}.{SUFFIX[family][fam]}") for i in range(LAYERS)] \
            if fam in SUFFIX[family] else []
        assert fams.get(fam, []) == want, fam
    # every bias of the base model is in a family or one of the known non-layer ones (final / embedding LayerNorms)
    base_biases = {n for n in S.split_base_head(model)[0] if n.endswith("bias")}
    assert base_biases - {n for hits in fams.values() for _, n in hits} == OTHER_BIASES[family]
    assert S.split_base_head(model)[1] == ["score.weight"]


def test_the_model_name_plays_no_part():
    """A BLOOM config that calls itself gpt2 still maps by its parameter names."""
    model = build("bloom")
    model.config.model_type, model.name_or_path = "gpt2", "gpt2"
    assert S.naming_scheme(model) == "bloom"
    assert S.fused_qkv_masks(model)[("query", "transformer.h.0.self_attention.query_key_value.bias")].view(
        HEADS, 3, -1)[:, 0].all()


def _capture_qkv(monkeypatch, module_path):
    """Wrap the family's eager attention function: record the q, k, v it receives (after the module's own split)."""
    import importlib
    mod = importlib.import_module(module_path)
    seen, original = [], mod.eager_attention_forward

    def spy(module, query, key, value, *args, **kwargs):
        seen.append((query.detach().clone(), key.detach().clone(), value.detach().clone()))
        return original(module, query, key, value, *args, **kwargs)
    monkeypatch.setattr(mod, "eager_attention_forward", spy)
    return seen


@pytest.mark.parametrize("family", FUSED)
def test_fused_masks_match_the_modules_own_split(family, monkeypatch):
    """Zero the fused projection's weight and give its bias distinct values: q, k and v as the module splits its
    output must be exactly the bias entries our masks assign to query, key and value (in head-major order)."""
    model = build(family, attn_implementation="eager").eval()
    name = {"gpt2": "transformer.h.0.attn.c_attn", "bloom": "transformer.h.0.self_attention.query_key_value",
            "gpt_neox": "gpt_neox.layers.0.attention.query_key_value"}[family]
    fused = model.get_submodule(name)
    with torch.no_grad():
        fused.weight.zero_()
        fused.bias.copy_(torch.arange(1, 3 * H + 1, dtype=torch.float32))
    if family == "bloom":  # BloomAttention._reshape is the split; its forward has no attention interface to spy on
        q, k, v = model.get_submodule(name.rsplit(".", 1)[0])._reshape(fused.bias.detach().view(1, 1, -1))
    else:
        seen = _capture_qkv(monkeypatch, f"transformers.models.{family}.modeling_{family}")
        model(input_ids=torch.tensor([[5]]))  # one token at position 0: GPT-NeoX's rotary embedding is the identity
        q, k, v = seen[0]
    masks = S.fused_qkv_masks(model)
    for fam, got in zip(("query", "key", "value"), (q, k, v)):
        # (batch, heads, seq, head_dim) -> entries in head-major order, as the mask lists them
        assert torch.equal(got[0, :, 0, :].reshape(-1), fused.bias.detach()[masks[(fam, name + ".bias")]]), fam


def test_slice_masks_partition_the_fused_tensor():
    for layout in ("blocks", "per_head"):
        parts = [S.qkv_slice_mask(layout, 96, 4, f) for f in ("query", "key", "value")]
        assert all(int(p.sum()) == 32 for p in parts) and bool((parts[0] ^ parts[1] ^ parts[2]).all())
    assert S.qkv_slice_mask("blocks", 12, 2, "key").nonzero().flatten().tolist() == [4, 5, 6, 7]
    assert S.qkv_slice_mask("per_head", 12, 2, "key").nonzero().flatten().tolist() == [2, 3, 8, 9]
    with pytest.raises(ValueError):
        S.qkv_slice_mask("per_head", 96, 5, "query")


# ------------------------------------------------------------------------------------------------ exact counts

# (family, --bias-terms) -> trainable entries of the base model, by hand: H = 32, MLP 37 (BLOOM: 4H = 128), 2 layers,
# Qwen2's k/v 16 wide (1 kv head of 2).
TINY_COUNTS = {
    ("gpt2", ("all",)): 2 * (96 + 32 + 32 + 37 + 32 + 32) + 32,
    ("gpt2", ("query",)): 2 * 32, ("gpt2", ("query", "value")): 2 * 64, ("gpt2", ("key", "output")): 2 * (32 + 32),
    ("bloom", ("all",)): 2 * (96 + 32 + 32 + 128 + 32 + 32) + 32 + 32,
    ("bloom", ("query",)): 2 * 32, ("bloom", ("query", "key", "value")): 2 * 96,
    ("gpt_neox", ("all",)): 2 * (96 + 32 + 32 + 37 + 32 + 32) + 32, ("gpt_neox", ("value",)): 2 * 32,
    ("opt", ("all",)): 2 * (4 * 32 + 32 + 37 + 32 + 32) + 32, ("opt", ("query",)): 2 * 32,
    ("qwen2", ("all",)): 2 * (32 + 16 + 16), ("qwen2", ("query",)): 2 * 32, ("qwen2", ("key", "value")): 2 * 32,
}


@pytest.mark.parametrize("family,terms", list(TINY_COUNTS))
def test_exact_counts_tiny(family, terms):
    model = build(family)
    sel = S.select(model, "bitfit", terms)
    rep = S.param_report(model, sel, terms)
    assert rep["trainable_base_params"] == TINY_COUNTS[family, terms]
    assert rep["trainable_head_params"] == 2 * H  # score.weight, no bias
    rows = {r["name"]: r for r in rep["families"]}
    for fam in ("query", "key", "value"):  # each family counts its own entries, also inside a fused tensor
        width = 16 if family == "qwen2" and fam != "query" else 32
        assert rows[fam]["params"] == 2 * width
        assert rows[fam]["trainable_params"] == (2 * width if terms == ("all",) or fam in terms else 0), fam
    partial = 2 if family in FUSED and terms != ("all",) and 0 < len(set(terms) & {"query", "key", "value"}) < 3 \
        else 0
    assert rep["partially_trainable_tensors"] == len(sel.masks) == partial
    assert "naming scheme: " + S.naming_scheme(model) in S.format_report(rep)


def _meta(cfg_cls, cfg):
    with torch.device("meta"):
        return T.AutoModelForSequenceClassification.from_config(cfg_cls(**cfg))


# (config class, config, base-model size, every bias, query biases), the sizes from the public configs, by hand
REAL = {
    "gpt2": (T.GPT2Config, GPT2_SMALL, 124_439_808, 12 * 11 * 768 + 768, 12 * 768),
    "bloomz-1b1": (T.BloomConfig, BLOOMZ_1B1, 1_065_314_304, 24 * 11 * 1536 + 2 * 1536, 24 * 1536),
    "pythia-160m": (T.GPTNeoXConfig, PYTHIA_160M, 123_689_472, 12 * 11 * 768 + 768, 12 * 768),
    "opt-125m": (T.OPTConfig, OPT_125M, 125_239_296, 12 * 11 * 768 + 768, 12 * 768),
    "qwen2-0.5b": (T.Qwen2Config, QWEN2_05B, 494_032_768, 24 * (896 + 128 + 128), 24 * 896),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_size_counts_on_meta(name):
    cfg_cls, cfg, base, every_bias, query = REAL[name]
    model = _meta(cfg_cls, cfg)
    rep = S.param_report(model, S.select(model, "bitfit"), ["all"])
    assert rep["base_model_params"] == base
    assert rep["trainable_base_params"] == every_bias == S.default_rand_mask_size(model)
    rep = S.param_report(model, S.select(model, "bitfit", ["query"]), ["query"])
    assert rep["trainable_base_params"] == query


# ------------------------------------------------------------------------------------------------ masks in training

def _pad_batch(tokenizer, texts, labels):
    import pandas as pd
    df = pd.DataFrame({"idx": range(len(texts)), "text_a": texts, "label": labels})
    enc = encode(tokenizer, df, 32)
    return collate(enc, list(range(len(texts))), tokenizer.pad_token_id)


@pytest.mark.parametrize("family", FUSED)
@pytest.mark.parametrize("guard_on", [True, False])
def test_fused_query_only_keeps_key_and_value_bit_identical(family, guard_on):
    model = build(family).train()
    tokenizer = make_decoder_tokenizer()
    pair_pad_token(tokenizer, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel = S.select(model, "bitfit", ["query"])
    S.apply(model, sel)
    guard = S.MaskGuard(model, sel) if guard_on else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    texts = ["the cat sat on the mat .", "a dog", "what is it ?", "the movie was very good"]
    for _ in range(3):
        train_step(model, _pad_batch(tokenizer, texts, [0, 1, 1, 0]), opt, sched, guard, params,
                   device=torch.device("cpu"), is_regression=False)
    masks = S.fused_qkv_masks(model)
    for (fam, name), own in masks.items():
        p = dict(model.named_parameters())[name]
        moved = not torch.equal(p[own], before[name][own])
        assert moved == (fam == "query" or not guard_on), (fam, name)
    if guard_on:  # nothing else of the base model moved either
        for name, p in model.named_parameters():
            if name not in sel.trainable:
                assert torch.equal(p, before[name]), name


def test_subset_of_all_three_trains_the_whole_fused_tensor():
    model = build("bloom")
    sel = S.select(model, "bitfit", ["query", "key", "value", "intermediate"])
    assert sel.masks == {}
    assert "transformer.h.1.self_attention.query_key_value.bias" in sel.trainable
    sel = S.select(model, "bitfit", ["key", "value"])
    mask = sel.masks["transformer.h.0.self_attention.query_key_value.bias"].view(HEADS, 3, -1)
    assert not mask[:, 0].any() and mask[:, 1:].all()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_model_without_biases_is_refused_for_bitfit(family):
    model = build(family)
    for terms in (["all"], ["query"]):
        with pytest.raises(UsageError) as e:
            S.select(model, "bitfit", terms)
        msg = str(e.value)
        assert "no bias parameters" in msg and family in msg and "full_ft" in msg and "\n" not in msg
    assert len(S.select(model, "full_ft").trainable) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------------ pad token and head

def test_pad_token_pairing_rules():
    tok, model = make_decoder_tokenizer(), build("gpt2")
    assert tok.pad_token_id is None and model.config.pad_token_id is None
    assert pair_pad_token(tok, model) == 0 == tok.eos_token_id == model.config.pad_token_id  # 3. the EOS token
    tok, model = make_decoder_tokenizer(pad=True), build("gpt2")
    assert pair_pad_token(tok, model) == 2 == model.config.pad_token_id  # 1. the tokenizer's own pad
    tok, model = make_decoder_tokenizer(), build("opt")  # OPT's config has pad_token_id 1
    assert pair_pad_token(tok, model) == 1 == tok.pad_token_id  # 2. the config's pad id
    tok = make_decoder_tokenizer()
    tok.eos_token = None
    with pytest.raises(UsageError, match="neither a pad nor an EOS"):
        pair_pad_token(tok, build("gpt2"))


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padded_batches_classify_from_the_last_real_token(family):
    """Each row of a right-padded batch gets the logits of that example alone (no padding at all); with pad = EOS a
    trailing EOS is ignored exactly, an EOS inside the text is read as text."""
    model = build(family).eval()
    tokenizer = make_decoder_tokenizer()
    pad = pair_pad_token(tokenizer, model)
    texts = ["the cat sat on the mat .", "a dog", "what is the capital of france ?"]
    with torch.no_grad():
        batch = _pad_batch(tokenizer, texts, [0, 0, 0])
        assert (batch["input_ids"][1, 2:] == pad).all()  # right padding, with the pad id the head skips
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, text in enumerate(texts):
            alone = model(**tokenizer(text, return_tensors="pt")).logits[0]
            assert torch.allclose(logits[row], alone, atol=1e-5), (family, text)
        if pad != tokenizer.eos_token_id:
            return  # OPT brings its own pad id
        trailing = model(**tokenizer("a dog <|endoftext|>", return_tensors="pt")).logits[0]
        assert torch.allclose(trailing, logits[1], atol=1e-5)
        inside = tokenizer("a <|endoftext|> dog", return_tensors="pt")
        hidden = model.base_model(**inside).last_hidden_state[0, -1]
        assert inside["input_ids"][0, 1] == pad and torch.allclose(model(**inside).logits[0], model.score(hidden))


def test_cached_features_refuse_a_last_token_head(tiny_glue_dir):
    from bitfit_experiments.core import data
    from bitfit_experiments.core.features import cache_features
    model = build("gpt2")
    tokenizer = make_decoder_tokenizer()
    pad = pair_pad_token(tokenizer, model)
    S.apply(model, S.select(model, "frozen"))
    enc = encode(tokenizer, data.load_split("rte", "dev", tiny_glue_dir), 64)
    with pytest.raises(ValueError, match="reads more than the cached first-token"):
        cache_features(model, enc, batch_size=8, device=torch.device("cpu"), pad_token_id=pad, progress=False)


# ------------------------------------------------------------------------------------------------ through run_glue

@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A tiny GPT-2 saved as its causal LM (as the hub's gpt2), with a tokenizer that has no pad token."""
    return save_decoder(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2", T.AutoModelForCausalLM)


def _glue(out, model_dir, glue_dir, *extra):
    from bitfit_experiments import cli
    from bitfit_experiments.experiment import run
    return run(cli.parse_config(["-o", str(out), "-t", "rte", "-m", model_dir, "--data-dir", glue_dir, "-b", "8",
                                 "-l", "1e-2", "--no-progress", *extra]))


def test_run_glue_bitfit_query_on_gpt2(tmp_path, tiny_gpt2_dir, tiny_glue_dir):
    from bitfit_experiments.artifacts import packs
    from bitfit_experiments.artifacts.evaluator import GLUEEvaluator
    from bitfit_experiments.core import data
    out = tmp_path / "gpt2_query"
    record = _glue(out, tiny_gpt2_dir, tiny_glue_dir, "-f", "bitfit", "--bias-terms", "query", "-e", "2",
                   "--save-evaluator")
    assert record.status == "complete" and record.trainable_params == 2 * 32 + 2 * 32  # query thirds + score
    manifest = json.loads((out / "pack" / "manifest.json").read_text())
    c_attn = {n: e for n, e in manifest["tensors"].items() if n.endswith("c_attn.bias")}
    assert len(c_attn) == 2 and all(e["kind"] == "sparse" for e in c_attn.values())
    assert manifest["trained_params"] == 2 * 32 + 2 * 32
    changes = json.loads((out / "bias_changes.json").read_text())["families"]
    assert changes["key"] == [0.0, 0.0] == changes["value"] and min(changes["query"]) > 0
    # the pack, applied onto a fresh load of the base (pad token paired again), predicts as the trained model
    dev = data.load_split("rte", "dev", tiny_glue_dir)
    trained = GLUEEvaluator.load(str(out / "evaluator")).predict(dev)
    assert torch.allclose(torch.tensor(packs.load(tiny_gpt2_dir, out / "pack").predict(dev)), torch.tensor(trained),
                          atol=1e-5)


def test_run_glue_frozen_gpt2_falls_back_from_cached_features(tmp_path, tiny_gpt2_dir, tiny_glue_dir, capsys):
    record = _glue(tmp_path / "gpt2_frozen", tiny_gpt2_dir, tiny_glue_dir, "-f", "frozen", "-e", "1")
    assert record.status == "complete" and record.cached_features is False
    assert "the frozen encoder runs every step" in capsys.readouterr().out


def test_list_params_on_gpt2(tiny_gpt2_dir, capsys):
    from bitfit_experiments import cli
    from bitfit_experiments.experiment import list_params
    list_params(cli.parse_config(["-t", "rte", "-m", tiny_gpt2_dir, "-f", "bitfit", "--bias-terms", "key",
                                  "--list-params"]))
    text = capsys.readouterr().out
    assert "naming scheme: gpt2" in text and "2 partially (masked)" in text
    assert "trainable: 128 (64 in the base model" in text
