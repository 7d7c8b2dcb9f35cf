"""Local training and evaluation of a classifier: the work a site does each round.

The same functions serve the federated client, the pooled and local baselines and the
server's global evaluation, so every mode trains exactly the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfed.models import local_training
from medfed.models.classification import metrics as classification
from medfed.models.classification.data import LabelledImages
from medfed.models.local_training import (
    ProximalStep,
    make_optimizer,
    random_shift,
    seed_everything,
    shuffled,
    to_tensor,
)
from medfed.wire import HISTOGRAMS, TrainSettings


def train(
    model: nn.Module, data: LabelledImages, s: TrainSettings, device: torch.device,
    private: local_training.Private | None = None,
) -> dict[str, float]:
    """Train in place for ``s.epochs`` epochs (or ``s.steps`` batches); return loss and counts.

    With ``private`` the same loop runs DP-SGD: its wrapper makes the model, optimiser and
    loader private (Poisson batches, per-example clipping and noise), the loss is taken per
    example, and the privacy spent is added to the result."""
    generator = seed_everything(s.seed)
    model.to(device).train()
    x_all, y_all = to_tensor(data.images), torch.from_numpy(data.labels)
    loss_fn = classification.loss_function(s.kind, data.labels if s.class_weighting else None, s.num_classes)
    optimizer = make_optimizer(model, s)
    if private is None:
        net, batches, planned = model, shuffled(x_all, y_all, s.batch_size, generator), s.planned_steps(len(y_all))
    else:
        loader = DataLoader(TensorDataset(x_all, y_all), batch_size=s.batch_size, generator=generator)
        net, optimizer, loader = private.make_private(model, optimizer, loader)
        batches, planned, loss_fn = private.batches(loader), private.steps, _per_example(loss_fn, s.kind)
    loss_fn = loss_fn.to(device)
    amp = local_training.MixedPrecision(s.amp, device, private is not None)
    proximal = ProximalStep(model, s)
    max_shift = max(1, x_all.shape[-1] // 14)

    total_loss, seen, steps = 0.0, 0, 0
    for x, y in batches:
        y = classification.targets(s.kind, y)
        if s.augment:
            x = random_shift(x, generator, max_shift)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with amp.forward():
            loss = loss_fn(net(x), y)
        amp.backward(loss)
        amp.step(optimizer)
        amp.update()
        proximal()
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
        steps += 1
        if steps >= planned:
            break
    result = {"train_loss": total_loss / max(seen, 1), "num-examples": len(y_all), "steps": steps}
    return result | private.spent() if private is not None else result


def _per_example(weighted: nn.Module, kind: str) -> nn.Module:
    """The task loss as the mean of per-example losses, the form DP-SGD's clipping needs."""
    if kind == classification.MULTILABEL:
        return _Mean(nn.BCEWithLogitsLoss(pos_weight=getattr(weighted, "pos_weight", None), reduction="none"))
    return _Mean(_WeightedCrossEntropy(getattr(weighted, "weight", None)))


class _Mean(nn.Module):
    def __init__(self, per_example: nn.Module) -> None:
        super().__init__()
        self.per_example = per_example

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_example(logits, target).mean()


class _WeightedCrossEntropy(nn.Module):
    """Cross-entropy per example, times its class weight (a mean over the batch keeps
    Opacus' "mean" reduction exact, unlike torch's weighted mean)."""

    def __init__(self, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, target, reduction="none")
        return loss if self.weight is None else loss * self.weight[target]


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, kind: str, device: torch.device, batch_size: int = 512
) -> np.ndarray:
    """Class probabilities ``(N, classes)`` for ``(N, H, W, C)`` uint8 images."""
    model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size]).to(device)
        out.append(classification.probabilities(kind, model(x).float()).cpu())
    return torch.cat(out).numpy()


def evaluate(
    model: nn.Module, data: LabelledImages, kind: str, device: torch.device, threshold: float = 0.5
) -> dict[str, float]:
    """Test metrics of ``model`` on ``data`` (see `classification.metrics`)."""
    probs = predict(model, data.images, kind, device)
    return classification.metrics(kind, data.labels, probs, threshold)


def validate(model: nn.Module, data: LabelledImages, s: TrainSettings, device: torch.device,
             histogram: bool = False) -> dict:
    """A site's metrics of ``model`` on its validation data; with ``histogram`` (binary
    tasks) also the score histograms from which the server picks the operating point."""
    probs = predict(model, data.images, s.kind, device)
    result = classification.metrics(s.kind, data.labels, probs)
    if histogram and s.kind == classification.BINARY:
        result[HISTOGRAMS[0]], result[HISTOGRAMS[1]] = classification.score_histogram(data.labels, probs)
    return result


def validation_threshold(model: nn.Module, sets: list[LabelledImages], device: torch.device) -> float:
    """Binary operating point chosen on ``sets`` together (see `classification.operating_threshold`)."""
    positive, negative = 0, 0
    for data in sets:
        pos, neg = classification.score_histogram(data.labels, predict(model, data.images, "binary", device))
        positive, negative = positive + np.array(pos), negative + np.array(neg)
    return classification.operating_threshold(positive, negative)
