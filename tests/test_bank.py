"""Bias banks (core/bank.py, core/bank_train.py, bank_run.py): K BitFit members trained in one pass over one model
must be the K separate runs -- up to float rounding, with dropout 0 -- and must never touch one another.

In-process tests compare a bank step by step with separate single runs (trainer.train_step) on tiny random BERT and
RoBERTa models; CLI tests compare whole runs, re-runs from a member's config.json, resume after kill -9, a member
whose loss turns non-finite and the eligibility errors.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification, RobertaForSequenceClassification

from bitfit_experiments.core import bank as banks, selection
from bitfit_experiments.core.bank_optim import BankAdamW
from bitfit_experiments.core.bank_train import bank_step, stack_batches
from bitfit_experiments.core.trainer import build_optimizer, build_scheduler, train_step
from model_configs import tiny_bert, tiny_roberta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ARCHS = {"bert": (tiny_bert, BertForSequenceClassification, 0),
         "roberta": (tiny_roberta, RobertaForSequenceClassification, 1)}
# (learning rate, head seed, --bias-terms): different rates, seeds and selections in one bank
MEMBERS = [(1e-3, 0, ["all"]), (3e-3, 1, ["query"]), (2e-2, 2, ["query", "intermediate", "output_layernorm"])]


def _base(arch):
    make_config, cls, pad = ARCHS[arch]
    torch.manual_seed(0)
    return cls(make_config(num_labels=2, **NO_DROPOUT)), pad


def _batch(seed, n, pad, length=12):
    """A random padded batch of n examples with varied lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    ids = torch.randint(5, 100, (n, int(lengths.max())), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, pad)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def _single_runs(base, members, max_grad_norm):
    """The separate runs: a copy of the model each, its head drawn from its seed, its selection and optimizer."""
    runs = []
    for lr, seed, terms in members:
        model = copy.deepcopy(base)
        torch.manual_seed(seed)
        for m in model.classifier.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
        sel = selection.select(model, "bitfit", terms)
        selection.apply(model, sel)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(params, "adamw", lr)
        runs.append((model, sel, params, opt, build_scheduler(opt, "constant", 100)))
    return runs


def _bank_of(base, runs, members, max_grad_norm=1.0):
    """The same members as one bank over a copy of the base model, each with a copy of its run's head."""
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    head_names = set(selection.split_base_head(model)[1])
    ms = [banks.new_member(model, [n for n in sel.trainable if n not in head_names],
                           {"classifier": copy.deepcopy(run_model.classifier)}, name=str(k))
          for k, (run_model, sel, *_rest) in enumerate(runs)]
    bank = banks.BiasBank(model, ms)
    opt = BankAdamW(bank.parameters(), bank.grad_masks(), [lr for lr, _, _ in members], total_steps=100,
                    max_grad_norm=max_grad_norm)
    return bank, opt


def _train_both(arch, steps, members=MEMBERS, max_grad_norm=1.0, batch=8, joint=True):
    base, pad = _base(arch)
    runs = _single_runs(base, members, max_grad_norm)
    bank, bank_opt = _bank_of(base, runs, members, max_grad_norm)
    active = list(range(len(members)))
    for step in range(steps):
        parts = [_batch(1000 * step + k, batch, pad) for k in active]
        for k, (model, _sel, p, opt, sched) in enumerate(runs):
            model.train()
            train_step(model, dict(parts[k]), opt, sched, None, p, device=torch.device("cpu"), is_regression=False,
                       max_grad_norm=max_grad_norm)
        bank.model.train()
        bank_step(bank, active, [dict(b) for b in parts], bank_opt, device=torch.device("cpu"), pad_token_id=pad,
                  is_regression=False, joint=joint)
    return runs, bank, pad


@torch.no_grad()
def _logits(runs, bank, pad):
    """(separate logits per member, banked logits per member) on one evaluation batch."""
    probe = _batch(99, 10, pad)
    probe.pop("labels")
    separate = []
    for model, *_ in runs:
        model.eval()
        separate.append(model(**probe).logits)
    bank.model.eval()
    k = len(runs)
    bank.route([(i, 10) for i in range(k)])
    banked = bank.model(**{n: torch.cat([v] * k) for n, v in probe.items()}).logits
    return separate, [banked[10 * i:10 * (i + 1)] for i in range(k)]


