"""step_costs.py (the benchmark's account of where a step's time and memory go) on a tiny random BERT."""
import types

import pytest
import torch
import transformers as T

from bitfit_experiments.core import selection

from bitfit_experiments.bench import step_costs
from bitfit_experiments.core.trainer import build_optimizer, compute_loss, train_step, build_scheduler
from tests.model_configs import TINY, tiny_bert

B, L = 3, 7


def _model(fine_tune_type):
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(tiny_bert(num_labels=2))
    selection.apply(model, selection.select(model, fine_tune_type, ["all"], None, 0))
    return model


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 100, (B, L), generator=g), "attention_mask": torch.ones(B, L, dtype=torch.long),
            "token_type_ids": torch.zeros(B, L, dtype=torch.long), "labels": torch.tensor([0, 1, 0])}


def _loss(logits, labels):
    return compute_loss(logits, labels, is_regression=False)


def test_linear_shapes_are_recorded_as_the_model_runs_them():
    model = _model("bitfit")
    shapes = step_costs.linear_shapes(model, _batch())
    H, I, layers = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]
    per_layer = [(B * L, H, H, False)] * 4 + [(B * L, H, I, False), (B * L, I, H, False)]  # q k v o, m2, m3
    # pooler and classifier see one row per sequence; only the new classifier's weight trains under BitFit
    assert shapes == per_layer * layers + [(B, H, H, False), (B, H, 2, True)]
    assert model.training  # restored


@pytest.mark.parametrize("fine_tune_type, per_linear, extra", [("frozen", 1, 1), ("bitfit", 2, 1), ("full_ft", 3, 0)])
def test_gemm_plan_counts_forward_input_and_weight_gradients(fine_tune_type, per_linear, extra):
    model = _model(fine_tune_type)
    shapes = step_costs.linear_shapes(model, _batch())
    plan = step_costs.gemm_plan(shapes, fine_tune_type)
    # frozen and bitfit: the classifier's weight gradient is the only weight gradient
    assert len(plan) == per_linear * len(shapes) + extra
    assert plan[0] == (B * L, TINY["hidden_size"], TINY["hidden_size"])


def test_gemm_floor_times_the_products_and_counts_their_flops(monkeypatch):
    """A scripted clock that only advances inside torch.mm: run r of the plan takes durations[r] seconds; the floor
    is the fastest run, and every run multiplies every product of the plan."""
    plan = [(4, 8, 16), (16, 4, 8)]
    durations = [0.8, 0.6, 0.2, 0.4, 0.5, 0.5, 0.5]
    clock, shapes, real_mm = [0.0], [], torch.mm

    def mm(a, b):
        clock[0] += durations[len(shapes) // len(plan)] / len(plan)
        shapes.append((a.shape[0], a.shape[1], b.shape[1]))
        return real_mm(a, b)

    monkeypatch.setattr(step_costs, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(torch, "mm", mm)
    sec, flops = step_costs.gemm_floor_sec(plan, torch.device("cpu"), repeats=3)
    assert len(shapes) >= 3 * len(plan) and shapes == plan * (len(shapes) // len(plan))
    assert sec == pytest.approx(0.2) and flops == 2 * (4 * 8 * 16 + 16 * 4 * 8)


def test_tensor_footprint_separates_what_bitfit_saves_from_full_ft():
    out = {}
    for ft in ("bitfit", "full_ft"):
        model = _model(ft)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(params, "adamw", 1e-3)
        train_step(model, _batch(), opt, build_scheduler(opt, "constant", 1), None, params,
                   device=torch.device("cpu"), is_regression=False)  # creates the optimizer state
        out[ft] = step_costs.tensor_footprint(model, opt, _batch(), _loss, torch.autocast("cpu", enabled=False))
        n_trainable = sum(p.numel() for p in params)
        assert out[ft]["grads_mb"] == pytest.approx(n_trainable * 4 / 2**20)
        # AdamW keeps two fp32 moments per trainable entry (+ a scalar step count per tensor)
        assert out[ft]["optimizer_state_mb"] == pytest.approx(2 * n_trainable * 4 / 2**20, rel=0.05)
        assert out[ft]["saved_activations_mb"] > 0
    assert out["bitfit"]["weights_mb"] == out["full_ft"]["weights_mb"]
    assert out["bitfit"]["grads_mb"] < out["full_ft"]["grads_mb"] / 20
    # a frozen weight needs no saved input for its gradient, so BitFit saves no more than full FT
    assert out["bitfit"]["saved_activations_mb"] <= out["full_ft"]["saved_activations_mb"]
    assert out["bitfit"]["total_mb"] < 0.6 * out["full_ft"]["total_mb"]


def test_saved_activations_grow_with_the_batch():
    model = _model("bitfit")
    small = step_costs.saved_activation_bytes(model, _batch(), _loss, torch.autocast("cpu", enabled=False))
    big = {k: torch.cat([v] * 4) for k, v in _batch().items()}
    large = step_costs.saved_activation_bytes(model, big, _loss, torch.autocast("cpu", enabled=False))
    assert large > 3 * small
