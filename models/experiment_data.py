"""The data of an experiment, whatever its task: the pool that sites split and the global
test set, read by the task's own ``data.load_experiment``; and where datasets are looked up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from medfed.models.tasks import task

if TYPE_CHECKING:  # each task's data module imports this one
    from medfed.models.classification.data import LabelledImages, LabelSpace
    from medfed.models.segmentation.readers import SegmentationImages


def data_dir(root: str | None = None) -> Path:
    """Where datasets live, in this order: the config's ``data.root``, ``$MEDFED_DATA_DIR``,
    the ``data`` folder of the working directory (the quick start links the shared data there)."""
    return Path(root or os.environ.get("MEDFED_DATA_DIR") or "data").expanduser()


@dataclass
class ExperimentData:
    pool: LabelledImages | SegmentationImages  # split among the sites
    # only ever used to evaluate the global model; None until the sites' held-out cases
    # are gathered (data.segmentation.test_fraction)
    test: LabelledImages | SegmentationImages | None
    labels: LabelSpace | None  # tasks with image-level labels
    source: str  # the file or folder it came from, for reports
    image_size: int  # the networks' input size; 0 when sizes differ per image (networks see patches)
    natural: list[tuple[str, SegmentationImages]] | None = None  # one hospital's folder per site

    @property
    def num_classes(self) -> int:
        if self.labels is not None:
            return self.labels.num_classes
        return max(self.pool.num_classes, self.test.num_classes if self.test is not None else 0)


def load_experiment_data(cfg: DictConfig) -> ExperimentData:
    """The experiment's data, by its task's reader."""
    return task(cfg.task).file("data").load_experiment(cfg)
