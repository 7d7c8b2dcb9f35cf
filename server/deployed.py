"""The ServerApp of a deployed federation: ``serverapp`` of medfed's Flower app.

The SuperLink runs it on the coordinator for each run. Its run config (written by
``medfed server start`` into the app's pyproject.toml) carries the experiment config as
YAML text, the run folder, and the registered sites' node ids; the plan is built from
them exactly as in simulation (`medfed.simulation.experiment`), with the config's data
as the coordinator's own test set. The run folder gets the same files as a simulated
run, plus ``sites.json`` (which site is which); ``failed.json`` says why a run failed.
Only the registered sites are sent work and heard (`medfed.server.site_names`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medfed.config import ExperimentConfig, _explain, as_dict, to_yaml, validate
from medfed.errors import ConfigError
from medfed.federation.flower_app import CONFIG_KEY, OUTPUT_KEY, RESUME_KEY, SITES_KEY, WAIT_KEY
from medfed.server.app import wait_for_sites

SITES_FILE, FAILED_FILE = "sites.json", "failed.json"
log = logging.getLogger("medfed.server")


def experiment_from(run_config) -> DictConfig:
    """The experiment config carried by the run config, validated as `load_config` does."""
    text = run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"run config '{CONFIG_KEY}' is missing: submit runs with 'medfed server start'")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(text))
    except OmegaConfBaseException as exc:
        raise _explain(exc, f"run config '{CONFIG_KEY}'") from exc
    validate(cfg)
    return cfg


def build_plan(cfg: DictConfig, out: Path, num_sites: int, resume: bool):
    """The round plan of a deployed run, and what the summary needs: (plan, spec, data)."""
    from medfed.models.experiment_data import load_experiment_data
    from medfed.server.outputs import RunOutputs, start_wandb
    from medfed.server.plan import experiment_spec, round_plan
    from medfed.tasks import task

    if task(cfg.task).label_maps and cfg.data.segmentation.test_fraction:
        raise ConfigError("data.segmentation.test_fraction holds out cases of simulated sites; a deployed "
                          "coordinator scores on its own data.segmentation.test: set test_fraction to 0")
    data = load_experiment_data(cfg)
    spec = experiment_spec(cfg, data)
    outputs = RunOutputs(out, start_wandb(cfg.logging.wandb, cfg.logging.wandb_project, out.name, as_dict(cfg), out))
    outputs.write_config(to_yaml(cfg))
    plan = round_plan(cfg, spec, data, num_sites, outputs, resume, show_progress=False)
    return plan, spec, data


def run_deployed(grid: Grid, run_config) -> dict:
    """Every round of the run described by ``run_config``; returns the summary."""
    from medfed.server.rounds import RoundFailed, run_rounds
    from medfed.server.site_names import NamedSites, intruders, parse_site_nodes
    from medfed.server.update_checks import rejections

    started = time.perf_counter()
    if not run_config.get(OUTPUT_KEY):
        raise ConfigError(f"run config '{OUTPUT_KEY}' is missing: submit runs with 'medfed server start'")
    out = Path(str(run_config[OUTPUT_KEY]))
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg = experiment_from(run_config)
        names = parse_site_nodes(str(run_config.get(SITES_KEY, "")))
        num_sites = len(names) or cfg.partition.num_sites
        plan, spec, data = build_plan(cfg, out, num_sites, bool(run_config.get(RESUME_KEY, False)))
        sites = NamedSites(grid, names)
        if names:
            plan.intruders = sites.take_intruders
        # through NamedSites, so an intruder neither counts as a site nor goes unreported
        wait_for_sites(sites, num_sites, float(run_config.get(WAIT_KEY, 300.0)))
        weights, rows = run_rounds(sites, plan)
        (out / SITES_FILE).write_text(json.dumps(sites.table(), indent=2) + "\n")
        if not rows:
            raise RoundFailed(f"no round finished: {plan.stopped or 'unknown reason'}")
    except Exception as exc:
        (out / FAILED_FILE).write_text(json.dumps({"error": str(exc), "type": type(exc).__name__}) + "\n")
        raise
    if weights is not None:
        plan.outputs.save_model(weights, {"model": spec.__dict__, "config": as_dict(cfg)})
    plan.outputs.plot()
    summary = {
        "name": cfg.name, "mode": "deployed", "task": cfg.task, "dataset": data.source,
        "sites": sites.table(), "rounds": cfg.train.rounds, "rounds_done": rows[-1]["round"],
        "strategy": cfg.strategy.name, "model": cfg.model.name, "test": rows[-1]["test"],
        "per_site": rows[-1]["global_model_at_sites"], "privacy": plan.privacy.block(),
        "stopped_early": plan.stopped, "updates_rejected": rejections(rows),
        "intruders": intruders(rows),
        "seconds": {"total": time.perf_counter() - started},
    }
    plan.outputs.write_summary(summary)
    return summary


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_deployed(grid, context.run_config)
