"""A hospital's own settings (SITE.yaml): its data, device, state folder, coordinator, policy,
privacy promise and training limits.

Read as strictly as an experiment config (`medfed.config`): a typed omegaconf schema, so
an unknown key or a value of the wrong type stops loading with the setting named, then
checks that types cannot express (files that must exist, the address, the formats).
Relative paths are taken from SITE.yaml's own folder, so the site finds the same files
wherever it is started; the loaded config holds them absolute.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medfed.config import DEVICES_HELP, SEGMENTATION_FORMATS, _valid_device, merge_yaml
from medfed.errors import ConfigError, DataError, MedfedError
from medfed.site_terms import SiteLimits, SitePrivacy, SiteTerms, validate_limits, validate_privacy_terms
from medfed.tasks import TASKS

DATA_FORMATS = ("npz", "folder", *SEGMENTATION_FORMATS)
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


log = logging.getLogger("medfed.site")

UNLABELLED_FORMATS = ("masks", "nifti", "dicom")  # formats a site may check before its masks exist


@dataclass
class SiteDataConfig:
    """Where the site's images are and how to read them; the fields of the formats' readers."""

    format: str = "npz"  # npz | folder | drive | masks | nifti | dicom
    path: str = ""  # npz: the file; other formats: the folder
    labels_csv: str = "labels.csv"  # folder: CSV of labels, relative to path
    image_column: str = "image"  # folder
    label_column: str = "label"  # folder
    split: str = "train"  # drive: train (training/) or test (test/)
    images: str = "images"  # masks, nifti: image folder; dicom: the series folder
    # masks: mask folder; nifti: label folder; dicom: the mask file. null: not labelled yet (the site
    # check counts and scans the images; the site cannot train)
    masks: str | None = "1st_manual"
    fov: str | None = "mask"  # masks: field-of-view folder, or null
    slices: str = "2d"  # nifti, dicom: 2d (axial slices) or 3d (whole volumes)
    # masks: a grey (interpolated) mask's foreground is where its value is at least this; null: as stored
    mask_threshold: float | None = None
    strict: bool = False  # an image without its mask (or field of view) is an error, not skipped and listed
    estimate_fov: bool = True  # masks without fov: a fundus photograph's field of view is estimated
    val_fraction: float = 0.1  # folder and segmentation formats: share kept for local validation
    val_seed: int = 0  # which items go to validation


@dataclass
class CoordinatorConfig:
    address: str = ""  # host:port of the coordinator's SuperLink (flower-supernode --superlink)
    ca_cert: str | None = None  # the federation's ca.crt
    private_key: str | None = None  # this site's SITE.key (OpenSSH format, mode 0600)
    public_key: str | None = None  # optional: this site's SITE.pub, checked to match the private key
    trusted_entities: str | None = None  # the federation's trusted-entities.yaml: who may sign the runs' apps


@dataclass
class PolicyConfig:
    """The limits the site sets on what the federation may ask of it."""

    tasks: list[str] = field(default_factory=lambda: ["classification"])
    models: list[str] = field(default_factory=list)  # empty: any model of the allowed tasks
    require_dp: bool = False  # refuse rounds without sample-level DP (at least privacy.min_noise_multiplier)
    # refuse to start while a DICOM header still identifies a patient (DICOM's Basic Confidentiality Profile)
    require_deidentified: bool = False
    max_epsilon: float | None = None  # moved to privacy.max_epsilon: kept only to say so


@dataclass
class SiteConfig:
    name: str = ""
    data: SiteDataConfig = field(default_factory=SiteDataConfig)
    device: str = "auto"
    state_dir: str = "state"  # privacy budget, logs, check results
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    insecure: bool = False  # plain gRPC without TLS or keys: a trial on one machine (loopback) only
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    privacy: SitePrivacy = field(default_factory=SitePrivacy)  # what the site promises its patients
    limits: SiteLimits = field(default_factory=SiteLimits)  # what one round may ask of the site
    audit_log: str | None = None  # default: <state_dir>/audit.log


def load_site_config(path: str | Path) -> DictConfig:
    """Read and validate SITE.yaml; every problem is a `ConfigError` naming the file and setting."""
    path = Path(path)
    cfg = merge_yaml(OmegaConf.structured(SiteConfig), path, "site config")
    _resolve_paths(cfg, path.resolve().parent)
    validate_site(cfg, str(path))
    return cfg


def _resolve_paths(cfg: DictConfig, base: Path) -> None:
    def absolute(value: str | None) -> str | None:
        return None if not value else str(base / Path(value).expanduser())

    cfg.data.path = absolute(cfg.data.path) or ""
    cfg.state_dir = absolute(cfg.state_dir) or ""
    cfg.audit_log = absolute(cfg.audit_log) or (str(Path(cfg.state_dir) / "audit.log") if cfg.state_dir else None)
    for key in ("ca_cert", "private_key", "public_key", "trusted_entities"):
        cfg.coordinator[key] = absolute(cfg.coordinator[key])


def validate_site(cfg: DictConfig, source: str) -> None:
    """Checks beyond the schema's types; ``source`` (the file) starts every message."""

    def check(condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"{source}: bad value for '{key}': {message}")

    check(bool(cfg.name), "name", "give the site's name")
    check(bool(_NAME.match(cfg.name)), "name", f"'{cfg.name}' is not a site name (letters, digits, '-' and '_')")
    check(bool(cfg.state_dir), "state_dir", "give the folder where the site keeps its state")
    check(_valid_device(cfg.device), "device", f"use {DEVICES_HELP}")
    _validate_data(cfg.data, check)
    _validate_coordinator(cfg, check)
    _validate_policy(cfg.policy, check)
    validate_privacy_terms(cfg.privacy, cfg.policy.require_dp, check)
    validate_limits(cfg.limits, check)


