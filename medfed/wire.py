"""The wire between medfed's ServerApp and a site's ClientApp, in one file.

Each round the coordinator sends the global weights and one config record: the model
(`medfed.models.spec.ModelSpec`, ``model-*`` keys), the training settings
(`TrainSettings`), under sample-level DP the DP-SGD plan (`DPSettings`, ``dp-*`` keys),
and the round's own keys below. A site answers with the weights it was sent, trained,
and the metrics declared here, or with an error carrying one of the codes here.

Settings cross as frozen dataclasses whose wire fields name their key: ``to_config``
writes them, ``from_config`` reads them back, and a site's message checks take their
key lists and types from the same fields (`wire_keys`). A setting that is not set is
left out of the record (Flower's records hold no None), never sent as a stand-in value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field, fields
from typing import Any

# ---- round keys that belong to no settings object ---------------------------------------------

SERVER_ROUND = "server-round"  # Flower's own key: the round's number, from 1
RUN_KEY = "run-key"  # the run's identity, the same after a coordinator restart (client/round_cache.py)
DP_MECHANISM = "dp-mechanism"  # none, sample (DP-SGD at the sites) or client (clipped updates)
DP_ADAPTIVE = "dp-adaptive"  # client-level DP: Flower's adaptive clipping reports a norm bit
FEDBN_FLAG = "fedbn"  # FedBN: each site keeps its own normalisation layers

# ---- error codes of a site's refusals -------------------------------------------------------------

BUDGET_EXHAUSTED = 4001  # the round would take the site past its privacy budget
POLICY_REFUSED = 4002  # the round is outside the site's terms (SITE.yaml policy, privacy, limits)
MALFORMED_MESSAGE = 4003  # the message is not one medfed's ServerApp sends
REPLY_WITHHELD = 4004  # the reply held more than weights and declared metrics
SITE_FAILED = 4005  # local training raised; the reason names the error type only
SITE_MISCONFIGURED = 4006  # SITE.yaml cannot be read in the ClientApp
AUDIT_FAILED = 4007  # the audit log cannot be written, so nothing is sent
APP_REFUSED = 4008  # the run's app is not medfed's own, unaltered and signed

# ---- what a reply may carry -------------------------------------------------------------------------

UNIT_WEIGHT = "unit-weight"  # client-level DP: every site counts the same in the average
# what a site reports of its sample-level privacy spending, each round
PRIVACY_KEYS = ("epsilon", "delta", "noise-multiplier", "sample-rate", "max-grad-norm", "total-steps")
HISTOGRAMS = ("hist-pos", "hist-neg")  # binary evaluation: fixed-bin counts of validation scores
VALIDATION_PREFIX = "val_"


# ---- the codec ------------------------------------------------------------------------------------

WIRE = "wire"  # field metadata: the record key
SETTING = "setting"  # field metadata: the experiment setting the value comes from


def wire(key: str, setting: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that crosses the wire as ``key``; ``setting`` names the
    experiment config's setting behind it, for messages about a refused value."""
    return field(default=default, metadata={WIRE: key, SETTING: setting})


@dataclass(frozen=True)
class WireKey:
    key: str
    kind: str  # int, number, bool or text
    required: bool  # optional keys (an unset value) are left out of the record
    setting: str


# a field's declared type -> (the Python type its value crosses as, the kind a message check names)
_TYPES = {"int": (int, "int"), "float": (float, "number"), "bool": (bool, "bool"), "str": (str, "text")}


def wire_keys(cls) -> dict[str, WireKey]:
    """Key -> `WireKey` of each wire field of the dataclass ``cls``."""
    keys = {}
    for f in fields(cls):
        if WIRE in f.metadata:
            base, optional = _base(f)
            keys[f.metadata[WIRE]] = WireKey(f.metadata[WIRE], _TYPES[base][1], not optional, f.metadata[SETTING])
    return keys


def _base(f: dataclasses.Field) -> tuple[str, bool]:
    """A field's value type (int, float, bool or str) and whether it may be unset."""
    kind = str(f.type)
    return kind.removesuffix(" | None"), kind.endswith(" | None")


def to_config(obj) -> dict:
    """The wire fields of ``obj`` as config-record entries of their declared types; unset
    (None) ones left out."""
    values = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if WIRE in f.metadata and value is not None:
            values[f.metadata[WIRE]] = _TYPES[_base(f)[0]][0](value)
    return values


