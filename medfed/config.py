"""Experiment configuration: one typed schema, YAML files, ``key=value`` overrides.

The schema is a tree of dataclasses read by omegaconf, so an unknown key or a value
of the wrong type is rejected when the file is merged; `validate` then checks the
ranges that types cannot express. Every error is a `ConfigError` naming the setting.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medfed.errors import ConfigError
from medfed.site_terms import SiteLimits, validate_limits
from medfed.tasks import TASKS, task

MODES = ("federated", "pooled", "local")
CONTRASTS = ("none", "clahe")  # data.segmentation.contrast
SEGMENTATION_FORMATS = ("drive", "masks", "nifti", "dicom")
PARTITION_SCHEMES = ("iid", "dirichlet", "pathological", "quantity", "natural")
STRATEGIES = (  # strategy.name: built by medfed.strategies
    "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian",
    "fedtrimmedavg", "fedbn", "krum", "multikrum", "bulyan", "normbounded",
)
ATTACKS = ("none", "sign_flip", "scale", "gaussian", "label_flip", "nan", "stale")
DEVICES_HELP = "auto, cpu, cuda or cuda:N"


@dataclass
class FolderConfig:
    """A generic image folder: images plus a CSV of labels."""

    images: str = ""  # folder the CSV's file names are relative to
    labels_csv: str = ""
    image_column: str = "image"
    label_column: str = "label"
    site_column: str | None = None  # optional: natural sites
    test_csv: str | None = None  # optional: a held-out test CSV (same columns)


@dataclass
class SegmentationSource:
    """Images with masks in one folder: a whole dataset, or one hospital's own files."""

    name: str = ""  # the site's name in natural multi-site mode
    format: str = "drive"  # drive | masks (image + mask folders) | nifti | dicom (one series)
    path: str = "DRIVE"  # under data.root, or absolute
    split: str = "train"  # drive: train (training/) or test (test/)
    images: str = "images"  # masks: image folder; nifti: image folder
    masks: str = "1st_manual"  # masks: mask folder; nifti: label folder; dicom: the mask file
    fov: str | None = "mask"  # masks: field-of-view folder, or null for none
    slices: str = "2d"  # nifti: 2d (axial slices) or 3d (whole volumes)
    # masks: a grey (interpolated) mask's foreground is where its value is at least this; null: as stored
    mask_threshold: float | None = None
    strict: bool = False  # an image without its mask (or field of view) is an error, not skipped and listed
    estimate_fov: bool = True  # masks without fov: a fundus photograph's field of view is estimated


@dataclass
class SegmentationDataConfig:
    train: SegmentationSource = field(default_factory=SegmentationSource)
    test: SegmentationSource = field(default_factory=lambda: SegmentationSource(split="test"))
    sites: list[SegmentationSource] = field(default_factory=list)  # natural multi-site: one per hospital
    patch_size: int = 64  # training patches and inference windows (pixels per side)
    contrast: str = "none"  # none | clahe: equalise each channel's local contrast before normalising
    overlays: int = 4  # test images saved as image / truth / prediction PNGs
    overlay_channels: list[int] = field(default_factory=list)  # drawn: one channel, or 2-3 as RGB; [] = 0 (RGB if 3)
    # of each site's cases (patients), held out as its own test images; their union is the
    # global test set and data.segmentation.test is not read. 0: the test set is data.segmentation.test
    test_fraction: float = 0.0
    # test Dice and HD95 of groups of classes too, e.g. {WT: [1, 2, 3], TC: [1, 3], ET: [3]}
    regions: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "pneumoniamnist"  # a MedMNIST 2D flag, or "folder"
    size: int = 28  # MedMNIST image size: 28, 64, 128 or 224
    root: str | None = None  # defaults to $MEDFED_DATA_DIR
    folder: FolderConfig = field(default_factory=FolderConfig)
    val_fraction: float = 0.1  # of each site's shard, kept for local validation
    augment: bool = True  # random shifts during local training
    segmentation: SegmentationDataConfig = field(default_factory=SegmentationDataConfig)


@dataclass
class PartitionConfig:
    scheme: str = "dirichlet"
    num_sites: int = 10
    alpha: float = 0.3  # dirichlet concentration: lower is more skewed
    classes_per_site: int = 1  # pathological
    min_site_size: int = 10  # dirichlet: resample until every site has this many
    site_column: str = "site"  # natural
    quantity_shape: str = "linear"  # quantity: site sizes grow linearly, squared or exponentially


@dataclass
class ShiftConfig:
    """Simulated acquisition shift: each site gets its own scanner."""

    strength: float = 0.0  # 0 = none, 1 = strong contrast, blur, noise and resolution loss


