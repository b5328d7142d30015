"""--batch-layout packed computes what the padded layout computes: the same batches laid end to end in one row,
with attention kept inside each example, positions restarting per example, and the head reading each example's
first token. Tiny random models, fp32, dropout 0: logits, loss and every trainable gradient agree within rounding.
"""
import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T

from bitfit_experiments.core import packed, selection
from bitfit_experiments.core.batching import collate, encode
from bitfit_experiments.core.trainer import compute_loss, predict_logits
from tests.conftest import make_tiny_tokenizer
from tests.model_configs import tiny_albert, tiny_bert, tiny_deberta_v2, tiny_distilbert, tiny_roberta

# initializer_range 0.2 (BERT's is 0.02): logits far from 0, so a wrong mask or position shows in every digit
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=132,
                  initializer_range=0.2)
TOL = dict(rtol=1e-5, atol=1e-6)

SENTENCES = pd.DataFrame({
    "idx": range(7),
    "text_a": ["the man is playing .", "a cat sat on the mat , a dog sat on the mat , and the bird sat on the cat "
               "while the man was playing with the dog near the mat .", "it was good !", "someone",
               "the film was very bad", "a woman plays", "good"],
    "text_b": ["a man plays", "the cat sat", "the movie was not good", "something", "it was bad ?", "is it good",
               "bad"],
    "label": np.array([0, 1, 1, 0, 1, 0, 1], dtype=np.int64),
})
BATCHES = {"mixed": [1, 0, 3, 5], "very_different_lengths": [1, 6], "one": [2]}


def _model(config, attn="sdpa"):
    torch.manual_seed(0)
    return T.AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)


def _setup(arch, fine_tune_type="bitfit", attn="sdpa"):
    if arch == "bert":
        model, tok = _model(tiny_bert(num_labels=2, **NO_DROPOUT), attn), make_tiny_tokenizer()
    else:
        tok = make_tiny_tokenizer(token_type_ids=False)
        model = _model(tiny_roberta(num_labels=2, pad_token_id=tok.pad_token_id, **NO_DROPOUT), attn)
    selection.apply(model, selection.select(model, fine_tune_type, ["all"], None, 0))
    model.train()  # dropout is 0 in these configs, so train mode is deterministic
    return model, tok, encode(tok, SENTENCES, 128)