@pytest.mark.parametrize("arch, joint", [("bert", True), ("roberta", True), ("bert", False)])
def test_one_banked_step_gives_each_members_separate_logits(arch, joint):
    """joint: all member blocks in one pass (a GPU's default); not joint: one pass per block (the CPU's)."""
    runs, bank, pad = _train_both(arch, steps=1, joint=joint)
    separate, banked = _logits(runs, bank, pad)
    for a, b in zip(separate, banked):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    # and the members did move apart: a bank that shared one row would give equal logits
    assert not torch.allclose(banked[0], banked[2], atol=1e-4)


@pytest.mark.parametrize("arch, joint", [("bert", True), ("roberta", True), ("roberta", False)])
def test_twenty_banked_steps_stay_within_1e_4_of_separate_runs(arch, joint):
    runs, bank, pad = _train_both(arch, steps=20, joint=joint)
    separate, banked = _logits(runs, bank, pad)
    for a, b in zip(separate, banked):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for k, (model, sel, *_r) in enumerate(runs):  # the trained tensors themselves, member by member
        own = bank.member_tensors(k)
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(own[name], p, rtol=1e-4, atol=1e-5)


def test_clipping_is_per_member():
    """Clipping that binds (max norm 1e-3): a global norm over all members would shrink each member's step by the
    others' gradients; per-member clipping gives each its separate run."""
    runs, bank, pad = _train_both("bert", steps=3, max_grad_norm=1e-3)
    separate, banked = _logits(runs, bank, pad)
    for a, b in zip(separate, banked):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    runs, bank, pad = _train_both("bert", steps=3, max_grad_norm=1e-3, joint=False)
    separate, banked = _logits(runs, bank, pad)
    for a, b in zip(separate, banked):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_untrained_families_keep_their_pretrained_values_bit_identical():
    runs, bank, pad = _train_both("bert", steps=3)
    q_only = bank.members[1]  # trains the query biases (and the pooler bias, as every bitfit selection)
    base = dict(bank.model.named_parameters())
    assert all(".query." in n or ".pooler." in n for n in q_only.trained)
    with bank.member_view(1) as model:
        for name, p in model.named_parameters():
            if name.endswith("bias") and name not in q_only.trained and not name.startswith("classifier"):
                assert torch.equal(p, runs[1][0].state_dict()[name]), name
    # the view is undone: the base values are back
    for name, p in bank.model.named_parameters():
        assert torch.equal(p, dict(_base("bert")[0].named_parameters())[name]), name
    assert set(base) == set(dict(bank.model.named_parameters()))


def test_stack_batches_pads_every_member_to_the_longest():
    a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
         "labels": torch.tensor([0, 1])}
    b = {"input_ids": torch.ones(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long),
         "labels": torch.tensor([1])}
    out = stack_batches([a, b], pad_token_id=7)
    assert out["input_ids"].shape == (3, 5)
    assert out["input_ids"][0].tolist() == [1, 1, 1, 7, 7]
    assert out["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]
    assert out["labels"].tolist() == [0, 1, 1]


# ---------------------------------------------------------------------------------------------- the CLI, end to end

@pytest.fixture(scope="module")
def nodrop_model_dir(tmp_path_factory):
    """A tiny random BERT with dropout 0 (so a banked member is numerically its separate run)."""
    from transformers import BertConfig, BertModel
    from conftest import make_tiny_tokenizer
    path = str(tmp_path_factory.mktemp("tiny_bert_nodrop"))
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(1234)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128, **NO_DROPOUT)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CLI_MEMBERS = [("3e-3", "0", ["all"]), ("1e-2", "1", ["query", "intermediate"]), ("3e-2", "0", ["query"])]


def _member_args(model, glue, out, lr, seed, terms, epochs=2, extra=()):
    return ["-t", "rte", "-m", model, "--data-dir", glue, "-f", "bitfit", "-l", lr, "-s", seed, "-e", str(epochs),
            "-b", "8", "--no-progress", "--bias-terms", *terms, "-o", str(out), *extra]


def _bank_cmd(bank_dir, members):
    cmd = [sys.executable, "-m", "bitfit_experiments.bank", "--bank-dir", str(bank_dir)]
    for args in members:
        cmd += ["--", *args]
    return cmd


def _run(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)


def _epochs(out):
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    return r, [(e["train_loss"], e["metrics"]) for e in r["epochs"]]


