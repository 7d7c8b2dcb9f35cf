"""The data of an experiment, whatever its task: the pool that sites split and the global
test set, read by the task's own ``data.load_experiment``; and where datasets are looked up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medfed.tasks import task

# what image readers take, in either case: every format Pillow reads that hospitals hand over
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm")


def data_dir(root: str | None = None) -> Path:
    """Where datasets live, in this order: the config's ``data.root``, ``$MEDFED_DATA_DIR``,
    the ``data`` folder of the working directory (the quick start links the shared data there)."""
    return Path(root or os.environ.get("MEDFED_DATA_DIR") or "data").expanduser()


@dataclass
class ExperimentData:
    pool: Any  # the task's images (`LabelledImages`, `SegmentationImages`), split among the sites
    # only ever used to evaluate the global model; None until the sites' held-out cases
    # are gathered (data.segmentation.test_fraction)
    test: Any
    labels: Any  # the `LabelSpace` of tasks with image-level labels, else None
    source: str  # the file or folder it came from, for reports
    image_size: int  # the networks' input size; 0 when sizes differ per image (networks see patches)
    natural: list[tuple[str, Any]] | None = None  # one hospital's folder per site (label maps)

    @property
    def num_classes(self) -> int:
        if self.labels is not None:
            return self.labels.num_classes
        return max(self.pool.num_classes, self.test.num_classes if self.test is not None else 0)


def load_experiment_data(cfg: DictConfig) -> ExperimentData:
    """The experiment's data, by its task's reader."""
    return task(cfg.task).file("data").load_experiment(cfg)
