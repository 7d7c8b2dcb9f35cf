"""Segmentation networks: MONAI's UNet and BasicUNet in 2D or 3D with instance or group
normalisation, which Opacus trains privately as they are (no BatchNorm)."""

from __future__ import annotations

import math

from torch import nn

from medfed.models.spec import UNET_CHANNELS, UNET_STRIDES


def build_unet(name: str, spatial_dims: int, in_channels: int, num_classes: int,
               norm: str = "instance", dropout: float = 0.0,
               channels: tuple[int, ...] = UNET_CHANNELS, strides: tuple[int, ...] = UNET_STRIDES) -> nn.Module:
    """``unet``: MONAI UNet with residual units, ``channels`` per level and ``strides``
    between levels (the defaults: 16-128 channels, about 0.2 M parameters in 2D);
    ``basicunet``: MONAI BasicUNet (16-128 features). Input ``(B, C, *spatial)`` with every
    spatial size a multiple of the product of ``strides`` (unet) or of 16 (basicunet);
    output ``(B, num_classes, *spatial)`` logits."""
    from monai.networks.nets import BasicUNet, UNet

    if norm == "instance":
        layer = ("instance", {"affine": True})
    else:  # UNet's top block normalises num_classes channels too: the groups must divide them
        layer = ("group", {"num_groups": math.gcd(8, num_classes) if name == "unet" else 8})
    if name == "unet":
        return UNet(spatial_dims, in_channels, num_classes, channels=tuple(channels), strides=tuple(strides),
                    num_res_units=1, norm=layer, dropout=dropout)
    return BasicUNet(spatial_dims, in_channels, num_classes, features=(16, 16, 32, 64, 128, 16),
                     norm=layer, dropout=dropout)


def build(spec) -> nn.Module:
    """The U-Net a `ModelSpec` describes (its input is the training patch)."""
    return build_unet(spec.name, spec.spatial_dims, spec.in_channels, spec.num_classes, spec.norm, spec.dropout,
                      spec.channels, spec.strides)
