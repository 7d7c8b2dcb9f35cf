"""A site's local work for each task: train (with or without DP-SGD) and validate.

The ClientApp, the baselines and the server's evaluation all go through these two
functions, so a task trains and scores the same way in every mode.
"""

from __future__ import annotations

import torch
from torch import nn

from medfed.client import training
from medfed.client.privacy import PrivateTraining, SiteAccountant
from medfed.wire import DPSettings, TrainSettings

CLASSIFICATION, SEGMENTATION, GAN = "classification", "segmentation", "gan"


def local_train(model: nn.Module, data, s: TrainSettings, device: torch.device,
                dp: DPSettings | None = None, accountant: SiteAccountant | None = None) -> dict:
    """One round of local training in place; under DP (``dp`` with the site's
    ``accountant``: one `PrivateTraining` wrapper around the task's own loop) also the
    privacy spent. `BudgetExhausted` before anything trains when the round would pass the
    site's budget."""
    private = PrivateTraining(dp, accountant, len(data), s) if dp is not None else None
    if s.task == SEGMENTATION:
        from medfed.client.segmentation_training import train_segmentation

        return train_segmentation(model, data, s, device, private)
    if s.task == GAN:
        from medfed.client.gan_training import train_gan

        return train_gan(model, data, s, device, private)
    return training.train(model, data, s, device, private)


def local_evaluate(model: nn.Module, data, s: TrainSettings, device: torch.device) -> dict:
    """The model's metrics on a site's validation data (none for the GAN, whose quality
    is measured on the server's test set)."""
    if s.task == SEGMENTATION:
        from medfed.client.segmentation_training import evaluate_segmentation

        return evaluate_segmentation(model, data, inference_window(s.patch_size), device, s.contrast)
    if s.task == GAN:
        return {}
    return training.evaluate(model, data, s.kind, device)


def inference_window(patch: int) -> int:
    """Sliding-window size at inference: the training patch. Larger windows cost less
    but their instance-norm statistics differ from training (measured on DRIVE: Dice
    0.789 at 64 px, 0.787 at 128, 0.779 at 256, same model)."""
    return patch

