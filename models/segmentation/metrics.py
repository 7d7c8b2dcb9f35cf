"""How a segmentation network sees, learns and is scored: the normalisation, the loss
and the metrics.

The loss is MONAI's Dice + cross-entropy. Metrics come from MONAI (Dice, IoU, 95th-percentile
Hausdorff distance) and scikit-learn (pixel AUC); every metric is computed inside the
field-of-view mask when the image has one, as the DRIVE protocol and its published
results do.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

# MONAI and scikit-learn are imported in the functions that use them: every party imports
# this module (for its constants), and MONAI alone costs 1.7 s of CPU in each process

AUC_PIXELS = 2_000_000  # pixels scored for the AUC: a fixed random sample beyond this
# every name `metrics` and `summarise` return: a site's replies may carry these and nothing else
METRIC_NAMES = frozenset({"dice", "iou", "hd95", "auc", "images"})


def loss_function() -> nn.Module:
    """Dice + cross-entropy on logits against an integer label map ``(B, 1, *spatial)``.

    Both terms are means over the batch of per-image values, so the loss of a batch is
    the mean of its examples' losses, as Opacus' per-sample clipping assumes."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, batch=False)


def normalise(image: np.ndarray, fov: np.ndarray | None, contrast: str = "none") -> np.ndarray:
    """``(*spatial, C)`` raw intensities to channels-first, zero mean and unit variance per
    channel inside the field of view (zero outside): cameras and scanners differ in
    brightness and gain, and this removes most of that before the network sees it.
    ``contrast="clahe"`` first equalises each channel's local contrast (scikit-image's
    CLAHE), the usual preparation of fundus photographs, whose thin vessels are faint."""
    x = np.moveaxis(image.astype(np.float32), -1, 0)
    if contrast == "clahe":
        x = np.stack([_clahe(channel) for channel in x])
    inside = np.ones(x.shape[1:], bool) if fov is None else fov
    values = x[:, inside]
    x = (x - values.mean(axis=1).reshape(-1, *[1] * inside.ndim)) / (
        values.std(axis=1).reshape(-1, *[1] * inside.ndim) + 1e-6)
    return np.where(inside, x, 0.0).astype(np.float32)


def _clahe(channel: np.ndarray) -> np.ndarray:
    from skimage.exposure import equalize_adapthist  # imported only when asked for

    low, high = float(channel.min()), float(channel.max())
    scaled = (channel - low) / (high - low) if high > low else np.zeros_like(channel)
    return equalize_adapthist(scaled, clip_limit=0.01).astype(np.float32)


def metrics(truth: np.ndarray, probs: np.ndarray, fov: np.ndarray | None, per_class: bool = False,
            regions: dict[str, list[int]] | None = None) -> dict[str, float]:
    """Dice, IoU, HD95 (pixels) and pixel AUC of one image.

    ``truth``: label map ``(*spatial)``; ``probs``: class probabilities ``(K, *spatial)``.
    Outside the field of view both truth and prediction count as background. With more
    than two classes each metric is the mean over the foreground classes; ``per_class``
    adds ``dice_class_C`` and ``hd95_class_C`` of every foreground class C, and each of
    ``regions`` (name -> classes, e.g. a tumour's sub-regions) ``dice_NAME`` and
    ``hd95_NAME`` of the union of its classes. These go into the server's test metrics only:
    a site's replies carry `METRIC_NAMES`."""
    from monai.metrics import compute_iou

    inside = np.ones(truth.shape, bool) if fov is None else fov
    k = probs.shape[0]
    pred = np.where(inside, probs.argmax(axis=0), 0)
    true = np.where(inside, truth, 0)
    y_pred, y_true = _one_hot(pred, k), _one_hot(true, k)
    dice, hd95 = _dice_hd95(y_pred, y_true)
    iou = compute_iou(y_pred, y_true, include_background=False, ignore_empty=False)
    out = {
        "dice": float(dice.nanmean()),
        "iou": float(iou.nanmean()),
        "hd95": float(hd95.nanmean()) if torch.isfinite(hd95).any() else float("nan"),
        "auc": pixel_auc(true[inside], probs[:, inside]),
    }
    if per_class and k > 2:
        for c in range(1, k):
            out[f"dice_class_{c}"], out[f"hd95_class_{c}"] = float(dice[0, c - 1]), _finite(hd95[0, c - 1])
    for name, classes in (regions or {}).items():
        out[f"dice_{name}"], out[f"hd95_{name}"] = _region(np.isin(true, classes), np.isin(pred, classes))
    return out


def _finite(value: torch.Tensor) -> float:
    """HD95 is undefined (MONAI: inf or NaN) when the class is absent from truth or prediction."""
    return float(value) if torch.isfinite(value) else float("nan")


def _region(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Dice and HD95 of one region (a union of classes) as a binary mask."""
    dice, hd95 = _dice_hd95(_one_hot(pred.astype(np.int64), 2), _one_hot(true.astype(np.int64), 2))
    return float(dice[0, 0]), _finite(hd95[0, 0])


def _one_hot(labels: np.ndarray, k: int) -> torch.Tensor:
    """A label map ``(*spatial)`` as MONAI's one-hot batch ``(1, K, *spatial)``."""
    return torch.from_numpy(np.eye(k, dtype=np.float32)[labels]).movedim(-1, 0)[None]


def _dice_hd95(y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI's Dice and 95th-percentile Hausdorff distance per foreground class."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    dice = compute_dice(y_pred, y_true, include_background=False, ignore_empty=False)
    with warnings.catch_warnings():  # MONAI's own call of one of its deprecated arguments
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y_true, include_background=False, percentile=95)
    return dice, hd95


def pixel_auc(truth: np.ndarray, probs: np.ndarray, seed: int = 0) -> float:
    """AUC of the pixels' foreground scores (one-vs-rest macro over foreground classes);
    NaN when a class is absent. ``truth`` (P,), ``probs`` (K, P)."""
    from sklearn.metrics import roc_auc_score

    if truth.size > AUC_PIXELS:  # same sample for every model: comparisons stay fair
        pick = np.random.default_rng(seed).choice(truth.size, AUC_PIXELS, replace=False)
        truth, probs = truth[pick], probs[:, pick]
    scores = []
    for c in range(1, probs.shape[0]):
        positive = truth == c
        if positive.all() or not positive.any():
            continue
        scores.append(roc_auc_score(positive, probs[c]))
    return float(np.mean(scores)) if scores else float("nan")


def summarise(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over images (NaN-aware), and the number of images."""
    keys = per_image[0].keys() if per_image else ()
    out = {k: float(np.nanmean([m[k] for m in per_image])) if any(np.isfinite(m[k]) for m in per_image)
           else float("nan") for k in keys}
    out["images"] = len(per_image)
    return out


def scorer(cfg, spec, test, train_pool, out, device):
    """How the server scores the global network: whole test images by sliding window, per
    class and per region (``data.segmentation.regions``) too."""
    from medfed.models.segmentation.train import evaluate_segmentation, inference_window

    regions = {name: list(classes) for name, classes in cfg.data.segmentation.regions.items()}

    def score(model, threshold, rnd):
        return evaluate_segmentation(model, test, inference_window(spec.image_size), device, spec.contrast,
                                     per_class=True, regions=regions)

    return score
