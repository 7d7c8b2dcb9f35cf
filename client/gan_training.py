"""One round of local GAN training at a site, with or without DP-SGD (DP-GAN).

Each step updates the discriminator on a batch of real images and a batch of fakes,
then the generator through the updated discriminator (non-saturating loss, one-sided
label smoothing of the real targets). Both use Adam with betas (0.5, 0.999), the
DCGAN choice.

With privacy, only the discriminator is trained with DP-SGD, since only it reads real
images: Opacus clips and noises its per-example gradients, Poisson-samples the real
images and accounts for them with the site's `SiteAccountant`, exactly as
`privacy.train_private` does. The generator learns only through the private
discriminator, so it is post-processing and costs no privacy. Fakes in the private
step are a fixed number (the batch size) with uniformly drawn labels, so neither
their count nor their labels depend on which real images were sampled, and each
fake is one more clipped row; a real image changes one row, so the noise calibrated
for the real images covers the step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from medfed.client import training
from medfed.client.datasets import LabelledImages
from medfed.client.privacy import (
    BudgetExhausted,
    SiteAccountant,
    noise_for,
    site_engine,
    steps_per_round,
)
from medfed.models.gan import ConditionalGAN, to_signed
from medfed.wire import DPSettings, TrainSettings
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REAL_TARGET = 0.9  # one-sided label smoothing: keeps the discriminator from overconfidence
BETAS = (0.5, 0.999)


def train_gan(
    model: ConditionalGAN, data: LabelledImages, s: TrainSettings, device: torch.device,
    dp: DPSettings | None = None, accountant: SiteAccountant | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``s.epochs`` epochs (or ``s.steps`` steps) of ``data``.

    Returns the mean discriminator loss ("train_loss", real plus fake BCE), the mean
    generator loss, the counts and, with ``dp``, the privacy spent (the same keys as
    `privacy.train_private`). Raises `BudgetExhausted` before training when the round
    would take the site past ``dp.budget``.
    """
    if (dp is None) != (accountant is None):
        raise ValueError("train_gan: pass dp and accountant together")
    if dp is not None:
        return _train_private(model, data, s, device, dp, accountant)

    rng = training.seed_everything(s.seed)
    model.to(device).train()
    x_all, y_all = to_signed(training.to_tensor(data.images)), torch.from_numpy(data.labels).long()
    opt_d, opt_g = _adam(model.discriminator, s), _adam(model.generator, s)
    planned = s.planned_steps(len(y_all))
    d_total, g_total, steps = 0.0, 0.0, 0
    while steps < planned:
        order = torch.randperm(len(y_all), generator=rng)
        for start in range(0, len(order), s.batch_size):
            index = order[start : start + s.batch_size]
            if len(index) < 2 and len(order) > 1:
                continue  # a batch of one breaks the generator's BatchNorm; it comes back next epoch
            real, labels = x_all[index].to(device), y_all[index].to(device)
            fake_labels = labels  # fakes of the same classes: no class-frequency shortcut for D
            d_loss, g_loss = _step(model, model.discriminator, opt_d, opt_g, real, labels, fake_labels,
                                   _shift(s, data), rng)
            d_total, g_total, steps = d_total + d_loss, g_total + g_loss, steps + 1
            if steps >= planned:
                break
    return {"train_loss": d_total / max(steps, 1), "g_loss": g_total / max(steps, 1),
            "num-examples": len(data), "steps": steps}


