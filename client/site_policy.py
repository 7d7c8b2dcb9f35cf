"""Whether a site trains a round: one decision, for deployed and simulated sites alike.

The coordinator decides a run's task, model, hyper-parameters and privacy settings; the
site sees them in every round's config record and holds them to its own terms
(`medfed.site_terms`): its policy, its training limits and its privacy promise.
Privacy is reckoned the site's way, at its own delta with its own accountant: the
round's ``dp-delta`` is never used, and its ``dp-accountant`` only checked to be one
whose epsilon is an upper bound. Every refusal names the round's setting and the
site's.

`accept_round` is called by a deployed site's controls before any model is built
(`medfed.client.site_daemon.site_control`), by the ClientApp with the site's spending before it
trains (`medfed.client.app.train_site`, in simulation as in deployment), and for every
virtual site before a simulation starts (`medfed.simulation.virtual_sites`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from medfed.client.privacy import BudgetExhausted, SiteAccountant, history_epsilon, noise_for, steps_per_round
from medfed.errors import ConfigError
from medfed.models.spec import ModelSpec
from medfed.site_terms import ACCOUNTANTS, RoundRefused, SiteLimits, SitePrivacy, SiteTerms, delta_problem, site_delta
from medfed.wire import DP_MECHANISM, POLICY_REFUSED, DPSettings, TrainSettings


class PolicyRefusal(RoundRefused):
    """The round asks for something the site's terms forbid."""

    code = POLICY_REFUSED


@dataclass(frozen=True)
class PrivateRound:
    """A sample-level DP round as the site will train it: the settings it trains with
    (its own delta and accountant, the noise resolved) and the steps it will take."""

    dp: DPSettings
    sample_rate: float
    steps: int
    budget_setting: str | None  # which setting ``dp.max_epsilon`` comes from, for messages

    @property
    def event(self) -> tuple[float, float, int]:
        """The round's entry in the site's accountant history."""
        return (self.dp.noise_multiplier, self.sample_rate, self.steps)


def accept_round(terms: SiteTerms, config, n_train: int, spent: SiteAccountant | None = None) -> PrivateRound | None:
    """The DP round the site will train (None for a round without sample-level DP) if
    ``config``, a round's config already checked for shape (`message_checks`), is within
    ``terms`` at a site of ``n_train`` training items. `PolicyRefusal` otherwise, or
    `BudgetExhausted` when ``spent`` (the site's accountant, given before training) and
    this round together would pass the budget."""
    spec = ModelSpec.from_config(config)
    check_policy(terms, spec)
    settings = TrainSettings.from_config(config, spec)
    check_limits(terms.limits, settings, spec)
    if not _uses_sample_dp(terms, config):
        return None
    private = private_round(terms.privacy, DPSettings.from_config(config), settings, n_train)
    if spent is not None:
        check_site_budget(private, spent)
    return private


def check_policy(terms: SiteTerms, spec: ModelSpec) -> None:
    if terms.tasks is not None and spec.task not in terms.tasks:
        raise PolicyRefusal(f"task '{spec.task}' is not allowed (policy.tasks: {', '.join(terms.tasks)})",
                            "model-task")
    if terms.models and spec.name not in terms.models:
        raise PolicyRefusal(f"model '{spec.name}' is not allowed (policy.models: {', '.join(terms.models)})",
                            "model-name")


# ---- training limits -----------------------------------------------------------------------


def check_limits(limits: SiteLimits, settings: TrainSettings, spec: ModelSpec) -> None:
    """Local work, batch size, optimiser settings and model size within ``limits``."""
    if settings.steps is not None:  # steps replace epochs when given
        _within(limits, "local-steps", settings.steps, "local_steps")
    else:
        _within(limits, "local-epochs", settings.epochs, "local_epochs")
    if not settings.batch_size >= limits.min_batch_size:
        raise PolicyRefusal(f"batch-size {settings.batch_size} is below limits.min_batch_size={limits.min_batch_size}",
                            "batch-size")
    for key, name in (("lr", "lr"), ("momentum", "momentum"), ("weight-decay", "weight_decay")):
        _within(limits, key, getattr(settings, name), name)
    count = parameter_count(spec)
    setting, allowed = limits.parameters_allowed(spec.name)
    if count > allowed:
        raise PolicyRefusal(f"model '{spec.name}' has {count:,} parameters, above {setting}={allowed:,.0f}",
                            "model-name")


