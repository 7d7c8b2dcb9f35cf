"""Empirical privacy audit: a membership-inference attack on the final global model.

The loss-threshold attack (Yeom et al. 2018) guesses "member" when the model's loss on
an example is low. Members are the sites' training images; non-members are the sites'
own held-out validation images, which no party trained on, so both come from the same
hospitals. The attack's AUC (0.5 = no better than chance) and its true-positive rate at
1% false positives are what privacy researchers compare across epsilons. Possible only
in simulation, where one process holds every site's data.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from medfed.client import training
from medfed.client.datasets import LabelledImages
from medfed.models import classification
from medfed.simulation.partition import SiteShard


def example_losses(model: torch.nn.Module, data: LabelledImages, kind: str, device: torch.device) -> np.ndarray:
    probs = training.predict(model, data.images, kind, device)
    if kind == classification.MULTILABEL:
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        return -(data.labels * np.log(p) + (1 - data.labels) * np.log(1 - p)).mean(axis=1)
    return -np.log(np.clip(probs[np.arange(len(data)), data.labels], 1e-12, 1.0))


def membership_attack(model: torch.nn.Module, sites: list[SiteShard], kind: str, device: torch.device,
                      seed: int = 0) -> dict[str, float]:
    """Loss-threshold attack with as many members as non-members, drawn from every site."""
    members = np.concatenate([example_losses(model, s.train, kind, device) for s in sites])
    outsiders = np.concatenate([example_losses(model, s.val, kind, device) for s in sites])
    rng = np.random.default_rng(seed)
    n = min(len(members), len(outsiders))
    members, outsiders = rng.choice(members, n, replace=False), rng.choice(outsiders, n, replace=False)
    truth = np.concatenate([np.ones(n), np.zeros(n)])
    score = -np.concatenate([members, outsiders])  # lower loss: more likely a member
    fpr, tpr, _ = roc_curve(truth, score)
    return {
        "attack": "loss-threshold",
        "auc": float(roc_auc_score(truth, score)),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "members": int(n),
        "non_members": int(n),
    }
