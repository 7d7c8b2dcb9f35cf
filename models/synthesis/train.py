"""One round of local GAN training at a site, with or without DP-SGD (DP-GAN).

Each step updates the discriminator on a batch of real images and a batch of fakes,
then the generator through the updated discriminator (non-saturating loss, one-sided
label smoothing of the real targets). Both use Adam with betas (0.5, 0.999), the
DCGAN choice.

With privacy, only the discriminator is trained with DP-SGD, since only it reads real
images: Opacus clips and noises its per-example gradients, Poisson-samples the real
images and accounts for them with the site's `SiteAccountant`: the same wrapper as
every task's DP-SGD (`privacy.PrivateTraining`). The generator learns only through the private
discriminator, so it is post-processing and costs no privacy. Fakes in the private
step are a fixed number (the batch size) with uniformly drawn labels, so neither
their count nor their labels depend on which real images were sampled, and each
fake is one more clipped row; a real image changes one row, so the noise calibrated
for the real images covers the step.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfed.models import local_training
from medfed.models.classification.data import LabelledImages
from medfed.models.synthesis.network import ConditionalGAN, to_signed
from medfed.wire import TrainSettings

REAL_TARGET = 0.9  # one-sided label smoothing: keeps the discriminator from overconfidence
BETAS = (0.5, 0.999)


def train(model: ConditionalGAN, data: LabelledImages, s: TrainSettings, device: torch.device,
          private: local_training.Private | None = None) -> dict[str, float]:
    """Train ``model`` in place for ``s.epochs`` epochs (or ``s.steps`` steps) of ``data``.

    Returns the mean discriminator loss ("train_loss", real plus fake BCE), the mean
    generator loss, the counts and, with ``private`` (DP-SGD on the discriminator, see the
    module docstring), the privacy spent.
    """
    rng = local_training.seed_everything(s.seed)
    model.to(device).train()
    x_all, y_all = to_signed(local_training.to_tensor(data.images)), torch.from_numpy(data.labels).long()
    discriminator, opt_d, opt_g = model.discriminator, _adam(model.discriminator, s), _adam(model.generator, s)
    if private is None:
        batches, planned = local_training.shuffled(x_all, y_all, s.batch_size, rng), s.planned_steps(len(y_all))
    else:
        loader = DataLoader(TensorDataset(x_all, y_all), batch_size=s.batch_size, generator=rng)
        discriminator, opt_d, loader = private.make_private(discriminator, opt_d, loader)
        batches, planned = private.batches(loader), private.steps
    proximal = local_training.ProximalStep(model, s)
    amp = local_training.MixedPrecision(s.amp, device, private is not None)
    d_total, g_total, steps = 0.0, 0.0, 0
    try:
        for real, labels in batches:
            real, labels = real.to(device), labels.to(device)
            # fakes of the batch's classes leave D no class-frequency shortcut; under DP the
            # generator must not see which classes the private batch holds: random ones
            fake_labels = labels if private is None else torch.randint(
                model.num_classes, (s.batch_size,), generator=rng).to(device)
            d_loss, g_loss = _step(model, discriminator, opt_d, opt_g, real, labels, fake_labels,
                                   _shift(s, data), rng, private=private is not None, amp=amp)
            proximal()
            d_total, g_total, steps = d_total + d_loss, g_total + g_loss, steps + 1
            if steps >= planned:
                break
    finally:
        if private is not None:
            discriminator.to_standard_module()  # removes Opacus' hooks from model.discriminator
    result = {"train_loss": d_total / max(steps, 1), "g_loss": g_total / max(steps, 1),
              "num-examples": len(data), "steps": steps}
    return result | private.spent() if private is not None else result


def validate(model: ConditionalGAN, data: LabelledImages, s: TrainSettings, device: torch.device,
             histogram: bool = False) -> dict[str, float]:
    """Nothing: a GAN is judged on the server's test set (`medfed.models.synthesis.judge`)."""
    return {}


def _step(
    model: ConditionalGAN, discriminator: nn.Module, opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer, real: torch.Tensor, labels: torch.Tensor, fake_labels: torch.Tensor,
    shift: int = 0, rng: torch.Generator | None = None, private: bool = False,
    amp: local_training.MixedPrecision | None = None,
) -> tuple[float, float]:
    """One discriminator and one generator update; returns their losses.

    ``discriminator`` is ``model.discriminator`` or (``private``) its Opacus wrapper.
    Real and fake rows go through it in one forward pass with one loss per row, the
    form DP-SGD needs (one clipped gradient per row); the loss is the real mean plus
    the fake mean. Images are in [-1, 1]. ``amp``: mixed precision for both networks.
    """
    amp = amp or local_training.MixedPrecision(False, real.device)
    z = model.noise(len(fake_labels)).to(real.device)
    with amp.forward():
        fake = model.generator(z, fake_labels)

    opt_d.zero_grad(set_to_none=True)
    with amp.forward():
        logits = discriminator(_view(torch.cat([real, fake.detach()]), shift, rng),
                               torch.cat([labels, fake_labels])).float()
    targets = torch.cat([torch.full_like(logits[: len(real)], REAL_TARGET), torch.zeros_like(logits[len(real) :])])
    rows = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    d_loss = rows[: len(real)].mean() + rows[len(real) :].mean()
    # Opacus takes the rows' mean, and divides the noisy sum of clipped rows by the
    # expected real batch size: about the same real-mean-plus-fake-mean gradient.
    amp.backward(rows.mean() if private else d_loss)
    amp.step(opt_d)
    opt_d.zero_grad(set_to_none=True)

    opt_g.zero_grad(set_to_none=True)
    with _frozen(discriminator):  # backward too: Opacus' backward hooks check the switch then
        with amp.forward():
            g_logits = discriminator(_view(fake, shift, rng), fake_labels).float()
        g_loss = nn.functional.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        amp.backward(g_loss)
    amp.step(opt_g)
    amp.update()
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
    return local_training.random_shift(images, rng, shift) if shift else images


def _adam(module: nn.Module, s: TrainSettings) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=s.lr, betas=BETAS)
