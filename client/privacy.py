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
from torch.utils.data import DataLoader

from medfed.client.allocator import keep_freed_memory
from medfed.errors import ConfigError
from medfed.models.local_training import repeat
from medfed.noise_calibration import calibrated_noise
from medfed.site_terms import RoundRefused
from medfed.wire import BUDGET_EXHAUSTED, DPSettings, TrainSettings

# Opacus is imported where it is used: it pulls in torch.distributed (0.8 s of CPU), which a
# site training without sample-level DP, or a coordinator, never needs
log = logging.getLogger("medfed.privacy")
ACCOUNTANT_FILE = "privacy_accountant.json"


class BudgetExhausted(RoundRefused):
    """This round would take the site past its maximum epsilon."""

    code = BUDGET_EXHAUSTED


def steps_per_round(n: int, s: TrainSettings) -> tuple[float, int]:
    """Poisson sampling rate and the number of steps one round takes at a site of ``n``,
    as Opacus sets them: the rate is one over the number of batches of an epoch."""
    return 1.0 / math.ceil(n / s.batch_size), s.planned_steps(n)


def noise_for(dp: DPSettings, sample_rate: float, steps: int) -> float:
    """The noise multiplier: given, or the least that spends at most ``target_epsilon``
    over the planned rounds by the site's Opacus accountant and by dp-accounting's
    counterpart (RDP for rdp, PLD for prv), so that the epsilon the site reports is
    within the target whichever library recomputes it (medfed/noise_calibration.py)."""
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
    the pairs of medfed/noise_calibration.py). Both are upper bounds computed differently:
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


class PrivateTraining:
    """Sample-level DP-SGD as one wrapper around a task's own training loop (the Opacus way).

    Built before training, it sizes the round (Poisson sampling rate, steps, noise) and
    refuses it (`BudgetExhausted`) past the site's budget. The loop hands it its module,
    optimiser and loader (`make_private`: the GAN hands its discriminator only), takes its
    batches from `batches` and its number of steps from `steps`, and ends with `spent`,
    which stores the site's history and reports the privacy spent."""

    def __init__(self, dp: DPSettings, accountant: SiteAccountant, examples: int, s: TrainSettings) -> None:
        self.dp, self.accountant = dp, accountant
        self.sample_rate, self.steps = steps_per_round(examples, s)
        self.noise = noise_for(dp, self.sample_rate, self.steps)
        check_budget(dp, accountant, self.noise, self.sample_rate, self.steps)
        self.engine = None

    def make_private(self, module: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader):
        """Opacus' private module, optimiser and Poisson-sampled loader, accounted from the
        site's history."""
        self.engine = site_engine(self.dp, self.accountant)
        return self.engine.make_private(module=module, optimizer=optimizer, data_loader=loader,
                                        noise_multiplier=self.noise, max_grad_norm=self.dp.max_grad_norm,
                                        poisson_sampling=True)

    @staticmethod
    def batches(loader: DataLoader):
        """The private loader's batches, epoch after epoch, for as long as the loop takes them;
        an empty Poisson batch (rare) is skipped: no step, so the accountant counts none."""
        return (batch for batch in repeat(loader) if len(batch[-1]))

    def spent(self) -> dict:
        """Store the site's history with this round's steps; what the reply reports."""
        self.accountant.save(self.engine.accountant.history)
        return privacy_spent(self.accountant, self.dp, self.noise, self.sample_rate)


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
