"""The network every party builds, described by a few values the server sends each round.

The server derives a `ModelSpec` from the config and the data; sites rebuild the same
network from the round's config record, so a deployed site needs no copy of the config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from medfed.errors import ConfigError
from medfed.tasks import task

CONFIG_PREFIX = "model-"
# The U-Net's default shape (`medfed.models.segmentation.network`), part of every spec:
# 16-128 channels; the first level keeps full resolution, since vessels and other thin
# structures are one or two pixels wide and a stride-2 first layer cost 0.009 Dice on
# DRIVE (docs/results.md).
UNET_CHANNELS = (16, 32, 64, 128)
UNET_STRIDES = (1, 2, 2)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_channels: int
    num_classes: int
    image_size: int  # classifier/GAN input size; segmentation: the training patch size
    dropout: float
    label_kind: str  # binary, multiclass, multilabel, segmentation or gan
    # under DP, layers Opacus rejects are replaced: DP-SGD needs it, and client-level noise
    # on BatchNorm's running variance could make it negative
    dp_compatible: bool = False
    task: str = "classification"
    spatial_dims: int = 2  # segmentation: 2D or 3D networks
    norm: str = "instance"  # segmentation: instance or group normalisation
    latent_dim: int = 64  # gan: noise size
    contrast: str = "none"  # segmentation: "clahe" equalises local contrast before normalising
    channels: tuple[int, ...] = UNET_CHANNELS  # segmentation unet: channels per level
    strides: tuple[int, ...] = UNET_STRIDES  # segmentation unet: downsampling between levels

    def build(self) -> torch.nn.Module:
        """A fresh network (the caller seeds torch first when it wants the same weights)."""
        t = task(self.task)
        if self.name not in t.networks:
            raise ConfigError(f"unknown model '{self.name}' for task {self.task} (model.name): "
                              f"choose from {', '.join(t.networks)}")
        model = t.file("network").build(self)
        if self.dp_compatible:
            from medfed.models.private_layers import make_private_model

            return make_private_model(model)
        return model

    def to_config(self) -> dict:
        """The spec as flat config-record entries (``model-name``, ``model-in_channels``...)."""
        return {CONFIG_PREFIX + k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def from_config(config) -> ModelSpec:
        values = {}
        for f in fields(ModelSpec):
            raw = config[CONFIG_PREFIX + f.name]
            values[f.name] = {"int": int, "float": float, "bool": bool,
                              "tuple[int, ...]": lambda v: tuple(int(x) for x in v)}.get(f.type, str)(raw)
        return ModelSpec(**values)
