"""Aggregation rules by name: Flower's strategies (robust ones included), plus FedBN and
norm-bounded FedAvg, which Flower lacks; Flower's client-level DP wrappers around any of
them (`medfed.strategies.client_level_dp`)."""

from __future__ import annotations

import math

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)
from omegaconf import DictConfig

from medfed.config import STRATEGIES
from medfed.errors import ConfigError
from medfed.strategies.fedbn import FedBN
from medfed.strategies.norm_bounded import NormBoundedFedAvg
from medfed.wire import UNIT_WEIGHT

ROBUST = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "normbounded")
SITE_KEY = "site"  # every reply names its site; averaging it makes no sense


def average_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of each metric over the sites that report a finite value.

    Flower's default averages NaN into NaN, and a site whose validation shard holds a
    single class has no AUC; skipping it keeps the federation's figure meaningful.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        for metrics in record.metric_records.values():
            w = float(metrics.get(weight_key, 1))
            for key, value in metrics.items():
                if key in (weight_key, SITE_KEY) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    sums[key] = sums.get(key, 0.0) + w * value
                    weights[key] = weights.get(key, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums if weights[k] > 0})


def build_strategy(cfg: DictConfig, num_sites: int) -> Strategy:
    """The configured strategy, sampling ``fraction_train`` of ``num_sites`` each round,
    inside Flower's client-level DP wrapper when ``privacy.mechanism`` is ``client``."""
    strategy = _aggregation_rule(cfg, num_sites)
    if cfg.privacy.mechanism == "client":
        from medfed.strategies.client_level_dp import wrap_client_level

        return wrap_client_level(strategy, cfg, num_sites)
    return strategy


def _aggregation_rule(cfg: DictConfig, num_sites: int) -> Strategy:
    s = cfg.strategy
    name = s.name.lower()
    common = dict(
        fraction_train=s.fraction_train,
        # every minimum is capped at the sites there are: Flower waits for them, without end
        min_train_nodes=min(s.min_sites, num_sites),
        min_evaluate_nodes=min(s.min_sites, num_sites),
        min_available_nodes=min(s.min_sites, num_sites),
        train_metrics_aggr_fn=average_metrics,
    )
    if cfg.privacy.mechanism == "client":
        # Flower accounts client-level DP only for an average with equal site weights
        common["weighted_by_key"] = UNIT_WEIGHT
    opt = dict(eta=s.server_lr, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau)
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedbn":
        return FedBN(**common)
    if name == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **common)
    if name == "fedadam":
        return FedAdam(**common, **opt)
    if name == "fedyogi":
        return FedYogi(**common, **opt)
    if name == "fedadagrad":
        return FedAdagrad(eta=s.server_lr, tau=s.tau, **common)
    if name == "fedavgm":
        return FedAvgM(server_learning_rate=1.0, server_momentum=s.server_momentum, **common)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=s.trim_fraction, **common)
    if name == "normbounded":
        return NormBoundedFedAvg(norm_bound=s.norm_bound, **common)
    if name in ("krum", "multikrum", "bulyan"):
        return _byzantine_rule(name, s, max(int(num_sites * s.fraction_train), common["min_train_nodes"]), common)
    raise ConfigError(
        f"unknown strategy '{s.name}' (strategy.name): choose from {', '.join(STRATEGIES)}"
    )


def _byzantine_rule(name: str, s: DictConfig, n: int, common: dict) -> Strategy:
    """Krum, MultiKrum or Bulyan, refused when the ``n`` sites of a round (counted as Flower's
    FedAvg samples them) cannot outvote f attackers."""
    f = s.num_malicious
    needed = 4 * f + 3 if name == "bulyan" else 2 * f + 3
    if n < needed:
        raise ConfigError(f"strategy.num_malicious: {name} with f={f} needs at least {needed} sites per "
                          f"round, the federation samples {n}")
    if name == "bulyan":
        return Bulyan(num_malicious_nodes=f, **common)
    if name == "krum":
        return Krum(num_malicious_nodes=f, **common)
    select = s.krum_select or n - f
    if select > n:
        raise ConfigError(f"strategy.krum_select: {select} is more than the {n} sites of a round")
    return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=select, **common)


__all__ = ["STRATEGIES", "FedBN", "build_strategy", "average_metrics"]