@dataclass
class ModelConfig:
    name: str = "cnn"  # classification: cnn, resnet18, densenet121; segmentation: unet, basicunet; gan: dcgan
    dropout: float = 0.2
    norm: str = "instance"  # segmentation: instance or group (both accepted by DP-SGD)
    spatial_dims: int = 2  # segmentation: 2 or 3 (3D needs nifti volumes or a dicom series)
    # segmentation unet: channels per level and the downsampling between levels (the same
    # defaults as models/spec.py's UNET_CHANNELS and UNET_STRIDES, which a test checks)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [1, 2, 2])


@dataclass
class GanConfig:
    latent_dim: int = 64
    samples_per_class: int = 1000  # generated images per class for the metrics
    tstr_epochs: int = 5  # epochs of the train-on-synthetic classifier


@dataclass
class TrainConfig:
    rounds: int = 10
    local_epochs: int = 1
    local_steps: int | None = None  # when set, replaces local_epochs
    batch_size: int = 32
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    lr_decay: str = "cosine"  # cosine | none: decays over the planned rounds
    class_weighting: bool = True  # inverse-frequency loss weights from the site's labels
    device: str = "auto"
    amp: bool = True  # mixed precision where the device is CUDA


@dataclass
class StrategyConfig:
    name: str = "fedavg"
    fraction_train: float = 1.0
    min_sites: int = 2
    timeout: float = 3600.0  # seconds to wait for the sites each round
    proximal_mu: float = 0.01  # fedprox
    server_lr: float = 0.01  # fedadam, fedyogi, fedadagrad (eta)
    server_momentum: float = 0.9  # fedavgm
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    trim_fraction: float = 0.2  # fedtrimmedavg: cut from each end
    num_malicious: int = 1  # krum, multikrum, bulyan: how many Byzantine sites to tolerate (f)
    krum_select: int | None = None  # multikrum: updates averaged (default: sites - f)
    norm_bound: float | None = None  # normbounded: L2 bound of each update (default: the round's median)


@dataclass
class RobustnessConfig:
    """Checks of every update before aggregation (names, shapes, dtypes and finiteness always)."""

    # reject updates whose log-norm robust z-score exceeds this (3.5 is a usual outlier cutoff); off
    # by default: with local epochs, a large hospital's honest update is many times a small one's
    norm_zscore: float | None = None


@dataclass
class AttackConfig:
    """Simulation only: sites that misbehave on purpose."""

    behaviour: str = "none"  # none | sign_flip | scale | gaussian | label_flip | nan | stale
    sites: list[int] = field(default_factory=list)  # indices of the malicious sites
    scale: float = 50.0  # scale: factor applied to the update
    noise_std: float = 0.1  # gaussian: standard deviation added to every weight
    stale_rounds: int = 3  # stale: send the weights trained this many rounds earlier


@dataclass
class FaultsConfig:
    """Simulation only: honest sites that fail, at random (reproducibly from the seed)."""

    dropout: float = 0.0  # chance that a site does not answer a round
    straggler: float = 0.0  # chance that a site answers late
    straggler_delay: float = 5.0  # seconds a straggler waits before answering
    crash: float = 0.0  # chance that a site's process is killed mid-round (after training, before answering)


@dataclass
class PrivacyConfig:
    """Differential privacy: per patient at each site, or per hospital at the server."""

    mechanism: str = "none"  # none | sample (DP-SGD at each site) | client (client-level DP)
    noise_multiplier: float | None = None  # give this, or target_epsilon
    target_epsilon: float | None = None  # noise chosen to spend this over the planned rounds
    delta: float = 1e-5  # sample: each site's delta (must stay below 1/n of the site)
    max_epsilon: float | None = None  # budget: a site refuses rounds beyond it; client: the run stops
    max_grad_norm: float = 1.0  # sample: per-sample gradient clipping
    accountant: str = "rdp"  # sample: rdp or prv (Opacus)
    clipping_norm: float = 1.0  # client: bound on each site's update norm (initial, if adaptive)
    clipping: str = "server"  # client: clip at the server or at the sites
    adaptive: bool = False  # client: adaptive clipping norm (Andrew et al. 2021)


@dataclass
class EvaluationConfig:
    every: int = 1  # rounds between evaluations of the global model on the test set (the last always)
    membership_audit: bool = True  # classification: membership-inference attack on the final model
    audit_canaries: int = 0  # classification, simulation: mislabelled members planted for the audit (as many withdrawn)


