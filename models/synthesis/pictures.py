"""Pictures of a GAN's images: a grid per judged round (``samples/round-NNN.png``, drawn by
`SynthesisJudge`) and the final model's ``samples.png``, one row per class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from medfed.models import local_training
from medfed.models.spec import ModelSpec
from medfed.models.synthesis.network import generate

SAMPLES, FINAL_GRID = "samples", "samples.png"
GRID_PER_CLASS = 8


def save_pictures(cfg: DictConfig, spec, weights: dict[str, torch.Tensor], test, out: Path) -> list[Path]:
    """The final model's sample grid."""
    return [save_final_grid(spec, weights, out, cfg.seed, cfg.train.device)]


def save_final_grid(spec: ModelSpec, weights, out: Path, seed: int, device: str) -> Path:
    model = spec.build()
    model.load_state_dict(weights)
    fakes = generate(model, GRID_PER_CLASS, seed, local_training.resolve_device(device))
    return save_sample_grid(fakes.images, fakes.labels, out / FINAL_GRID, GRID_PER_CLASS)


def save_sample_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 8) -> Path:
    """Write a PNG of the first ``per_class`` uint8 images ``(N, H, W, C)`` of each class,
    one row per class (grey for one channel), with a one-pixel gap. Written to a
    temporary name and renamed, so a reader never sees half a file."""
    from PIL import Image

    labels = np.asarray(labels)
    classes = np.unique(labels)
    _, h, w, c = images.shape
    gap = 1
    grid = np.zeros((len(classes) * (h + gap) - gap, per_class * (w + gap) - gap, c), np.uint8)
    for row, cls in enumerate(classes):
        for col, index in enumerate(np.flatnonzero(labels == cls)[:per_class]):
            grid[row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = images[index]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(partial, format="PNG")
    os.replace(partial, path)
    return path