def _train_private(
    model: ConditionalGAN, data: LabelledImages, s: TrainSettings, device: torch.device,
    dp: DPSettings, accountant: SiteAccountant,
) -> dict[str, float]:
    """`train_gan` with DP-SGD on the discriminator (see the module docstring)."""
    sample_rate, steps = steps_per_round(len(data), s)
    noise = noise_for(dp, sample_rate, steps)
    spent_after = accountant.epsilon(dp.delta, (noise, sample_rate, steps))
    if dp.budget is not None and spent_after > dp.budget * (1 + 1e-6):
        raise BudgetExhausted(
            f"privacy budget: this round would spend epsilon {spent_after:.3f} > "
            f"{dp.budget:.3f} (already spent {accountant.epsilon(dp.delta):.3f})"
        )

    rng = training.seed_everything(s.seed)
    model.to(device).train()
    dataset = TensorDataset(training.to_tensor(data.images), torch.from_numpy(data.labels).long())
    loader = DataLoader(dataset, batch_size=s.batch_size, generator=rng)
    engine = site_engine(dp, accountant)
    private_d, opt_d, private_loader = engine.make_private(
        module=model.discriminator, optimizer=_adam(model.discriminator, s), data_loader=loader,
        noise_multiplier=noise, max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
    )
    opt_g = _adam(model.generator, s)
    d_total, g_total, taken = 0.0, 0.0, 0
    try:
        while taken < steps:
            for x, y in private_loader:
                if not len(y):  # an empty Poisson batch (rare): no step, so the accountant counts none
                    continue
                real, labels = to_signed(x).to(device), y.to(device)
                fake_labels = torch.randint(model.num_classes, (s.batch_size,), generator=rng).to(device)
                d_loss, g_loss = _step(model, private_d, opt_d, opt_g, real, labels, fake_labels,
                                       _shift(s, data), rng, private=True)
                d_total, g_total, taken = d_total + d_loss, g_total + g_loss, taken + 1
                if taken >= steps:
                    break
    finally:
        private_d.to_standard_module()  # removes Opacus' hooks from model.discriminator
    accountant.save(engine.accountant.history)
    return {
        "train_loss": d_total / max(taken, 1), "g_loss": g_total / max(taken, 1),
        "num-examples": len(data), "steps": taken,
        "epsilon": accountant.epsilon(dp.delta), "delta": dp.delta, "noise-multiplier": noise,
        "sample-rate": sample_rate, "max-grad-norm": dp.max_grad_norm,
        "total-steps": sum(h[2] for h in accountant.history),
    }


def _step(
    model: ConditionalGAN, discriminator: nn.Module, opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer, real: torch.Tensor, labels: torch.Tensor, fake_labels: torch.Tensor,
    shift: int = 0, rng: torch.Generator | None = None, private: bool = False,
) -> tuple[float, float]:
    """One discriminator and one generator update; returns their losses.

    ``discriminator`` is ``model.discriminator`` or (``private``) its Opacus wrapper.
    Real and fake rows go through it in one forward pass with one loss per row, the
    form DP-SGD needs (one clipped gradient per row); the loss is the real mean plus
    the fake mean. Images are in [-1, 1].
    """
    z = model.noise(len(fake_labels)).to(real.device)
    fake = model.generator(z, fake_labels)

    opt_d.zero_grad(set_to_none=True)
    logits = discriminator(_view(torch.cat([real, fake.detach()]), shift, rng), torch.cat([labels, fake_labels]))
    targets = torch.cat([torch.full_like(logits[: len(real)], REAL_TARGET), torch.zeros_like(logits[len(real) :])])
    rows = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    d_loss = rows[: len(real)].mean() + rows[len(real) :].mean()
    # Opacus takes the rows' mean, and divides the noisy sum of clipped rows by the
    # expected real batch size: about the same real-mean-plus-fake-mean gradient.
    (rows.mean() if private else d_loss).backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)

    opt_g.zero_grad(set_to_none=True)
    with _frozen(discriminator):  # backward too: Opacus' backward hooks check the switch then
        g_logits = discriminator(_view(fake, shift, rng), fake_labels)
        g_loss = nn.functional.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        g_loss.backward()
    opt_g.step()
    return float(d_loss.detach()), float(g_loss.detach())


@contextmanager
def _frozen(discriminator: nn.Module):
    """The discriminator as a fixed function for the generator's step: no parameter
    gradients and, when it is an Opacus module, no per-sample-gradient hooks (they would
    leave activations and ``grad_sample`` behind for the next private step)."""
    params = [p for p in discriminator.parameters() if p.requires_grad]
    hooked = hasattr(discriminator, "disable_hooks")
    for p in params:
        p.requires_grad_(False)
    if hooked:
        discriminator.disable_hooks()
    try:
        yield
    finally:
        if hooked:
            discriminator.enable_hooks()
        for p in params:
            p.requires_grad_(True)


def _shift(s: TrainSettings, data: LabelledImages) -> int:
    """Pixels of random translation the discriminator sees (0: none), as in training."""
    return max(1, data.images.shape[1] // 14) if s.augment else 0


def _view(images: torch.Tensor, shift: int, rng: torch.Generator | None) -> torch.Tensor:
    """What the discriminator sees: real and fake images alike randomly translated by up
    to ``shift`` pixels (differentiable augmentation, Zhao et al. 2020), which keeps it from
    memorising a small site's images; the generator still learns untranslated images."""
    return training.random_shift(images, rng, shift) if shift else images


def _adam(module: nn.Module, s: TrainSettings) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=s.lr, betas=BETAS)
