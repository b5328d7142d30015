"""The training recipe, pinned rule by rule (issue #10): each test fails when one rule of the official BitFit recipe is
broken -- the epoch loss normalisation, the per-epoch reshuffle from (seed, epoch), gradient clipping at 1.0, the
learning-rate schedules, the loss functions, the optimizer defaults, train/eval modes and the prediction order.

Everything runs on a tiny random BERT and hand-built tokenized splits in which example i carries the token 10 + i at
position 1, so any batch the model sees names the examples in it. Seconds on 2 CPU cores.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T

from bitfit_experiments.core.batching import Encoded, collate
from bitfit_experiments.core.trainer import (build_optimizer, build_scheduler, compute_loss, epoch_generator,
                                             predict_logits, train_epoch, train_step)
from tests.model_configs import tiny_bert

CPU = torch.device("cpu")
ID0 = 10  # example i carries token ID0 + i at position 1


def _enc(n=22, seed=0, regression=False, labels=None):
    """A tokenized split of n examples of lengths 3..9 (so length sorting reorders it)."""
    rng = np.random.default_rng(seed)
    ids = [[2, ID0 + i, *rng.integers(5, ID0, int(rng.integers(0, 7))).tolist(), 3] for i in range(n)]
    if labels is None:
        labels = rng.normal(size=n).astype(np.float32) if regression else rng.integers(0, 2, n)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32 if regression else torch.long)
    return Encoded(ids, [[0] * len(x) for x in ids], labels, np.array([len(x) for x in ids], dtype=np.int64))


def _model(num_labels=2, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_bert(num_labels=num_labels, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return T.BertForSequenceClassification(cfg).eval()


def _examples(input_ids):
    """The example indices of the rows of a batch's input_ids."""
    return (input_ids[:, 1] - ID0).tolist()


def _perm_batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _inputs(enc, indices):
    batch = collate(enc, indices, 0)
    labels = batch.pop("labels")
    return batch, labels


def _epoch(model, enc, optimizer, scheduler, *, generator, batch_size=5, is_regression=False, **kw):
    return train_epoch(model, enc, optimizer, scheduler, None, batch_size=batch_size, generator=generator,
                       device=CPU, pad_token_id=0, is_regression=is_regression, progress=False, **kw)


def _grad_norm(params):
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))


# ------------------------------------------------------------------------------------------------ 1. the epoch loss

def test_epoch_loss_is_the_mean_of_the_per_batch_mean_losses():
    """10 examples in batches of 4: 4, 4, 2. The epoch loss is (l1 + l2 + l3) / 3 over the batch means, which
    differs from the mean over examples because the last batch is smaller."""
    enc = _enc(n=10, labels=[0, 1, 1, 1, 0, 1, 0, 1, 1, 0])
    model = _model()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, -3.0]))  # label 0 costs ~0, label 1 ~6: batch means differ
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, "adamw", 0.0)  # lr 0: the model never moves, so each loss can be redone
    got = _epoch(model, enc, optimizer, build_scheduler(optimizer, "constant", 3), batch_size=4,
                 generator=epoch_generator(7, 1))

    batches = _perm_batches(10, 4, epoch_generator(7, 1))
    assert [len(b) for b in batches] == [4, 4, 2]
    per_batch, per_example = [], []
    with torch.no_grad():
        for indices in batches:
            inputs, labels = _inputs(enc, indices)
            logits = model(**inputs).logits
            per_batch.append(F.cross_entropy(logits, labels).item())
            per_example.extend(F.cross_entropy(logits, labels, reduction="none").tolist())
    assert got == pytest.approx(np.mean(per_batch), rel=1e-5)
    # the test tells the two normalisations (and a sum, or a wrong count) apart
    assert abs(np.mean(per_batch) - np.mean(per_example)) > 0.1
    assert abs(np.sum(per_batch) / 2 - np.mean(per_batch)) > 0.1


# ----------------------------------------------------------------------------------- 2. the reshuffle of every epoch

def test_epoch_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        return tuple(torch.randperm(50, generator=epoch_generator(seed, epoch)).tolist())

    assert order(3, 1) == order(3, 1)
    assert order(3, 1) != order(3, 2)  # every epoch is reshuffled
    assert order(3, 1) != order(4, 1)  # another seed, another order
    orders = {(s, e): order(s, e) for s in range(4) for e in range(1, 6)}
    assert len(set(orders.values())) == len(orders)
    # the global RNG (seeded per run, drawn by dropout and head init) does not enter
    torch.manual_seed(0)
    a = order(3, 2)
    torch.manual_seed(1)
    torch.rand(7)
    assert order(3, 2) == a


