"""Sample-level differential privacy at a site: DP-SGD with Opacus.

Opacus clips each example's gradient, adds Gaussian noise and samples batches by
Poisson sampling; its accountant (RDP or PRV) turns the noise, sampling rate and steps
into epsilon. The site keeps its accountant's history in its state folder, so the
budget survives rounds, restarts and resumed runs, and refuses a round that would
push it past its maximum epsilon. Every epsilon a site budgets with and reports is the
larger of Opacus' figure and dp-accounting's for the same history (`history_epsilon`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import dp_accounting
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfed.client import training
from medfed.client.allocator import keep_freed_memory
from medfed.client.datasets import LabelledImages
from medfed.client.noise_calibration import calibrated_noise
from medfed.client.site_terms import RoundRefused
from medfed.errors import ConfigError
from medfed.models import classification
from medfed.wire import BUDGET_EXHAUSTED, DPSettings, TrainSettings

# Opacus is imported where it is used: it pulls in torch.distributed (0.8 s of CPU), which a
# site training without sample-level DP, or a coordinator, never needs
log = logging.getLogger("medfed.privacy")
ACCOUNTANT_FILE = "privacy_accountant.json"


class BudgetExhausted(RoundRefused):
    """This round would take the site past its maximum epsilon."""

    code = BUDGET_EXHAUSTED


def make_private_model(model: nn.Module) -> nn.Module:
    """The model with every layer Opacus cannot train privately replaced (BatchNorm
    becomes GroupNorm); unchanged if it is already DP-compatible."""
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    for module in model.modules():  # Opacus' hooks cannot see through in-place activations
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


def incompatible_layers(model: nn.Module) -> dict[str, int]:
    """Layer types of ``model`` that `make_private_model` replaces, with their counts."""
    from opacus.validators import ModuleValidator

    counts: dict[str, int] = {}
    for module in model.modules():
        if type(module) in ModuleValidator.FIXERS:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def steps_per_round(n: int, s: TrainSettings) -> tuple[float, int]:
    """Poisson sampling rate and the number of steps one round takes at a site of ``n``,
    as Opacus sets them: the rate is one over the number of batches of an epoch."""
    return 1.0 / math.ceil(n / s.batch_size), s.planned_steps(n)


def noise_for(dp: DPSettings, sample_rate: float, steps: int) -> float:
    """The noise multiplier: given, or the least that spends at most ``target_epsilon``
    over the planned rounds by the site's Opacus accountant and by dp-accounting's
    counterpart (RDP for rdp, PLD for prv), so that the epsilon the site reports is
    within the target whichever library recomputes it (client/noise_calibration.py)."""
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    try:
        return calibrated_noise(dp.target_epsilon, dp.delta, sample_rate, steps * dp.planned_rounds,
                                dp.accountant)
    except ValueError as exc:
        raise ConfigError(
            f"privacy.target_epsilon={dp.target_epsilon} cannot be reached in "
            f"{steps * dp.planned_rounds} steps at sampling rate {sample_rate:.4f} ({exc})"
        ) from exc


History = tuple[tuple[float, float, int], ...]  # (noise multiplier, sampling rate, steps) of each stretch


@functools.lru_cache(maxsize=512)  # a round asks for the same figures several times; PRV and PLD take seconds
def history_epsilon(kind: str, history: History, delta: float) -> float:
    """Epsilon at ``delta`` of a site's Poisson-sampled Gaussian steps: the larger of Opacus'
    ``kind`` accountant (rdp or prv) and dp-accounting's counterpart (RDP, or PLD for prv;
    the pairs of client/noise_calibration.py). Both are upper bounds computed differently:
    RDP orders tried, fractional orders dp-accounting skips when its series does not
    converge (over a history of unlike rounds its figure can be several times Opacus'),
    discretisation. Budgeting with the larger means whoever recomputes the site's epsilon
    with either library finds it within the budget."""
    history = tuple(h for h in history if h[2] > 0)
    if not history:
        return 0.0
    if any(not noise > 0 for noise, _, _ in history):
        return math.inf  # a step without noise has no privacy guarantee
    from opacus.accountants import create_accountant

    opacus = create_accountant(kind)
    opacus.history = list(history)
    with np.errstate(divide="ignore"):  # Opacus' PRV takes log(1 - q), -inf when every example is sampled
        return max(float(opacus.get_epsilon(delta=delta)), _dp_accounting_epsilon(kind, history, delta))


def _dp_accounting_epsilon(kind: str, history: History, delta: float) -> float:
    reference = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # dp-accounting warns of each RDP order it skips; skipping only loosens its bound
    try:
        for noise, rate, steps in history:
            step = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
            reference.compose(dp_accounting.SelfComposedDpEvent(step, int(steps)))
        return float(reference.get_epsilon(delta))
    finally:
        absl.setLevel(level)


class SiteAccountant:
    """A site's DP-SGD history, stored in its state folder, and the epsilon it adds up to.

    The history holds what was done (noise, sampling rate, steps), not an accountant's
    verdict, so a site that changes ``privacy.accountant`` has its whole history
    evaluated by the new one."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.path = folder / ACCOUNTANT_FILE
        self.kind = kind
        self.history: list[tuple[float, float, int]] = []
        if self.path.is_file():
            self.history = [tuple(h) for h in json.loads(self.path.read_text())["history"]]

    def epsilon(self, delta: float, extra: tuple[float, float, int] | None = None) -> float:
        """Epsilon spent at ``delta`` (`history_epsilon`), with ``extra`` steps added if given."""
        history = self.history + ([extra] if extra else [])
        return history_epsilon(self.kind, tuple(tuple(h) for h in history), delta)

    def save(self, history: list) -> None:
        self.history = [tuple(h) for h in history]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"accountant": self.kind, "history": self.history}))
        partial.replace(self.path)


