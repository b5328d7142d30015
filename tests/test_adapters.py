"""LoRA, IA3 and BitFit+LoRA (built on peft) in the same harness: exact counts, nothing but the adapters (and the
biases for bitfit_lora) and the head moves, determinism and exact continuation, bit-exact packs, a merged export that
plain transformers loads without peft, and one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from bitfit_experiments import cli
from bitfit_experiments.artifacts import packs
from bitfit_experiments.core import adapters, data, selection
from bitfit_experiments.core.config import RunConfig
from bitfit_experiments.core.errors import UsageError
from conftest import REPO_ROOT, write_tiny_rte

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512)


def minilm_with(ftype, **kw):
    torch.manual_seed(0)
    with torch.device("meta"):
        model = T.BertForSequenceClassification(T.BertConfig(**MINILM, num_labels=2))
    config = RunConfig(task_name="rte", fine_tune_type=ftype, list_params=True, **kw)
    adapters.inject(model, config)
    sel = selection.select(model, ftype)
    return model, sel, selection.param_report(model, sel)


def test_minilm_lora_r8_query_value_trains_exactly_74498():
    model, sel, rep = minilm_with("lora")
    assert rep["trainable_base_params"] == 6 * 2 * (8 * 384 + 384 * 8) == 73_728
    assert rep["trainable_params"] == 74_498  # + the 770-entry head (384 x 2 + 2)
    rows = {r["name"]: r["trainable_params"] for r in rep["other"]}
    assert rows["query adapters (lora)"] == rows["value adapters (lora)"] == 36_864
    assert rep["base_model_params"] == 22_713_216  # the plain model's size: adapters are not in the denominator
    trainable = set(sel.trainable)
    assert all(adapters.is_adapter_param(n) or n.startswith("classifier.") for n in trainable)


def test_ia3_and_bitfit_lora_counts():
    _, _, rep = minilm_with("ia3")  # peft's BERT defaults: key, value, output.dense (+ attention.output.dense)
    assert rep["trainable_base_params"] == 6 * (384 + 384 + 384 + 1536) == 16_128
    _, sel, rep = minilm_with("bitfit_lora", lora_r=4, lora_targets=["key"])
    biases = 6 * (7 * 384 + 1536) + 384 + 384  # the 6 layers' biases + embeddings LayerNorm + pooler
    assert rep["trainable_base_params"] == 6 * (4 * 384 * 2) + biases
    assert any(n.endswith("query.bias") for n in sel.trainable)
    assert any(n.endswith("key.base_layer.bias") for n in sel.trainable)  # a bias inside a wrapped layer


def _cmd(out, model_dir, glue, ftype, *extra):
    return [sys.executable, os.path.join(REPO_ROOT, "run_glue.py"), "-o", str(out), "-t", "rte", "-m", model_dir,
            "--data-dir", glue, "-f", ftype, "-b", "8", "-l", "5e-3", "--no-progress", *extra]


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_tiny_rte(str(tmp_path_factory.mktemp("adapters_glue")), n_train=48, n_dev=16, n_test=4)


@pytest.mark.parametrize("ftype", ["lora", "ia3", "bitfit_lora"])
def test_only_adapters_biases_and_head_move_and_the_pack_reloads_bit_exactly(tmp_path, tiny_model_dir, glue, ftype):
    out = tmp_path / ftype
    proc = subprocess.run(_cmd(out, tiny_model_dir, glue, ftype, "-e", "2", "--keep-checkpoint", "--lora-dropout",
                               "0.1") if ftype != "ia3" else _cmd(out, tiny_model_dir, glue, ftype, "-e", "2",
                                                                  "--keep-checkpoint"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "complete"
    trained = {k.removeprefix("param."): v for k, v in load_file(str(out / "checkpoint.safetensors")).items()
               if k.startswith("param.")}  # the trainable tensors after the last epoch, exactly
    ev = packs.load(tiny_model_dir, str(out / "pack"))
    params = dict(ev.model.named_parameters())
    assert set(trained) == {n for n in params if n in trained}
    for name, value in trained.items():
        assert torch.equal(params[name].detach(), value), name  # the pack's tensors, bit for bit
    base = dict(T.AutoModel.from_pretrained(tiny_model_dir).named_parameters())
    for name, p in ev.model.base_model.named_parameters():
        plain = adapters.canonical_name(name)
        if adapters.is_adapter_param(name) or f"bert.{name}" in trained:
            continue
        assert torch.equal(p.detach(), base[plain].detach()), name  # nothing else moved
    moved_biases = [n for n in trained if n.endswith("bias") and not n.startswith("classifier")]
    assert bool(moved_biases) == (ftype == "bitfit_lora")
    manifest = json.loads((out / "pack" / "manifest.json").read_text())
    assert manifest["adapter"]["type"] == ftype
    assert all(e["kind"] == "full" or name.endswith("bias") for name, e in manifest["tensors"].items())

    # the merged export: plain transformers, peft blocked, logits equal to base + pack within 1e-4
    export = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "bitfit_experiments.predict", "--base", tiny_model_dir, "--pack",
                           str(out / "pack"), "--export", str(export)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    dev = data.load_split("rte", "dev", glue)
    want = ev.predict(dev)
    check = ("import sys, json, numpy as np, torch; sys.modules['peft'] = None\n"
             "from transformers import AutoModelForSequenceClassification as A, AutoTokenizer as K\n"
             f"m = A.from_pretrained({str(export)!r}).eval(); t = K.from_pretrained({str(export)!r})\n"
             "rows = json.loads(sys.stdin.read())\n"
             "b = t([r[0] for r in rows], [r[1] for r in rows], padding=True, truncation=True, max_length=128,"
             " return_tensors='pt')\n"
             "print(json.dumps(m(**b).logits.detach().tolist()))")
    rows = json.dumps([[a, b] for a, b in zip(dev["text_a"], dev["text_b"])])
    got = subprocess.run([sys.executable, "-c", check], input=rows, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert np.allclose(np.array(json.loads(got.stdout)), want, atol=1e-4, rtol=0)


def test_lora_is_deterministic_and_continues_exactly(tmp_path, tiny_model_dir, glue):
    """LoRA dropout and A's init come from the seed; a 1-epoch run continued to 2 equals a 2-epoch run."""
    ref = subprocess.run(_cmd(tmp_path / "ref", tiny_model_dir, glue, "lora", "-e", "2"), capture_output=True,
                         text=True)
    assert ref.returncode == 0, ref.stderr
    short = tmp_path / "short"
    assert subprocess.run(_cmd(short, tiny_model_dir, glue, "lora", "-e", "1", "--keep-checkpoint"),
                          capture_output=True).returncode == 0
    longer = subprocess.run(_cmd(short, tiny_model_dir, glue, "lora", "-e", "2", "--resume"), capture_output=True,
                            text=True)
    assert longer.returncode == 0, longer.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "ref", short))
    assert [(e["train_loss"], e["metrics"]) for e in a["epochs"]] == [(e["train_loss"], e["metrics"])
                                                                       for e in b["epochs"]]