@dataclass
class SimulationConfig:
    cpus_per_site: float = 1.0  # Ray resources per virtual site
    threads_per_site: int = 1  # torch threads inside each virtual site
    gpus_per_site: float = 0.0


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "medfed"
    progress: bool = True


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 42
    mode: str = "federated"
    task: str = "classification"
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    limits: SiteLimits = field(default_factory=SiteLimits)  # every virtual site's training limits (as SITE.yaml's)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    reason = str(exc).splitlines()[0]
    if "not in struct" in reason or "Key '" in reason and "not" in reason:
        return ConfigError(f"{source}: unknown setting '{key}'{_did_you_mean(key)}")
    return ConfigError(f"{source}: bad value for '{key}': {reason}")


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _did_you_mean(full_key: str) -> str:
    """The closest existing setting at the same level of the schema as ``full_key``."""
    parent, _, leaf = full_key.rpartition(".")
    node = OmegaConf.structured(ExperimentConfig)
    for part in filter(None, parent.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig):
        return ""
    suggestion = did_you_mean(leaf, node.keys())
    return suggestion.replace("'", f"'{parent}.", 1) if parent and suggestion else suggestion


def merge_yaml(schema: DictConfig, path: Path, what: str) -> DictConfig:
    """``path``'s settings merged into ``schema``; a missing file, bad YAML, an unknown key
    or a wrong type is a `ConfigError` naming the file (``what`` says which kind it is)."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return OmegaConf.merge(schema, loaded)
    except OmegaConfBaseException as exc:
        raise _explain(exc, str(path)) from exc


def load_config(path: str | Path | None, overrides: list[str] = ()) -> DictConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate the result."""
    cfg = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        cfg = merge_yaml(cfg, Path(path), "config file")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _explain(exc, f"override '{item}'") from exc
        except yaml.YAMLError as exc:  # the value is read as YAML: '{a:[1]}' needs 'a: [1]'
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"override '{item}': its value is not valid YAML ({problem})") from exc
    validate(cfg)
    return cfg


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"bad value for '{key}': {message}")