def _within(limits: SiteLimits, key: str, value, name: str) -> None:
    low, high = getattr(limits, f"min_{name}"), getattr(limits, f"max_{name}")
    if not value >= low:  # written so that NaN fails too
        raise PolicyRefusal(f"{key} {_number(value)} is below limits.min_{name}={_number(low)}", key)
    if not value <= high:
        raise PolicyRefusal(f"{key} {_number(value)} is above limits.max_{name}={_number(high)}", key)


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


@functools.lru_cache(maxsize=32)
def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the network ``spec`` describes, built on PyTorch's meta device: no
    memory is allocated, so a model too big for the site is refused before it is built."""
    try:
        with torch.device("meta"):
            model = spec.build()
    except Exception as exc:  # a spec the site cannot size is not one it trains
        raise PolicyRefusal(f"the round's model cannot be built ({type(exc).__name__}: {exc})", "model-name") from exc
    return sum(p.numel() for p in model.parameters())


# ---- privacy -------------------------------------------------------------------------------


def _uses_sample_dp(terms: SiteTerms, config) -> bool:
    """Whether the round trains with sample-level DP; refuses other mechanisms where the
    site asks for DP or keeps a budget (it can account nothing else)."""
    mechanism = str(config.get(DP_MECHANISM, "none"))
    if mechanism == "sample":
        return True
    if terms.require_dp:
        raise PolicyRefusal(f"the run uses privacy mechanism '{mechanism}'; policy.require_dp asks for "
                            "sample-level differential privacy (privacy.mechanism: sample)", DP_MECHANISM)
    if terms.privacy.max_epsilon is not None:
        raise PolicyRefusal(f"the run uses privacy mechanism '{mechanism}', which this site cannot account; "
                            f"privacy.max_epsilon={terms.privacy.max_epsilon:g} needs sample-level differential "
                            "privacy", DP_MECHANISM)
    return False


def private_round(privacy: SitePrivacy, asked: DPSettings, settings: TrainSettings, n_train: int) -> PrivateRound:
    """The round's DP-SGD (``asked``: the run's plan, ``settings``: its training) at this
    site's delta and accountant, refused where the run's plan contradicts the site's terms
    (plan, accountant, clipping norm, noise, epsilon per round)."""
    delta = _site_delta(privacy, n_train)
    _check_plan(privacy, asked)
    _check_accountant(privacy, asked)
    clip = _clipping_norm(privacy, asked)
    sample_rate, steps = steps_per_round(n_train, settings)
    noise = _noise(privacy, asked, delta, clip, sample_rate, steps)
    _check_round_cost(privacy, (noise, sample_rate, steps), delta)
    budget, setting = _budget(privacy, asked)
    dp = DPSettings(noise_multiplier=noise, target_epsilon=None, planned_rounds=asked.planned_rounds,
                    delta=delta, max_grad_norm=clip, max_epsilon=budget, accountant=privacy.accountant)
    return PrivateRound(dp, sample_rate, steps, setting)


def _site_delta(privacy: SitePrivacy, n_train: int) -> float:
    delta = site_delta(privacy, n_train)
    problem = delta_problem(delta, n_train)
    if problem:
        raise PolicyRefusal(problem, "privacy.delta")
    return delta


def _check_plan(privacy: SitePrivacy, asked: DPSettings) -> None:
    planned = asked.target_epsilon
    if privacy.max_epsilon is not None and planned is not None and planned > privacy.max_epsilon:
        raise PolicyRefusal(f"the run plans to spend epsilon {planned:g} at each site, more than "
                            f"privacy.max_epsilon={privacy.max_epsilon:g}", "dp-target-epsilon")


def _check_accountant(privacy: SitePrivacy, asked: DPSettings) -> None:
    """The site accounts with its own accountant whatever the round names; a round that
    names one whose epsilon is not an upper bound (gdp) plans with figures the site
    cannot honour, so it is refused."""
    if asked.accountant not in ACCOUNTANTS:
        raise PolicyRefusal(f"dp-accountant '{asked.accountant}' is not one this site accepts ({', '.join(ACCOUNTANTS)}; "
                            f"it accounts with privacy.accountant={privacy.accountant})", "dp-accountant")


def _clipping_norm(privacy: SitePrivacy, asked: DPSettings) -> float:
    clip = asked.max_grad_norm
    if not (clip > 0 and math.isfinite(clip)):
        raise PolicyRefusal(f"dp-max-grad-norm {clip:g} is not a positive clipping norm", "dp-max-grad-norm")
    if privacy.max_grad_norm is not None and clip > privacy.max_grad_norm:
        raise PolicyRefusal(f"dp-max-grad-norm {clip:g} is above privacy.max_grad_norm={privacy.max_grad_norm:g}",
                            "dp-max-grad-norm")
    return clip


def _noise(privacy: SitePrivacy, asked: DPSettings, delta: float, clip: float, sample_rate: float,
           steps: int) -> float:
    """The round's noise multiplier, given or calibrated at the site's delta and accountant
    for the run's target; refused below ``privacy.min_noise_multiplier``."""
    given = asked.noise_multiplier
    if given is not None:
        if not (given >= 0 and math.isfinite(given)):
            raise PolicyRefusal(f"dp-noise-multiplier {given} is not a noise multiplier", "dp-noise-multiplier")
        noise, what = given, f"dp-noise-multiplier {given:g}"
    else:  # the run names a target: the site finds the noise for it
        noise = _noise_for_target(privacy, asked, delta, clip, sample_rate, steps)
        what = f"the noise for dp-target-epsilon={asked.target_epsilon:g} at this site ({noise:.3f})"
    if noise < privacy.min_noise_multiplier:
        raise PolicyRefusal(f"{what} is below privacy.min_noise_multiplier={privacy.min_noise_multiplier:g}",
                            "dp-noise-multiplier")
    return noise


