"""What every task's local training loop shares: device, seeds, tensors, optimiser,
mixed precision and the FedProx step, so the tasks' loops differ only in their data and loss."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Protocol

import numpy as np
import torch
from torch import nn

from medfed.wire import TrainSettings


class Private(Protocol):
    """What a task's loop asks of DP-SGD (the site's `medfed.client.privacy.PrivateTraining`,
    which lives with the site's accountant and budget, above the tasks): wrap the model,
    optimiser and loader, give the round's batches and planned steps, and report the
    privacy spent."""

    steps: int

    def make_private(self, module: nn.Module, optimizer: torch.optim.Optimizer, loader): ...

    def batches(self, loader) -> Iterator: ...

    def spent(self) -> dict: ...


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


class MixedPrecision:
    """``train.amp`` the same way in every task's loop: forward passes in float16 on CUDA and
    a gradient scaler around backward and step. Off on the CPU and under DP-SGD, whose
    per-example clipping works in float32; off, every call is the plain one. One scaler
    serves several optimisers (the GAN's two): `update` once per iteration."""

    def __init__(self, enabled: bool, device: torch.device, private: bool = False) -> None:
        self.enabled = enabled and device.type == "cuda" and not private
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled)

    def forward(self):
        """The context a forward pass runs in."""
        return torch.autocast(device_type="cuda", dtype=torch.float16) if self.enabled else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)

    def update(self) -> None:
        self.scaler.update()


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


def shuffled(x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Batches of a fresh random order each epoch, for as long as the caller takes them."""
    while True:
        order = torch.randperm(len(y_all), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2 and len(order) > 1:
                continue  # a batch of one breaks BatchNorm; its sample comes back next epoch
            yield x_all[index], y_all[index]


def repeat(loader):
    """A loader's batches, epoch after epoch, for as long as the loop takes them."""
    while True:
        yield from loader
