"""The server's round loop: sample sites, train, aggregate, evaluate, checkpoint.

Flower's ``Strategy.start`` runs the same steps, but it cannot resume: its round
counter always starts at 1 and it does not expose the strategy's state between rounds.
This loop calls the strategy's own ``configure_train`` and ``aggregate_train``, so any
Flower strategy works unchanged, and it checkpoints after every round.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medfed.errors import MedfedError
from medfed.models.classification import operating_threshold
from medfed.server.checkpoint import load_checkpoint, save_checkpoint
from medfed.server.outputs import CHECKPOINT, RunOutputs

log = logging.getLogger("medfed.server")


class RoundFailed(MedfedError):
    """Too few sites answered for the strategy to aggregate a round."""


@dataclass
class RoundPlan:
    """Everything the loop needs besides the Grid."""

    strategy: Strategy
    rounds: int
    site_config: Callable[[int], dict]  # round -> config sent to the sites
    evaluate: Callable[[dict[str, torch.Tensor], float], dict[str, float]]  # (weights, threshold) -> test metrics
    initial_weights: Callable[[], dict[str, torch.Tensor]]
    outputs: RunOutputs
    fingerprint: str  # of the configuration, so a checkpoint is never resumed by another
    timeout: float = 3600.0
    resume: bool = False
    show_progress: bool = True
    history: list[dict] = field(default_factory=list)


def site_metrics(replies: list[Message]) -> tuple[dict[str, dict], list[str]]:
    """Per-site metrics of the replies, and a description of each failed reply."""
    sites, failures = {}, []
    for reply in replies:
        if reply.has_error():
            failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            continue
        metrics = dict(next(iter(reply.content.metric_records.values())))
        name = f"site-{int(metrics.pop('site', -1)):03d}"
        sites[name] = metrics
    return sites, failures


def federated_threshold(evaluation: dict[str, dict]) -> float:
    """Operating point from the sum of the sites' validation score histograms
    (and pops the histograms, which are not worth logging)."""
    positive = negative = None
    for metrics in evaluation.values():
        pos, neg = metrics.pop("hist-pos", None), metrics.pop("hist-neg", None)
        if pos is not None:
            positive = np.add(positive, pos) if positive is not None else np.array(pos)
            negative = np.add(negative, neg) if negative is not None else np.array(neg)
    return 0.5 if positive is None else operating_threshold(positive, negative)


def run_rounds(grid: Grid, plan: RoundPlan) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Run the remaining rounds; return the final global weights and the round lines."""
    start_round, weights = 0, None
    checkpoint = plan.outputs.path(CHECKPOINT)
    if plan.resume and checkpoint.is_file():
        start_round, weights = load_checkpoint(checkpoint, plan.strategy, plan.fingerprint)
        plan.outputs.keep_rounds_up_to(start_round)
        log.info("resuming after round %d from %s", start_round, checkpoint)
    if weights is None:
        weights = plan.initial_weights()
    arrays = ArrayRecord(weights)

    progress = Progress(
        TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), disable=not plan.show_progress,
    )
    with progress:
        task = progress.add_task("rounds", total=plan.rounds, completed=start_round, status="")
        for rnd in range(start_round + 1, plan.rounds + 1):
            started = time.perf_counter()
            config = ConfigRecord(plan.site_config(rnd))
            messages = list(plan.strategy.configure_train(rnd, arrays, config, grid))
            replies = list(grid.send_and_receive(messages, timeout=plan.timeout))
            sites, failures = site_metrics(replies)
            for failure in failures:
                log.warning("round %d: no update from %s", rnd, failure)
            aggregated, train_metrics = plan.strategy.aggregate_train(rnd, replies)
            if aggregated is None:
                raise RoundFailed(
                    f"round {rnd}: only {len(sites)} of {len(messages)} sites sent an update, "
                    f"too few to aggregate (strategy.min_sites); failures: {'; '.join(failures) or 'none'}"
                )
            arrays = aggregated
            weights = arrays.to_torch_state_dict()
            evaluation, eval_failures = site_metrics(list(grid.send_and_receive(
                list(plan.strategy.configure_evaluate(rnd, arrays, config, grid)), timeout=plan.timeout
            )))
            threshold = federated_threshold(evaluation)
            test = plan.evaluate(weights, threshold)
            row = {
                "round": rnd,
                "test": test,
                "train": dict(train_metrics or {}),
                "sites": sites,
                "global_model_at_sites": evaluation,
                "sites_failed": failures + eval_failures,
                "seconds": time.perf_counter() - started,
            }
            plan.outputs.log_round(row)
            save_checkpoint(checkpoint, rnd, weights, plan.strategy, plan.fingerprint)
            auc = test.get("auc", float("nan"))
            progress.update(task, advance=1, status=f"test AUC {auc:.3f}" if math.isfinite(auc) else "")
    return weights, plan.outputs.rounds()
