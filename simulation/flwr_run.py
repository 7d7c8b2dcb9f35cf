"""`flwr run .`: a medfed experiment as a Flower app in Flower's own simulation runtime.

The repository's pyproject.toml makes the repository a Flower app whose FAB carries only
`flwr_app.py` (the ServerApp and ClientApp objects) and `configs/`; medfed itself is
installed, so the FAB never shadows it. The ServerApp runs the experiment exactly as
`medfed simulate` does (`medfed.simulation.experiment.run_experiment`: partition, report,
audit, summary), except that the rounds go over the Grid that Flower gives it. Flower's
federation decides the number of sites: the experiment is partitioned over its
``num-supernodes``. Every ClientApp finds its site's shard in the run folder, which
server and clients derive alike from the run config and the run id.

Run config (``-c`` / ``--run-config``):
  experiment  a config in the FAB's ``configs/`` (or an absolute path)
  overrides   ``key=value`` settings, space-separated, as after ``medfed simulate CONFIG``
  output      the run folder (default ``runs/NAME-flwr-RUNID``, relative paths from the
              SuperLink's working directory, as data folders are)
  resume      continue the run in ``output`` from its checkpoint
"""

from __future__ import annotations

import logging
import shlex
from functools import lru_cache
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from medfed.client.app import make_client_app
from medfed.client.site import SimulatedSites, Site
from medfed.config import load_config, simulated_misbehaviour
from medfed.errors import ConfigError
from medfed.server.app import ServerResult
from medfed.server.rounds import RoundPlan, headline, run_rounds

EXPERIMENT_KEY, OVERRIDES_KEY, OUTPUT_KEY, RESUME_KEY = "experiment", "overrides", "output", "resume"
log = logging.getLogger("medfed")


def experiment_config(run_config, app_dir: Path, num_sites: int) -> DictConfig:
    """The experiment the run config names, over ``num_sites`` sites (the federation's size)."""
    name = str(run_config.get(EXPERIMENT_KEY, "")).strip()
    if not name:
        raise ConfigError(f"run config '{EXPERIMENT_KEY}' is empty: name a config, e.g. "
                          f"-c \"{EXPERIMENT_KEY}='configs/pneumonia-fedavg.yaml'\"")
    path = Path(name) if Path(name).is_absolute() else app_dir / name
    overrides = shlex.split(str(run_config.get(OVERRIDES_KEY, "")))
    cfg = load_config(path, [*overrides, f"partition.num_sites={num_sites}"])
    if cfg.mode != "federated":
        raise ConfigError(f"run config '{OVERRIDES_KEY}': flwr run runs federated experiments; "
                          f"run mode={cfg.mode} with 'medfed simulate'")
    return cfg


def run_folder(cfg: DictConfig, run_config, run_id: int) -> Path:
    return Path(str(run_config.get(OUTPUT_KEY, "")) or f"runs/{cfg.name}-flwr-{run_id}").resolve()


def _rounds_on(grid: Grid):
    """`run_experiment`'s ``federate``: the plan's rounds over Flower's Grid."""

    def federate(cfg: DictConfig, plan: RoundPlan, sites_root: str, num_sites: int) -> ServerResult:
        weights, rounds = run_rounds(grid, plan)
        return ServerResult(weights, rounds)

    return federate


def server_app(app_dir: Path) -> ServerApp:
    """The ServerApp of `flwr run`, reading experiment configs from the FAB at ``app_dir``."""
    from medfed.simulation.experiment import run_experiment

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        num_sites = len(list(grid.get_node_ids()))
        cfg = experiment_config(context.run_config, app_dir, num_sites)
        out = run_folder(cfg, context.run_config, context.run_id)
        log.warning("medfed: %s over %d sites (Flower's num-supernodes) -> %s", cfg.name, num_sites, out)
        summary = run_experiment(cfg, out, bool(context.run_config.get(RESUME_KEY, False)),
                                 federate=_rounds_on(grid))
        log.warning("medfed: finished, %s; report in %s", headline(summary["test"]) or "no test", out)

    return app


@lru_cache(maxsize=8)
def _sites(app_dir: Path, run_config: tuple, run_id: int, num_sites: int) -> tuple[SimulatedSites, DictConfig]:
    from medfed.simulation.virtual_sites import simulated_terms

    cfg = experiment_config(dict(run_config), app_dir, num_sites)
    root = run_folder(cfg, dict(run_config), run_id) / "sites"
    return SimulatedSites(str(root), cfg.train.device, cfg.simulation.threads_per_site, simulated_terms(cfg)), cfg


def _experiment_of(context: Context, app_dir: Path) -> tuple[SimulatedSites, DictConfig]:
    key = tuple(sorted(context.run_config.items()))
    return _sites(app_dir, key, context.run_id, int(context.node_config["num-partitions"]))


def client_app(app_dir: Path) -> ClientApp:
    """The ClientApp of `flwr run`: medfed's ClientApp, each virtual site reading its shard
    from the run folder, with the experiment's simulated misbehaviour if it asks for any."""

    def locate(context: Context) -> Site:
        return _experiment_of(context, app_dir)[0](context)

    def misbehaviour(msg, context: Context, call_next):
        from medfed.simulation.adversary import Misbehaviour

        cfg = _experiment_of(context, app_dir)[1]
        if not simulated_misbehaviour(cfg):
            return call_next(msg, context)
        return Misbehaviour.from_config(cfg)(msg, context, call_next)

    return make_client_app(locate, mods=(misbehaviour,))
