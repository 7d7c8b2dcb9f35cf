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

from medfed.client import training
from medfed.client.tasks import GAN, SEGMENTATION, inference_window
from medfed.models.spec import ModelSpec

Evaluate = Callable[[dict[str, torch.Tensor], float, int], dict[str, float]]


def evaluator(cfg: DictConfig, spec: ModelSpec, test, train_pool=None, out: Path | None = None) -> Evaluate:
    """``(weights, threshold, round) -> test metrics`` of the global model. GAN only:
    ``train_pool`` is the real training data the memorisation check compares against, and
    sample grids go to ``out``."""
    model, device = spec.build(), training.resolve_device(cfg.train.device)
    score = _scorer(cfg, spec, test, train_pool, out, device)

    def evaluate(weights, threshold=0.5, rnd=0):
        model.load_state_dict(weights)
        if spec.task == GAN:
            score.judge.grid(model, rnd)  # a sample grid every round: cheap, and what people look at
        if rnd % cfg.evaluation.every and rnd != cfg.train.rounds:
            return {}
        return score(model, threshold, rnd)

    return evaluate


def _scorer(cfg, spec: ModelSpec, test, train_pool, out, device):
    """``(model, threshold, round) -> metrics`` for the task."""
    if spec.task == SEGMENTATION:
        from medfed.client.segmentation_training import evaluate_segmentation

        regions = {name: list(classes) for name, classes in cfg.data.segmentation.regions.items()}
        return lambda model, threshold, rnd: evaluate_segmentation(
            model, test, inference_window(spec.image_size), device, spec.contrast, per_class=True, regions=regions)
    if spec.task == GAN:
        from medfed.server.synthesis import SynthesisJudge

        judge = SynthesisJudge(cfg, spec, train_pool, test, device, out)

        def synthesis(model, threshold, rnd):
            return judge(model, rnd)

        synthesis.judge = judge
        return synthesis

    def classify(model, threshold, rnd):
        metrics = training.evaluate(model, test, spec.label_kind, device, threshold)
        if spec.label_kind == "binary":
            metrics["threshold"] = threshold
        return metrics

    return classify
