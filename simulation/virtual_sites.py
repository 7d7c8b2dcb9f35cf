"""The terms of a simulation's virtual sites, and the check that they accept the run.

A simulated hospital holds each round to the same terms, with the same function, as a
deployed one (`medfed.client.site_policy.accept_round`); its terms come from the
experiment config instead of a SITE.yaml: the run's ``privacy.delta``, ``accountant``
and (sample-level DP) ``max_epsilon`` are every site's privacy promise, and
``limits`` its training limits (SITE.yaml's defaults unless the config says otherwise).
A simulation whose own settings a site would refuse stops before the engine starts,
naming the experiment's setting, rather than failing round after round.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from medfed.client.site import site_folder_name
from medfed.client.site_policy import accept_round
from medfed.errors import ConfigError
from medfed.models.spec import ModelSpec
from medfed.site_terms import RoundRefused, SitePrivacy, SiteTerms
from medfed.wire import DP_MECHANISM, DPSettings, TrainSettings, wire_keys

# the experiment setting behind each round-config key a site may refuse
EXPERIMENT_SETTING = {
    **{key: w.setting for key, w in {**wire_keys(TrainSettings), **wire_keys(DPSettings)}.items()},
    "model-name": "model.name", "model-task": "task", DP_MECHANISM: "privacy.mechanism",
}


def simulated_terms(cfg: DictConfig) -> SiteTerms:
    """Every virtual site's terms: any task and model, no minimum noise (the researcher
    chooses the noise), the run's delta and accountant, its budget under sample-level DP."""
    dp = cfg.privacy
    privacy = SitePrivacy(
        max_epsilon=dp.max_epsilon if dp.mechanism == "sample" else None,
        delta=float(dp.delta), accountant=dp.accountant, min_noise_multiplier=0.0,
    )
    return SiteTerms(privacy=privacy, limits=OmegaConf.to_object(cfg.limits))


def check_sites_accept(cfg: DictConfig, spec: ModelSpec, train_sizes: list[int]) -> None:
    """`ConfigError` naming the experiment's setting if any virtual site would refuse the
    run's first or last round (the learning rate's extremes under its decay)."""
    from medfed.server.plan import round_config

    terms = simulated_terms(cfg)
    rounds = sorted({1, cfg.train.rounds})
    for index, n in enumerate(train_sizes):
        for rnd in rounds:
            try:
                accept_round(terms, round_config(cfg, spec, rnd), n)
            except RoundRefused as exc:
                setting = EXPERIMENT_SETTING.get(exc.setting, exc.setting)
                raise ConfigError(f"bad value for '{setting}': {site_folder_name(index)} refuses "
                                  f"round {rnd}: {exc}") from exc
