"""The server's round loop: sample sites, train, aggregate, evaluate, checkpoint.

Flower's ``Strategy.start`` runs the same steps, but it cannot resume: its round
counter always starts at 1 and it does not expose the strategy's state between rounds.
This loop calls the strategy's own ``configure_train`` and ``aggregate_train``, so any
Flower strategy works unchanged, and it checkpoints after every round.

A resumed run redoes the round that was under way from its start, sending the sites the
same weights and settings: sites that had already answered it send the same reply again
(`medfed.client.round_cache`), so the redone round ends exactly as the first would have.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy

from medfed.errors import MedfedError
from medfed.faults import kill_point
from medfed.models.classification.metrics import operating_threshold
from medfed.server.checkpoint import load_checkpoint, save_checkpoint
from medfed.server.outputs import CHECKPOINT, RunOutputs
from medfed.server.privacy import PrivacyLedger
from medfed.server.progress import RunProgress, sites_status
from medfed.server.update_checks import check_updates
from medfed.wire import BUDGET_EXHAUSTED

log = logging.getLogger("medfed.server")


class RoundFailed(MedfedError):
    """Too few sites answered for the strategy to aggregate a round."""


@dataclass
class RoundPlan:
    """Everything the loop needs besides the Grid."""

    strategy: Strategy
    rounds: int
    site_config: Callable[[int], dict]  # round -> config sent to the sites
    evaluate: Callable[[dict[str, torch.Tensor], float, int], dict[str, float]]  # (weights, threshold, round) -> test metrics
    initial_weights: Callable[[], dict[str, torch.Tensor]]
    outputs: RunOutputs
    fingerprint: str  # of the configuration, so a checkpoint is never resumed by another
    privacy: PrivacyLedger | None = None
    norm_zscore: float | None = None  # update check: robust z-score limit of update norms
    min_sites: int = 1  # fewer accepted updates than this fail the round
    timeout: float = 3600.0
    resume: bool = False
    show_progress: bool = True
    stopped: str | None = None  # why the run ended before its last round, if it did
    # deployed with a site table: the nodes kept out since the last call, for the round's line
    intruders: Callable[[], list[dict]] | None = None


def reply_site(reply: Message) -> str:
    """The site a reply comes from: its index when it sent metrics, else its node."""
    if reply.has_error() or not reply.content.metric_records:
        return f"node {reply.metadata.src_node_id}"
    metrics = next(iter(reply.content.metric_records.values()))
    return f"site-{int(metrics.get('site', -1)):03d}"


def site_metrics(replies: list[Message]) -> tuple[dict[str, dict], list[str], int]:
    """Per-site metrics of the replies, a description of each failed reply, and how many
    of the failures are sites refusing for their privacy budget."""
    sites, failures, refusals = {}, [], 0
    for reply in replies:
        if reply.has_error():
            failures.append(f"{reply_site(reply)}: {reply.error.reason.splitlines()[0]}")
            refusals += int(reply.error.code == BUDGET_EXHAUSTED)
            continue
        metrics = dict(next(iter(reply.content.metric_records.values())))
        metrics.pop("site", None)
        sites[reply_site(reply)] = metrics
    return sites, failures, refusals


def _site_order(reply: Message) -> tuple[int, int]:
    if reply.has_error():
        return (1, reply.metadata.src_node_id)
    metrics = next(iter(reply.content.metric_records.values()))
    return (0, int(metrics.get("site", -1)))


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


HEADLINE = ("dice", "tstr_auc", "auc")  # the figure the progress shows, first found


def headline(test: dict[str, float]) -> str:
    for key in HEADLINE:
        value = test.get(key)
        if value is not None and math.isfinite(value):
            return f"test {key} {value:.3f}"
    return ""


def _collect_updates(grid: Grid, plan: RoundPlan, messages: list[Message], rnd: int, layout: ArrayRecord,
                     current: ArrayRecord) -> tuple[list[Message], dict[str, dict], list[str], int, dict[str, str]]:
    """Send the round's training messages; return the replies fit to aggregate, each
    site's metrics, the failures, how many were budget refusals, and the rejected updates."""
    # replies arrive in any order; aggregating them by site keeps runs bit-for-bit repeatable
    replies = sorted(grid.send_and_receive(messages, timeout=plan.timeout), key=_site_order)
    sites, failures, refusals = site_metrics(replies)
    if len(replies) < len(messages):  # silent sites: gone, or slower than the timeout
        failures.append(f"{len(messages) - len(replies)} site(s): no reply within strategy.timeout "
                        f"({plan.timeout:g} s)")
    for failure in failures:
        log.warning("round %d: no update from %s", rnd, failure)
    replies, rejected = check_updates(replies, [reply_site(r) for r in replies], layout, current,
                                      plan.norm_zscore)
    for site, reason in rejected.items():
        log.warning("round %d: update of %s rejected: %s", rnd, site, reason)
    return replies, sites, failures, refusals, rejected


