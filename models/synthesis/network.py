"""A class-conditional DCGAN for synthetic medical images, trainable by a site.

Generator and discriminator live in one module, so its state_dict carries both
(``generator.*`` and ``discriminator.*``) and one federated update averages both.
Only the discriminator sees real images; it is built from layers Opacus supports
(convolutions, GroupNorm, LeakyReLU without ``inplace``, an embedding), so DP-SGD runs
on it unchanged; the generator, trained only through it, is post-processing of a
private model and costs no privacy (DP-GAN). The generator may use BatchNorm: it only
ever sees noise and labels; `generate` samples with its BatchNorm statistics
recomputed for the current weights (`recalibrate_batchnorm`).

Pixel ranges: the generator outputs and the discriminator takes images in [-1, 1]
(tanh); `ConditionalGAN.sample` returns [0, 1], like `local_training.to_tensor`, and
`generate` returns uint8, like a site's data.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from medfed.errors import ConfigError
from medfed.models.classification.data import LabelledImages


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (as `local_training.to_tensor` gives them) to the GAN's [-1, 1]."""
    return images * 2.0 - 1.0


def halvings(image_size: int) -> int:
    """How often ``image_size`` halves before it is odd or 4 (28 -> 7: 2; 64 -> 4: 4)."""
    count = 0
    while image_size % 2 == 0 and image_size > 4:
        image_size //= 2
        count += 1
    return count


class Generator(nn.Module):
    """Noise ``(B, latent_dim)`` and labels ``(B,)`` to images ``(B, C, S, S)`` in [-1, 1].

    A linear map to a ``S / 2^k`` grid, then ``k`` stride-2 transposed convolutions that
    halve the channels as they double the size (DCGAN); the label's embedding is
    concatenated with the noise.
    """

    def __init__(self, latent_dim: int, num_classes: int, channels: int, image_size: int, width: int) -> None:
        super().__init__()
        ups = halvings(image_size)
        start, grid = width * 2 ** (ups - 1), image_size >> ups
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Sequential(
            nn.Linear(2 * latent_dim, start * grid * grid, bias=False),
            nn.Unflatten(1, (start, grid, grid)),
            nn.BatchNorm2d(start),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        in_ch = start
        for i in range(ups):
            last = i == ups - 1
            out_ch = channels if last else in_ch // 2
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out_ch), nn.ReLU()]
            in_ch = out_ch
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(torch.cat([z, self.embed(labels)], dim=1)))


