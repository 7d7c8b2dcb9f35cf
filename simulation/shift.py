"""Simulated acquisition shift: every virtual hospital images with its own scanner.

No library draws a per-site scanner, so this module does: each site gets a fixed
contrast (gamma), blur, noise level and resolution loss, scaled by ``shift.strength``
(0 = identical scanners, 1 = strong shift), and applies them with MONAI transforms to
all of its images once, as its scanner would have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from medfed.models.classification.data import LabelledImages
from medfed.models.segmentation.readers import SegmentationImages


@dataclass(frozen=True)
class Scanner:
    gamma: float  # contrast curve: <1 brightens, >1 darkens mid-tones
    blur_sigma: float  # Gaussian blur in pixels
    noise_std: float  # additive Gaussian noise, fraction of full scale
    resolution: float  # acquired at this fraction of the full resolution

    @staticmethod
    def draw(rng: np.random.Generator, strength: float) -> Scanner:
        return Scanner(
            gamma=float(np.exp(rng.uniform(-0.6, 0.6) * strength)),
            blur_sigma=float(rng.uniform(0.0, 1.2) * strength),
            noise_std=float(rng.uniform(0.0, 0.08) * strength),
            resolution=float(1.0 - rng.uniform(0.0, 0.5) * strength),
        )

    def describe(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}

    def _acquire(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, *spatial)`` in [0, 1] as this scanner would have imaged it (before noise)."""
        from monai.transforms import AdjustContrast, GaussianSmooth, Resize  # only for shifted runs

        image = AdjustContrast(self.gamma)(image)
        full = tuple(image.shape[1:])
        low = tuple(max(4, int(round(d * self.resolution))) for d in full)
        if low != full:
            image = Resize(full, mode="bilinear" if len(full) == 2 else "trilinear")(
                Resize(low, mode="area")(image))
        if self.blur_sigma > 0.05:
            image = GaussianSmooth(self.blur_sigma)(image)
        return torch.as_tensor(image)

    def apply(self, data: LabelledImages, rng: np.random.Generator) -> LabelledImages:
        x = torch.from_numpy(data.images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        out = np.stack([self._acquire(image).numpy() for image in x])
        out += rng.normal(0.0, self.noise_std, size=out.shape).astype(np.float32)
        images = (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        return LabelledImages(images, data.labels, data.sites)

    def apply_segmentation(self, data: SegmentationImages, rng: np.random.Generator) -> SegmentationImages:
        """The same scanner on whole images of any size; intensities keep their range
        (masks and fields of view are untouched: the anatomy does not change)."""
        images = []
        for image in data.images:
            scale = max(float(image.max()), 1.0)
            x = torch.from_numpy(np.moveaxis(image, -1, 0) / scale)
            out = self._acquire(x).numpy()
            out = out + rng.normal(0.0, self.noise_std, size=out.shape)
            images.append(np.moveaxis(np.clip(out, 0.0, 1.0) * scale, 0, -1).astype(np.float32))
        return SegmentationImages(images, data.masks, data.fov, data.names)


def site_scanners(num_sites: int, strength: float, seed: int) -> list[Scanner | None]:
    """One scanner per site, or None everywhere when the strength is 0."""
    if strength <= 0:
        return [None] * num_sites
    rng = np.random.default_rng([seed, 7])
    return [Scanner.draw(rng, strength) for _ in range(num_sites)]