def _check_round_cost(privacy: SitePrivacy, event: tuple[float, float, int], delta: float) -> None:
    if privacy.max_epsilon_per_round is None:
        return
    cost = history_epsilon(privacy.accountant, (event,), delta)
    if cost > privacy.max_epsilon_per_round:
        noise, rate, steps = event
        raise PolicyRefusal(f"this round alone would spend epsilon {cost:.3f} at delta {delta:.3g} ({noise:g} noise, "
                            f"{steps} steps at sampling rate {rate:.4f}), above "
                            f"privacy.max_epsilon_per_round={privacy.max_epsilon_per_round:g}", "dp-noise-multiplier")


def _noise_for_target(privacy: SitePrivacy, asked: DPSettings, delta: float, clip: float, sample_rate: float,
                      steps: int) -> float:
    target, rounds = asked.target_epsilon, asked.planned_rounds
    if target is None or not (target > 0 and math.isfinite(target)):
        raise PolicyRefusal("the round gives neither a dp-noise-multiplier nor a positive dp-target-epsilon",
                            "dp-target-epsilon")
    if rounds < 1:
        raise PolicyRefusal(f"dp-planned-rounds {rounds} is not a number of rounds", "dp-planned-rounds")
    plan = DPSettings(noise_multiplier=None, target_epsilon=target, planned_rounds=rounds, delta=delta,
                      max_grad_norm=clip, max_epsilon=None, accountant=privacy.accountant)
    try:
        return noise_for(plan, sample_rate, steps)
    except ConfigError as exc:
        raise PolicyRefusal(f"{exc} at this site's delta {delta:.3g}", "dp-target-epsilon") from exc


def _budget(privacy: SitePrivacy, asked: DPSettings) -> tuple[float | None, str | None]:
    """The tighter of the site's budget and the run's own (its max epsilon, else its
    target): a coordinator may ask a site to stop sooner, never later."""
    budgets = []
    if privacy.max_epsilon is not None:
        budgets.append((privacy.max_epsilon, f"privacy.max_epsilon={privacy.max_epsilon:g}"))
    run_max, run_target = asked.max_epsilon, asked.target_epsilon
    if run_max is not None:
        budgets.append((run_max, f"the run's dp-max-epsilon={run_max:g}"))
    elif run_target is not None:
        budgets.append((run_target, f"the run's dp-target-epsilon={run_target:g}"))
    return min(budgets) if budgets else (None, None)


def check_site_budget(private: PrivateRound, spent: SiteAccountant) -> None:
    """`BudgetExhausted` when the site's spending so far and this round pass its budget,
    both reckoned at the site's delta with its accountant."""
    dp = private.dp
    if dp.max_epsilon is None:
        return
    after = spent.epsilon(dp.delta, private.event)
    if not after <= dp.max_epsilon:
        raise BudgetExhausted(
            f"privacy budget: this round would take the site's epsilon to {after:.3f} at delta {dp.delta:.3g} "
            f"({dp.accountant}), above {private.budget_setting} (spent so far {spent.epsilon(dp.delta):.3f})",
            "dp-noise-multiplier")
