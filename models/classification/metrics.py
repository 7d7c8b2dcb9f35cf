"""What a classifier needs: its loss, its probabilities and its test metrics.

Binary and multi-class labels are class indices scored with cross-entropy; multi-label
labels are multi-hot rows scored with one sigmoid per label. Metrics come from
scikit-learn: AUC (one-vs-rest macro for multi-class, macro over labels for
multi-label), accuracy, balanced accuracy, and sensitivity/specificity for binary tasks.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score
from torch import nn

BINARY, MULTICLASS, MULTILABEL = "binary", "multiclass", "multilabel"


def loss_function(kind: str, labels: np.ndarray | None = None, num_classes: int = 2) -> nn.Module:
    """Cross-entropy (BCE for multi-label); with ``labels``, weighted by inverse class frequency.

    Frequencies come from the labels the site trains on, so a site whose data are 90%
    pneumonia still learns the normal class; classes absent at the site get weight 0.
    """
    if kind == MULTILABEL:
        if labels is None:
            return nn.BCEWithLogitsLoss()
        positives = labels.sum(axis=0).astype(np.float64)
        negatives = len(labels) - positives
        pos_weight = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32))
    if labels is None:
        return nn.CrossEntropyLoss()
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))


def targets(kind: str, labels: torch.Tensor) -> torch.Tensor:
    """Labels in the form the loss expects."""
    return labels.float() if kind == MULTILABEL else labels.long()


def probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if kind == MULTILABEL else torch.softmax(logits, dim=1)


# Bins of the positive class's log-odds: trained networks are confident, so equal steps
# in probability would put most cases into the first and last bin.
LOGIT_EDGES = np.linspace(-12.0, 12.0, 241)
# every name `metrics` returns: a site's replies may carry these and nothing else
METRIC_NAMES = frozenset({"auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "non_finite_outputs"})


def _log_odds(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs[:, 1].astype(np.float64), 1e-7, 1 - 1e-7)
    return np.clip(np.log(p / (1 - p)), LOGIT_EDGES[0], LOGIT_EDGES[-1])


def score_histogram(labels: np.ndarray, probs: np.ndarray) -> tuple[list[int], list[int]]:
    """Counts of positive and negative cases per log-odds bin of the positive class.

    Sites send these aggregate counts, not their scores, so that the server can choose
    the binary operating point on all sites' validation data together.
    """
    scores = _log_odds(finite_scores(probs)[0])
    positive = np.histogram(scores[labels == 1], bins=LOGIT_EDGES)[0]
    negative = np.histogram(scores[labels == 0], bins=LOGIT_EDGES)[0]
    return positive.astype(int).tolist(), negative.astype(int).tolist()


def operating_threshold(positive: np.ndarray, negative: np.ndarray) -> float:
    """The probability at the bin edge that maximises Youden's J (sensitivity +
    specificity - 1) on histograms from `score_histogram`.

    Falls back to 0.5 when the validation data hold a single class.
    """
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.sum() == 0 or negative.sum() == 0:
        return 0.5
    # predicting positive from edge k on: sensitivity = positives in bins >= k
    sensitivity = np.cumsum(positive[::-1])[::-1] / positive.sum()
    specificity = np.concatenate([[0.0], np.cumsum(negative)[:-1]]) / negative.sum()
    # among equally good edges take the middle one, the margin is widest there
    j = sensitivity + specificity
    best = np.flatnonzero(j >= j.max() - 1e-12)
    edge = LOGIT_EDGES[int(best[len(best) // 2])]
    return float(1.0 / (1.0 + np.exp(-edge)))


def finite_scores(probs: np.ndarray) -> tuple[np.ndarray, float]:
    """``probs`` with every non-finite score (a broken or poisoned model's output) set to
    the uninformative 0.5, and the fraction of scores that were non-finite."""
    bad = ~np.isfinite(probs)
    if not bad.any():
        return probs, 0.0
    return np.where(bad, 0.5, probs), float(bad.mean())


def metrics(kind: str, labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Test metrics from true labels and predicted probabilities ``(N, classes)``.

    Binary predictions are positive from ``threshold`` on (the operating point chosen on
    validation data); multi-class predictions are the most likely class. AUC is NaN when
    the labels hold a single class (AUC is undefined there), as on a site whose
    validation shard has only one class. Non-finite scores count as 0.5 (no information),
    so a model that outputs only NaN scores an AUC of 0.5; ``non_finite_outputs`` is the
    fraction of scores that were not finite (always present: the sites' metric records
    must share their keys for Flower to aggregate them).
    """
    probs, non_finite = finite_scores(probs)
    return {**_metrics(kind, labels, probs, threshold), "non_finite_outputs": non_finite}


def _metrics(kind: str, labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    if kind == MULTILABEL:
        predicted = (probs >= 0.5).astype(int)
        present = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
        auc = (
            float(np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in present]))
            if present
            else float("nan")
        )
        return {
            "auc": auc,
            "accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": float(
                np.mean([balanced_accuracy_score(labels[:, j], predicted[:, j]) for j in present])
            )
            if present
            else float("nan"),
        }
    predicted = (probs[:, 1] >= threshold).astype(int) if kind == BINARY else probs.argmax(axis=1)
    single_class = len(np.unique(labels)) < 2
    if single_class:
        auc = float("nan")
    elif kind == BINARY:
        auc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        auc = float(
            roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1])))
        )
    result = {
        "auc": auc,
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted))
        if not single_class
        else float("nan"),
    }
    if kind == BINARY:
        tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
        result["sensitivity"] = float(tp / (tp + fn)) if tp + fn else float("nan")
        result["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
    return result


def scorer(cfg, spec, test, train_pool, out, device):
    """How the server scores the global classifier on the test set: at the operating
    point chosen on the sites' validation data (binary tasks report it)."""
    from medfed.models.classification.train import evaluate  # train.py builds on this module

    def score(model, threshold, rnd):
        result = evaluate(model, test, spec.label_kind, device, threshold)
        if spec.label_kind == BINARY:
            result["threshold"] = threshold
        return result

    return score
