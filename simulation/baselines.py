"""Baselines on the same sites, model and test set: pooled (all data in one place) and
local (each site alone). Both train with the client's own training function and the
federation's learning-rate schedule, for the same number of epochs per round."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from omegaconf import DictConfig

from medfed.client.local_round import local_train
from medfed.models import local_training
from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.models.spec import ModelSpec
from medfed.server.evaluation import evaluator
from medfed.server.outputs import RunOutputs
from medfed.server.plan import initial_weights, round_settings
from medfed.server.progress import RunProgress
from medfed.server.rounds import headline
from medfed.simulation.partition import SiteShard

MODELS = "models"  # mode=local: one model per site


def _train_rounds(cfg, spec, train: LabelledImages, seed_offset: int, on_round) -> dict[str, torch.Tensor]:
    model = spec.build()
    model.load_state_dict(initial_weights(cfg, spec))
    device = local_training.resolve_device(cfg.train.device)
    for rnd in range(1, cfg.train.rounds + 1):
        settings = round_settings(cfg, spec, rnd).for_site(rnd, seed_offset)  # the seed a federated site takes
        started = time.perf_counter()
        result = local_train(model, train, settings, device)
        on_round(rnd, model, result, time.perf_counter() - started)
    return model.state_dict()


def run_pooled(cfg: DictConfig, spec: ModelSpec, sites: list[SiteShard], test, outputs: RunOutputs):
    """Centralized training on the union of the sites' training shards."""
    train = type(sites[0].train).concat([s.train for s in sites])
    evaluate = evaluator(cfg, spec, test, train, outputs.dir)

    def on_round(rnd, model, result, seconds):
        threshold = _threshold(spec, model, [s.val for s in sites], cfg.train.device)
        test = evaluate(model.state_dict(), threshold, rnd)
        outputs.log_round({
            "round": rnd, "test": test, "train": {"train_loss": result["train_loss"]}, "sites": {}, "seconds": seconds,
        })
        progress.advance(f"round {rnd}/{cfg.train.rounds}", seconds, headline(test))

    if cfg.train.local_steps:  # the federation takes local_steps at every site each round
        cfg = copy.deepcopy(cfg)
        cfg.train.local_steps = cfg.train.local_steps * len(sites)
    with RunProgress("pooled rounds", cfg.train.rounds, enabled=cfg.logging.progress) as progress:
        weights = _train_rounds(cfg, spec, train, seed_offset=10_000, on_round=on_round)
    return weights, outputs.rounds()[-1]["test"], {}


def run_local(cfg: DictConfig, spec: ModelSpec, sites: list[SiteShard], test, outputs: RunOutputs):
    """Each site trains alone; every local model is saved (``models/site-NNN.pt``) and
    scored on the global test set, and on the site's own test images where it has them."""
    evaluate = evaluator(cfg, spec, test, type(sites[0].train).concat([s.train for s in sites]))
    per_round: dict[int, dict] = {}
    finals = {}
    progress = RunProgress("local training, sites", len(sites), enabled=cfg.logging.progress)
    with progress:
        for index, site in enumerate(sites):
            name = f"site-{index:03d}"
            started = time.perf_counter()

            def on_round(rnd, model, result, seconds, name=name, val=site.val):
                threshold = _threshold(spec, model, [val], cfg.train.device)
                metrics = {f"test_{k}": v for k, v in evaluate(model.state_dict(), threshold, rnd).items()}
                metrics["train_loss"] = result["train_loss"]
                metrics["num-examples"] = result["num-examples"]
                per_round.setdefault(rnd, {})[name] = metrics

            weights = _train_rounds(cfg, spec, site.train, seed_offset=index, on_round=on_round)
            outputs.save_model(weights, {"model": spec.__dict__, "site": site.name}, f"{MODELS}/{name}.pt")
            finals[name] = dict(per_round[cfg.train.rounds][name])
            if site.test is not None:
                finals[name]["own_test"] = own_test(cfg, spec, site, weights)
            final = {k[len("test_"):]: v for k, v in finals[name].items() if k.startswith("test_")}
            progress.advance(f"{name} ({index + 1}/{len(sites)}), {cfg.train.rounds} rounds",
                             time.perf_counter() - started, headline(final))
    for rnd in sorted(per_round):
        outputs.log_round({"round": rnd, "test": _mean_test(per_round[rnd]), "sites": per_round[rnd]})
    return None, _mean_test(finals), finals


def own_test(cfg: DictConfig, spec: ModelSpec, site: SiteShard, weights) -> dict[str, float]:
    """A model's test metrics on the site's own held-out cases (segmentation: no threshold)."""
    return evaluator(cfg, spec, site.test)(weights, 0.5, cfg.train.rounds)


def _threshold(spec: ModelSpec, model, validation: list[LabelledImages], device: str) -> float:
    """The operating point on the validation data this baseline may see (binary tasks)."""
    if spec.label_kind != "binary":
        return 0.5
    return training.validation_threshold(model, validation, local_training.resolve_device(device))


def _mean_test(sites: dict[str, dict]) -> dict[str, float]:
    """Mean over sites of each local model's test metrics (NaN-aware)."""
    keys = {k for m in sites.values() for k in m if k.startswith("test_")}
    return {
        k[len("test_"):]: float(np.nanmean([m[k] for m in sites.values() if m.get(k) is not None]))
        for k in sorted(keys)
    }
