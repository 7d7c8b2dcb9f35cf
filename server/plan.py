"""What the server tells the sites each round, derived from the experiment config.

Sites get the model to build, the round's hyper-parameters (the learning rate follows
the server's schedule, so every site and every resumed run agree) and a seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from medfed.client import training
from medfed.client.datasets import LabelledImages, LabelSpace
from medfed.client.privacy import make_private_model
from medfed.models import build_model
from medfed.server.privacy import round_privacy_config


@dataclass(frozen=True)
class ModelSpec:
    """The network every party builds: the same name, input and output sizes."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    dropout: float
    label_kind: str
    # under DP, layers Opacus rejects are replaced: DP-SGD needs it, and client-level noise
    # on BatchNorm's running variance could make it negative
    dp_compatible: bool = False

    @staticmethod
    def of(cfg: DictConfig, labels: LabelSpace, channels: int, image_size: int) -> ModelSpec:
        return ModelSpec(cfg.model.name, channels, labels.num_classes, image_size,
                         cfg.model.dropout, labels.kind, cfg.privacy.mechanism != "none")

    def build(self) -> torch.nn.Module:
        model = build_model(self.name, self.in_channels, self.num_classes, self.image_size, self.dropout)
        return make_private_model(model) if self.dp_compatible else model


def lr_at(cfg: DictConfig, rnd: int) -> float:
    """Learning rate of round ``rnd`` (1-based): cosine decay to 5% over the planned rounds."""
    if cfg.train.lr_decay == "none" or cfg.train.rounds == 1:
        return float(cfg.train.lr)
    progress = (rnd - 1) / (cfg.train.rounds - 1)
    return float(cfg.train.lr) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def round_config(cfg: DictConfig, spec: ModelSpec, rnd: int) -> dict:
    t = cfg.train
    return {
        "model": spec.name,
        "in-channels": spec.in_channels,
        "num-classes": spec.num_classes,
        "image-size": spec.image_size,
        "dropout": float(spec.dropout),
        "label-kind": spec.label_kind,
        "local-epochs": t.local_epochs,
        "local-steps": t.local_steps or 0,
        "batch-size": t.batch_size,
        "optimizer": t.optimizer,
        "lr": lr_at(cfg, rnd),
        "momentum": float(t.momentum),
        "weight-decay": float(t.weight_decay),
        "class-weighting": bool(t.class_weighting),
        "augment": bool(cfg.data.augment),
        "amp": bool(t.amp),
        "seed": cfg.seed,
        "server-round": rnd,
        **round_privacy_config(cfg),
    }


def train_settings(cfg: DictConfig, spec: ModelSpec, rnd: int, seed: int) -> training.TrainSettings:
    """The same hyper-parameters as `round_config`, for training without a federation."""
    t = cfg.train
    return training.TrainSettings(
        kind=spec.label_kind, num_classes=spec.num_classes, epochs=t.local_epochs,
        steps=t.local_steps, batch_size=t.batch_size, optimizer=t.optimizer, lr=lr_at(cfg, rnd),
        momentum=t.momentum, weight_decay=t.weight_decay, class_weighting=t.class_weighting,
        augment=cfg.data.augment, amp=t.amp, seed=seed,
    )


def initial_weights(cfg: DictConfig, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The round-0 global model, the same for the same seed."""
    torch.manual_seed(cfg.seed)
    return spec.build().state_dict()


def evaluator(spec: ModelSpec, test: LabelledImages, device: str):
    """``(weights, threshold) -> test metrics`` of the global model; binary predictions are
    positive from ``threshold`` on, the operating point chosen on validation data."""
    model, dev = spec.build(), training.resolve_device(device)

    def evaluate(weights: dict[str, torch.Tensor], threshold: float = 0.5) -> dict[str, float]:
        model.load_state_dict(weights)
        metrics = training.evaluate(model, test, spec.label_kind, dev, threshold)
        if spec.label_kind == "binary":
            metrics["threshold"] = threshold
        return metrics

    return evaluate


def fingerprint(cfg: DictConfig) -> str:
    """Hash of the settings that decide the run's results (not logging or progress)."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("logging", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(settings)).encode()).hexdigest()[:16]
