"""How good, and how private, synthetic images are: fidelity, utility and copying.

- `frechet_distance` on `classifier_features`: fidelity. Written here because the
  usual FID needs Inception-v3 weights, which are not available offline, and its
  ImageNet features say little about 28-px chest X-rays; the features are those of a
  medfed classifier trained on real data instead (see `frechet_distance`).
- `tstr_auc`: utility, Train-on-Synthetic-Test-on-Real, with medfed's own training
  loop and metrics, so the number is comparable with the classifiers medfed trains.
- `memorisation`: near-copies of training images, by nearest-neighbour distances in
  pixel space calibrated on real held-out images; no library computes this test.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import nn

from medfed.models import local_training
from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.models.classification.network import build_classifier
from medfed.wire import TrainSettings


@torch.no_grad()
def classifier_features(
    classifier: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512
) -> np.ndarray:
    """``classifier.features`` of uint8 images ``(N, H, W, C)``: ``(N, D)`` float64
    (D = 128 for `SmallCNN`), computed in eval mode."""
    classifier.to(device).eval()
    parts = [
        classifier.features(local_training.to_tensor(images[start : start + batch_size]).to(device)).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).double().numpy()


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)``:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    This is a Fréchet distance on the features of a medfed classifier trained on real
    data (`classifier_features`), NOT the Inception FID: its values depend on that
    classifier and are not comparable with published FID numbers. Compare runs only
    with the same feature classifier.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product: offset both, as pytorch-fid does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        # round-off gives tiny imaginary parts; a large one means the root is wrong
        if np.abs(root.imag).max() > 1e-3 * max(1.0, np.abs(root.real).max()):
            raise ValueError(f"frechet_distance: imaginary part {np.abs(root.imag).max():.3g} in sqrtm")
        root = root.real
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root), 0.0))


def nearest_distances(query: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each uint8 image of ``query``, the L2 distance ``(N,)`` to its nearest image in
    ``reference``, in pixel space on the [0, 1] scale (a 28x28 image has norm <= 28).

    Chunked so that 5k x 5k images need a few tens of MB; float64 keeps the distance of
    an exact copy at 0 (float32 matrix products leave ~1e-2 of round-off).
    """
    ref = torch.from_numpy(reference.reshape(len(reference), -1)).double().div_(255.0)
    out = []
    for start in range(0, len(query), chunk):
        q = torch.from_numpy(query[start : start + chunk].reshape(-1, ref.shape[1])).double().div_(255.0)
        out.append(torch.cdist(q, ref).min(dim=1).values)
    return torch.cat(out).numpy() if out else np.zeros(0)


def memorisation(
    generated: np.ndarray, train: np.ndarray, holdout: np.ndarray, quantile: float = 0.01
) -> dict[str, float]:
    """Share of generated images that are near-copies of training images.

    A real held-out image is as close to the training set as an unseen image gets, so
    the ``quantile`` of the held-out images' nearest-training distances is the
    threshold: a generated image at or below it is flagged as a near-copy. A generator
    that copies scores near 1; one that has learnt the distribution scores about
    ``quantile``. All images uint8 ``(N, H, W, C)``; distances as in `nearest_distances`.
    """
    generated_nn = nearest_distances(generated, train)
    real_nn = nearest_distances(holdout, train)
    threshold = float(np.quantile(real_nn, quantile))
    return {
        "memorised_fraction": float(np.mean(generated_nn <= threshold)),
        "median_generated_nn": float(np.median(generated_nn)),
        "median_real_nn": float(np.median(real_nn)),
        "threshold": threshold,
    }


def tstr_auc(
    generated: LabelledImages, test: LabelledImages, settings: TrainSettings, device: torch.device
) -> float:
    """Train-on-Synthetic-Test-on-Real: the test AUC of a fresh `SmallCNN` trained with
    `training.train` on ``generated`` alone (seeded by ``settings.seed``)."""
    local_training.seed_everything(settings.seed)
    model = build_classifier("cnn", generated.channels, settings.num_classes, generated.images.shape[1])
    training.train(model, generated, settings, device)
    return training.evaluate(model, test, settings.kind, device)["auc"]


# a site validates nothing of a GAN: it is judged on the server's test set only
METRIC_NAMES: frozenset[str] = frozenset()


def scorer(cfg, spec, test, train_pool, out, device):
    """How the server judges the global GAN: `SynthesisJudge` (TSTR, Fréchet distance,
    memorisation), which also draws a sample grid every round."""
    from medfed.models.synthesis.judge import SynthesisJudge

    return SynthesisJudge(cfg, spec, train_pool, test, device, out)