def test_a_banked_cli_run_is_its_members_separate_runs(tmp_path, nodrop_model_dir, tiny_glue_dir):
    members = [_member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / f"bank{i}", *m)
               for i, m in enumerate(CLI_MEMBERS)]
    proc = _run(_bank_cmd(tmp_path / "bank", members))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for i, m in enumerate(CLI_MEMBERS):
        single = _run([sys.executable, "run_glue.py",
                       *_member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / f"single{i}", *m)])
        assert single.returncode == 0, single.stderr[-2000:]
        banked, b_epochs = _epochs(tmp_path / f"bank{i}")
        alone, s_epochs = _epochs(tmp_path / f"single{i}")
        assert banked["status"] == "complete" and banked["best_epoch"] == alone["best_epoch"]
        for (bl, bm), (sl, sm) in zip(b_epochs, s_epochs, strict=True):
            assert bl == pytest.approx(sl, rel=1e-4)
            for split in sm:
                for key, value in sm[split].items():
                    assert bm[split][key] == pytest.approx(value, abs=1e-4)
        for name in ("config.json", "params.json", "pack/manifest.json", "learning_curves.png"):
            assert os.path.exists(tmp_path / f"bank{i}" / name), name
        with open(tmp_path / f"bank{i}" / "config.json") as f:
            cfg = json.load(f)
        assert cfg["bank"]["index"] == i and len(cfg["bank"]["members"]) == 3
        with open(tmp_path / f"single{i}" / "params.json") as f, open(tmp_path / f"bank{i}" / "params.json") as g:
            assert json.load(f) == json.load(g)
    assert not os.path.exists(tmp_path / "bank" / "checkpoint.safetensors")  # removed once complete

    # Re-running one member by its config re-executes the whole bank, bit-identically.
    again = _run([sys.executable, "run_glue.py", "--config", str(tmp_path / "bank1" / "config.json"),
                  "-o", str(tmp_path / "rerun")])
    assert again.returncode == 0, again.stderr[-2000:]
    names = [m["name"] for m in cfg["bank"]["members"]]
    assert sorted(os.listdir(tmp_path / "rerun")) == sorted(names + ["_bank"])
    for i, name in enumerate(names):
        assert _epochs(tmp_path / "rerun" / name)[1] == _epochs(tmp_path / f"bank{i}")[1]


def test_a_bank_killed_mid_run_resumes_to_the_same_numbers(tmp_path, nodrop_model_dir, tiny_glue_dir):
    def members(tag):
        return [_member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / f"{tag}{i}", *m, epochs=4)
                for i, m in enumerate(CLI_MEMBERS)]
    ref = _run(_bank_cmd(tmp_path / "ref", members("ref")))
    assert ref.returncode == 0, ref.stderr[-2000:]
    cmd = _bank_cmd(tmp_path / "bank", members("b"))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "bank" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the bank finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming bank" in resumed.stdout
    for i in range(len(CLI_MEMBERS)):
        r, epochs = _epochs(tmp_path / f"b{i}")
        assert epochs == _epochs(tmp_path / f"ref{i}")[1]
        assert r["resumed_after_epochs"] and r["status"] == "complete"
    again = _run(cmd)  # complete: nothing to do, nothing changed
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_member_whose_loss_turns_non_finite_fails_alone(tmp_path, nodrop_model_dir, tiny_glue_dir):
    good = _member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / "good", "3e-3", "0", ["all"])
    bad = _member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / "bad", "1e30", "1", ["all"])
    proc = _run(_bank_cmd(tmp_path / "bank", [good, bad]))
    assert proc.returncode == 1
    assert "member" in proc.stderr and "bad" in proc.stderr and "Traceback" not in proc.stderr
    failed, _ = _epochs(tmp_path / "bad")
    reason = failed["failure_reason"]
    assert failed["status"] == "failed" and ("not finite" in reason or "became" in reason), reason
    assert (tmp_path / "bad" / "failure.txt").exists() and not (tmp_path / "bad" / "pack").exists()
    alone = _run(_bank_cmd(tmp_path / "alone", [_member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / "solo",
                                                             "3e-3", "0", ["all"])]))
    assert alone.returncode == 0, alone.stderr[-2000:]
    ok, epochs = _epochs(tmp_path / "good")
    assert ok["status"] == "complete"
    for (a, am), (b, bm) in zip(epochs, _epochs(tmp_path / "solo")[1], strict=True):
        assert a == pytest.approx(b, rel=1e-5) and am == bm


@pytest.mark.parametrize("change, message", [
    (["-f", "frozen"], "frozen"), (["-f", "full_ft"], "full_ft"), (["-f", "rand_uniform"], "rand_uniform"),
    (["-f", "lora"], "lora"), (["-b", "4"], "batch_size"), (["--batch-layout", "packed"], "packed"),
])
def test_what_cannot_be_banked_is_refused_in_one_line(tmp_path, nodrop_model_dir, tiny_glue_dir, change, message):
    ok = _member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / "a", "1e-3", "0", ["all"])
    other = _member_args(nodrop_model_dir, tiny_glue_dir, tmp_path / "b", "1e-3", "1", ["all"])
    if change[0] == "-f":
        other = [a for a in other if a not in ("--bias-terms", "all")]
        other[other.index("-f") + 1] = change[1]
    else:
        other += change
    proc = _run(_bank_cmd(tmp_path / "bank", [ok, other]))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not any(os.path.exists(tmp_path / d) for d in ("a", "b", "bank"))  # nothing was created