def test_a_lora_pack_on_another_base_is_refused(tmp_path, tiny_model_dir, glue):
    out = tmp_path / "o"
    assert subprocess.run(_cmd(out, tiny_model_dir, glue, "lora", "-e", "1"), capture_output=True).returncode == 0
    torch.manual_seed(99)
    other = tmp_path / "other"
    T.BertModel(T.AutoConfig.from_pretrained(tiny_model_dir)).save_pretrained(other)
    T.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    proc = subprocess.run([sys.executable, "-m", "bitfit_experiments.predict", "--base", str(other), "--pack",
                           str(out / "pack"), "--sentences", "a b ||| c d"], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2 and "hash" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["-f", "lora", "--lora-r", "0"], "--lora-r 0"),
    (["-f", "lora", "--lora-r", "-3"], "--lora-r -3"),
    (["-f", "lora", "--bias-terms", "query"], "--bias-terms applies to -f bitfit only"),
    (["-f", "bitfit", "--lora-targets", "key"], "apply to -f lora"),
    (["-f", "lora", "--lora-dropout", "1.5"], "--lora-dropout"),
])
def test_bad_adapter_flags_are_one_line_errors(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["-t", "rte", "-o", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_target_family_the_architecture_lacks_is_refused(monkeypatch):
    model = T.BertForSequenceClassification(T.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=8))
    # a BERT-named model whose key projection is called something else: no 'key' module is found
    monkeypatch.setitem(selection.NAMING_SCHEMES["bert"], "key", "attention.self.k_renamed.bias")
    with pytest.raises(UsageError, match="--lora-targets key: this model has no key projection"):
        adapters.target_modules(model, ["query", "key"])


def test_lora_on_a_fused_qkv_projection_needs_all_three_families():
    """GPT-2 computes q, k and v in one c_attn: 'query value' (the default) cannot be honoured exactly, so refuse."""
    model = T.GPT2ForSequenceClassification(T.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40,
                                                         bos_token_id=0, eos_token_id=0, pad_token_id=0))
    with pytest.raises(UsageError, match="one fused projection"):
        adapters.target_modules(model, ["query", "value"])
    assert adapters.target_modules(model, ["query", "key", "value"]) == ["transformer.h.0.attn.c_attn",
                                                                          "transformer.h.1.attn.c_attn"]