def _resume(plan: RoundPlan) -> tuple[int, dict[str, torch.Tensor] | None, list[str]]:
    """Where the run goes on from: the last finished round, its global weights (None
    before round 1) and the finished rounds' lines, with metrics.jsonl made to match."""
    checkpoint = plan.outputs.path(CHECKPOINT)
    if not (plan.resume and checkpoint.is_file()):
        plan.outputs.restore_rounds([])  # a run killed before its first checkpoint starts again
        return 0, None, []
    saved = load_checkpoint(checkpoint, plan.strategy, plan.fingerprint)
    lines = saved.rounds if saved.rounds is not None else plan.outputs.finished_rounds(saved.round)
    # rounds logged after the checkpoint (killed between the two writes) are redone
    plan.outputs.restore_rounds(lines)
    if plan.privacy is not None and lines:
        plan.privacy.restore(json.loads(lines[-1]).get("privacy"))
    log.info("resuming after round %d from %s", saved.round, checkpoint)
    return saved.round, saved.weights, lines


def run_rounds(grid: Grid, plan: RoundPlan) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Run the remaining rounds; return the final global weights and the round lines."""
    checkpoint = plan.outputs.path(CHECKPOINT)
    start_round, weights, lines = _resume(plan)
    layout = ArrayRecord(plan.initial_weights())  # what every update must look like
    if weights is None:
        weights = plan.initial_weights()
    arrays = ArrayRecord(weights)

    with RunProgress("federated rounds", plan.rounds, start_round, plan.show_progress) as progress:
        for rnd in range(start_round + 1, plan.rounds + 1):
            started = time.perf_counter()
            config = ConfigRecord(plan.site_config(rnd))
            if plan.privacy is not None and plan.privacy.would_exceed(plan.strategy):
                plan.stopped = f"round {rnd} would exceed privacy.max_epsilon"
                break
            try:
                messages = list(plan.strategy.configure_train(rnd, arrays, config, grid))
            except PrivacyBudgetExhausted as exc:
                plan.stopped = f"round {rnd}: {exc}"
                break
            replies, sites, failures, refusals, rejected = _collect_updates(
                grid, plan, messages, rnd, layout, arrays)
            kill_point("round-replies", rnd)
            usable = sum(not r.has_error() for r in replies)
            aggregated, train_metrics = (plan.strategy.aggregate_train(rnd, replies)
                                         if usable >= plan.min_sites else (None, None))
            if aggregated is None and refusals:
                plan.stopped = (f"round {rnd}: {refusals} site(s) refused for their privacy budget "
                                f"and too few remain (strategy.min_sites)")
                break
            if aggregated is None:
                raise RoundFailed(
                    f"round {rnd}: only {usable} of {len(messages)} sites sent a usable update, "
                    f"too few to aggregate (strategy.min_sites); failures: {'; '.join(failures) or 'none'}"
                    + "".join(f"; {site} rejected: {reason}" for site, reason in rejected.items())
                )
            arrays = aggregated
            weights = arrays.to_torch_state_dict()
            if plan.privacy is not None:
                plan.privacy.record(plan.strategy, sites)
            evaluation, eval_failures, _ = site_metrics(sorted(grid.send_and_receive(
                list(plan.strategy.configure_evaluate(rnd, arrays, config, grid)), timeout=plan.timeout
            ), key=_site_order))
            threshold = federated_threshold(evaluation)
            test = plan.evaluate(weights, threshold, rnd)
            row = {
                "round": rnd,
                "test": test,
                "train": dict(train_metrics or {}),
                "sites": sites,
                "global_model_at_sites": evaluation,
                "sites_failed": failures + eval_failures,
                "updates_rejected": rejected,
                **({"intruders": plan.intruders()} if plan.intruders is not None else {}),
                "privacy": plan.privacy.block() if plan.privacy is not None else None,
                "seconds": time.perf_counter() - started,
            }
            lines.append(plan.outputs.log_round(row))
            save_checkpoint(checkpoint, rnd, weights, plan.strategy, plan.fingerprint, lines)
            progress.advance(f"round {rnd}/{plan.rounds}", row["seconds"],
                             ", ".join(filter(None, [headline(test), sites_status(
                                 len(messages), len(sites), len(rejected))])))
    return weights, plan.outputs.rounds()
