"""Metrics: hand-computed values for every task, agreement with sklearn/scipy on random data, edge cases."""
import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from bitfit_experiments.core.errors import UsageError
from bitfit_experiments.core.metrics import compute_metrics, headline, logits_to_predictions

# refs / preds with TP=3, TN=2, FP=1, FN=2 (label 1 positive).
REFS = [1, 1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 0, 0, 0, 1]


def test_cola_mcc_by_formula():
    tp, tn, fp, fn = 3, 2, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # 4 / sqrt(240)
    out = compute_metrics("cola", PREDS, REFS)
    assert out == {"matthews_correlation": pytest.approx(mcc)} and mcc == pytest.approx(0.2581988897)
    assert compute_metrics("cola", REFS, REFS)["matthews_correlation"] == 1.0
    assert compute_metrics("cola", [1 - r for r in REFS], REFS)["matthews_correlation"] == -1.0
    # Constant predictions: the denominator is 0; sklearn (and `evaluate`) return 0.0, not NaN.
    assert compute_metrics("cola", [1] * 8, REFS)["matthews_correlation"] == 0.0


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_tasks_by_hand(task):
    out = compute_metrics(task, PREDS, REFS)
    precision, recall = 3 / 4, 3 / 5
    assert out == {"accuracy": pytest.approx(5 / 8), "f1": pytest.approx(2 * precision * recall / (precision + recall))}
    assert out["f1"] == pytest.approx(2 / 3)
    assert all(type(v) is float for v in out.values())
    assert compute_metrics(task, [0] * 8, REFS)["f1"] == 0.0  # no positive predictions


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli", "mnli"])
def test_accuracy_tasks(task):
    assert compute_metrics(task, PREDS, REFS) == {"accuracy": 0.625}
    assert compute_metrics(task, np.array([2, 0, 1, 1]), np.array([2, 1, 1, 0])) == {"accuracy": 0.5}


def test_stsb_by_hand():
    preds, refs = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # Pearson by formula: centered dot product over norms = 4 / 5; Spearman: ranks equal the values here.
    out = compute_metrics("stsb", np.array(preds, dtype=np.float32), refs)
    assert out == {"pearson": pytest.approx(0.8), "spearmanr": pytest.approx(0.8)}
    out = compute_metrics("stsb", [0.0, 1.0, 10.0, 100.0], [0.1, 0.2, 0.3, 0.4])
    assert out["spearmanr"] == pytest.approx(1.0) and out["pearson"] < 0.95  # monotone but not linear
    with pytest.warns(Warning, match="constant"):  # constant predictions: NaN with a warning, as scipy
        assert math.isnan(compute_metrics("stsb", [2.5] * 4, refs)["pearson"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_scipy_random(seed):
    rng = np.random.RandomState(seed)
    y, p = rng.randint(0, 2, 200), rng.randint(0, 2, 200)
    assert compute_metrics("cola", p, y)["matthews_correlation"] == pytest.approx(matthews_corrcoef(y, p))
    assert compute_metrics("mrpc", p, y)["f1"] == pytest.approx(f1_score(y, p))
    y3, p3 = rng.randint(0, 3, 200), rng.randint(0, 3, 200)
    assert compute_metrics("mnli", p3, y3)["accuracy"] == pytest.approx(np.mean(y3 == p3))
    s, t = rng.uniform(0, 5, 200), rng.uniform(0, 5, 200)
    out = compute_metrics("stsb", s, t)
    assert out["pearson"] == pytest.approx(pearsonr(s, t)[0]) and out["spearmanr"] == pytest.approx(spearmanr(s, t)[0])


def test_errors():
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        compute_metrics("rte", [0, 1, 1], [0, 1])
    with pytest.raises(UsageError, match="unlabeled rows"):
        compute_metrics("rte", [0, 1], [0, -1])
    with pytest.raises(UsageError, match="unlabeled rows.*dev_matched"):
        compute_metrics("mnli", [0, 1], [-1, -1])
    with pytest.raises(UsageError, match="unlabeled rows"):
        compute_metrics("stsb", [0.0, 1.0, 2.0], [np.nan, 1.0, 2.0])
    with pytest.raises(UsageError, match="unknown task"):
        compute_metrics("squad", [0], [0])


def test_headline_and_predictions():
    assert [headline(t) for t in ["cola", "mrpc", "qqp", "stsb", "mnli", "sst2"]] == [
        "matthews_correlation", "f1", "f1", "spearmanr", "accuracy", "accuracy"]
    logits = np.array([[0.1, 0.9, 0.0], [2.0, -1.0, 0.5]])
    assert logits_to_predictions("mnli", logits).tolist() == [1, 0]
    assert logits_to_predictions("stsb", np.array([[1.5], [4.25]])).tolist() == [1.5, 4.25]
    assert logits_to_predictions("stsb", np.array([1.5, 4.25])).tolist() == [1.5, 4.25]
    # The whole chain on headline keys, as the experiment code uses it.
    assert compute_metrics("qqp", logits_to_predictions("qqp", np.eye(2)[PREDS]), REFS)[headline("qqp")] == \
        pytest.approx(2 / 3)
