"""Client-level DP (each hospital's whole update is protected): the strategy inside
Flower's fixed- or adaptive-clipping wrappers, with Flower's RDP accountant, and the
noise that reaches a target epsilon."""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from omegaconf import DictConfig

from medfed.errors import ConfigError
from medfed.noise_calibration import least_noise, opacus_epsilon


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
    medfed/noise_calibration.py for why two."""
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