def site_terms(cfg: DictConfig) -> SiteTerms:
    """The terms the site holds every round to (`medfed.client.site_policy.accept_round`)."""
    return SiteTerms(tasks=list(cfg.policy.tasks), models=list(cfg.policy.models), require_dp=cfg.policy.require_dp,
                     privacy=OmegaConf.to_object(cfg.privacy), limits=OmegaConf.to_object(cfg.limits))


def _validate_data(d: DictConfig, check) -> None:
    check(d.format in DATA_FORMATS, "data.format", f"'{d.format}' is not one of {', '.join(DATA_FORMATS)}")
    check(bool(d.path), "data.path", "give the site's data file (npz) or folder")
    path = Path(d.path)
    if d.format == "npz":
        check(path.is_file(), "data.path", f"file not found: {path}")
    else:
        check(path.is_dir(), "data.path", f"folder not found: {path}")
    if d.format == "folder":
        check((path / d.labels_csv).is_file(), "data.labels_csv", f"file not found: {path / d.labels_csv}")
    check(0 < d.val_fraction < 1, "data.val_fraction", f"must be between 0 and 1, got {d.val_fraction}")
    check(d.split in ("train", "test"), "data.split", "is train or test")
    check(d.slices in ("2d", "3d"), "data.slices", "is 2d or 3d")
    check(d.mask_threshold is None or d.mask_threshold > 0, "data.mask_threshold",
          f"must be > 0 (or null), got {d.mask_threshold}")
    check(d.masks is not None or d.format in UNLABELLED_FORMATS, "data.masks",
          f"may be null (not labelled yet) only for {', '.join(UNLABELLED_FORMATS)} data")


