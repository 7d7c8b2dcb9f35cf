"""The public dataset of an experiment: the pool that sites split, and the global test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from medfed.client.datasets import LabelledImages, LabelSpace, read_image_folder, read_npz_split
from medfed.client.segmentation_data import SegmentationImages
from medfed.client.segmentation_sources import read_source
from medfed.errors import ConfigError, DataError
from medfed.simulation.medmnist import data_dir, medmnist_path

HELD_OUT_TEST_FRACTION = 0.2  # folder datasets without a test CSV


@dataclass
class ExperimentData:
    pool: LabelledImages | SegmentationImages  # split among the sites
    # only ever used to evaluate the global model; None until the sites' held-out cases
    # are gathered (data.segmentation.test_fraction)
    test: LabelledImages | SegmentationImages | None
    labels: LabelSpace | None  # classification and GAN
    source: str  # the file or folder it came from, for reports
    natural: list[tuple[str, SegmentationImages]] | None = None  # one hospital's folder per site

    @property
    def image_size(self) -> int:
        if isinstance(self.pool, SegmentationImages):
            return 0  # sizes differ per image; networks see patches
        return int(self.pool.images.shape[1])

    @property
    def num_classes(self) -> int:
        if self.labels is not None:
            return self.labels.num_classes
        return max(self.pool.num_classes, self.test.num_classes if self.test is not None else 0)


def load_experiment_data(cfg: DictConfig) -> ExperimentData:
    if cfg.task == "segmentation":
        return _segmentation(cfg)
    d = cfg.data
    if d.dataset == "folder":
        pool, test, source = _folder(cfg)
    else:
        path = medmnist_path(d.dataset, d.size, d.root)
        train, val = read_npz_split(path, "train"), read_npz_split(path, "val")
        pool = LabelledImages.concat([train, val])
        test, source = read_npz_split(path, "test"), str(path)
    if pool.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{source}: training images are {pool.images.shape[1:]} but test images are "
            f"{test.images.shape[1:]}; all images must have one size"
        )
    return ExperimentData(pool, test, LabelSpace.infer(pool, test), source)


def _folder(cfg: DictConfig) -> tuple[LabelledImages, LabelledImages, str]:
    f = cfg.data.folder
    if not f.images or not f.labels_csv:
        raise ConfigError("data.dataset is 'folder': set data.folder.images and data.folder.labels_csv")
    base = data_dir(cfg.data.root)
    images, csv = base / f.images, base / f.labels_csv
    site_column = f.site_column or (cfg.partition.site_column if cfg.partition.scheme == "natural" else None)
    pool = read_image_folder(images, csv, f.image_column, f.label_column, site_column)
    if f.test_csv:
        test = read_image_folder(images, base / f.test_csv, f.image_column, f.label_column)
        return pool, test, str(csv)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(pool))
    cut = max(1, int(round(len(pool) * HELD_OUT_TEST_FRACTION)))
    return pool.subset(np.sort(order[cut:])), pool.subset(np.sort(order[:cut])), str(Path(csv))


def _segmentation(cfg: DictConfig) -> ExperimentData:
    """The pool from ``data.segmentation.train`` (or every site's own folder) and the test
    set from ``data.segmentation.test``; channels and dimensions must agree everywhere."""
    seg, root = cfg.data.segmentation, data_dir(cfg.data.root)
    natural = None
    if seg.sites:
        natural = [(s.name or f"site-{i:03d}", read_source(s, root)) for i, s in enumerate(seg.sites)]
        pool, source = SegmentationImages.concat([d for _, d in natural]), ", ".join(s.path for s in seg.sites)
    else:
        pool, source = read_source(seg.train, root), seg.train.path
    # with test_fraction, each site's held-out cases become the test set once the sites are split
    test = read_source(seg.test, root) if not seg.test_fraction else None
    for name, part in ([("data.segmentation.test", test)] if test is not None else []) + (natural or []):
        if (part.channels, part.spatial_dims) != (pool.channels, pool.spatial_dims):
            raise DataError(f"{name}: {part.channels}-channel {part.spatial_dims}D images, but the training "
                            f"data are {pool.channels}-channel {pool.spatial_dims}D")
    if test is not None:
        _no_shared_cases(cfg, root)
    if pool.spatial_dims != cfg.model.spatial_dims:
        raise ConfigError(f"model.spatial_dims is {cfg.model.spatial_dims} but the images are "
                          f"{pool.spatial_dims}D ({source})")
    if any(c >= pool.channels for c in seg.overlay_channels):
        raise ConfigError(f"bad value for 'data.segmentation.overlay_channels': the images have "
                          f"{pool.channels} channel(s) (0..{pool.channels - 1}), got {list(seg.overlay_channels)}")
    return ExperimentData(pool, test, None, str(root / source) if not seg.sites else source, natural)


def _no_shared_cases(cfg: DictConfig, root: Path) -> None:
    """A test set read from the same images as training shares every patient with it and
    makes the test score optimistic: refuse. (File names alone cannot tell patients apart
    across hospitals' folders, so the check is on what is read.)"""
    seg = cfg.data.segmentation
    test = _images_read(seg.test, root)
    training = {"data.segmentation.train": seg.train} if not seg.sites else {
        f"data.segmentation.sites[{i}]": site for i, site in enumerate(seg.sites)}
    for key, source in training.items():
        if _images_read(source, root) == test:
            raise DataError(f"data.segmentation.test reads the same images as {key} ({test[0]}): a patient's "
                            "images belong to training or to test, not both; point the test set at other "
                            "cases, or set data.segmentation.test_fraction to hold out whole cases")


def _images_read(source, root: Path) -> tuple:
    """What a source reads: its image folder (DRIVE: its split's), resolved."""
    path = Path(source.path) if Path(source.path).is_absolute() else root / source.path
    sub = source.split if source.format == "drive" else source.images
    return (str((path / sub).resolve()),)
