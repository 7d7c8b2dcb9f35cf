"""What the server tells the sites each round, derived from the experiment config.

Sites get the model to build, the round's hyper-parameters (the learning rate follows
the server's schedule, so every site and every resumed run agree), a seed, and the run's
key, which stays the same when the run is resumed: a site recognises by it a round sent
again after a restart (`medfed.client.round_cache`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import torch
from omegaconf import DictConfig, OmegaConf

from medfed.models.spec import ModelSpec
from medfed.server.privacy import round_privacy_config
from medfed.tasks import task
from medfed.wire import RUN_KEY, SERVER_ROUND, TrainSettings


def model_spec(cfg: DictConfig, num_classes: int, label_kind: str, channels: int, image_size: int) -> ModelSpec:
    """The network of the experiment. For tasks on patches, ``num_classes`` counts the mask's
    labels with background and the network's input is the training patch."""
    t = task(cfg.task)
    dp_compatible = cfg.privacy.mechanism == "client" or (
        cfg.privacy.mechanism == "sample" and t.private_whole_network)
    return ModelSpec(
        name=cfg.model.name, in_channels=channels, num_classes=num_classes,
        image_size=cfg.data.segmentation.patch_size if t.label_maps else image_size,
        dropout=cfg.model.dropout, label_kind=label_kind,
        dp_compatible=dp_compatible, task=cfg.task,
        spatial_dims=cfg.model.spatial_dims if t.label_maps else 2, norm=cfg.model.norm,
        latent_dim=cfg.gan.latent_dim,
        contrast=cfg.data.segmentation.contrast if t.label_maps else "none",
        channels=tuple(cfg.model.channels), strides=tuple(cfg.model.strides),
    )


def experiment_spec(cfg: DictConfig, data) -> ModelSpec:
    """The network for an experiment's data (`medfed.models.experiment_data.ExperimentData`):
    its outputs follow the label space, or the masks' labels."""
    kind = task(cfg.task).label_kind or data.labels.kind
    return model_spec(cfg, data.num_classes, kind, data.pool.channels, data.image_size)


def round_plan(cfg: DictConfig, spec: ModelSpec, data, num_sites: int, outputs, resume: bool,
               show_progress: bool):
    """The server's `RoundPlan` for ``cfg``: the same in simulation and in deployment."""
    from medfed.server.evaluation import evaluator
    from medfed.server.outputs import CHECKPOINT
    from medfed.server.privacy import PrivacyLedger
    from medfed.server.rounds import RoundPlan
    from medfed.strategies import build_strategy

    run_key = outputs.run_key(resume)
    return RoundPlan(
        strategy=build_strategy(cfg, num_sites),
        rounds=cfg.train.rounds,
        site_config=lambda rnd: round_config(cfg, spec, rnd, run_key),
        evaluate=evaluator(cfg, spec, data.test, data.pool, outputs.dir),
        initial_weights=lambda: initial_weights(cfg, spec),
        outputs=outputs,
        privacy=PrivacyLedger(cfg),
        fingerprint=fingerprint(cfg),
        # client-level DP clips every update and accounts for all of them: clipping is its defence
        norm_zscore=None if cfg.privacy.mechanism == "client" else cfg.robustness.norm_zscore,
        min_sites=min(cfg.strategy.min_sites, num_sites),
        timeout=cfg.strategy.timeout,
        resume=resume and outputs.path(CHECKPOINT).is_file(),
        show_progress=show_progress,
    )


def lr_at(cfg: DictConfig, rnd: int) -> float:
    """Learning rate of round ``rnd`` (1-based): cosine decay to 5% over the planned rounds."""
    if cfg.train.lr_decay == "none" or cfg.train.rounds == 1:
        return float(cfg.train.lr)
    progress = (rnd - 1) / (cfg.train.rounds - 1)
    return float(cfg.train.lr) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def round_settings(cfg: DictConfig, spec: ModelSpec, rnd: int) -> TrainSettings:
    """Round ``rnd``'s training settings, with the run's seed (each site derives its own)."""
    t = cfg.train
    return TrainSettings(
        kind=spec.label_kind, num_classes=spec.num_classes, epochs=t.local_epochs,
        steps=t.local_steps, batch_size=t.batch_size, optimizer=t.optimizer, lr=lr_at(cfg, rnd),
        momentum=t.momentum, weight_decay=t.weight_decay, class_weighting=t.class_weighting,
        augment=cfg.data.augment, amp=t.amp, seed=cfg.seed, task=spec.task, patch_size=spec.image_size,
        contrast=spec.contrast,
    )


def round_config(cfg: DictConfig, spec: ModelSpec, rnd: int, run_key: str | None = None) -> dict:
    """The config record of round ``rnd`` (`medfed.wire`)."""
    return {
        **spec.to_config(),
        **round_settings(cfg, spec, rnd).to_config(),
        SERVER_ROUND: rnd,
        **({RUN_KEY: run_key} if run_key else {}),
        **round_privacy_config(cfg),
    }


def train_settings(cfg: DictConfig, spec: ModelSpec, rnd: int, seed: int) -> TrainSettings:
    """The same settings as `round_config`, for training without a federation."""
    return replace(round_settings(cfg, spec, rnd), seed=seed)


def initial_weights(cfg: DictConfig, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The round-0 global model, the same for the same seed."""
    torch.manual_seed(cfg.seed)
    return spec.build().state_dict()


def fingerprint(cfg: DictConfig) -> str:
    """Hash of the settings that decide the run's results (not logging or progress)."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("logging", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(settings)).encode()).hexdigest()[:16]
