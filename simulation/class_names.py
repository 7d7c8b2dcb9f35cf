"""What each class index means, for reports people read ("pneumonia", not "class 1").

MedMNIST files carry no class names (the `medmnist` package has them, and medfed does
not need that package), so a small table covers the datasets medfed ships configs for;
others read ``class N``. A folder dataset names its classes in an optional column of
its label CSV, ``<label_column>_name`` (e.g. ``label_name``), beside the index.
"""

from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from medfed.models.experiment_data import data_dir

# from MedMNIST v2's INFO[flag]["label"]
MEDMNIST_CLASSES = {
    "pneumoniamnist": ("normal", "pneumonia"),
}


def class_names(cfg: DictConfig, count: int) -> list[str]:
    """A name for each of ``count`` class indices of the experiment's dataset."""
    if cfg.data.dataset == "folder":
        known = _csv_names(cfg)
    else:
        known = dict(enumerate(MEDMNIST_CLASSES.get(cfg.data.dataset, ())))
    return unique([known.get(k) or f"class {k}" for k in range(count)])


def unique(names: list[str]) -> list[str]:
    """Names usable as table columns: a repeated name gets its index."""
    return [f"{name} ({k})" if names.count(name) > 1 else name for k, name in enumerate(names)]


def _csv_names(cfg: DictConfig) -> dict[int, str]:
    """``index -> name`` from the label CSV's name column; none if it has no such column or
    its labels are multi-label lists."""
    f = cfg.data.folder
    column = f"{f.label_column}_name"
    try:
        table = pd.read_csv(data_dir(cfg.data.root) / f.labels_csv, usecols=[f.label_column, column])
    except (OSError, ValueError, pd.errors.ParserError):
        return {}  # no name column (reading the labels themselves reports other problems)
    table = table.dropna().astype(str)
    if not table[f.label_column].str.fullmatch(r"\d+").all():
        return {}
    # the name most rows give each index, should a few disagree
    return {int(index): group[column].mode().iloc[0] for index, group in table.groupby(f.label_column)}