def test_train_epoch_steps_through_the_generators_order_in_random_batches():
    """The examples each step's forward sees are torch.randperm(n, generator) cut into batches: no length
    grouping by default, a new order in epoch 2."""
    enc = _enc(n=22)
    model = _model()
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(_examples(kwargs["input_ids"])),
                                    with_kwargs=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, "adamw", 1e-3)
    scheduler = build_scheduler(optimizer, "constant", 10)
    expected = []
    for epoch in (1, 2):
        _epoch(model, enc, optimizer, scheduler, generator=epoch_generator(11, epoch))
        expected.append(_perm_batches(22, 5, epoch_generator(11, epoch)))
    assert seen == expected[0] + expected[1]
    assert [len(b) for b in seen] == [5, 5, 5, 5, 2] * 2
    assert expected[0] != expected[1]
    assert sorted(sum(expected[0], [])) == list(range(22))


def test_a_run_shuffles_epoch_e_with_the_generator_of_seed_and_e(tmp_path, tiny_model_dir, tiny_glue_dir,
                                                                  monkeypatch):
    """Through the CLI: the training shuffle of epoch e starts from epoch_generator(seed, e)."""
    from bitfit_experiments import cli
    from bitfit_experiments.core import trainer
    states = []
    real = trainer.batch_order

    def recording(lengths, batch_size, shuffle, generator=None, group_by_length=False):
        if shuffle:
            states.append(generator.get_state().clone())
        return real(lengths, batch_size, shuffle, generator=generator, group_by_length=group_by_length)

    monkeypatch.setattr(trainer, "batch_order", recording)
    cli.main(["-o", str(tmp_path / "o"), "-t", "rte", "-m", tiny_model_dir, "--data-dir", tiny_glue_dir, "-e", "2",
              "-b", "16", "--train-size", "16", "-f", "bitfit", "-s", "5", "--no-progress"])
    assert len(states) == 2
    for epoch, state in zip((1, 2), states):
        assert torch.equal(state, epoch_generator(5, epoch).get_state()), epoch


# ------------------------------------------------------------------------------------------------- 3. clipping at 1

def _huge_gradient_setup():
    """A regression model whose outputs are ~1000 away from the labels: the gradient's norm is in the thousands."""
    enc = _enc(n=6, regression=True, labels=np.full(6, 1000.0))
    model = _model(num_labels=1)
    return enc, model, [p for p in model.parameters() if p.requires_grad]


def _raw_gradients(model, enc, indices, is_regression=True):
    ref = copy.deepcopy(model)
    inputs, labels = _inputs(enc, indices)
    compute_loss(ref(**inputs).logits, labels, is_regression).backward()
    return [p.grad.clone() for p in ref.parameters() if p.requires_grad]


def test_a_huge_gradient_is_clipped_to_total_norm_one_before_the_step():
    """With plain SGD (lr 0.5) the step is -0.5 * g / |g|: the update has norm 0.5 and the raw gradient's direction."""
    enc, model, params = _huge_gradient_setup()
    raw = _raw_gradients(model, enc, list(range(6)))
    raw_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in raw)))
    assert raw_norm > 100
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.5)
    train_step(model, collate(enc, list(range(6)), 0), optimizer, build_scheduler(optimizer, "constant", 1), None,
               params, device=CPU, is_regression=True)
    for p, p0, g in zip(params, before, raw):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g / raw_norm, rtol=1e-5, atol=1e-8)
    moved = float(torch.sqrt(sum(((p.detach() - p0).double() ** 2).sum() for p, p0 in zip(params, before))))
    assert moved == pytest.approx(0.5, rel=1e-4)


def test_a_small_gradient_is_not_rescaled():
    enc = _enc(n=6, regression=True, labels=np.zeros(6))
    model = _model(num_labels=1)
    with torch.no_grad():  # outputs close to the labels: a gradient of norm < 1
        model.classifier.weight.mul_(0.01)
        model.classifier.bias.fill_(0.01)
    params = [p for p in model.parameters() if p.requires_grad]
    raw = _raw_gradients(model, enc, list(range(6)))
    assert 1e-4 < float(torch.sqrt(sum((g.double() ** 2).sum() for g in raw))) < 0.5
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.5)
    train_step(model, collate(enc, list(range(6)), 0), optimizer, build_scheduler(optimizer, "constant", 1), None,
               params, device=CPU, is_regression=True)
    for p, p0, g in zip(params, before, raw):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, rtol=1e-5, atol=1e-8)


def test_train_epoch_clips_every_step_at_one():
    """The gradient AdamW is handed at each step of an epoch has total norm 1 (every raw norm is in the thousands)."""
    enc, model, params = _huge_gradient_setup()
    optimizer = build_optimizer(params, "adamw", 1e-3)
    norms = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: norms.append(_grad_norm(params)))
    _epoch(model, enc, optimizer, build_scheduler(optimizer, "constant", 3), batch_size=2,
           generator=epoch_generator(0, 1), is_regression=True)
    assert norms == pytest.approx([1.0] * 3, rel=1e-4)


