"""Differential privacy at the server: client-level DP wrappers, and the privacy ledger.

Client-level DP (each hospital's whole update is protected) wraps the strategy in
Flower's fixed- or adaptive-clipping wrappers. Fixed clipping is accounted by Flower's
`RdpAccountant` (dp-accounting underneath); Flower's adaptive wrappers take no
accountant, so the ledger composes the same Gaussian events into its own Flower
`RdpAccountant`. Sample-level DP is accounted at the sites (Opacus); the ledger keeps
each site's latest report. Either way, every epsilon medfed prints comes from one of
those accountants.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from omegaconf import DictConfig

from medfed.client.noise_calibration import least_noise, opacus_epsilon
from medfed.errors import ConfigError
from medfed.wire import DP_ADAPTIVE, DP_MECHANISM, PRIVACY_KEYS, DPSettings


def client_accountant(num_sites: int, delta: float, max_epsilon: float | None) -> RdpAccountant:
    """Flower's accountant for one Gaussian release per round over all ``num_sites`` sites
    (every site takes part, so no amplification by sampling)."""
    return RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=num_sites,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=max_epsilon,
    ))


def client_epsilon(noise: float, rounds: int, num_sites: int, delta: float) -> float:
    accountant = client_accountant(num_sites, delta, None)
    accountant.compose(GaussianPrivacyEvent(noise, num_sites, num_sites), count=rounds)
    return accountant.get_epsilon(delta)


def client_noise_for(target: float, rounds: int, num_sites: int, delta: float) -> float:
    """Least noise multiplier whose epsilon after ``rounds`` rounds is at most ``target`` by
    Flower's accountant (dp-accounting's RDP, which the server reports) and by Opacus'
    RDP accountant for the same Gaussian release without sampling: see
    client/noise_calibration.py for why two."""
    try:
        return least_noise([
            lambda noise: client_epsilon(noise, rounds, num_sites, delta),
            lambda noise: opacus_epsilon("rdp", noise, 1.0, rounds, delta),  # every site, every round
        ], target)
    except ValueError as exc:
        raise ConfigError(f"privacy.target_epsilon={target} cannot be reached in {rounds} rounds") from exc


def wrap_client_level(strategy: Strategy, cfg: DictConfig, num_sites: int) -> Strategy:
    """The strategy inside Flower's client-level DP wrapper chosen in ``cfg.privacy``."""
    dp = cfg.privacy
    if cfg.strategy.fraction_train < 1.0:
        raise ConfigError("client-level DP is accounted without sampling: set strategy.fraction_train=1")
    noise = (
        dp.noise_multiplier if dp.noise_multiplier is not None
        else client_noise_for(dp.target_epsilon, cfg.train.rounds, num_sites, dp.delta)
    )
    budget = dp.max_epsilon if dp.max_epsilon is not None else dp.target_epsilon
    if dp.adaptive:
        wrapper = (DifferentialPrivacyServerSideAdaptiveClipping if dp.clipping == "server"
                   else DifferentialPrivacyClientSideAdaptiveClipping)
        wrapped = wrapper(strategy, noise, num_sites, initial_clipping_norm=dp.clipping_norm)
        wrapped.medfed_accountant = client_accountant(num_sites, dp.delta, budget)
        return wrapped
    wrapper = (DifferentialPrivacyServerSideFixedClipping if dp.clipping == "server"
               else DifferentialPrivacyClientSideFixedClipping)
    if noise <= 0:
        return wrapper(strategy, noise, dp.clipping_norm, num_sites)  # clipping only, no guarantee
    return wrapper(strategy, noise, dp.clipping_norm, num_sites,
                   accountant=client_accountant(num_sites, dp.delta, budget))


def round_privacy_config(cfg: DictConfig) -> dict:
    """What the sites must know of the privacy settings each round."""
    dp = cfg.privacy
    config: dict = {DP_MECHANISM: dp.mechanism}
    if dp.mechanism == "sample":
        config.update(DPSettings(
            noise_multiplier=dp.noise_multiplier, target_epsilon=dp.target_epsilon, planned_rounds=cfg.train.rounds,
            delta=dp.delta, max_grad_norm=dp.max_grad_norm, max_epsilon=dp.max_epsilon, accountant=dp.accountant,
        ).to_config())
    if dp.mechanism == "client":
        config[DP_ADAPTIVE] = bool(dp.adaptive)
    return config


class PrivacyLedger:
    """Privacy spent so far, for ``metrics.jsonl`` lines and the summary."""

    def __init__(self, cfg: DictConfig) -> None:
        self.mechanism = cfg.privacy.mechanism
        self.delta = float(cfg.privacy.delta)
        self.sites: dict[str, dict] = {}
        self.central: dict = {}

    def record(self, strategy: Strategy, sites: dict[str, dict]) -> None:
        """After a round: take the sites' own reports, or the server's accountant."""
        if self.mechanism == "sample":
            for name, metrics in sites.items():
                self.sites[name] = {k: metrics.pop(k) for k in PRIVACY_KEYS if k in metrics}
        elif self.mechanism == "client":
            accountant = getattr(strategy, "accountant", None)
            if accountant is None and hasattr(strategy, "medfed_accountant"):
                accountant = strategy.medfed_accountant
                accountant.compose(GaussianPrivacyEvent(
                    strategy.noise_multiplier, strategy.num_sampled_clients,
                    accountant.config.population_size))
            self.central = {
                "noise_multiplier": float(strategy.noise_multiplier),
                "clipping_norm": float(strategy.clipping_norm),
                "sites_per_round": int(strategy.num_sampled_clients),
                "delta": self.delta,
                "epsilon": accountant.get_epsilon(self.delta) if accountant is not None and accountant.num_releases else None,
                "rounds": accountant.num_releases if accountant is not None else None,
            }

    def would_exceed(self, strategy: Strategy) -> bool:
        """Adaptive client-level DP: would one more round pass the budget?"""
        accountant = getattr(strategy, "medfed_accountant", None)
        if accountant is None or accountant.config.max_epsilon is None:
            return False
        event = GaussianPrivacyEvent(strategy.noise_multiplier, strategy.num_sampled_clients,
                                     accountant.config.population_size)
        return accountant.would_exceed(event)

    def block(self) -> dict:
        if self.mechanism == "none":
            return {"mechanism": "none", "epsilon": None}
        if self.mechanism == "client":
            return {"mechanism": "client-level DP (Flower, RDP accountant)", **self.central}
        reported = [s for s in self.sites.values() if s.get("epsilon") is not None]
        worst = max(reported, key=lambda s: s["epsilon"], default={})
        return {
            "mechanism": "sample-level DP-SGD (Opacus)",
            "epsilon": worst.get("epsilon"),  # the worst case over sites
            "delta": worst.get("delta", self.delta),  # at that site's own delta (a deployed site keeps its own)
            "sites": self.sites,
        }

    def restore(self, block: dict | None) -> None:
        """On resume: the ledger as the last finished round left it."""
        if block and self.mechanism == "sample":
            self.sites = dict(block.get("sites", {}))
        elif block and self.mechanism == "client":  # a run killed after its last checkpoint reports it too
            self.central = {k: v for k, v in block.items() if k != "mechanism"}
