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


def metrics(kind: str, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Test metrics from true labels and predicted probabilities ``(N, classes)``.

    AUC is NaN when the labels hold a single class (AUC is undefined there), as on a
    site whose validation shard has only one class.
    """
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
    predicted = probs.argmax(axis=1)
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
