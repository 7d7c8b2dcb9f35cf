"""Pictures of what the final model does, for the people who judge it by eye.

Segmentation: ``overlays/NAME.png`` for the first test images, each showing the image,
the reference mask and the prediction (true positives white, misses red, false alarms
blue, outside the field of view dimmed). GAN: the final ``samples.png`` grid.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from medfed.client import training  # noqa: E402
from medfed.client.tasks import GAN, SEGMENTATION, inference_window  # noqa: E402
from medfed.models.spec import ModelSpec  # noqa: E402

OVERLAYS = "overlays"


def save_examples(cfg: DictConfig, spec: ModelSpec, weights: dict[str, torch.Tensor], test, out: Path) -> None:
    if spec.task == SEGMENTATION:
        save_overlays(spec, weights, test, out / OVERLAYS, cfg.data.segmentation.overlays, cfg.train.device)
    elif spec.task == GAN:
        from medfed.server.synthesis import save_final_grid

        save_final_grid(spec, weights, out, cfg.seed, cfg.train.device)


def save_overlays(spec: ModelSpec, weights, test, folder: Path, count: int, device: str) -> list[Path]:
    from medfed.client.segmentation_training import predict

    model = spec.build()
    model.load_state_dict(weights)
    dev = training.resolve_device(device)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(test))):
        image, truth, fov = test.images[i], test.masks[i], test.fov[i]
        probs = predict(model, image, fov, inference_window(spec.image_size), dev, spec.contrast)
        if image.ndim == 4:  # a volume: show its middle slice
            middle = image.shape[0] // 2
            image, truth, probs = image[middle], truth[middle], probs[:, middle]
            fov = None if fov is None else fov[middle]
        written.append(_overlay(image, truth, probs.argmax(axis=0), fov, folder / f"{test.names[i]}.png"))
    return written


def _overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, fov, path: Path) -> Path:
    shown = image.astype(np.float32)
    shown = (shown - shown.min()) / max(float(shown.max() - shown.min()), 1e-6)
    shown = shown[..., 0] if shown.shape[-1] == 1 else shown
    inside = np.ones(truth.shape, bool) if fov is None else fov
    t, p = (truth > 0) & inside, (pred > 0) & inside
    colours = np.zeros(truth.shape + (3,), np.float32)
    colours[t & p], colours[t & ~p], colours[~t & p] = (1, 1, 1), (1, 0.2, 0.2), (0.3, 0.5, 1)
    colours[~inside] *= 0.3
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, picture, title in zip(axes, (shown, t, colours),
                                  ("image", "reference", "prediction: hit / miss / false alarm")):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    partial = path.with_name(path.stem + ".partial.png")
    fig.savefig(partial, dpi=90)
    plt.close(fig)
    partial.replace(path)
    return path