# ---------------------------------------------------------------------------------------------- mixed-task serving

@pytest.fixture(scope="module")
def three_packs(tmp_path_factory, tiny_model_dir, tiny_glue_dir):
    """RTE bitfit (all biases), MNLI bitfit (query only), QQP frozen: three tasks, three label counts... 2, 3, 2."""
    from bitfit_experiments.core.config import RunConfig
    from bitfit_experiments.experiment import run
    from conftest import FIXTURE_GLUE_DIR
    root = tmp_path_factory.mktemp("packs")
    specs = [("rte", "bitfit", ["all"], tiny_glue_dir, 3e-2), ("mnli", "bitfit", ["query"], FIXTURE_GLUE_DIR, 3e-2),
             ("qqp", "frozen", ["all"], FIXTURE_GLUE_DIR, 1e-2)]
    out = {}
    for task, ftype, terms, glue, lr in specs:
        c = RunConfig(task_name=task, fine_tune_type=ftype, bias_terms=terms, model_name=tiny_model_dir,
                      data_dir=glue, output_path=str(root / task), learning_rate=lr, epochs=1, batch_size=8,
                      no_progress=True)
        assert run(c).status == "complete"
        out[task] = str(root / task / "pack")
    return out


def _requests(tiny_glue_dir):
    from bitfit_experiments.core.data import load_split
    from conftest import FIXTURE_GLUE_DIR
    frames = {"rte": load_split("rte", "dev", tiny_glue_dir), "mnli": load_split("mnli", "dev_matched",
                                                                                FIXTURE_GLUE_DIR),
              "qqp": load_split("qqp", "dev", FIXTURE_GLUE_DIR)}
    rows, n = [], min(len(f) for f in frames.values())
    for i in range(n):  # interleaved: every batch mixes the three tasks
        for task, f in frames.items():
            rows.append((task, f["text_a"].iloc[i], f["text_b"].iloc[i]))
    return rows


def test_mixed_task_batches_equal_each_pack_applied_alone(three_packs, tiny_model_dir, tiny_glue_dir):
    from bitfit_experiments.artifacts import packs
    from bitfit_experiments.artifacts.serving import MixedTaskServer
    import pandas as pd
    rows = _requests(tiny_glue_dir)
    server = MixedTaskServer(tiny_model_dir, [three_packs[t] for t in ("rte", "mnli", "qqp")])
    mixed = server.predict(rows, batch_size=7, joint=True)  # one pass per window: rows of 3 tasks, 2/3/2 labels
    assert [len(x) for x in mixed[:3]] == [2, 3, 2]
    grouped = server.predict(rows, batch_size=7)  # the CPU's default: task group by task group
    for a, b in zip(mixed, grouped):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for task in ("rte", "mnli", "qqp"):
        mine = [i for i, r in enumerate(rows) if r[0] == task]
        df = pd.DataFrame({"text_a": [rows[i][1] for i in mine], "text_b": [rows[i][2] for i in mine], "label": -1})
        alone = packs.load(tiny_model_dir, three_packs[task]).predict(df)
        np.testing.assert_allclose(np.stack([mixed[i] for i in mine]), alone, rtol=1e-4, atol=1e-5)


