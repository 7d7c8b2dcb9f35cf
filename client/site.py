"""A site: its local data (train and validation), where it trains, and its state folder.

In simulation each virtual hospital is a folder written by the harness; a deployed
hospital points at its own files. Either way the ClientApp sees one `Site`, with the
terms it holds every round to (its policy, privacy promise and training limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from medfed.models.classification.data import LabelledImages, read_npz_split
from medfed.models.segmentation.readers import SegmentationImages
from medfed.site_terms import SiteTerms

SITE_DATA_FILE = "data.npz"  # train_* and val_* arrays of one site
SEGMENTATION_FILES = ("train.npz", "val.npz")  # a segmentation site's images with masks


@dataclass
class Site:
    name: str
    index: int
    train: LabelledImages | SegmentationImages
    val: LabelledImages | SegmentationImages
    state_dir: Path  # what the site keeps between rounds (FedBN layers, privacy budget)
    device: str = "auto"
    threads: int = 1
    terms: SiteTerms = field(default_factory=SiteTerms)  # SITE.yaml's, or a simulation's for its virtual sites


def write_site_data(folder: Path, train, val) -> Path:
    """Store one site's shard in ``folder`` (each file written whole, then renamed):
    ``data.npz`` for labelled images, ``train.npz`` and ``val.npz`` for segmentation."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(train, SegmentationImages):
        train.save(folder / SEGMENTATION_FILES[0])
        val.save(folder / SEGMENTATION_FILES[1])
        return folder
    target = folder / SITE_DATA_FILE
    partial = folder / (SITE_DATA_FILE + ".partial.npz")
    np.savez(
        partial,
        train_images=train.images,
        train_labels=train.labels,
        val_images=val.images,
        val_labels=val.labels,
    )
    partial.replace(target)
    return target


@lru_cache(maxsize=64)
def read_site_data(folder: Path) -> tuple:
    """A site's train and validation sets; cached, since a site trains every round."""
    if (folder / SEGMENTATION_FILES[0]).is_file():
        return tuple(SegmentationImages.load(folder / name) for name in SEGMENTATION_FILES)
    path = folder / SITE_DATA_FILE
    return read_npz_split(path, "train"), read_npz_split(path, "val")


@dataclass(frozen=True)
class SimulatedSites:
    """Finds the virtual site of a simulated SuperNode by its ``partition-id``.

    Small and picklable: the Simulation Engine ships it to every worker.
    """

    root: str
    device: str = "auto"
    threads: int = 1
    terms: SiteTerms = field(default_factory=SiteTerms)  # every virtual site's (simulation.virtual_sites)

    def __call__(self, context) -> Site:
        index = int(context.node_config["partition-id"])
        folder = Path(self.root) / site_folder_name(index)
        train, val = read_site_data(folder)
        return Site(site_folder_name(index), index, train, val, folder / "state",
                    self.device, self.threads, self.terms)


def site_folder_name(index: int) -> str:
    return f"site-{index:03d}"