def train_private(
    model: nn.Module, data: LabelledImages, s: TrainSettings, dp: DPSettings,
    accountant: SiteAccountant, device: torch.device,
) -> dict[str, float]:
    """One round of DP-SGD on ``model`` (already DP-compatible); returns loss and privacy spent."""
    sample_rate, steps = steps_per_round(len(data), s)
    noise = noise_for(dp, sample_rate, steps)
    check_budget(dp, accountant, noise, sample_rate, steps)

    generator = training.seed_everything(s.seed)
    model.to(device).train()
    dataset = TensorDataset(training.to_tensor(data.images), torch.from_numpy(data.labels))
    loader = DataLoader(dataset, batch_size=s.batch_size, generator=generator)
    engine = site_engine(dp, accountant)
    private_model, optimizer, private_loader = engine.make_private(
        module=model, optimizer=training.make_optimizer(model, s), data_loader=loader,
        noise_multiplier=noise, max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
    )
    weights = classification.loss_function(s.kind, data.labels if s.class_weighting else None, s.num_classes)
    per_sample_loss = _per_sample(weights, s.kind).to(device)
    anchor = [p.detach().clone() for p in model.parameters()] if s.proximal_mu else None
    max_shift = max(1, data.images.shape[1] // 14)

    total_loss, seen, taken = 0.0, 0, 0
    while taken < steps:
        for x, y in private_loader:
            if not len(y):  # an empty Poisson batch (rare): no step, so the accountant counts none
                continue
            if s.augment:
                x = training.random_shift(x, generator, max_shift)
            x, y = x.to(device), classification.targets(s.kind, y).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = per_sample_loss(private_model(x), y).mean()
            loss.backward()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            optimizer.step()
            if anchor is not None:  # FedProx as a decoupled proximal step: data-independent, so free
                with torch.no_grad():
                    for p, a in zip(model.parameters(), anchor):
                        p.sub_(optimizer.param_groups[0]["lr"] * s.proximal_mu * (p - a))
            taken += 1
            if taken >= steps:
                break
    accountant.save(engine.accountant.history)
    return {"train_loss": total_loss / max(seen, 1), "num-examples": len(data), "steps": taken,
            **privacy_spent(accountant, dp, noise, sample_rate)}


def site_engine(dp: DPSettings, accountant: SiteAccountant):
    """An Opacus ``PrivacyEngine`` whose accountant goes on from the site's history."""
    from opacus import PrivacyEngine

    from medfed.client import conv_grad_sampler  # noqa: F401  (registers itself with Opacus)

    keep_freed_memory()  # per-sample gradients: big blocks every step
    engine = PrivacyEngine(accountant=dp.accountant)
    engine.accountant.history = list(accountant.history)
    return engine


def check_budget(dp: DPSettings, accountant: SiteAccountant, noise: float, sample_rate: float,
                 steps: int) -> None:
    """Refuse (`BudgetExhausted`) a round that would take the site past its budget."""
    spent_after = accountant.epsilon(dp.delta, (noise, sample_rate, steps))
    if dp.budget is not None and spent_after > dp.budget * (1 + 1e-6):
        raise BudgetExhausted(
            f"privacy budget: this round would spend epsilon {spent_after:.3f} > "
            f"{dp.budget:.3f} (already spent {accountant.epsilon(dp.delta):.3f})"
        )


def privacy_spent(accountant: SiteAccountant, dp: DPSettings, noise: float, sample_rate: float) -> dict:
    """What a site reports after a private round: its total epsilon and the mechanism."""
    return {
        "epsilon": accountant.epsilon(dp.delta), "delta": dp.delta, "noise-multiplier": noise,
        "sample-rate": sample_rate, "max-grad-norm": dp.max_grad_norm,
        "total-steps": sum(h[2] for h in accountant.history),
    }


def _per_sample(weighted: nn.Module, kind: str) -> nn.Module:
    """The task loss without reduction, so that Opacus sees one loss per example."""
    if kind == classification.MULTILABEL:
        return nn.BCEWithLogitsLoss(pos_weight=getattr(weighted, "pos_weight", None), reduction="none")
    return _WeightedCrossEntropy(getattr(weighted, "weight", None))


class _WeightedCrossEntropy(nn.Module):
    """Cross-entropy per example, times its class weight (a mean over the batch keeps
    Opacus' "mean" reduction exact, unlike torch's weighted mean)."""

    def __init__(self, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, target, reduction="none")
        return loss if self.weight is None else loss * self.weight[target]
