"""Split the pool into virtual hospitals with flwr-datasets partitioners.

The partitioners work on a small `datasets.Dataset` of cases and labels (the images stay
in NumPy); each site's shard is then split into local train and validation (and, on
request, its own test images). A case is a patient's volume or series: the axial slices
of one NIfTI volume (``name:z``) are one case, so a patient's slices never end up on two
sites or on both sides of a split. Every other item is a case of its own.
"""

from __future__ import annotations

import logging
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

from medfed.errors import ConfigError, DataError
from medfed.models.classification.data import LabelledImages
from medfed.tasks import task

QUANTITY_SHAPES = {
    "linear": LinearPartitioner,
    "square": SquarePartitioner,
    "exponential": ExponentialPartitioner,
}


log = logging.getLogger("medfed.simulation")


@dataclass
class SiteShard:
    name: str  # the natural site's name, or site-NNN
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages | None = None  # the site's own test images (segmentation.test_fraction)


def case_name(item: str) -> str:
    """The case an item belongs to: a slice ``case:z`` belongs to its volume."""
    return item.split(":", 1)[0]


def case_ids(data) -> np.ndarray:
    """Each item's case as 0, 1, ... in order of first appearance (items without names:
    one case each)."""
    names = getattr(data, "names", None)
    if names is None:
        return np.arange(len(data))
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(case_name(n), len(seen)) for n in names], dtype=np.int64)


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
    cases = case_ids(pool)
    _, first = np.unique(cases, return_index=True)  # each case's first item speaks for it
    if p.scheme != "natural" and p.num_sites > len(first):
        unit = "images" if len(first) == len(pool) else "cases"
        raise DataError(
            f"partition.num_sites is {p.num_sites} but the dataset has only {len(first)} {unit}"
        )
    columns = {"row": np.arange(len(first)), "label": strata(pool)[first]}
    natural_sites = getattr(pool, "sites", None)
    if natural_sites is not None:
        columns["site"] = natural_sites[first]
    table = Dataset.from_dict(columns)
    partitioner = _partitioner(cfg, natural_sites is not None)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Dirichlet resampling warnings; failures raise
            shards = [
                np.flatnonzero(np.isin(cases, partitioner.load_partition(i)["row"]))
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
    return [split_site(name, pool, rows, cfg.data.val_fraction, rng, f"partition.scheme={p.scheme}",
                       test_fraction(cfg))
            for name, rows in zip(names, shards)]


def test_fraction(cfg: DictConfig) -> float:
    """The share of each site's cases kept as its own test images (tasks on label maps)."""
    return float(cfg.data.segmentation.test_fraction) if task(cfg.task).label_maps else 0.0


def split_site(name: str, data, rows: np.ndarray, val_fraction: float, rng: np.random.Generator,
               why: str, test_fraction: float = 0.0) -> SiteShard:
    """A site's ``rows`` of ``data`` split by case into local train and validation (and its
    own test images when ``test_fraction`` > 0)."""
    cases = case_ids(data)[rows]
    groups = list(dict.fromkeys(cases.tolist()))  # the site's cases, in order
    unit = "image(s)" if len(groups) == len(rows) else "case(s)"
    n = len(groups)
    n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 else 0
    if n - n_test < 2:
        raise DataError(
            f"{name} gets only {n} {unit} with {why}; each site needs at least {2 + n_test} "
            f"(2 to train{f', {n_test} to test' if n_test else ''})"
        )
    order = np.asarray(groups)[rng.permutation(n)]

    def items(picked: np.ndarray):
        return data.subset(np.sort(rows[np.isin(cases, picked)]))

    if n - n_test == 2:  # small 3D cohorts: both cases train, and one of them validates
        log.warning("%s has only 2 %s to train on: it validates on one of them (%s), so its validation "
                    "figures are optimistic", name, unit, order[0])
        test = items(order[2:2 + n_test]) if n_test else None
        return SiteShard(name, items(order[:2]), items(order[:1]), test)
    n_val = min(max(1, int(round(n * val_fraction))), n - n_test - 2)
    test = items(order[n_val:n_val + n_test]) if n_test else None
    return SiteShard(name, items(order[n_val + n_test:]), items(order[:n_val]), test)


def natural_sites(folders: list[tuple[str, object]], cfg: DictConfig) -> list[SiteShard]:
    """One site per hospital's own data (``(name, images)`` pairs), each split by case into
    train and validation (and its own test images)."""
    rng = np.random.default_rng(cfg.seed)
    return [split_site(name, data, np.arange(len(data)), cfg.data.val_fraction, rng, "its own folder",
                       test_fraction(cfg))
            for name, data in folders]
