"""Run the federation in Flower's Simulation Engine (Ray), one virtual SuperNode per site."""

from __future__ import annotations

import logging
import os

from flwr.simulation import run_simulation
from omegaconf import DictConfig

from medfed.client.app import make_client_app
from medfed.client.site import SimulatedSites
from medfed.config import simulated_misbehaviour
from medfed.server.app import ServerResult, make_server_app
from medfed.server.rounds import RoundPlan
from medfed.simulation.adversary import Misbehaviour
from medfed.simulation.virtual_sites import simulated_terms
from medfed.simulation.worker_recovery import replace_dead_workers


def backend_config(cfg: DictConfig) -> dict:
    """Ray resources per virtual site: each site's torch threads get their own cores."""
    sim = cfg.simulation
    return {
        "client_resources": {"num_cpus": sim.cpus_per_site, "num_gpus": sim.gpus_per_site},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "log_to_driver": False,
            "configure_logging": True,
            "logging_level": logging.ERROR,
        },
    }


def simulate_federation(cfg: DictConfig, plan: RoundPlan, sites_root: str, num_sites: int) -> ServerResult:
    """Run every round of ``plan`` over ``num_sites`` virtual sites stored under ``sites_root``."""
    result = ServerResult()
    locate = SimulatedSites(sites_root, cfg.train.device, cfg.simulation.threads_per_site, simulated_terms(cfg))
    replace_dead_workers()
    mods = (Misbehaviour.from_config(cfg),) if simulated_misbehaviour(cfg) else ()
    flwr_logger = logging.getLogger("flwr")
    if not logging.getLogger().isEnabledFor(logging.INFO):  # medfed --verbose shows them
        flwr_logger.setLevel(logging.ERROR)
    # Ray leaves CUDA_VISIBLE_DEVICES alone for sites without a GPU share
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        run_simulation(
            server_app=make_server_app(plan, result, sites=num_sites),
            client_app=make_client_app(locate, mods),
            num_supernodes=num_sites,
            backend_config=backend_config(cfg),
        )
    finally:
        import ray

        if ray.is_initialized():  # run_simulation leaves Ray up when the ServerApp fails
            ray.shutdown()
    return result