def test_predict_cli_serves_a_jsonl_stream_in_input_order(tmp_path, three_packs, tiny_model_dir, tiny_glue_dir):
    rows = _requests(tiny_glue_dir)[:9]
    src = tmp_path / "requests.jsonl"
    src.write_text("".join(json.dumps({"task": t, "sentence1": a, "sentence2": b}) + "\n" for t, a, b in rows))
    proc = _run([sys.executable, "-m", "bitfit_experiments.predict", "--base", tiny_model_dir, "--pack",
                 three_packs["rte"], three_packs["mnli"], three_packs["qqp"], "--input", str(src), "--batch-size", "4"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["task"] for a in answers] == [t for t, _, _ in rows] and [a["index"] for a in answers] == list(range(9))
    assert set(answers[1]["probabilities"]) == {"entailment", "neutral", "contradiction"}
    assert all(abs(sum(a["probabilities"].values()) - 1) < 1e-5 for a in answers)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "sst2", "sentence1": "x"}) + "\n")
    refused = _run([sys.executable, "-m", "bitfit_experiments.predict", "--base", tiny_model_dir, "--pack",
                    three_packs["rte"], three_packs["mnli"], "--input", str(bad)])
    assert refused.returncode == 2 and "sst2" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_mixed_serving_refuses_weight_changing_packs(tmp_path, tiny_model_dir, tiny_glue_dir):
    from bitfit_experiments.artifacts.serving import MixedTaskServer
    from bitfit_experiments.core.config import RunConfig
    from bitfit_experiments.core.errors import UsageError
    from bitfit_experiments.experiment import run
    c = RunConfig(task_name="rte", fine_tune_type="full_ft", model_name=tiny_model_dir, data_dir=tiny_glue_dir,
                  output_path=str(tmp_path / "ft"), epochs=1, batch_size=8, no_progress=True)
    assert run(c).status == "complete"
    with pytest.raises(UsageError, match="only bias-only packs"):
        MixedTaskServer(tiny_model_dir, [str(tmp_path / "ft" / "pack")])


# ---------------------------------------------------------------------------------------------- BANK=K in the sweeps

SWEEP = """#!/usr/bin/env bash
source "{repo}/scripts/sweep_lib.sh"
RUNS_DIR="${{RUNS_DIR}}"
for seed in 0 1; do
  for lr in 1e-3 3e-3; do add_run "{model}" tiny bitfit rte "$lr" "$seed" "" --no-progress; done
done
add_run "{model}" tiny bq rte 1e-3 0 "" --no-progress
add_run "{model}" tiny frozen rte 1e-3 0 "" --no-progress
run_all
"""


def test_bank_k_groups_a_sweeps_bitfit_runs_and_a_rerun_skips_them(tmp_path, nodrop_model_dir, tiny_glue_dir):
    script = tmp_path / "sweep.sh"
    script.write_text(SWEEP.format(repo=REPO, model=nodrop_model_dir))
    env = {**os.environ, "PYTHON": sys.executable, "RUNS_DIR": str(tmp_path / "runs"), "DATA_DIR": tiny_glue_dir,
           "EPOCHS": "1", "BATCH": "8", "BANK": "3", "REPORT": "0"}
    dry = subprocess.run(["bash", str(script)], env={**env, "DRY_RUN": "1"}, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    jobs = dry.stdout.splitlines()
    # 5 bitfit-type runs (4 all-bias + 1 b_q, which may share a bank) -> banks of 3 and 2; frozen alone
    assert sum("run_bank.py" in j for j in jobs) == 2 and sum("run_glue.py" in j for j in jobs) == 1, jobs
    assert "-f frozen" in next(j for j in jobs if "run_glue.py" in j)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    runs = [os.path.join(r, "results.json") for r, _, files in os.walk(tmp_path / "runs") if "results.json" in files]
    assert len(runs) == 6
    banked = 0
    for path in runs:
        with open(path) as f:
            assert json.load(f)["status"] == "complete", path
        with open(os.path.join(os.path.dirname(path), "config.json")) as f:
            banked += "bank" in json.load(f)
    assert banked == 5
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip (complete)") == 6, again.stdout


def test_bank_k_must_be_a_positive_number(tmp_path, nodrop_model_dir):
    script = tmp_path / "sweep.sh"
    script.write_text(SWEEP.format(repo=REPO, model=nodrop_model_dir))
    proc = subprocess.run(["bash", str(script)], env={**os.environ, "BANK": "0", "RUNS_DIR": str(tmp_path / "r")},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "BANK=0" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_rows_a_member_does_not_train_never_move_even_with_weight_decay():
    base, pad = _base("bert")
    runs = _single_runs(base, MEMBERS, 1.0)
    bank, _ = _bank_of(base, runs, MEMBERS)
    opt = BankAdamW(bank.parameters(), bank.grad_masks(), [1e-2] * 3, weight_decay=0.1, total_steps=10)
    before = {n: bank.rows[n].detach().clone() for n in bank.slots}
    for step in range(3):
        bank_step(bank, [0, 1, 2], [_batch(step * 10 + k, 8, pad) for k in range(3)], opt,
                  device=torch.device("cpu"), pad_token_id=pad, is_regression=False)
    for n in bank.slots:
        for k in range(3):
            moved = not torch.equal(bank.rows[n][k], before[n][k])
            assert moved == bool(bank.masks[n][k, 0] > 0), (n, k)  # trained rows move, the others stay exact