# --------------------------------------------------------------------------------------------------- 4. the schedule

def _lr_after_each_step(schedule, total_steps, warmup_ratio=0.0, lr=3e-4, steps=None):
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([p], "adamw", lr)
    scheduler = build_scheduler(optimizer, schedule, total_steps, warmup_ratio)
    lrs = [optimizer.param_groups[0]["lr"]]  # the lr of the first optimizer step
    for _ in range(total_steps if steps is None else steps):
        p.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_constant_schedule_keeps_the_learning_rate():
    assert _lr_after_each_step("constant", 60) == [3e-4] * 61


def test_linear_schedule_warms_up_then_decays_to_zero():
    # 20 steps, warm-up round(0.23 * 20) = round(4.6) = 5 steps: factor (k+1)/5, then (20-k)/15
    factors = [v / 1e-3 for v in _lr_after_each_step("linear", 20, 0.23, lr=1e-3, steps=22)]
    expected = [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0,                        # k = 0..4: warm-up, never lr 0
                15 / 15, 14 / 15, 13 / 15, 12 / 15, 11 / 15, 10 / 15, 9 / 15, 8 / 15, 7 / 15, 6 / 15,
                5 / 15, 4 / 15, 3 / 15, 2 / 15, 1 / 15,                  # k = 5..19: the last step still moves
                0.0, 0.0, 0.0]                                          # k = 20 = total_steps, and after
    assert factors == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_linear_schedule_without_warmup_starts_at_the_full_rate():
    factors = [v / 1e-3 for v in _lr_after_each_step("linear", 4, 0.0, lr=1e-3)]
    assert factors == pytest.approx([1.0, 3 / 4, 2 / 4, 1 / 4, 0.0], rel=1e-9, abs=1e-12)


def test_train_epoch_steps_the_schedule_once_per_batch_across_epochs():
    """2 epochs x 5 batches = 10 steps, warm-up round(0.3 * 10) = 3: the lr each optimizer step uses."""
    enc = _enc(n=22)
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, "adamw", 1e-3)
    scheduler = build_scheduler(optimizer, "linear", 10, 0.3)
    used = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    for epoch in (1, 2):
        _epoch(model, enc, optimizer, scheduler, generator=epoch_generator(0, epoch))
    expected = [1e-3 * ((k + 1) / 3 if k < 3 else (10 - k) / 7) for k in range(10)]
    assert used == pytest.approx(expected, rel=1e-9)
    assert optimizer.param_groups[0]["lr"] == 0.0


# ------------------------------------------------------------------------------------ 5. the loss and the optimizer

def test_classification_loss_is_mean_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 1.0, 4.0], [1.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2, 1, 2])
    z = logits.double().numpy()
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(4), labels.numpy()].mean()
    assert compute_loss(logits, labels, is_regression=False).item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_mse_on_the_single_squeezed_output():
    logits = torch.tensor([[0.5], [2.0], [-1.0], [3.5]])
    labels = torch.tensor([1.0, 2.5, 0.0, 3.0])
    expected = np.mean((np.array([0.5, 2.0, -1.0, 3.5]) - np.array([1.0, 2.5, 0.0, 3.0])) ** 2)  # 0.4375
    assert compute_loss(logits, labels, is_regression=True).item() == pytest.approx(expected, rel=1e-6)
    broadcast = np.mean((np.array([[0.5], [2.0], [-1.0], [3.5]]) - np.array([1.0, 2.5, 0.0, 3.0])) ** 2)
    assert abs(broadcast - expected) > 1  # an unsqueezed (4, 1) - (4,) would be caught
    one = compute_loss(torch.tensor([[1.5]]), torch.tensor([0.5]), is_regression=True)
    assert one.shape == () and one.item() == pytest.approx(1.0)


@pytest.mark.parametrize("is_regression", [False, True])
def test_train_step_returns_the_task_loss_of_the_batch_before_the_step(is_regression):
    enc = _enc(n=6, regression=is_regression)
    model = _model(num_labels=1 if is_regression else 2)
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, labels = _inputs(enc, list(range(6)))
    with torch.no_grad():
        out = model(**inputs).logits
    expected = (F.mse_loss(out[:, 0], labels) if is_regression else F.cross_entropy(out, labels)).item()
    optimizer = build_optimizer(params, "adamw", 1e-2)
    loss = train_step(model, collate(enc, list(range(6)), 0), optimizer, build_scheduler(optimizer, "constant", 1),
                      None, params, device=CPU, is_regression=is_regression)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_optimizer_defaults_are_the_official_ones():
    p = [torch.nn.Parameter(torch.zeros(1))]
    adamw = build_optimizer(p, "adamw", 2e-3)
    assert type(adamw) is torch.optim.AdamW
    assert {k: adamw.defaults[k] for k in ("lr", "eps", "weight_decay", "betas")} == \
        {"lr": 2e-3, "eps": 1e-6, "weight_decay": 0.0, "betas": (0.9, 0.999)}  # torch's AdamW would decay 0.01
    adam = build_optimizer(p, "adam", 2e-3)
    assert type(adam) is torch.optim.Adam and adam.defaults["eps"] == 1e-8 and adam.defaults["weight_decay"] == 0.0


