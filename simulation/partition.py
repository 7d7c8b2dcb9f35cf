"""Split the pool into virtual hospitals with flwr-datasets partitioners.

The partitioners work on a small `datasets.Dataset` of row indices and labels (the
images stay in NumPy); each site's shard is then split into local train and validation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    ExponentialPartitioner,
    IidPartitioner,
    LinearPartitioner,
    NaturalIdPartitioner,
    PathologicalPartitioner,
    SquarePartitioner,
)
from omegaconf import DictConfig

from medfed.client.datasets import LabelledImages
from medfed.errors import ConfigError, DataError

QUANTITY_SHAPES = {
    "linear": LinearPartitioner,
    "square": SquarePartitioner,
    "exponential": ExponentialPartitioner,
}


@dataclass
class SiteShard:
    name: str  # the natural site's name, or site-NNN
    train: LabelledImages
    val: LabelledImages


def strata(data) -> np.ndarray:
    """One class per image to partition by; multi-label rows use their first positive label
    (rows with none form one more class). Segmentation images form one class."""
    if not isinstance(data, LabelledImages):
        return np.zeros(len(data), dtype=np.int64)
    if not data.multilabel:
        return data.labels
    first = data.labels.argmax(axis=1)
    return np.where(data.labels.any(axis=1), first, data.labels.shape[1])


def _partitioner(cfg: DictConfig, has_sites: bool):
    p = cfg.partition
    if p.scheme == "iid":
        return IidPartitioner(num_partitions=p.num_sites)
    if p.scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=p.num_sites, partition_by="label", alpha=p.alpha,
            min_partition_size=p.min_site_size, self_balancing=False, seed=cfg.seed,
        )
    if p.scheme == "pathological":
        return PathologicalPartitioner(
            num_partitions=p.num_sites, partition_by="label",
            num_classes_per_partition=p.classes_per_site, seed=cfg.seed,
        )
    if p.scheme == "quantity":
        if p.quantity_shape not in QUANTITY_SHAPES:
            raise ConfigError(
                f"bad value for 'partition.quantity_shape': choose from {', '.join(QUANTITY_SHAPES)}"
            )
        return QUANTITY_SHAPES[p.quantity_shape](num_partitions=p.num_sites)
    if not has_sites:
        raise ConfigError(
            "partition.scheme is 'natural' but the dataset has no site column "
            "(set data.folder.site_column)"
        )
    return NaturalIdPartitioner(partition_by="site")


def partition(pool: LabelledImages, cfg: DictConfig) -> list[SiteShard]:
    """The pool split into sites, each split again into local train and validation."""
    p = cfg.partition
    if p.scheme != "natural" and p.num_sites > len(pool):
        raise DataError(
            f"partition.num_sites is {p.num_sites} but the dataset has only {len(pool)} images"
        )
    columns = {"row": np.arange(len(pool)), "label": strata(pool)}
    natural_sites = getattr(pool, "sites", None)
    if natural_sites is not None:
        columns["site"] = natural_sites
    table = Dataset.from_dict(columns)
    partitioner = _partitioner(cfg, natural_sites is not None)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Dirichlet resampling warnings; failures raise
            shards = [
                np.asarray(partitioner.load_partition(i)["row"])
                for i in range(partitioner.num_partitions)
            ]
    except ValueError as exc:
        hint = (
            " (raise partition.alpha, lower partition.min_site_size or use fewer sites)"
            if p.scheme == "dirichlet" else ""
        )
        raise DataError(f"cannot split the data with partition.scheme={p.scheme}: {exc}{hint}") from exc

    natural_names = getattr(partitioner, "partition_id_to_natural_id", None)
    rng = np.random.default_rng(cfg.seed)
    names = [str(natural_names[i]) if natural_names else f"site-{i:03d}" for i in range(len(shards))]
    return [split_site(name, pool, rows, cfg.data.val_fraction, rng, f"partition.scheme={p.scheme}")
            for name, rows in zip(names, shards)]


def split_site(name: str, data, rows: np.ndarray, val_fraction: float, rng: np.random.Generator,
               why: str) -> SiteShard:
    """A site's ``rows`` of ``data`` split into local train and validation."""
    if len(rows) < 3:
        raise DataError(
            f"{name} gets only {len(rows)} image(s) with {why}; "
            f"each site needs at least 3 (2 to train, 1 to validate)"
        )
    rows = rng.permutation(rows)
    n_val = min(max(1, int(round(len(rows) * val_fraction))), len(rows) - 2)
    return SiteShard(name, data.subset(np.sort(rows[n_val:])), data.subset(np.sort(rows[:n_val])))


def natural_sites(folders: list[tuple[str, object]], cfg: DictConfig) -> list[SiteShard]:
    """One site per hospital's own data (``(name, images)`` pairs), each split into train and validation."""
    rng = np.random.default_rng(cfg.seed)
    return [split_site(name, data, np.arange(len(data)), cfg.data.val_fraction, rng, "its own folder")
            for name, data in folders]
