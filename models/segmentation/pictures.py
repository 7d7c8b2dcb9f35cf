"""Pictures of what the final segmentation model does, for the people who judge it by eye:
``overlays/NAME.png`` for the first test images, each showing the image
(a chosen channel, or a composite of two or three), the reference and the prediction:
for one class, true positives white, misses red, false alarms blue; for several, a
colour per class. Volumes show the slice with the most reference foreground; outside
the field of view is dimmed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from medfed.models import local_training  # noqa: E402
from medfed.models.segmentation.train import inference_window, predict  # noqa: E402
from medfed.models.spec import ModelSpec  # noqa: E402

OVERLAYS = "overlays"
log = logging.getLogger("medfed")


def save_pictures(cfg: DictConfig, spec: ModelSpec, weights: dict[str, torch.Tensor], test, out: Path) -> list[Path]:
    """Overlays of the first ``data.segmentation.overlays`` test images."""
    seg = cfg.data.segmentation
    return save_overlays(spec, weights, test, out / OVERLAYS, seg.overlays, cfg.train.device, list(seg.overlay_channels))


def save_overlays(spec: ModelSpec, weights, test, folder: Path, count: int, device: str,
                  channels: list[int] | None = None) -> list[Path]:
    """One PNG per test image (the first ``count``); an image that cannot be drawn is logged
    and skipped, so that the run's summary is still written."""
    model = spec.build()
    model.load_state_dict(weights)
    dev = local_training.resolve_device(device)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(test))):
        image, truth, fov = test.images[i], test.masks[i], test.fov[i]
        try:
            probs = predict(model, image, fov, inference_window(spec.image_size), dev, spec.contrast)
            if image.ndim == 4:  # a volume: show its slice with the most reference foreground
                z = representative_slice(truth)
                image, truth, probs = image[z], truth[z], probs[:, z]
                fov = None if fov is None else fov[z]
            picture = shown_channels(image, channels)
            written.append(_overlay(picture, truth, probs.argmax(axis=0), fov, probs.shape[0],
                                    folder / f"{_file_name(test.names[i])}.png"))
        except Exception as exc:  # a picture is not worth the run: say which and go on
            log.warning("overlay of %s not drawn: %s: %s", test.names[i], type(exc).__name__, exc)
    return written


def representative_slice(mask: np.ndarray) -> int:
    """The slice (first axis) with the most foreground, or the middle one if there is none."""
    area = (mask > 0).reshape(mask.shape[0], -1).sum(axis=1)
    return int(area.argmax()) if area.any() else mask.shape[0] // 2


def shown_channels(image: np.ndarray, channels: list[int] | None) -> np.ndarray:
    """``(H, W, C)`` to what is drawn: one channel grey, two or three as an RGB composite
    (each scaled to 0..1 on its own; two fill red and green). By default channel 0, or RGB
    for three-channel images."""
    if not channels:
        channels = [0, 1, 2] if image.shape[-1] == 3 else [0]
    picked = image[..., channels].astype(np.float32)
    low = picked.reshape(-1, len(channels)).min(axis=0)
    high = picked.reshape(-1, len(channels)).max(axis=0)
    scaled = (picked - low) / np.maximum(high - low, 1e-6)
    if len(channels) == 1:
        return scaled[..., 0]
    if len(channels) == 2:
        scaled = np.concatenate([scaled, np.zeros_like(scaled[..., :1])], axis=-1)
    return scaled


def class_colours(num_classes: int) -> np.ndarray:
    """RGB per label 0..K-1: black background, then matplotlib's tab10/tab20 colours."""
    palette = plt.get_cmap("tab10" if num_classes <= 11 else "tab20").colors
    return np.array([(0.0, 0.0, 0.0)] + [palette[c % len(palette)] for c in range(num_classes - 1)], np.float32)


def _overlay(shown: np.ndarray, truth: np.ndarray, pred: np.ndarray, fov, num_classes: int, path: Path) -> Path:
    inside = np.ones(truth.shape, bool) if fov is None else fov
    truth, pred = np.where(inside, truth, 0), np.where(inside, pred, 0)
    if num_classes <= 2:  # binary: where the prediction agrees with the reference
        t, p = truth > 0, pred > 0
        colours = np.zeros(truth.shape + (3,), np.float32)
        colours[t & p], colours[t & ~p], colours[~t & p] = (1, 1, 1), (1, 0.2, 0.2), (0.3, 0.5, 1)
        colours[~inside] *= 0.3
        panels = ((shown, "image"), (t, "reference"), (colours, "prediction: hit / miss / false alarm"))
    else:  # one colour per class, on the dimmed image
        palette = class_colours(num_classes)
        base = shown if shown.ndim == 3 else np.repeat(shown[..., None], 3, axis=-1)
        panels = ((shown, "image"), (_paint(base, truth, palette), "reference"),
                  (_paint(base, pred, palette), "prediction"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (picture, title) in zip(axes, panels):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax.set_title(title)
        ax.axis("off")
    if num_classes > 2:
        palette = class_colours(num_classes)
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c]) for c in range(1, num_classes)]
        fig.legend(handles, [f"class {c}" for c in range(1, num_classes)], loc="lower center",
                   ncol=min(num_classes - 1, 8), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97) if num_classes > 2 else None)
    partial = path.with_name(path.stem + ".partial.png")
    fig.savefig(partial, dpi=90)
    plt.close(fig)
    partial.replace(path)
    return path


def _paint(base: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The image dimmed, each labelled pixel in its class's colour."""
    out = base * 0.5
    out[labels > 0] = palette[labels[labels > 0]]
    return out


def _file_name(name: str) -> str:
    """An item's name as a file name: slices are called ``case:z``."""
    return name.replace(":", "_z").replace("/", "_")