def test_train_epoch_equals_a_hand_written_loop_of_the_recipe():
    """Two epochs of AdamW (eps 1e-6, no decay), linear warm-up/decay, clipping at 1, cross-entropy, the (seed, epoch)
    shuffle, written out here: the same epoch losses and the same parameters."""
    enc = _enc(n=22)
    model = _model()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([4.0, -4.0]))  # a large first gradient, so clipping matters
    ref = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, "adamw", 5e-3)
    scheduler = build_scheduler(optimizer, "linear", 10, 0.2)
    losses = [_epoch(model, enc, optimizer, scheduler, generator=epoch_generator(2, e)) for e in (1, 2)]

    ref_params = [p for p in ref.parameters() if p.requires_grad]
    ref_opt = torch.optim.AdamW(ref_params, lr=5e-3, eps=1e-6, weight_decay=0.0)
    ref_losses, step, clipped = [], 0, 0
    ref.train()
    for epoch in (1, 2):
        batch_losses = []
        for indices in _perm_batches(22, 5, epoch_generator(2, epoch)):
            ref_opt.param_groups[0]["lr"] = 5e-3 * ((step + 1) / 2 if step < 2 else (10 - step) / 8)
            inputs, labels = _inputs(enc, indices)
            loss = F.cross_entropy(ref(**inputs).logits, labels)
            loss.backward()
            norm = _grad_norm(ref_params)
            clipped += norm > 1
            scale = min(1.0, 1.0 / (norm + 1e-6))
            for p in ref_params:
                p.grad.mul_(scale)
            ref_opt.step()
            ref_opt.zero_grad()
            batch_losses.append(loss.item())
            step += 1
        ref_losses.append(sum(batch_losses) / len(batch_losses))
    assert clipped >= 2  # the comparison covers clipped steps
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------- 6. train/eval mode and order

def test_train_epoch_trains_with_dropout_active():
    enc = _enc(n=10)
    model = _model(dropout=0.3)  # _model returns it in eval mode
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(({k: v.clone() for k, v in kwargs.items()}, output.logits.detach().clone(),
                      all(m.training for m in module.modules())))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, "adamw", 0.0)  # no movement: eval logits can be recomputed afterwards
    _epoch(model, enc, optimizer, build_scheduler(optimizer, "constant", 2), generator=epoch_generator(0, 1))
    handle.remove()
    assert len(calls) == 2 and all(train for _, _, train in calls)
    model.eval()
    with torch.no_grad():
        for inputs, logits, _ in calls:
            assert not torch.allclose(model(**inputs).logits, logits, atol=1e-4)  # dropout changed the outputs


def test_predict_logits_runs_in_eval_mode_and_returns_the_original_order():
    enc = _enc(n=17, seed=3)
    model = _model(dropout=0.3).train()  # left in train mode: predict_logits must switch dropout off
    with torch.no_grad():
        model.classifier.weight.mul_(300)  # spread the rows of the tiny random model's near-zero logits
    batches, modes = [], []

    def hook(module, args, kwargs):
        batches.append(_examples(kwargs["input_ids"]))
        modes.append(any(m.training for m in module.modules()))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    got = predict_logits(model, enc, batch_size=4, device=CPU, pad_token_id=0, progress=False)
    again = predict_logits(model, enc, batch_size=4, device=CPU, pad_token_id=0, progress=False)
    assert not any(modes)
    np.testing.assert_array_equal(got, again)
    # the batches were length-sorted (longest first), so the result had to be put back in order
    flat = sum(batches[:len(batches) // 2], [])
    assert flat != list(range(17)) and list(enc.lengths[flat]) == sorted(enc.lengths, reverse=True)
    model.eval()
    with torch.no_grad():
        one_by_one = np.concatenate([model(**_inputs(enc, [i])[0]).logits.numpy() for i in range(17)])
    np.testing.assert_allclose(got, one_by_one, rtol=1e-4, atol=1e-5)
    # rows far apart compared with the tolerance: any permutation of them would be caught
    gaps = np.abs(got[:, None, :] - got[None, :, :]).max(-1) + np.eye(17)
    assert gaps.min() > 1e-3  # ten times the tolerance above
