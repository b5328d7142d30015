"""run_instruct.py: alpaca records, the prompt template, response-only labels, truncation, the seeded held-out split,
a loss that falls on a tiny dataset, samples, the LM pack, exact resume, and bad input -> one line, exit 2."""
import json
import math

import pytest
import torch
import transformers as T

from bitfit_experiments import instruct_cli
from bitfit_experiments.artifacts.instruct_record import InstructRecord
from bitfit_experiments.artifacts.lm_pack import apply_lm_pack, read_lm_pack
from bitfit_experiments.artifacts.record import RecordError, RunRecord
from bitfit_experiments.core import instruct_data as D
from bitfit_experiments.core.causal_lm import lm_eval_loss, lm_loss_sum, load_causal_lm
from bitfit_experiments.core.errors import UsageError
from bitfit_experiments.instruct import run
from decoder_models import make_decoder_tokenizer, save_decoder

QUESTIONS = [("is the movie good ?", "the movie was very good", "yes"),
             ("is the movie good ?", "the movie was very bad", "no"),
             ("what is the capital of france ?", "", "paris"),
             ("write a poem about the sea", "", "the sea is very good . the sea is a good sea ."),
             ("give three tips", "", "sit . write . sit on a mat .")]


def records(n=40):
    return [{"instruction": q, "input": i, "output": o} for k in range(n) for q, i, o in [QUESTIONS[k % 5]]]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_decoder(tmp_path_factory.mktemp("tiny_gpt2_lm"), "gpt2", T.AutoModelForCausalLM)


@pytest.fixture(scope="module")
def alpaca_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("alpaca") / "alpaca.json"
    path.write_text(json.dumps(records()))
    return str(path)


def args(out, model_dir, data, *extra):
    return instruct_cli.parse_config(["-o", str(out), "-m", model_dir, "--data", data, "-b", "4", "--eval-size", "8",
                                      "--max-seq-length", "48", "--no-progress", *extra])


# ------------------------------------------------------------------------------------------------ data and labels

def test_prompt_template():
    assert D.format_prompt("Sum up.") == "Human: Sum up.\n\nAssistant: "
    assert D.format_prompt("Translate.", "Hello") == "Human: Translate.\nHello\n\nAssistant: "


def test_response_only_labels_and_eos():
    tok = make_decoder_tokenizer()
    rec = D.Record("what is the capital of france ?", "", "paris")
    enc = D.encode_records(tok, [rec], 64)
    prompt = tok(D.format_prompt(rec.instruction))["input_ids"]
    response = tok("paris", add_special_tokens=False)["input_ids"]
    assert enc.input_ids[0] == prompt + response + [tok.eos_token_id]
    assert enc.labels[0] == [-100] * len(prompt) + response + [tok.eos_token_id]
    assert enc.lengths.tolist() == [len(prompt) + 2] and enc.dropped == 0


def test_truncation_cuts_the_end_and_drops_responseless_examples():
    tok = make_decoder_tokenizer()
    short = D.Record("give three tips", "", "sit . write . sit on a mat .")
    long_prompt = D.Record("write a poem about the sea " * 6, "", "yes")
    n_prompt = len(tok(D.format_prompt(short.instruction))["input_ids"])
    enc = D.encode_records(tok, [short, long_prompt], n_prompt + 3)
    assert len(enc) == 1 and enc.dropped == 1 and enc.lengths.tolist() == [n_prompt + 3]
    assert enc.labels[0][n_prompt:] == enc.input_ids[0][n_prompt:] and len(enc.labels[0][n_prompt:]) == 3
    assert all(x == -100 for x in enc.labels[0][:n_prompt])


def test_collate_pads_right_with_ignored_labels():
    tok = make_decoder_tokenizer()
    enc = D.encode_records(tok, [D.Record("is it good ?", "", "yes"), D.Record("write a poem", "", "the sea")], 64)
    batch = D.collate_lm(enc, [0, 1], pad_token_id=7)
    short = int(enc.lengths.min())
    row = int(enc.lengths.argmin())
    assert (batch["input_ids"][row, short:] == 7).all() and (batch["labels"][row, short:] == -100).all()
    assert batch["attention_mask"][row].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)