class Discriminator(nn.Module):
    """Images ``(B, C, S, S)`` in [-1, 1] and labels ``(B,)`` to real-vs-fake logits ``(B,)``.

    Stride-2 convolutions down to a 4x4 grid (kernel 3 where the size is odd, so that
    28 -> 14 -> 7 -> 4), GroupNorm and LeakyReLU; the label enters through a projection
    head (Miyato & Koyama 2018): logit = w.h + embed(label).h. Every layer is one
    Opacus computes per-sample gradients for, and each example's output depends on
    that example alone, as DP-SGD requires.
    """

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch, out_ch = image_size, channels, width
        while size > 4:
            kernel = 4 if size % 2 == 0 else 3
            layers.append(nn.Conv2d(in_ch, out_ch, kernel, 2, 1))
            if in_ch != channels:  # no normalisation on the input layer (DCGAN)
                layers.append(nn.GroupNorm(min(32, out_ch), out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=False))
            size = (size + 2 - kernel) // 2 + 1
            in_ch, out_ch = out_ch, out_ch * 2
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        feature_dim = in_ch * size * size
        self.linear = nn.Linear(feature_dim, 1)
        self.embed = nn.Embedding(num_classes, feature_dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


class ConditionalGAN(nn.Module):
    """Generator and discriminator of a class-conditional DCGAN in one module.

    ``image_size`` 28 or 64 (any size >= 8 that halves down to 4..7 works); ``width`` is
    the channel count of the discriminator's first and the generator's last hidden layer.
    """

    def __init__(
        self, latent_dim: int = 64, num_classes: int = 2, channels: int = 1,
        image_size: int = 28, width: int = 32,
    ) -> None:
        super().__init__()
        if image_size < 8 or not 4 <= image_size >> halvings(image_size) <= 7:
            raise ConfigError(f"GAN image size {image_size}: use 28 or 64 (a size that halves to 4..7)")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.channels, self.image_size = channels, image_size
        self.generator = Generator(latent_dim, num_classes, channels, image_size, width)
        self.discriminator = Discriminator(num_classes, channels, image_size, width)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Generated images in [-1, 1] (the generator alone)."""
        return self.generator(z, labels)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent vectors ``(n, latent_dim)``, drawn on the CPU so a seed gives the same
        images on any device."""
        return torch.randn(n, self.latent_dim, generator=generator)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, C, S, S)`` in [0, 1] for ``labels`` ``(B,)``; the generator runs in
        eval mode (BatchNorm running statistics) and its mode is restored after."""
        device = next(self.parameters()).device
        was_training = self.generator.training
        self.generator.eval()
        try:
            z = self.noise(len(labels), generator).to(device)
            images = self.generator(z, labels.to(device).long())
        finally:
            self.generator.train(was_training)
        return images.add(1.0).div(2.0).clamp(0.0, 1.0)


def build(spec) -> ConditionalGAN:
    """The GAN a `ModelSpec` describes: ``num_classes`` conditions, ``image_size`` pixels."""
    return ConditionalGAN(latent_dim=spec.latent_dim, num_classes=spec.num_classes, channels=spec.in_channels,
                          image_size=spec.image_size)


def generate(
    model: ConditionalGAN, n_per_class: int | dict[int, int], seed: int, device: torch.device,
    batch_size: int = 512, recalibrate: bool = True,
) -> LabelledImages:
    """A synthetic data set: uint8 images ``(N, S, S, C)`` with labels ``(N,)``, grouped by
    class; ``n_per_class`` is one count for every class or a count per class. The same
    seed gives the same images. With ``recalibrate``, a copy of the model samples after
    `recalibrate_batchnorm`; ``model`` itself is left as it is."""
    counts = (
        {c: n_per_class for c in range(model.num_classes)} if isinstance(n_per_class, int) else n_per_class
    )
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in sorted(counts.items())])
    if recalibrate:
        model = recalibrate_batchnorm(copy.deepcopy(model).to(device), seed=seed)
    rng = torch.Generator().manual_seed(seed)
    model.to(device)
    parts = []
    for start in range(0, len(labels), batch_size):
        batch = model.sample(torch.from_numpy(labels[start : start + batch_size]), rng)
        parts.append(batch.mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    shape = (0, model.image_size, model.image_size, model.channels)
    images = np.concatenate(parts) if parts else np.zeros(shape, dtype=np.uint8)
    return LabelledImages(images, labels)


@torch.no_grad()
def recalibrate_batchnorm(
    model: ConditionalGAN, batches: int = 16, batch_size: int = 256, seed: int = 0
) -> ConditionalGAN:
    """Set the generator's BatchNorm running statistics, in place, to their exact means
    over ``batches`` batches of noise and uniform labels; returns ``model``.

    The running averages a round leaves behind trail the weights, and after FedAvg
    they are an average of the sites' statistics, not those of the averaged generator;
    recomputed ones gave a lower Fréchet distance. Uses no data, so no privacy.
    """
    norms = [m for m in model.generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.generator.training
    rng = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches below
    model.generator.train()
    try:
        for _ in range(batches):
            labels = torch.randint(model.num_classes, (batch_size,), generator=rng)
            model.generator(model.noise(batch_size, rng).to(device), labels.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.generator.train(was_training)
    return model


def _dcgan_init(module: nn.Module) -> None:
    """Weights N(0, 0.02) and norm scales N(1, 0.02), as in the DCGAN paper."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
