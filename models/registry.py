"""Classifier networks by name, for 1- or 3-channel images of any MedMNIST size."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medfed.errors import ConfigError
from medfed.models.cnn import SmallCNN
from medfed.models.segmentation import UNET_CHANNELS, UNET_STRIDES, build_unet


def _resnet18(in_channels: int, num_classes: int, image_size: int, dropout: float) -> nn.Module:
    # Below 64 px the ImageNet stem (7x7 stride-2 conv, then max-pool) would leave a
    # 7x7 map before the first block; a 3x3 stride-1 stem keeps the spatial detail.
    from monai.networks.nets import resnet18  # MONAI costs 1.7 s of CPU to import: only when built

    small = image_size < 64
    return resnet18(
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
    )


def _densenet121(in_channels: int, num_classes: int, image_size: int, dropout: float) -> nn.Module:
    from monai.networks.nets import DenseNet121

    net = DenseNet121(
        spatial_dims=2, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout
    )
    # DenseNet downsamples 32x; below 64 px its last blocks would see an empty map.
    if image_size < 64:
        return nn.Sequential(nn.Upsample(size=(64, 64), mode="bilinear", align_corners=False), net)
    return net


def _cnn(in_channels: int, num_classes: int, image_size: int, dropout: float) -> nn.Module:
    return SmallCNN(in_channels, num_classes, dropout)


MODELS: dict[str, Callable[[int, int, int, float], nn.Module]] = {
    "cnn": _cnn,
    "resnet18": _resnet18,
    "densenet121": _densenet121,
}


SEGMENTATION_MODELS = ("unet", "basicunet")
GAN_MODELS = ("dcgan",)
TASK_MODELS = {"classification": tuple(MODELS), "segmentation": SEGMENTATION_MODELS, "gan": GAN_MODELS}


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int = 28, dropout: float = 0.2,
    task: str = "classification", spatial_dims: int = 2, norm: str = "instance", latent_dim: int = 64,
    channels: tuple[int, ...] = UNET_CHANNELS, strides: tuple[int, ...] = UNET_STRIDES,
) -> nn.Module:
    """A fresh network for ``task``; the caller seeds torch first when it wants the same weights."""
    known = TASK_MODELS.get(task, ())
    if name not in known:
        raise ConfigError(f"unknown model '{name}' for task {task} (model.name): choose from {', '.join(known)}")
    if task == "segmentation":
        return build_unet(name, spatial_dims, in_channels, num_classes, norm, dropout, channels, strides)
    if task == "gan":
        from medfed.models.gan import ConditionalGAN

        return ConditionalGAN(latent_dim=latent_dim, num_classes=num_classes, channels=in_channels,
                              image_size=image_size)
    return MODELS[name](in_channels, num_classes, image_size, dropout)