def test_loss_covers_the_response_tokens_only():
    torch.manual_seed(0)
    labels = torch.tensor([[-100, -100, -100, 5, 6, -100], [-100, -100, 7, 8, 9, 3]])
    logits = torch.randn(2, 6, 11)
    total, count = lm_loss_sum(logits, labels)
    # position t predicts token t+1: the labelled targets are (row 0: t=2,3) and (row 1: t=1..4)
    manual = [(0, 2, 5), (0, 3, 6), (1, 1, 7), (1, 2, 8), (1, 3, 9), (1, 4, 3)]
    expected = sum(-torch.log_softmax(logits[r, t], -1)[y] for r, t, y in manual)
    assert int(count) == 6 and torch.allclose(total, expected)
    changed = logits.clone()
    changed[0, :2] += 100.0  # predictions of prompt tokens: no part of the loss
    changed[:, -1] += 100.0  # the last position predicts nothing
    assert torch.equal(lm_loss_sum(changed, labels)[0], total)


def test_held_out_split_is_seeded():
    recs = [D.Record(f"q{i}", "", "a") for i in range(50)]
    train, held = D.split_records(recs, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45 and set(train).isdisjoint(held)
    assert D.split_records(recs, 0.1, seed=3) == (train, held)
    assert D.split_records(recs, 0.1, seed=4)[1] != held
    assert len(D.split_records(recs, 7, seed=0)[1]) == 7
    with pytest.raises(UsageError, match="leaving none to train"):
        D.split_records(recs, 50, seed=0)


def test_records_from_json_jsonl_and_the_hub(tmp_path, monkeypatch):
    rows = [{"instruction": "a", "input": None, "output": "b"}, {"instruction": "c", "output": "d", "id": 3}]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    expected = [D.Record("a", "", "b"), D.Record("c", "", "d")]
    assert D.load_records(str(tmp_path / "r.json")) == expected == D.load_records(str(tmp_path / "r.jsonl"))
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: rows if name == "org/alpaca" else 1 / 0)
    assert D.load_records("org/alpaca") == expected
    with pytest.raises(UsageError, match="could not load it from the Hugging Face hub"):
        D.load_records("org/missing")


