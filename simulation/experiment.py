"""One simulated experiment from config to summary: data, sites, training, report.

Everything that can be wrong with the input (config, files, partition) is checked
before the run directory is created, and ``summary.json`` is written last, so a run
that stopped or failed never looks finished.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from medfed.client.site import site_folder_name, write_site_data
from medfed.config import as_dict, to_yaml
from medfed.errors import ConfigError, MedfedError
from medfed.models.classification.train import train
from medfed.models.experiment_data import data_dir, load_experiment_data
from medfed.models.local_training import resolve_device
from medfed.models.private_layers import incompatible_layers
from medfed.models.spec import ModelSpec
from medfed.server.app import ServerResult
from medfed.server.outputs import CHECKPOINT, CONFIG, SUMMARY, RunOutputs, start_wandb
from medfed.server.plan import experiment_spec, round_plan, train_settings
from medfed.server.plots import plot_privacy
from medfed.server.progress import phase, say
from medfed.server.rounds import RoundFailed, RoundPlan
from medfed.server.update_checks import rejections
from medfed.simulation.adversary import flip_labels
from medfed.simulation.audit import membership_attack
from medfed.simulation.baselines import own_test, run_local, run_pooled
from medfed.simulation.canaries import canary_attack, plant_canaries
from medfed.simulation.class_names import class_names
from medfed.simulation.partition import SiteShard, natural_sites, partition
from medfed.simulation.report import print_partition_table, write_case_split, write_partition_report
from medfed.simulation.shift import site_scanners
from medfed.simulation.virtual_sites import check_sites_accept
from medfed.tasks import task

log = logging.getLogger("medfed")
# runs the rounds of a plan over the sites stored under a folder: (cfg, plan, sites_root, num_sites)
Federate = Callable[[DictConfig, RoundPlan, str, int], ServerResult]


class RunDirError(MedfedError):
    """The output folder cannot be used for this run."""


def default_output(cfg: DictConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{cfg.mode}-{datetime.now():%Y%m%d-%H%M%S}"


def _check_output(out: Path, resume: bool) -> None:
    if resume:
        if not (out / CONFIG).is_file():
            raise RunDirError(f"--resume: {out} holds no run to resume ({CONFIG} is missing)")
        if (out / SUMMARY).is_file():
            raise RunDirError(f"--resume: the run in {out} already finished ({SUMMARY} exists)")
    elif out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} is not empty: choose another --output, or add --resume to continue it")


def _apply_shift(sites: list[SiteShard], cfg: DictConfig) -> list:
    scanners = site_scanners(len(sites), cfg.shift.strength, cfg.seed)
    for i, (site, scanner) in enumerate(zip(sites, scanners)):
        if scanner is not None:
            rng = np.random.default_rng([cfg.seed, i, 11])
            apply = scanner.apply_segmentation if task(cfg.task).label_maps else scanner.apply
            site.train, site.val = apply(site.train, rng), apply(site.val, rng)
            if site.test is not None:
                site.test = apply(site.test, rng)
    return scanners


def run_experiment(cfg: DictConfig, out: Path | None = None, resume: bool = False,
                   console: Console | None = None, federate: Federate | None = None) -> dict:
    """Run ``cfg`` in its mode (federated, pooled or local); return the summary.

    ``federate`` runs the rounds of a federated run: by default Flower's Simulation Engine
    started here (`medfed.simulation.engine`); `flwr run .` passes the Grid Flower gave it.
    A start that fails before its first checkpoint leaves no folder behind, so the
    corrected command can be run as it is (without --resume, and with the same --output)."""
    out = Path(out) if out else default_output(cfg)
    _check_output(out, resume)
    fresh = not resume and not out.exists()
    try:
        return _run_experiment(cfg, out, resume, console or Console(stderr=True), federate)
    except Exception:
        if fresh and not (out / CHECKPOINT).is_file():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_experiment(cfg: DictConfig, out: Path, resume: bool, console: Console, federate: Federate | None) -> dict:
    started = time.perf_counter()
    # config.yaml records where the data was found, so a resume from another shell finds it too
    cfg.data.root = str(data_dir(cfg.data.root).resolve())

    if cfg.mode != "federated" and cfg.privacy.mechanism != "none":
        raise ConfigError("privacy.mechanism applies to federated runs: set mode=federated or privacy.mechanism=none")
    with phase(console, "reading the data and partitioning it into sites", cfg.logging.progress):
        data = load_experiment_data(cfg)
        sites = natural_sites(data.natural, cfg) if data.natural else partition(data.pool, cfg)
        scanners = _apply_shift(sites, cfg)
    if data.test is None:  # data.segmentation.test_fraction: the sites' held-out cases are the test set
        data.test = type(sites[0].test).concat([s.test for s in sites])
    spec = experiment_spec(cfg, data)
    spec.build()  # an unknown model name fails here, before anything is written
    if cfg.attack.behaviour == "label_flip":
        for i in cfg.attack.sites:
            sites[i].train = flip_labels(sites[i].train, spec.num_classes)
    canaries = (plant_canaries(sites, cfg.evaluation.audit_canaries, spec.num_classes, cfg.seed)
                if cfg.evaluation.audit_canaries else None)
    if cfg.mode == "federated":  # the sites would refuse what they cannot accept: say so before anything runs
        check_sites_accept(cfg, spec, [len(s.train) for s in sites])
    if spec.dp_compatible:
        raw = replace(spec, dp_compatible=False).build()
        for layer, count in incompatible_layers(raw).items():
            console.print(f"privacy: Opacus' ModuleValidator replaced {count} {layer} layer(s) "
                          "(BatchNorm becomes GroupNorm) in every party's model", soft_wrap=True)

    outputs = RunOutputs(out, start_wandb(cfg.logging.wandb, cfg.logging.wandb_project,
                                          out.name, as_dict(cfg), out))
    if resume and (out / CONFIG).read_text() != to_yaml(cfg):
        raise RunDirError(f"--resume: the config differs from {out / CONFIG}; resume with that file")
    outputs.write_config(to_yaml(cfg))
    title = f"{cfg.name}: {cfg.partition.scheme} over {len(sites)} sites"
    table = write_partition_report(sites, _strata_names(cfg, data), out, title, scanners)
    if task(cfg.task).label_maps:
        write_case_split(sites, data.test, out)
    if cfg.logging.progress:
        print_partition_table(table, console)
    sites_root = out / "sites"
    for i, site in enumerate(sites):
        write_site_data(sites_root / site_folder_name(i), site.train, site.val)
    setup_seconds = time.perf_counter() - started

    log.info("mode %s, %d sites, %d rounds -> %s", cfg.mode, len(sites), cfg.train.rounds, out)
    if resume and cfg.mode != "federated":
        outputs.restore_rounds([])  # baselines keep no checkpoints: they start again
    privacy, stopped = {"mechanism": "none", "epsilon": None}, None
    if cfg.mode == "federated":
        weights, test, per_site, privacy, stopped = _federated(cfg, spec, data, sites_root, len(sites),
                                                               outputs, resume, console, federate)
    elif cfg.mode == "pooled":
        weights, test, per_site = run_pooled(cfg, spec, sites, data.test, outputs)
    else:
        weights, test, per_site = run_local(cfg, spec, sites, data.test, outputs)
    if stopped:
        console.print(f"[yellow]stopped early:[/] {stopped}", soft_wrap=True)

    if cfg.privacy.mechanism != "none":
        plot_privacy(outputs.rounds(), out / "epsilon.png", _site_names(sites))
    audit = None
    if weights is not None and task(cfg.task).predicts_labels and cfg.evaluation.membership_audit:
        audit = _audit(cfg, spec, data, sites, canaries, weights, console)
    if weights is not None and any(site.test is not None for site in sites):
        with phase(console, "the final model on each site's own test cases", cfg.logging.progress):
            for i, site in enumerate(sites):  # local mode scored each site's own model already
                per_site.setdefault(site_folder_name(i), {})["own_test"] = own_test(cfg, spec, site, weights)
    if weights is not None:
        outputs.save_model(weights, {"model": spec.__dict__, "config": as_dict(cfg)})
    if weights is not None and task(cfg.task).pictures:
        with phase(console, "pictures of the final model", cfg.logging.progress):
            task(cfg.task).file("pictures").save_pictures(cfg, spec, weights, data.test, out)
    outputs.plot(_site_names(sites))
    summary = {
        "name": cfg.name,
        "mode": cfg.mode,
        "task": cfg.task,
        "dataset": data.source,
        "sites": len(sites),
        "rounds": cfg.train.rounds,
        "strategy": cfg.strategy.name if cfg.mode == "federated" else None,
        "model": cfg.model.name,
        "test": test,
        "per_site": per_site,
        "privacy": {**privacy, "membership_inference": audit},
        "stopped_early": stopped,
        "updates_rejected": rejections(outputs.rounds()),
        "seconds": {"setup": setup_seconds, "total": time.perf_counter() - started},
    }
    outputs.write_summary(summary)
    return summary


def _strata_names(cfg: DictConfig, data) -> list[str]:
    """The classes partition.csv counts: multi-label rows by their first positive label,
    plus one class for rows with none; segmentation images are one class."""
    if data.labels is None:
        return ["images"]
    return class_names(cfg, data.labels.num_classes) + (["no label"] if data.pool.multilabel else [])


def _site_names(sites: list[SiteShard]) -> dict[str, str]:
    """``site-NNN -> name`` where a site has a name of its own (natural sites)."""
    return {site_folder_name(i): s.name for i, s in enumerate(sites) if s.name != site_folder_name(i)}


def _audit(cfg: DictConfig, spec: ModelSpec, data, sites: list[SiteShard], canaries, weights,
           console: Console) -> dict:
    """Membership-inference attacks on the final model (and on the planted canaries)."""
    started, threads = time.perf_counter(), torch.get_num_threads()
    # the sites' thread setting: torch's default (every core) competes with the Ray workers still
    # winding down, 11x slower on a busy 2-core machine
    torch.set_num_threads(cfg.simulation.threads_per_site)
    try:
        audit = _attacks(cfg, spec, data, sites, canaries, weights, console)
    finally:
        torch.set_num_threads(threads)
    audit["seconds"] = round(time.perf_counter() - started, 1)
    return audit


def _attacks(cfg: DictConfig, spec: ModelSpec, data, sites: list[SiteShard], canaries, weights,
             console: Console) -> dict:
    with phase(console, "membership-inference audit of the final model", cfg.logging.progress):
        model = spec.build()
        model.load_state_dict(weights)
        device = resolve_device(cfg.train.device)
        ordinary = canaries.without_members(sites) if canaries is not None else sites
        audit = membership_attack(model, ordinary, spec.label_kind, device, cfg.seed, reference=spec.build(),
                                  train_reference=_reference_trainer(cfg, spec, device), test=data.test)
        if canaries is not None:
            audit["canaries"] = canary_attack(model, canaries, spec.label_kind, device, cfg.seed)
    return audit


def _reference_trainer(cfg: DictConfig, spec: ModelSpec, device):
    """Trains the audit's reference model as the federation trained: same settings, as
    many epochs as rounds x local epochs (without DP: the reference has nothing to hide)."""

    def train_reference(model, data) -> None:
        for rnd in range(1, cfg.train.rounds + 1):
            train(model, data, train_settings(cfg, spec, rnd, seed=cfg.seed + rnd), device)

    return train_reference


def _federated(cfg, spec, data, sites_root: Path, num_sites: int, outputs: RunOutputs, resume: bool,
               console: Console, federate: Federate | None):
    plan = round_plan(cfg, spec, data, num_sites, outputs, resume, cfg.logging.progress)
    if federate is None:
        from medfed.simulation.engine import simulate_federation as federate  # imports Ray: only when needed

        if cfg.logging.progress:  # Ray takes a while to start; the first round's line follows
            say(console, f"starting Flower's Simulation Engine with {num_sites} virtual sites ...")
    result = federate(cfg, plan, str(sites_root), num_sites)
    if result.error is not None:
        raise result.error
    rows = result.rounds
    if not rows:
        raise RoundFailed(f"no round finished: {plan.stopped or 'unknown reason'}")
    return result.weights, rows[-1]["test"], rows[-1]["global_model_at_sites"], plan.privacy.block(), plan.stopped
