"""A segmentation experiment's data: each configured source (a dataset, or one hospital's
folder) read from disk, the pool the sites split and the test set.

The same settings describe the simulation's datasets and a deployed site's own files:
``format`` picks the reader of `medfed.models.segmentation.readers`, paths are relative to
the data root unless absolute.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from medfed.errors import ConfigError, DataError
from medfed.models.experiment_data import ExperimentData, data_dir
from medfed.models.segmentation.readers import (
    SegmentationImages,
    read_dicom_series,
    read_drive,
    read_mask_folder,
    read_nifti_folder,
)


def read_source(source, root: Path) -> SegmentationImages:
    """``source``: a `SegmentationSource` config node (format, path, images, masks, fov...)."""
    path = Path(source.path) if Path(source.path).is_absolute() else root / source.path
    if not path.exists():
        hint = (f"; DRIVE comes from https://drive.grand-challenge.org (registration needed): unpack it so "
                f"that {path}/training and {path}/test exist, or point data.root or MEDFED_DATA_DIR at "
                "the folder that holds DRIVE/") if source.format == "drive" else ""
        raise DataError(f"segmentation data not found: {path} (data.segmentation path '{source.path}'){hint}")
    if source.format == "drive":
        return read_drive(path, source.split)
    if source.format == "masks":
        return read_mask_folder(path, source.images, source.masks, source.fov, source.mask_threshold, source.strict,
                                source.estimate_fov)
    if source.format == "nifti":
        return read_nifti_folder(path, source.images, source.masks, source.slices, source.strict)
    mask = Path(source.masks) if Path(source.masks).is_absolute() else path / source.masks
    return read_dicom_series(path / source.images, mask)


def load_experiment(cfg: DictConfig) -> ExperimentData:
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
    return ExperimentData(pool, test, None, str(root / source) if not seg.sites else source, 0, natural)


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
