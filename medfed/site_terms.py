"""What a site agrees to, as typed settings: its privacy promise and its training limits.

A hospital promises its patients a privacy budget at a delta and with an accountant of
its choosing, and bounds what local training may ask of its machine; none of it may
come from the coordinator, which could otherwise pick a delta or an accountant that
makes any epsilon look small. The same dataclasses are SITE.yaml's ``privacy`` and
``limits`` sections (`medfed.client.site_daemon.site_config`) and each virtual site's terms in a
simulation (`medfed.simulation.virtual_sites`); `medfed.client.site_policy.accept_round`
holds every round to them. This module imports nothing heavy, so the experiment
config's schema can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medfed.errors import MedfedError

ACCOUNTANTS = ("rdp", "prv")  # Opacus' accountants whose epsilon is an upper bound (gdp's is an approximation)
DEFAULT_MIN_NOISE = 0.5  # the noise multiplier below which a site trains no DP round unless told otherwise
DEFAULT_PARAMETERS = "default"  # the key of max_parameters that covers every model not listed


def _default_max_parameters() -> dict[str, float]:
    # ResNet-18 (11.2 M) and DenseNet-121 (6.9 M), as medfed builds them, fit; every other
    # model medfed ships is under 2 M parameters at the sizes of its configs
    return {DEFAULT_PARAMETERS: 5e6, "resnet18": 12e6, "densenet121": 8e6}


@dataclass
class SitePrivacy:
    """Sample-level DP as the site promises it (SITE.yaml ``privacy``); every epsilon the
    site computes, budgets and reports is at its own ``delta`` with its own ``accountant``."""

    max_epsilon: float | None = None  # total budget over every run; none: no budget
    delta: float | None = None  # none: 1/(10 n), n the site's training items (`site_delta`); must be below 1/n
    accountant: str = "rdp"  # rdp or prv (Opacus); rdp budgets with the larger of Opacus' and dp-accounting's figure
    min_noise_multiplier: float = DEFAULT_MIN_NOISE  # least noise of a DP round
    max_epsilon_per_round: float | None = None  # most one round may spend
    max_grad_norm: float | None = None  # largest per-example clipping norm; none: any


@dataclass
class SiteLimits:
    """What one round of local training may ask of the site (SITE.yaml ``limits``)."""

    min_local_steps: int = 1
    max_local_steps: int = 1000
    min_local_epochs: int = 1
    max_local_epochs: int = 10
    min_batch_size: int = 8  # one example's gradient per step is what gradient inversion feeds on
    min_lr: float = 1e-6
    max_lr: float = 1.0
    min_momentum: float = 0.0
    max_momentum: float = 0.99
    min_weight_decay: float = 0.0
    max_weight_decay: float = 0.1
    max_parameters: dict[str, float] = field(default_factory=_default_max_parameters)

    def parameters_allowed(self, model: str) -> tuple[str, float]:
        """The setting that bounds ``model``'s size and its value."""
        key = model if model in self.max_parameters else DEFAULT_PARAMETERS
        return f"limits.max_parameters.{key}", self.max_parameters[key]


@dataclass
class SiteTerms:
    """Everything a site holds a round to: its policy, privacy promise and limits."""

    tasks: list[str] | None = None  # tasks it trains; none: any
    models: list[str] = field(default_factory=list)  # models it trains; empty: any
    require_dp: bool = False  # train only with sample-level DP, at least privacy.min_noise_multiplier
    privacy: SitePrivacy = field(default_factory=SitePrivacy)
    limits: SiteLimits = field(default_factory=SiteLimits)


def site_delta(privacy, n_train: int) -> float:
    """The site's delta: its own, or 1/(10 n) for ``n_train`` training items."""
    return privacy.delta if privacy.delta is not None else 1.0 / (10 * max(n_train, 1))


def delta_problem(delta: float, n_train: int) -> str | None:
    """Why ``delta`` cannot protect a site of ``n_train`` items, if it cannot: a delta of
    1/n allows a mechanism that publishes one patient's record outright."""
    if n_train < 1:
        return "the site has no training items to protect"
    if not delta < 1.0 / n_train:
        return f"privacy.delta={delta:g} is not below 1/n for this site (n={n_train})"
    return None


def validate_privacy_terms(p, require_dp: bool, check) -> None:
    """Range checks of a ``privacy`` section; ``check(condition, key, message)`` reports."""
    check(p.accountant in ACCOUNTANTS, "privacy.accountant",
          f"'{p.accountant}' is not one of {', '.join(ACCOUNTANTS)} (Opacus' gdp only approximates epsilon)")
    for key in ("max_epsilon", "max_epsilon_per_round", "max_grad_norm"):
        value = getattr(p, key)
        check(value is None or value > 0, f"privacy.{key}", f"must be > 0, got {value}")
    check(p.delta is None or 0 < p.delta < 1, "privacy.delta", f"must be in (0, 1), got {p.delta}")
    check(p.min_noise_multiplier >= 0, "privacy.min_noise_multiplier", f"must be >= 0, got {p.min_noise_multiplier}")
    check(not require_dp or p.min_noise_multiplier > 0, "privacy.min_noise_multiplier",
          "must be > 0 with policy.require_dp: true (a round without noise has no privacy)")


def validate_limits(limits, check) -> None:
    """Range checks of a ``limits`` section; ``check(condition, key, message)`` reports."""
    from medfed.tasks import TASKS

    for name in ("local_steps", "local_epochs"):
        low, high = getattr(limits, f"min_{name}"), getattr(limits, f"max_{name}")
        check(low >= 1, f"limits.min_{name}", f"must be >= 1, got {low}")
        check(high >= low, f"limits.max_{name}", f"must be >= limits.min_{name}={low}, got {high}")
    check(limits.min_batch_size >= 1, "limits.min_batch_size", f"must be >= 1, got {limits.min_batch_size}")
    for name, floor in (("lr", None), ("momentum", 0.0), ("weight_decay", 0.0)):
        low, high = getattr(limits, f"min_{name}"), getattr(limits, f"max_{name}")
        if floor is None:  # a learning rate of 0 trains nothing
            check(low > 0, f"limits.min_{name}", f"must be > 0, got {low}")
        else:
            check(low >= floor, f"limits.min_{name}", f"must be >= {floor:g}, got {low}")
        check(high >= low, f"limits.max_{name}", f"must be >= limits.min_{name}={low:g}, got {high}")
    known = {m for t in TASKS.values() for m in t.networks}
    for model, count in limits.max_parameters.items():
        check(model == DEFAULT_PARAMETERS or model in known, "limits.max_parameters",
              f"'{model}' is not a model (use {DEFAULT_PARAMETERS} or one of {', '.join(sorted(known))})")
        check(count > 0, f"limits.max_parameters.{model}", f"must be > 0, got {count}")
    check(DEFAULT_PARAMETERS in limits.max_parameters, "limits.max_parameters",
          f"needs a '{DEFAULT_PARAMETERS}' entry for the models not listed")


class RoundRefused(MedfedError):
    """A round the site will not train; ``code`` is the error code of its reply and
    ``setting`` the round's setting at fault (a round config key), when there is one."""

    code = 0

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
