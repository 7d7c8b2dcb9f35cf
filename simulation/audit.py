"""Empirical privacy audit: membership-inference attacks on the final global model.

Members are the sites' training images; non-members are the sites' own held-out
validation images, which no party trained on, so both come from the same hospitals.
- The loss-threshold attack (Yeom et al. 2018) guesses "member" when the model's loss
  on an example is low.
- The calibrated attack (Watson et al. 2022; an offline, single-reference form of LiRA)
  subtracts each example's loss under a reference model trained without it, so that
  examples that are simply easy no longer look like members. The reference model trains
  on the global test set and half of the non-members; the attack is scored on the other
  half.
Each reports AUC (0.5 = no better than chance) and the true-positive rate at 1% false
positives. Possible only in simulation, where one process holds every site's data.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from medfed.models.classification import metrics as classification
from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.simulation.partition import SiteShard


def example_losses(model: torch.nn.Module, data: LabelledImages, kind: str, device: torch.device) -> np.ndarray:
    probs, _ = classification.finite_scores(training.predict(model, data.images, kind, device))
    if kind == classification.MULTILABEL:
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        return -(data.labels * np.log(p) + (1 - data.labels) * np.log(1 - p)).mean(axis=1)
    return -np.log(np.clip(probs[np.arange(len(data)), data.labels], 1e-12, 1.0))


BOOTSTRAP_SAMPLES = 1000


def score_attack(attack: str, member_scores: np.ndarray, outsider_scores: np.ndarray, rng) -> dict:
    """AUC, its 95% bootstrap interval, and TPR at 1% FPR, with as many members as
    non-members (higher score: member). With a few hundred examples an AUC is uncertain
    by several hundredths; the interval says whether it differs from chance."""
    n = min(len(member_scores), len(outsider_scores))
    member_scores = rng.choice(member_scores, n, replace=False)
    outsider_scores = rng.choice(outsider_scores, n, replace=False)
    truth = np.concatenate([np.ones(n), np.zeros(n)])
    score = np.concatenate([member_scores, outsider_scores])
    fpr, tpr, _ = roc_curve(truth, score)
    resampled = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, 2, n))  # members and non-members apart
    aucs = [roc_auc_score(truth, np.concatenate([member_scores[m], outsider_scores[o]])) for m, o in resampled]
    return {
        "attack": attack,
        "auc": float(roc_auc_score(truth, score)),
        "auc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "members": int(n),
        "non_members": int(n),
    }


def membership_attack(model: torch.nn.Module, sites: list[SiteShard], kind: str, device: torch.device,
                      seed: int = 0, reference: torch.nn.Module | None = None,
                      train_reference=None, test: LabelledImages | None = None) -> dict:
    """Loss-threshold attack on all members and non-members; with ``train_reference``
    (a function ``(model, data) -> None`` that trains in place) and the test set, the
    calibrated attack as well, under ``"calibrated"``."""
    rng = np.random.default_rng(seed)
    members = LabelledImages.concat([s.train for s in sites])
    outsiders = LabelledImages.concat([s.val for s in sites])
    member_loss = example_losses(model, members, kind, device)
    outsider_loss = example_losses(model, outsiders, kind, device)
    result = score_attack("loss-threshold", -member_loss, -outsider_loss, rng)
    if reference is None or train_reference is None or test is None:
        return result
    order = rng.permutation(len(outsiders))
    half = len(order) // 2
    train_reference(reference, LabelledImages.concat([test, outsiders.subset(order[:half])]))
    audited = order[half:]
    calibrated_members = example_losses(reference, members, kind, device) - member_loss
    calibrated_outsiders = (example_losses(reference, outsiders.subset(audited), kind, device)
                            - outsider_loss[audited])
    result["calibrated"] = score_attack("reference-calibrated loss", calibrated_members, calibrated_outsiders,
                                        rng)
    return result
