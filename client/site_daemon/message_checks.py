"""The shape of what a deployed site accepts and what it lets leave.

In: a train or evaluate message whose config record has every setting the ClientApp
reads, with the right types and sensible values, for a model medfed knows, and whose
weights fit that model exactly. Anything else is malformed and refused before training.

Out: the model's own weights (the same names and shapes as received) and the
metrics medfed declares for the round's task: scalars, plus the two fixed-size score
histograms of binary evaluation, whose bins hold non-negative counts of at most the
reply's validation images. No other arrays, lists or records, so no per-sample data can
leave.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import Message, MessageType
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from medfed.errors import MedfedError
from medfed.models.classification.metrics import LOGIT_EDGES
from medfed.models.spec import ModelSpec
from medfed.tasks import TASKS
from medfed.wire import (
    DP_MECHANISM,
    HISTOGRAMS,
    PRIVACY_KEYS,
    SERVER_ROUND,
    UNIT_WEIGHT,
    VALIDATION_PREFIX,
    DPSettings,
    TrainSettings,
    WireKey,
    wire_keys,
)

ACCEPTED_TYPES = (MessageType.TRAIN, MessageType.EVALUATE)
# every key of the round's settings, with its type, as the wire's dataclasses declare them
ROUND_SETTINGS = {**wire_keys(TrainSettings), SERVER_ROUND: WireKey(SERVER_ROUND, "int", True, "train.rounds")}
SAMPLE_DP_SETTINGS = wire_keys(DPSettings)
SCALAR_METRICS = frozenset({"train_loss", "num-examples", "site", UNIT_WEIGHT, KEY_NORM_BIT, *PRIVACY_KEYS})
HISTOGRAM_BINS = len(LOGIT_EDGES) - 1
# validation metrics each task declares (the GAN is scored on the coordinator's test set only)
VALIDATION_METRICS = {name: frozenset(VALIDATION_PREFIX + m for m in t.file("metrics").METRIC_NAMES)
                      for name, t in TASKS.items()}


class MalformedMessage(MedfedError):
    """A message from the coordinator that the site cannot safely act on."""


class ReplyWithheld(MedfedError):
    """A reply that would carry more than weights and declared metrics."""


def _is(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _check_settings(config, settings: dict[str, WireKey]) -> None:
    """Every required key present, and every key present of its declared type."""
    for key, declared in settings.items():
        if key not in config:
            if declared.required:
                raise MalformedMessage(f"the round's config has no '{key}'")
        elif not _is(config[key], declared.kind):
            raise MalformedMessage(f"the round's config has '{key}' = {config[key]!r}, not a {declared.kind}")


NUMERIC_KINDS = frozenset("biuf")  # numpy dtype kinds: bool, int, unsigned, float


@lru_cache(maxsize=8)
def model_layout(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of the network ``spec`` builds."""
    return {name: tuple(t.shape) for name, t in spec.build().state_dict().items()}


def _layout(record) -> dict[str, tuple[int, ...]]:
    """Name -> shape of an ArrayRecord's arrays, all numeric. Types may differ: averaging
    turns integer counters (BatchNorm's batch count) into floats, loading casts back."""
    for name, array in record.items():
        if np.dtype(array.dtype).kind not in NUMERIC_KINDS:
            raise MalformedMessage(f"array '{name}' holds {array.dtype}, not numbers")
    return {name: tuple(a.shape) for name, a in record.items()}


def check_incoming(msg: Message) -> ModelSpec:
    """The model the message asks for; `MalformedMessage` when the message is not a
    well-formed train or evaluate message of medfed's ServerApp (weights: `check_weights`)."""
    try:
        return _check_incoming(msg)
    except MalformedMessage:
        raise
    except Exception as exc:  # whatever a hostile or broken message trips on: refuse it
        raise MalformedMessage(f"unreadable message ({type(exc).__name__}: {exc})") from exc


