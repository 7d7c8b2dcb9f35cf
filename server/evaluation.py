"""The global model on the held-out test set, every round: what each task reports.

- classification: AUC, accuracy... at the operating point chosen on the sites' validation data;
- segmentation: Dice, IoU, HD95 and pixel AUC over whole test images (sliding window);
- gan: train-on-synthetic-test-on-real AUC, a Fréchet distance on a real-data
  classifier's features and the memorised fraction.
Every ``evaluation.every`` rounds and at the last round; other rounds report nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from medfed.models import local_training
from medfed.models.spec import ModelSpec
from medfed.tasks import task

Evaluate = Callable[[dict[str, torch.Tensor], float, int], dict[str, float]]


def evaluator(cfg: DictConfig, spec: ModelSpec, test, train_pool=None, out: Path | None = None) -> Evaluate:
    """``(weights, threshold, round) -> test metrics`` of the global model, by the task's
    ``metrics.scorer``. GAN only: ``train_pool`` is the real training data the memorisation
    check compares against, and sample grids go to ``out``. A scorer with an ``each_round``
    method also sees the model of the rounds it does not score (the GAN draws a grid)."""
    model, device = spec.build(), local_training.resolve_device(cfg.train.device)
    score = task(spec.task).file("metrics").scorer(cfg, spec, test, train_pool, out, device)
    each_round = getattr(score, "each_round", None)

    def evaluate(weights, threshold=0.5, rnd=0):
        model.load_state_dict(weights)
        if each_round is not None:
            each_round(model, rnd)
        if rnd % cfg.evaluation.every and rnd != cfg.train.rounds:
            return {}
        return score(model, threshold, rnd)

    return evaluate
