"""FedProx the same way in every task's loop, with and without DP-SGD (the GAN included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import separable_images, train_settings
from test_segmentation import disks

from medfed.client.local_round import local_train
from medfed.client.privacy import SiteAccountant
from medfed.models.classification.data import LabelledImages
from medfed.models.classification.network import build_classifier
from medfed.models.private_layers import make_private_model
from medfed.models.segmentation.network import build_unet
from medfed.models.synthesis.network import ConditionalGAN
from medfed.wire import DPSettings

CPU = torch.device("cpu")


def _cnn():
    return make_private_model(build_classifier("cnn", 1, 2))  # DP-compatible, for both runs alike


def _unet():
    return build_unet("unet", 2, 1, 2, "group")


def _gan():
    return ConditionalGAN(latent_dim=16, width=8)


def _gan_images():
    rng = np.random.default_rng(0)
    return LabelledImages(rng.integers(0, 256, (32, 28, 28, 1)).astype(np.uint8), rng.integers(0, 2, 32))


TASKS = {
    "classification": (_cnn, lambda: separable_images(64), dict(lr=1e-2, steps=8)),
    "segmentation": (_unet, lambda: disks(8), dict(lr=1e-2, steps=6, task="segmentation",
                                                          kind="segmentation", patch_size=16, batch_size=4)),
    "gan": (_gan, _gan_images, dict(lr=2e-3, steps=4, task="gan", kind="gan")),
}


def _drift(task: str, mu: float, private: bool, folder) -> float:
    build, data, settings = TASKS[task]
    torch.manual_seed(0)
    model = build()
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    dp = DPSettings(noise_multiplier=0.5, target_epsilon=None, planned_rounds=1, delta=1e-3,
                    max_grad_norm=1.0, max_epsilon=None) if private else None
    accountant = SiteAccountant(folder / f"{task}-{mu}", "rdp") if private else None
    local_train(model, data(), train_settings(**settings, proximal_mu=mu or None), CPU, dp, accountant)
    return sum(float((p.detach() - start[k]).pow(2).sum()) for k, p in model.named_parameters())


@pytest.mark.parametrize("task, private", [("classification", False), ("classification", True),
                                           ("segmentation", False), ("gan", False), ("gan", True)])
def test_the_proximal_step_keeps_every_task_closer_to_the_global_model(task, private, tmp_path):
    assert _drift(task, 50.0, private, tmp_path) < 0.8 * _drift(task, 0.0, private, tmp_path)