def _check_incoming(msg: Message) -> ModelSpec:
    if msg.has_error():
        raise MalformedMessage(f"the coordinator sent an error, not a task ({msg.error.reason})")
    kind = msg.metadata.message_type
    if kind not in ACCEPTED_TYPES:
        raise MalformedMessage(f"message type '{kind}' is not one a site answers (train, evaluate)")
    content = msg.content
    if "config" not in content.config_records or "arrays" not in content.array_records:
        raise MalformedMessage("the message lacks its 'config' or 'arrays' record")
    if len(content.array_records) != 1 or content.metric_records:
        raise MalformedMessage("the message holds records other than the model and its config")
    config = content.config_records["config"]
    _check_settings(config, ROUND_SETTINGS)
    if config.get(DP_MECHANISM, "none") == "sample":
        _check_settings(config, SAMPLE_DP_SETTINGS)
    try:
        spec = ModelSpec.from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"the round's config does not describe a model ({exc})") from exc
    if spec.task not in TASKS or spec.name not in TASKS[spec.task].networks:
        raise MalformedMessage(f"unknown model '{spec.name}' for task '{spec.task}'")
    if config["local-epochs"] < 1 or config["batch-size"] < 1 or config.get("local-steps", 1) < 1:
        raise MalformedMessage("local-epochs, local-steps (when given) and batch-size must be >= 1")
    if not config["lr"] > 0 or config[SERVER_ROUND] < 1 or config["optimizer"] not in ("adam", "sgd"):
        raise MalformedMessage("lr must be > 0, server-round >= 1 and optimizer adam or sgd")
    return spec


def check_weights(msg: Message, spec: ModelSpec) -> None:
    """`MalformedMessage` unless the message's weights are exactly those of ``spec``'s
    network (checked after the policy: a forbidden model is never built)."""
    try:
        expected = model_layout(spec)
        fits = _layout(msg.content.array_records["arrays"]) == expected
    except Exception as exc:
        raise MalformedMessage(f"the round's model cannot be built ({type(exc).__name__}: {exc})") from exc
    if not fits:
        raise MalformedMessage(f"the weights sent do not fit the model '{spec.name}' the config describes")


def check_reply(request: Message, reply: Message) -> None:
    """`ReplyWithheld` unless ``reply`` holds only the request's model (for training) and
    declared metrics."""
    try:
        _check_reply(request, reply)
    except ReplyWithheld:
        raise
    except Exception as exc:  # a reply the checks cannot read does not leave either
        raise ReplyWithheld(f"unreadable reply ({type(exc).__name__}: {exc})") from exc


def _check_reply(request: Message, reply: Message) -> None:
    content = reply.content
    if content.config_records:
        raise ReplyWithheld("the reply holds config records")
    arrays = content.array_records
    if request.metadata.message_type == MessageType.TRAIN:
        sent = request.content.array_records["arrays"]
        try:
            fits = len(arrays) == 1 and _layout(next(iter(arrays.values()))) == _layout(sent)
        except MalformedMessage as exc:
            raise ReplyWithheld(str(exc)) from exc
        if not fits:
            raise ReplyWithheld("the reply's arrays are not exactly the model's weights")
    elif arrays:
        raise ReplyWithheld("an evaluation reply holds arrays")
    if len(content.metric_records) != 1:
        raise ReplyWithheld("the reply must hold one metric record")
    declared = SCALAR_METRICS | VALIDATION_METRICS[str(request.content.config_records["config"]["model-task"])]
    metrics = next(iter(content.metric_records.values()))
    for name, value in metrics.items():
        if name in HISTOGRAMS:
            _check_histogram(name, value, metrics.get("num-examples"))
        elif name in declared:
            if isinstance(value, list):
                raise ReplyWithheld(f"metric '{name}' is a list; only declared histograms may be")
        else:
            raise ReplyWithheld(f"metric '{name}' is not one medfed declares for this task")


def _check_histogram(name: str, counts, examples) -> None:
    """A score histogram: the declared number of bins, each a count of validation images."""
    if not isinstance(counts, list) or len(counts) != HISTOGRAM_BINS:
        raise ReplyWithheld(f"metric '{name}' is not a {HISTOGRAM_BINS}-bin histogram")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise ReplyWithheld(f"metric '{name}' holds values that are not non-negative integer counts")
    if not isinstance(examples, int) or sum(counts) > examples:
        raise ReplyWithheld(f"metric '{name}' counts more images than the reply's num-examples")
