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
from monai.transforms import AdjustContrast, GaussianSmooth, Resize

from medfed.client.datasets import LabelledImages


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

    def apply(self, data: LabelledImages, rng: np.random.Generator) -> LabelledImages:
        n, h, w, c = data.images.shape
        x = torch.from_numpy(data.images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        contrast = AdjustContrast(self.gamma)
        blur = GaussianSmooth(self.blur_sigma) if self.blur_sigma > 0.05 else None
        low = max(4, int(round(h * self.resolution))), max(4, int(round(w * self.resolution)))
        down = Resize(low, mode="area") if low != (h, w) else None
        up = Resize((h, w), mode="bilinear") if down else None
        out = np.empty((n, c, h, w), dtype=np.float32)
        for i in range(n):
            image = contrast(x[i])
            if down is not None:
                image = up(down(image))
            if blur is not None:
                image = blur(image)
            out[i] = np.asarray(image)
        out += rng.normal(0.0, self.noise_std, size=out.shape).astype(np.float32)
        images = (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        return LabelledImages(images, data.labels, data.sites)


def site_scanners(num_sites: int, strength: float, seed: int) -> list[Scanner | None]:
    """One scanner per site, or None everywhere when the strength is 0."""
    if strength <= 0:
        return [None] * num_sites
    rng = np.random.default_rng([seed, 7])
    return [Scanner.draw(rng, strength) for _ in range(num_sites)]
