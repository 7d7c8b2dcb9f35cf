"""Differential privacy at the server: what the sites are told each round, and the ledger.

Client-level DP wraps the strategy in Flower's clipping wrappers
(`medfed.strategies.client_level_dp`). Fixed clipping is accounted by Flower's
`RdpAccountant` (dp-accounting underneath); Flower's adaptive wrappers take no
accountant, so the ledger composes the same Gaussian events into its own Flower
`RdpAccountant`. Sample-level DP is accounted at the sites (Opacus); the ledger keeps
each site's latest report. Either way, every epsilon medfed prints comes from one of
those accountants.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent
from omegaconf import DictConfig

from medfed.wire import DP_ADAPTIVE, DP_MECHANISM, PRIVACY_KEYS, DPSettings


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