def _validate_coordinator(cfg: DictConfig, check) -> None:
    from medfed.federation.credentials import (
        is_loopback,
        load_node_private_key,
        load_node_public_key,
        load_trusted_entities,
    )

    c = cfg.coordinator
    match = _ADDRESS.match(c.address)
    check(bool(match) and 1 <= int(match.group(2)) <= 65535, "coordinator.address",
          f"'{c.address}' is not host:port (e.g. fl.example.org:8000)")
    # without TLS the weights travel in clear: only over this machine's own loopback
    check(not cfg.insecure or is_loopback(match.group(1)), "insecure",
          f"true only for a coordinator on this machine (127.0.0.1, ::1 or localhost), not {c.address}; "
          "remove insecure and give the federation's credentials")
    check(cfg.insecure or c.trusted_entities is not None, "coordinator.trusted_entities",
          "required unless insecure: true (the federation's trusted-entities.yaml)")
    if c.trusted_entities is not None:
        _load(load_trusted_entities, c.trusted_entities, "coordinator.trusted_entities", check)
    if cfg.insecure:
        return
    for key in ("ca_cert", "private_key"):
        check(c[key] is not None, f"coordinator.{key}", "required unless insecure: true")
    for key in ("ca_cert", "private_key", "public_key"):
        check(c[key] is None or Path(c[key]).is_file(), f"coordinator.{key}", f"file not found: {c[key]}")
    mode = Path(c.private_key).stat().st_mode & 0o777
    check(mode & 0o077 == 0, "coordinator.private_key",
          f"{c.private_key} is readable by other users (mode {mode:04o}); run chmod 600 {c.private_key}")
    key = _load(load_node_private_key, c.private_key, "coordinator.private_key", check)
    if c.public_key:
        public = _load(load_node_public_key, c.public_key, "coordinator.public_key", check)
        check(public.public_numbers() == key.public_key().public_numbers(), "coordinator.public_key",
              f"{c.public_key} is not the public half of {c.private_key}")


def _load(loader, path: str, key: str, check):
    try:
        return loader(Path(path))
    except MedfedError as exc:
        check(False, key, str(exc))


def _validate_policy(p: DictConfig, check) -> None:
    check(len(p.tasks) > 0, "policy.tasks", f"list at least one of {', '.join(TASKS)}")
    for task in p.tasks:
        check(task in TASKS, "policy.tasks", f"'{task}' is not one of {', '.join(TASKS)}")
    known = [m for task in p.tasks if task in TASKS for m in TASKS[task].networks]
    for model in p.models:
        check(model in known, "policy.models", f"'{model}' is not a model of {', '.join(p.tasks)} "
              f"(choose from {', '.join(known)})")
    check(p.max_epsilon is None, "policy.max_epsilon",
          "the budget is now privacy.max_epsilon (with the site's privacy.delta and privacy.accountant): "
          "move it there")


def read_site_data(cfg: DictConfig) -> tuple:
    """The site's train and validation sets, read as its ClientApp will train on them."""
    from medfed.models.classification.data import read_image_folder, read_npz_split
    from medfed.models.segmentation.data import read_source

    d = cfg.data
    path = Path(d.path)
    if d.format in UNLABELLED_FORMATS and d.masks is None:
        raise DataError("data.masks is null: the site's images are not labelled yet, so there is nothing to train on")
    if d.format == "npz":
        return read_npz_split(path, "train"), read_npz_split(path, "val")
    if d.format == "folder":
        data = read_image_folder(path, path / d.labels_csv, d.image_column, d.label_column)
    else:
        data = read_source(d, path)
        if d.format == "dicom" and d.slices == "2d":
            data = axial_slices(data)
    return split_validation(data, d.val_fraction, d.val_seed, path)


def axial_slices(data):
    """3D items (D, H, W, C) as their 2D slices ``name:z``: one DICOM series then trains a 2D
    network and still leaves slices for local validation."""
    from medfed.models.segmentation.readers import SegmentationImages

    items = [(image[z], mask[z], None if fov is None else fov[z], f"{name}:{z}")
             for image, mask, fov, name in zip(data.images, data.masks, data.fov, data.names)
             for z in range(image.shape[0])]
    return SegmentationImages(*(list(column) for column in zip(*items))) if items else data


def split_validation(data, fraction: float, seed: int, where: Path) -> tuple:
    """``data`` split into local train and validation (at least 2 to train and 1 to validate);
    a site with only 2 items (a small 3D cohort) trains on both and validates on one of them."""
    n = len(data)
    if n < 2:
        raise DataError(f"{where}: only {n} item(s); a site needs at least 2 to train")
    rows = np.random.default_rng(seed).permutation(n)
    if n == 2:
        log.warning("%s: only 2 items: the site trains on both and validates on one of them (item %d), so "
                    "its validation figures are optimistic", where, rows[0])
        return data, data.subset(rows[:1])
    n_val = min(max(1, int(round(n * fraction))), n - 2)
    return data.subset(np.sort(rows[n_val:])), data.subset(np.sort(rows[:n_val]))
