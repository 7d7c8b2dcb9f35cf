"""Local training and evaluation of a classifier: the work a site does each round.

The same functions serve the federated client, the pooled and local baselines and the
server's global evaluation, so every mode trains exactly the same way.
"""

from __future__ import annotations

import random
from contextlib import nullcontext

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfed.client.datasets import LabelledImages
from medfed.models import classification
from medfed.wire import TrainSettings

if TYPE_CHECKING:
    from medfed.client.privacy import PrivateTraining


def resolve_device(name: str) -> torch.device:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C)`` uint8 to ``(N, C, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def random_shift(batch: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, padding with edge values.

    Written by hand because MONAI's per-sample RandAffine costs more than the whole
    training step of a small network on a CPU; this is one pad and one gather.
    """
    n, _, h, w = batch.shape
    padded = nn.functional.pad(batch, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    index_n = torch.arange(n)[:, None, None, None]
    index_c = torch.arange(batch.shape[1])[None, :, None, None]
    return padded[index_n, index_c, rows, cols]


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


class ProximalStep:
    """FedProx (Li et al. 2020) the same way in every task's loop: after each optimiser
    step, ``w -= lr * mu * (w - w_global)``, a decoupled proximal step. It needs no data,
    so DP-SGD clips and noises nothing of it (it spends no privacy), and a GAN applies it to
    both of its networks alike. A no-op without ``s.proximal_mu``."""

    def __init__(self, model: nn.Module, s: TrainSettings) -> None:
        self.mu, self.lr = s.proximal_mu or 0.0, s.lr
        self.pairs = [(p, p.detach().clone()) for p in model.parameters()] if self.mu else []

    @torch.no_grad()
    def __call__(self) -> None:
        for p, anchor in self.pairs:
            p.sub_(self.lr * self.mu * (p - anchor))


def train(
    model: nn.Module, data: LabelledImages, s: TrainSettings, device: torch.device,
    private: PrivateTraining | None = None,
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
    # mixed precision on CUDA; not under DP-SGD, whose per-example clipping works in float32
    use_amp = s.amp and device.type == "cuda" and private is None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    proximal = ProximalStep(model, s)
    max_shift = max(1, x_all.shape[-1] // 14)

    total_loss, seen, steps = 0.0, 0, 0
    for x, y in batches:
        y = classification.targets(s.kind, y)
        if s.augment:
            x = random_shift(x, generator, max_shift)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, use_amp):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        proximal()
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
        steps += 1
        if steps >= planned:
            break
    result = {"train_loss": total_loss / max(seen, 1), "num-examples": len(y_all), "steps": steps}
    return result | private.spent() if private is not None else result


def shuffled(x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Batches of a fresh random order each epoch, for as long as the caller takes them."""
    while True:
        order = torch.randperm(len(y_all), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2 and len(order) > 1:
                continue  # a batch of one breaks BatchNorm; its sample comes back next epoch
            yield x_all[index], y_all[index]


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


def validation_threshold(model: nn.Module, sets: list[LabelledImages], device: torch.device) -> float:
    """Binary operating point chosen on ``sets`` together (see `classification.operating_threshold`)."""
    positive, negative = 0, 0
    for data in sets:
        pos, neg = classification.score_histogram(data.labels, predict(model, data.images, "binary", device))
        positive, negative = positive + np.array(pos), negative + np.array(neg)
    return classification.operating_threshold(positive, negative)