def validate(cfg: DictConfig) -> None:
    """Range and choice checks that the schema's types cannot express."""
    _check(cfg.mode in MODES, "mode", f"'{cfg.mode}' is not one of {', '.join(MODES)}")
    _check(cfg.task in TASKS, "task", f"'{cfg.task}' is not one of {', '.join(TASKS)}")
    p = cfg.partition
    _check(
        p.scheme in PARTITION_SCHEMES,
        "partition.scheme",
        f"'{p.scheme}' is not one of {', '.join(PARTITION_SCHEMES)}",
    )
    _check(p.num_sites >= 1, "partition.num_sites", "needs at least one site")
    _check(p.alpha > 0, "partition.alpha", f"must be > 0, got {p.alpha}")
    _check(p.classes_per_site >= 1, "partition.classes_per_site", "must be >= 1")
    _check(0 <= cfg.shift.strength <= 1, "shift.strength", "must be between 0 and 1")
    d = cfg.data
    _check(0 < d.val_fraction < 1, "data.val_fraction", "must be between 0 and 1")
    _check(d.segmentation.contrast in CONTRASTS, "data.segmentation.contrast", f"is one of {', '.join(CONTRASTS)}")
    _check(d.size in (28, 64, 128, 224), "data.size", "MedMNIST sizes are 28, 64, 128, 224")
    t = cfg.train
    _check(t.rounds >= 1, "train.rounds", "must be >= 1")
    _check(t.local_epochs >= 1, "train.local_epochs", "must be >= 1")
    _check(t.local_steps is None or t.local_steps >= 1, "train.local_steps", "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(t.optimizer in ("adam", "sgd"), "train.optimizer", "is adam or sgd")
    _check(t.lr_decay in ("cosine", "none"), "train.lr_decay", "is cosine or none")
    _check(_valid_device(t.device), "train.device", f"use {DEVICES_HELP}")
    _check_gpu(t.device, cfg.simulation.gpus_per_site)
    s = cfg.strategy
    _check(s.name.lower() in STRATEGIES, "strategy.name",
           f"unknown strategy '{s.name}'{did_you_mean(s.name.lower(), STRATEGIES)}; choose from {', '.join(STRATEGIES)}")
    _check(0 < s.fraction_train <= 1, "strategy.fraction_train", "must be in (0, 1]")
    _check(s.min_sites >= 1, "strategy.min_sites", "must be >= 1")
    _check(s.proximal_mu >= 0, "strategy.proximal_mu", "must be >= 0")
    _check(0 <= s.trim_fraction < 0.5, "strategy.trim_fraction", "must be in [0, 0.5)")
    _check(s.num_malicious >= 0, "strategy.num_malicious", "must be >= 0")
    _check(s.krum_select is None or s.krum_select >= 1, "strategy.krum_select", "must be >= 1")
    _check(s.norm_bound is None or s.norm_bound > 0, "strategy.norm_bound", "must be > 0")
    z = cfg.robustness.norm_zscore
    _check(z is None or z > 0, "robustness.norm_zscore", "must be > 0 (or null to turn the norm check off)")
    _check(cfg.simulation.threads_per_site >= 1, "simulation.threads_per_site", "must be >= 1")
    validate_task(cfg)
    validate_privacy(cfg)
    validate_attack(cfg)
    validate_limits(cfg.limits, _check)


def simulated_misbehaviour(cfg: DictConfig) -> bool:
    """Whether ``cfg`` asks for malicious or faulty sites (which only a simulation has)."""
    f = cfg.faults
    return cfg.attack.behaviour != "none" or f.dropout > 0 or f.straggler > 0 or f.crash > 0


def validate_attack(cfg: DictConfig) -> None:
    a, f = cfg.attack, cfg.faults
    _check(a.behaviour in ATTACKS, "attack.behaviour", f"'{a.behaviour}' is not one of {', '.join(ATTACKS)}")
    n = cfg.partition.num_sites
    bad = [i for i in a.sites if not 0 <= i < n]
    _check(not bad, "attack.sites", f"{bad} are not site indices (0 to {n - 1}, partition.num_sites)")
    _check(a.behaviour == "none" or bool(a.sites), "attack.sites", f"list the sites that {a.behaviour}")
    _check(a.scale != 0, "attack.scale", "must not be 0")
    _check(a.noise_std > 0, "attack.noise_std", "must be > 0")
    _check(a.stale_rounds >= 1, "attack.stale_rounds", "must be >= 1")
    _check(0 <= f.dropout < 1, "faults.dropout", "must be in [0, 1)")
    _check(0 <= f.straggler < 1, "faults.straggler", "must be in [0, 1)")
    _check(0 <= f.crash < 1, "faults.crash", "must be in [0, 1)")
    _check(f.straggler_delay >= 0, "faults.straggler_delay", "must be >= 0")
    if simulated_misbehaviour(cfg):
        _check(cfg.mode == "federated", "attack", "malicious and faulty sites are simulated in federated runs only")
        _check(a.behaviour != "label_flip" or task(cfg.task).predicts_labels, "attack.behaviour",
               "label_flip needs a classification task")


def validate_task(cfg: DictConfig) -> None:
    """Settings that depend on the task: models, data sources, partitions."""
    models = task(cfg.task).networks
    _check(cfg.model.name in models, "model.name", f"unknown model '{cfg.model.name}' for task "
           f"{cfg.task}: choose from {', '.join(models)}")
    _check(cfg.model.norm in ("instance", "group"), "model.norm", "is instance or group")
    _check(cfg.model.spatial_dims in (2, 3), "model.spatial_dims", "is 2 or 3")
    g = cfg.gan
    _check(g.latent_dim >= 1 and g.samples_per_class >= 1 and g.tstr_epochs >= 1,
           "gan", "latent_dim, samples_per_class and tstr_epochs must be >= 1")
    _check(cfg.evaluation.every >= 1, "evaluation.every", "must be >= 1")
    _check(cfg.evaluation.audit_canaries >= 0, "evaluation.audit_canaries", "must be >= 0")
    _check(cfg.evaluation.audit_canaries == 0 or (task(cfg.task).predicts_labels and cfg.evaluation.membership_audit),
           "evaluation.audit_canaries", "needs task classification and evaluation.membership_audit: true")
    if task(cfg.task).label_maps:
        _validate_segmentation(cfg)


def _validate_segmentation(cfg: DictConfig) -> None:
    """The ``data.segmentation`` section and the U-Net's shape, for tasks on label maps."""
    seg = cfg.data.segmentation
    _check(seg.patch_size >= 16 and seg.patch_size % 16 == 0, "data.segmentation.patch_size",
           f"must be a multiple of 16, got {seg.patch_size}")
    m = cfg.model
    _check(len(m.channels) >= 2 and all(c >= 1 for c in m.channels), "model.channels",
           f"lists at least two positive channel counts, got {list(m.channels)}")
    _check(m.norm != "group" or all(c % 8 == 0 for c in m.channels), "model.channels",
           f"must be multiples of 8 with group normalisation, got {list(m.channels)}")
    _check(len(m.strides) == len(m.channels) - 1 and all(s >= 1 for s in m.strides), "model.strides",
           f"lists one positive stride per level below the first ({len(m.channels) - 1}), got {list(m.strides)}")
    _check(seg.patch_size % math.prod(m.strides) == 0, "data.segmentation.patch_size",
           f"must be a multiple of the product of model.strides ({math.prod(m.strides)}), got {seg.patch_size}")
    channels = list(seg.overlay_channels)
    _check(len(channels) <= 3 and len(set(channels)) == len(channels) and all(c >= 0 for c in channels),
           "data.segmentation.overlay_channels", f"lists up to 3 distinct channel indices, got {channels}")
    _check(0 <= seg.test_fraction < 1 and cfg.data.val_fraction + seg.test_fraction < 1,
           "data.segmentation.test_fraction",
           f"must be in [0, 1) and leave training cases beside data.val_fraction, got {seg.test_fraction}")
    for region, classes in seg.regions.items():
        _check(len(classes) > 0 and all(c >= 1 for c in classes), f"data.segmentation.regions.{region}",
               f"lists foreground classes (1 and up), got {list(classes)}")
    sources = {"data.segmentation.train": seg.train, "data.segmentation.test": seg.test}
    sources.update({f"data.segmentation.sites[{i}]": s for i, s in enumerate(seg.sites)})
    for key, source in sources.items():
        _check(source.format in SEGMENTATION_FORMATS, f"{key}.format",
               f"'{source.format}' is not one of {', '.join(SEGMENTATION_FORMATS)}")
        _check(source.split in ("train", "test"), f"{key}.split", "is train or test")
        _check(source.slices in ("2d", "3d"), f"{key}.slices", "is 2d or 3d")
        _check(source.mask_threshold is None or source.mask_threshold > 0, f"{key}.mask_threshold",
               f"must be > 0 (or null), got {source.mask_threshold}")
    _check(cfg.partition.scheme in ("iid", "quantity", "natural"), "partition.scheme",
           "segmentation sites are split iid, by quantity, or naturally (data.segmentation.sites)")
    natural = cfg.partition.scheme == "natural"
    _check(natural == bool(seg.sites), "data.segmentation.sites",
           "list one folder per site exactly when partition.scheme is natural")


def validate_privacy(cfg: DictConfig) -> None:
    dp = cfg.privacy
    _check(dp.mechanism in ("none", "sample", "client"), "privacy.mechanism", "is none, sample or client")
    _check(dp.noise_multiplier is None or dp.noise_multiplier >= 0, "privacy.noise_multiplier",
           f"must be >= 0, got {dp.noise_multiplier}")
    _check(dp.target_epsilon is None or dp.target_epsilon > 0, "privacy.target_epsilon", "must be > 0")
    _check(dp.max_epsilon is None or dp.max_epsilon > 0, "privacy.max_epsilon", "must be > 0")
    _check(0 < dp.delta < 1, "privacy.delta", f"must be in (0, 1), got {dp.delta}")
    _check(dp.max_grad_norm > 0, "privacy.max_grad_norm", f"must be > 0, got {dp.max_grad_norm}")
    _check(dp.clipping_norm > 0, "privacy.clipping_norm", f"must be > 0, got {dp.clipping_norm}")
    _check(dp.accountant in ("rdp", "prv"), "privacy.accountant", "is rdp or prv")
    _check(dp.clipping in ("server", "client"), "privacy.clipping", "is server or client")
    if dp.mechanism != "none":
        _check((dp.noise_multiplier is None) != (dp.target_epsilon is None), "privacy.noise_multiplier",
               "give either privacy.noise_multiplier or privacy.target_epsilon, not both")
    if dp.mechanism == "client":
        _check(cfg.strategy.name in ("fedavg", "fedprox"), "strategy.name",
               "client-level DP accounting needs FedAvg's aggregation (fedavg or fedprox)")


def _check_gpu(device: str, gpus_per_site: float) -> None:
    """A GPU asked for on a machine without one stops here, before data or Ray."""
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device[5:]) if device.startswith("cuda:") else 0
        _check(index < count, "train.device", f"'{device}' but this machine has "
               f"{count or 'no'} CUDA GPU{'s' if count != 1 else ''} (this PyTorch: {torch.__version__}); "
               "use auto (GPU when there is one) or cpu")
    if gpus_per_site > 0:
        _check(torch.cuda.is_available(), "simulation.gpus_per_site",
               f"{gpus_per_site} but this machine has no CUDA GPU; set it to 0")


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def as_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