def _loss_and_grads(model, batch, forward=None):
    """(logits, loss, {name: grad}) of one batch; `forward` (default: the model) is what the batch is fed to."""
    model.zero_grad(set_to_none=True)
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = (forward or model)(**batch).logits
    loss = compute_loss(logits, labels, is_regression=False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads


def _compare(model, enc, pad_token_id, indices):
    padded = _loss_and_grads(model, collate(enc, indices, pad_token_id))
    packed_ = _loss_and_grads(model, packed.collate_packed(enc, indices), packed.PackedModel(model))
    return padded, packed_


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("fine_tune_type", ["bitfit", "full_ft"])
@pytest.mark.parametrize("arch,attn", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa")])
def test_packed_batch_gives_the_padded_logits_loss_and_gradients(arch, attn, fine_tune_type, batch):
    model, tok, enc = _setup(arch, fine_tune_type, attn)
    indices = BATCHES[batch]
    (logits_d, loss_d, grads_d), (logits_p, loss_p, grads_p) = _compare(model, enc, tok.pad_token_id, indices)
    assert logits_p.shape == (len(indices), 2)
    torch.testing.assert_close(logits_p, logits_d, **TOL)
    torch.testing.assert_close(loss_p, loss_d, **TOL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads_d) == set(grads_p) == trainable
    for name in grads_d:
        torch.testing.assert_close(grads_p[name], grads_d[name], **TOL, msg=name)
    assert model.config._attn_implementation == attn  # the switch is undone after each forward


def test_a_packed_batch_has_no_padding():
    _, tok, enc = _setup("bert")
    batch = packed.collate_packed(enc, [1, 0, 3])
    lens = enc.lengths[[1, 0, 3]]
    assert batch["input_ids"].shape == (1, lens.sum())
    assert batch["position_ids"][0].tolist() == [j for n in lens for j in range(n)]
    assert batch["first"].tolist() == [0, lens[0], lens[0] + lens[1]]
    assert batch["token_type_ids"][0].tolist() == [t for i in (1, 0, 3) for t in enc.token_type_ids[i]]
    assert (batch["input_ids"][0] != tok.pad_token_id).all()


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_packed_predictions_equal_padded_in_the_original_order(arch):
    model, tok, enc = _setup(arch)
    kw = dict(batch_size=3, device=torch.device("cpu"), pad_token_id=tok.pad_token_id, progress=False)
    padded = predict_logits(model, enc, **kw)
    got = packed.predict_logits_packed(model, enc, **kw)
    np.testing.assert_allclose(got, padded, **TOL)
    unsorted = packed.predict_logits_packed(model, enc, sort_by_length=False, **kw)
    np.testing.assert_allclose(unsorted, padded, **TOL)
    assert not model.training  # predict leaves the model in eval mode, as predict_logits does


def test_the_comparison_fails_when_attention_leaks_or_positions_do_not_restart():
    """The equivalence above can fail: a row with full attention across examples, or running positions, differs."""
    model, tok, enc = _setup("bert")
    indices = BATCHES["mixed"]
    (logits_d, _, _), _ = _compare(model, enc, tok.pad_token_id, indices)
    batch = packed.collate_packed(enc, indices)
    batch.pop("labels")
    wrapped = packed.PackedModel(model)
    running = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    assert not torch.allclose(wrapped(**running).logits, logits_d, **TOL)
    # one example spanning the whole row: attention crosses the examples
    leaky = dict(batch, valid=torch.ones(1, batch["input_ids"].shape[1], dtype=torch.bool),
                 slots=torch.arange(batch["input_ids"].shape[1]))
    assert not torch.allclose(wrapped(**leaky).logits, logits_d, **TOL)


def test_packed_supports_encoders_with_a_first_token_head():
    for arch in ("bert", "roberta"):
        model, tok, enc = _setup(arch)
        assert packed.support(model, enc, tok.pad_token_id) is None
        assert model.training  # the probe keeps the mode
    tok = make_tiny_tokenizer()
    albert = _model(tiny_albert(num_labels=2, **NO_DROPOUT))
    assert packed.support(albert, encode(tok, SENTENCES, 128), tok.pad_token_id) is None


def test_unsupported_models_are_named_with_a_reason():
    tok = make_tiny_tokenizer()
    enc = encode(tok, SENTENCES, 128)
    distil = _model(tiny_distilbert(num_labels=2, dropout=0.0, attention_dropout=0.0))
    assert "no embeddings + encoder" in packed.support(distil, enc, tok.pad_token_id)
    deberta = _model(tiny_deberta_v2(num_labels=2, **NO_DROPOUT), attn="eager")
    assert packed.support(deberta, enc, tok.pad_token_id) is not None
    gpt2 = T.GPT2ForSequenceClassification(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100,
                                                         num_labels=2, pad_token_id=0))
    assert "no embeddings + encoder" in packed.support(gpt2, enc, tok.pad_token_id)


# ------------------------------------------------------------------------------------------------------ run_glue

def _run(out, model_dir, glue_dir, *extra):
    from bitfit_experiments import cli
    from bitfit_experiments.experiment import run
    return run(cli.parse_config(["-o", str(out), "-t", "rte", "-m", model_dir, "--data-dir", glue_dir, "-e", "2",
                                 "-b", "8", "-f", "bitfit", "-l", "1e-2", "--no-progress", *extra]))


def _layout(out):
    import json
    return json.loads((out / "config.json").read_text())["args"]["batch_layout"]


@pytest.fixture(scope="module")
def no_dropout_bert_dir(tmp_path_factory):
    """The tiny hub-style BERT with dropout off, so a packed run and a padded run compute the same function."""
    path = str(tmp_path_factory.mktemp("tiny_bert_no_dropout"))
    tok = make_tiny_tokenizer()
    torch.manual_seed(1234)
    T.BertModel(tiny_bert(vocab_size=len(tok), **NO_DROPOUT)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_run_glue_packed_learns_what_padded_learns(tmp_path, no_dropout_bert_dir, tiny_glue_dir):
    padded = _run(tmp_path / "padded", no_dropout_bert_dir, tiny_glue_dir, "--batch-layout", "padded")
    got = _run(tmp_path / "packed", no_dropout_bert_dir, tiny_glue_dir, "--batch-layout", "packed")
    assert got.status == padded.status == "complete"
    assert _layout(tmp_path / "packed") == "packed" and _layout(tmp_path / "padded") == "padded"
    auto = _run(tmp_path / "auto", no_dropout_bert_dir, tiny_glue_dir)  # the default: packed on the CPU
    assert _layout(tmp_path / "auto") == "packed"
    assert [e.train_loss for e in auto.epochs] == [e.train_loss for e in got.epochs]
    for a, b in zip(got.epochs, padded.epochs):  # same batches, same steps: equal up to float rounding
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.metrics == padded.epochs[a.epoch - 1].metrics


def test_a_config_without_batch_layout_reruns_padded_and_resume_keeps_the_layout(tmp_path, no_dropout_bert_dir,
                                                                                tiny_glue_dir):
    """Runs made before --batch-layout existed were padded: their config.json must not re-run with today's default.
    A --resume without the flag continues with the layout the run used."""
    import json
    from bitfit_experiments import cli
    from bitfit_experiments.core.config import RunConfig
    args = RunConfig(task_name="rte", fine_tune_type="bitfit", output_path="x").to_dict()
    del args["batch_layout"]
    assert RunConfig.from_dict(args).batch_layout == "padded"
    _run(tmp_path / "p", no_dropout_bert_dir, tiny_glue_dir, "--batch-layout", "padded")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    del cfg["args"]["batch_layout"]
    (tmp_path / "legacy.json").write_text(json.dumps(cfg))
    assert cli.parse_config(["--config", str(tmp_path / "legacy.json"), "-o", str(tmp_path / "q")]).batch_layout \
        == "padded"
    again = _run(tmp_path / "p", no_dropout_bert_dir, tiny_glue_dir, "--resume", "-e", "2")
    assert again.status == "complete" and _layout(tmp_path / "p") == "padded"


def test_run_glue_packed_falls_back_to_padded_on_a_decoder(tmp_path, tiny_glue_dir, capsys):
    from tests.decoder_models import save_decoder
    gpt2 = save_decoder(tmp_path / "gpt2", "gpt2", T.AutoModelForCausalLM)
    record = _run(tmp_path / "o", gpt2, tiny_glue_dir, "--batch-layout", "packed", "--bias-terms", "query")
    assert record.status == "complete"
    note = [line for line in capsys.readouterr().out.splitlines() if "--batch-layout packed" in line]
    assert len(note) == 1 and "using padded batches" in note[0]
    assert _layout(tmp_path / "o") == "padded"  # config.json records the layout actually used


def test_batch_layout_flag_default_and_refusals(tmp_path):
    from bitfit_experiments import cli
    from bitfit_experiments.core.config import RunConfig
    from bitfit_experiments.core.errors import UsageError
    base = ["-o", str(tmp_path / "o"), "-t", "rte", "-f", "bitfit"]
    assert cli.parse_config(base).batch_layout == "auto"  # packed on the CPU, padded on a GPU (experiment._data_path)
    saved = RunConfig(task_name="rte", fine_tune_type="bitfit", output_path="x").to_dict()
    del saved["batch_layout"]  # a config.json written before the field existed
    assert RunConfig.from_dict(saved).batch_layout == "padded"
    with pytest.raises(UsageError, match="drop one") as exc:
        cli.parse_config(base + ["--batch-layout", "packed", "--pad-to-max-length"])
    assert "\n" not in str(exc.value)
    with pytest.raises(SystemExit) as bad:
        cli.parse_config(base + ["--batch-layout", "jagged"])
    assert bad.value.code == 2


def test_frozen_with_cached_features_records_padded(tmp_path, no_dropout_bert_dir, tiny_glue_dir, capsys):
    """The cached head trains on features, not token batches: packed does not apply, and the record says so."""
    record = _run(tmp_path / "o", no_dropout_bert_dir, tiny_glue_dir, "--batch-layout", "packed", "-f", "frozen",
                  "-e", "1")
    assert record.status == "complete" and record.cached_features
    assert _layout(tmp_path / "o") == "padded" and "does not apply" in capsys.readouterr().out
