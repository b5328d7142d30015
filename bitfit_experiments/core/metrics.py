"""GLUE metrics, computed exactly as the Hugging Face `evaluate` "glue" metric does (scikit-learn / scipy).

cola: matthews_correlation; sst2, mnli, qnli, rte, wnli: accuracy; mrpc, qqp: accuracy and f1 (of the positive
class, label 1); stsb: pearson and spearmanr. Values are fractions in [0, 1] (or [-1, 1] for correlations) as
python floats; the paper's tables print them x100. A correlation of constant predictions is NaN for STS-B (scipy)
and 0.0 for CoLA (sklearn), as in `evaluate`.

Layer: core.
"""
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from .data import get_task
from .errors import UsageError


def headline(task):
    """The paper's Table 5 metric key for a task, e.g. 'matthews_correlation' for cola."""
    return get_task(task).headline


def logits_to_predictions(task, logits):
    """Class ids (argmax) for classification; the single output as a score for stsb."""
    logits = np.asarray(logits)
    if get_task(task).is_regression:
        return logits.reshape(len(logits), -1)[:, 0].astype(np.float32)
    return logits.argmax(axis=-1)


def compute_metrics(task, predictions, references):
    spec = get_task(task)
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.shape != refs.shape:
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references (shapes {preds.shape} vs {refs.shape})")
    unlabeled = np.isnan(refs).any() if spec.is_regression else (refs < 0).any()
    if unlabeled:
        raise UsageError(f"the {spec.name} references include unlabeled rows (test split?); metrics need a labeled "
                         f"split such as {spec.eval_splits[0]}")
    if spec.name == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
    if spec.name == "stsb":
        return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}
    accuracy = float((preds == refs).mean())
    if spec.name in ("mrpc", "qqp"):
        return {"accuracy": accuracy, "f1": float(f1_score(y_true=refs, y_pred=preds))}
    return {"accuracy": accuracy}