@pytest.mark.parametrize("content,match", [
    ('[{"instruction": "a"}, {"instruction": "b", "output": "c"}]', "record 1: 'output' is missing"),
    ('[{"instruction": "a", "output": 3}, {"instruction": "b", "output": "c"}]', "'output' is not a string"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b"\n', "line 2 is not valid JSON"),
    ('["a", "b"]', "record 1 is not an object"),
    ('[{"instruction": "a", "output": "b"}]', "at least 2 are needed"),
    ('[{"instruction": " ", "output": "b"}, {"instruction": "b", "output": "c"}]', "'instruction' is empty"),
])
def test_bad_records_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / ("r.jsonl" if "\n" in content else "r.json")
    path.write_text(content)
    with pytest.raises(UsageError, match=match) as e:
        D.load_records(str(path))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ whole runs

def test_bitfit_run_learns_and_writes_every_output(tmp_path, lm_dir, alpaca_json):
    out = tmp_path / "bitfit"
    record = run(args(out, lm_dir, alpaca_json, "-e", "3", "-l", "3e-2", "--max-new-tokens", "5"))
    assert record.status == "complete" and [e.epoch for e in record.epochs] == [1, 2, 3]
    first, last = record.epochs[0], record.epochs[-1]
    assert last.train_loss < first.train_loss and last.eval_loss < first.eval_loss, record.epochs
    assert all(math.isclose(e.eval_perplexity, math.exp(e.eval_loss)) for e in record.epochs)
    assert record.num_train_examples == 32 and record.num_eval_examples == 8
    # every bias of the tiny GPT-2 (2 x 261 + ln_f 32), and nothing of the tied output layer / embeddings
    assert record.trainable_params == 554 and record.peak_memory_mb > 0 and 0 < record.trainable_share < 5
    assert InstructRecord.load(str(out)).to_dict() == record.to_dict()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(D.FIXED_PROMPTS) == record.samples
    assert all(s["prompt"].startswith("Human: ") and 0 < s["new_tokens"] <= 5 and s["epoch"] == 3 for s in samples)
    assert not (out / "checkpoint.safetensors").exists()
    # the pack on a fresh load of the base gives the last epoch's eval loss again
    pack = read_lm_pack(out / "pack")
    assert pack.manifest["trained_params"] == 554 and pack.manifest["fine_tune_type"] == "bitfit"
    model = apply_lm_pack(load_causal_lm(lm_dir), pack)
    tok = make_decoder_tokenizer()
    _, held = D.split_records(D.load_records(alpaca_json), 8, seed=0)
    loss = lm_eval_loss(model, D.encode_records(tok, held, 48), batch_size=4, device=torch.device("cpu"),
                        pad_token_id=0, progress=False)
    assert loss == pytest.approx(last.eval_loss, abs=1e-6)


@pytest.mark.parametrize("family,ftype,lr,trainable", [
    ("bloom", "bitfit", "3e-2", 2 * (96 + 32 + 32 + 128 + 32 + 32) + 64),   # + word-embeddings and final LayerNorms
    ("gpt_neox", "bitfit", "3e-2", 2 * (96 + 32 + 32 + 37 + 32 + 32) + 32),  # its untied output layer stays frozen
    ("opt", "bitfit", "3e-2", 2 * (4 * 32 + 32 + 37 + 32 + 32) + 32),
    ("qwen2", "bitfit", "3e-2", 2 * (32 + 16 + 16)),
    ("gpt2", "full_ft", "3e-3", None),
])
def test_each_family_learns(tmp_path, alpaca_json, family, ftype, lr, trainable):
    model_dir = save_decoder(tmp_path / "model", family, T.AutoModelForCausalLM)
    record = run(args(tmp_path / "out", model_dir, alpaca_json, "-f", ftype, "-l", lr, "-e", "2",
                      "--max-new-tokens", "2"))
    assert record.status == "complete" and record.epochs[1].eval_loss < record.epochs[0].eval_loss
    total = sum(p.numel() for p in load_causal_lm(model_dir).parameters())
    assert record.trainable_params == (trainable if trainable is not None else total)


def test_resume_continues_exactly(tmp_path, lm_dir, alpaca_json):
    whole = run(args(tmp_path / "whole", lm_dir, alpaca_json, "-e", "2", "--max-new-tokens", "0"))
    run(args(tmp_path / "split", lm_dir, alpaca_json, "-e", "1", "--keep-checkpoint", "--max-new-tokens", "0"))
    resumed = run(args(tmp_path / "split", lm_dir, alpaca_json, "-e", "2", "--resume", "--max-new-tokens", "0"))
    assert resumed.resumed_after_epochs == [1]
    for a, b in zip(whole.epochs, resumed.epochs, strict=True):
        assert (a.train_loss, a.eval_loss) == (b.train_loss, b.eval_loss)
    sha = [read_lm_pack(tmp_path / d / "pack").manifest["pack_sha256"] for d in ("whole", "split")]
    assert sha[0] == sha[1]
    with pytest.raises(UsageError, match="another configuration"):
        run(args(tmp_path / "split", lm_dir, alpaca_json, "-e", "2", "--resume", "-l", "5e-3"))


def test_query_only_trains_the_query_third_of_c_attn(tmp_path, lm_dir, alpaca_json):
    out = tmp_path / "query"
    # weight decay moves every entry of a tensor it updates: only MaskGuard's restore keeps k and v where they were
    record = run(args(out, lm_dir, alpaca_json, "-e", "1", "--bias-terms", "query", "--weight-decay", "0.1",
                      "--max-new-tokens", "0"))
    assert record.status == "complete" and record.trainable_params == 2 * 32
    base = dict(load_causal_lm(lm_dir).named_parameters())
    trained = dict(apply_lm_pack(load_causal_lm(lm_dir), out / "pack").named_parameters())
    for i in range(2):
        name = f"transformer.h.{i}.attn.c_attn.bias"
        assert not torch.equal(trained[name][:32], base[name][:32])  # GPT-2's [q | k | v] blocks
        assert torch.equal(trained[name][32:], base[name][32:])
    untouched = [n for n in base if "c_attn.bias" not in n]
    assert all(torch.equal(trained[n], base[n]) for n in untouched)
    other = save_decoder(tmp_path / "other", "gpt2", T.AutoModelForCausalLM, seed=7)  # same shapes, other weights
    with pytest.raises(UsageError, match="was trained on base"):
        apply_lm_pack(load_causal_lm(other), out / "pack")


def test_a_diverging_run_ends_failed_with_its_reason(tmp_path, lm_dir, alpaca_json, capsys):
    out = tmp_path / "diverged"
    with pytest.raises(SystemExit) as e:
        instruct_cli.main(["-o", str(out), "-m", lm_dir, "--data", alpaca_json, "-f", "full_ft", "-l", "1e20",
                           "--optimizer", "adam", "--eval-size", "8", "--max-seq-length", "48", "--no-progress"])
    assert e.value.code == 1 and "error: run failed: FloatingPointError" in capsys.readouterr().err
    saved = InstructRecord.load(str(out))
    assert saved.status == "failed" and "loss" in saved.failure_reason and (out / "failure.txt").is_file()
    assert not (out / "pack").exists()


# ------------------------------------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_decoder(tmp_path_factory.mktemp("tiny_llama_lm"), "llama", T.AutoModelForCausalLM)


@pytest.mark.parametrize("case,match", [
    ("missing_data", "no such file"),
    ("bad_record", "'output' is missing"),
    ("frozen", "argument --fine-tune-type/-f: invalid choice"),
    ("eval_size_zero", "--eval-size 0.0"),
    ("eval_size_all", "leaving none to train"),
    ("no_bias", "has no bias parameters at all"),
    ("missing_model", "no such model directory"),
    ("bias_terms_full_ft", "--bias-terms applies to -f bitfit only"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, lm_dir, llama_dir, alpaca_json, capsys, case, match):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a"}, {"instruction": "b", "output": "c"}]')
    out = tmp_path / "out"
    argv = {"missing_data": ["-m", lm_dir, "--data", str(tmp_path / "nope.json")],
            "bad_record": ["-m", lm_dir, "--data", str(bad)],
            "frozen": ["-m", lm_dir, "--data", alpaca_json, "-f", "frozen"],
            "eval_size_zero": ["-m", lm_dir, "--data", alpaca_json, "--eval-size", "0"],
            "eval_size_all": ["-m", lm_dir, "--data", alpaca_json, "--eval-size", "40"],
            "no_bias": ["-m", llama_dir, "--data", alpaca_json],
            "missing_model": ["-m", str(tmp_path / "no_model"), "--data", alpaca_json],
            "bias_terms_full_ft": ["-m", lm_dir, "--data", alpaca_json, "-f", "full_ft", "--bias-terms", "query"],
            }[case]
    with pytest.raises(SystemExit) as e:
        instruct_cli.main(["-o", str(out), "--no-progress", "--max-seq-length", "48", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not out.exists()  # refused before anything was written


def test_a_non_empty_output_directory_is_left_alone(tmp_path, lm_dir, alpaca_json, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        instruct_cli.main(["-o", str(out), "-m", lm_dir, "--data", alpaca_json, "--no-progress"])
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_the_record_is_not_a_glue_record(tmp_path):
    rec = InstructRecord(model_name="m", data="d", fine_tune_type="bitfit", bias_terms=["all"], learning_rate=1e-3,
                         seed=0, max_seq_length=48, prompt_template=dict(D.PROMPT_TEMPLATES),
                         num_train_examples=3, num_eval_examples=1, trainable_params=1, total_params=2,
                         trainable_share=50.0)
    rec.save(str(tmp_path / "results.json"))
    assert InstructRecord.load(str(tmp_path)) == rec
    with pytest.raises(RecordError):
        RunRecord.load(str(tmp_path))