def from_config(cls, config, **others):
    """An instance of ``cls`` from a config record's wire keys (absent optional keys are
    None) and ``others`` for its fields that do not cross the wire."""
    values = dict(others)
    for f in fields(cls):
        if WIRE not in f.metadata:
            continue
        key, (base, optional) = f.metadata[WIRE], _base(f)
        if key in config:
            values[f.name] = _TYPES[base][0](config[key])
        elif optional:
            values[f.name] = None
        else:
            raise KeyError(key)
    return cls(**values)


# ---- the settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one local training call. The coordinator sends the wire fields
    each round; the others come from the round's `ModelSpec` (`for_model`)."""

    kind: str  # label kind: binary, multiclass, multilabel, segmentation or gan
    num_classes: int
    epochs: int = wire("local-epochs", "train.local_epochs", 1)
    steps: int | None = wire("local-steps", "train.local_steps", None)  # when set: exactly this many batches
    batch_size: int = wire("batch-size", "train.batch_size", 32)
    optimizer: str = wire("optimizer", "train.optimizer", "adam")
    lr: float = wire("lr", "train.lr", 1e-3)
    momentum: float = wire("momentum", "train.momentum", 0.9)
    weight_decay: float = wire("weight-decay", "train.weight_decay", 1e-4)
    class_weighting: bool = wire("class-weighting", "train.class_weighting", True)
    augment: bool = wire("augment", "data.augment", True)
    # FedProx: weight of ||w - w_global||^2 / 2; the key is the one Flower's FedProx sends
    proximal_mu: float | None = wire("proximal-mu", "strategy.proximal_mu", None)
    amp: bool = wire("amp", "train.amp", True)
    seed: int = wire("seed", "seed", 0)  # the run's seed; a site trains with its own (`for_site`)
    task: str = "classification"  # classification, segmentation or gan
    patch_size: int = 64  # segmentation: training patches of this size (pixels per side)
    contrast: str = "none"  # segmentation: local contrast equalisation before normalising

    def to_config(self) -> dict:
        return to_config(self)

    @staticmethod
    def from_config(config, spec) -> TrainSettings:
        """The round's settings for the model ``spec`` (a `ModelSpec`) the round describes."""
        return from_config(TrainSettings, config, kind=spec.label_kind, num_classes=spec.num_classes,
                           task=spec.task, patch_size=spec.image_size, contrast=spec.contrast)

    def planned_steps(self, examples: int) -> int:
        """Batches one local training call takes: ``steps``, else ``epochs`` over ``examples``."""
        if self.steps is not None:
            return self.steps
        return self.epochs * math.ceil(examples / self.batch_size)

    def for_site(self, rnd: int, index: int) -> TrainSettings:
        """These settings with a seed of the site ``index``'s own for round ``rnd``."""
        return dataclasses.replace(self, seed=self.seed * 100_003 + rnd * 1_009 + index)


@dataclass(frozen=True)
class DPSettings:
    """Sample-level DP-SGD: what the run plans (sent by the coordinator) or, at a site,
    what it trains with (its own delta and accountant: `client.site_policy`)."""

    noise_multiplier: float | None = wire("dp-noise-multiplier", "privacy.noise_multiplier")  # or found for the target
    target_epsilon: float | None = wire("dp-target-epsilon", "privacy.target_epsilon")
    planned_rounds: int = wire("dp-planned-rounds", "train.rounds")
    delta: float = wire("dp-delta", "privacy.delta")
    max_grad_norm: float = wire("dp-max-grad-norm", "privacy.max_grad_norm")
    max_epsilon: float | None = wire("dp-max-epsilon", "privacy.max_epsilon")  # the budget; default: the target
    accountant: str = wire("dp-accountant", "privacy.accountant", "rdp")

    @property
    def budget(self) -> float | None:
        return self.max_epsilon if self.max_epsilon is not None else self.target_epsilon

    def to_config(self) -> dict:
        return to_config(self)

    @staticmethod
    def from_config(config) -> DPSettings:
        return from_config(DPSettings, config)


# ---- the weights' identity ---------------------------------------------------------------------------


def weights_digest(record) -> str:
    """SHA-256 over the arrays' names, types, shapes and bytes, in order: the same weights
    give the same digest at the site and at the coordinator."""
    digest = hashlib.sha256()
    for name, array in record.items():
        digest.update(f"{name}\0{array.dtype}\0{tuple(array.shape)}\0".encode())
        digest.update(array.data)
    return digest.hexdigest()
