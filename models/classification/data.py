"""A site's own image files, read into memory as one labelled array.

Two formats, both used by hospitals and by the simulation harness alike:
- MedMNIST-style ``.npz`` (``{split}_images`` and ``{split}_labels`` arrays);
- a folder of PNG/JPEG/TIFF images with a CSV of labels (optional site column).
Every problem raises `DataError` naming the file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from medfed.errors import ConfigError, DataError
from medfed.models.classification.medmnist import medmnist_path
from medfed.models.experiment_data import ExperimentData, data_dir

HELD_OUT_TEST_FRACTION = 0.2  # folder datasets without a test CSV


@dataclass
class LabelledImages:
    """Images ``(N, H, W, C)`` uint8 and labels ``(N,)`` int or ``(N, L)`` multi-hot."""

    images: np.ndarray
    labels: np.ndarray
    sites: np.ndarray | None = None  # natural site of each image, when known

    def __post_init__(self) -> None:
        if self.images.ndim == 3:  # grey images without a channel axis
            self.images = self.images[..., None]
        if self.labels.ndim == 2 and self.labels.shape[1] == 1:
            self.labels = self.labels[:, 0]
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(parts: list[LabelledImages]) -> LabelledImages:
        """One set holding every image of ``parts`` (site names are dropped)."""
        return LabelledImages(
            np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
        )

    def subset(self, index: np.ndarray) -> LabelledImages:
        sites = None if self.sites is None else self.sites[index]
        return LabelledImages(self.images[index], self.labels[index], sites)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])


@dataclass(frozen=True)
class LabelSpace:
    """What the labels mean for the model: its outputs and loss."""

    kind: str  # "binary", "multiclass" or "multilabel"
    num_classes: int  # model outputs

    @staticmethod
    def infer(*sets: LabelledImages) -> LabelSpace:
        labels = [s.labels for s in sets if len(s)]
        if labels[0].ndim == 2:
            return LabelSpace("multilabel", int(labels[0].shape[1]))
        n = int(max(int(lab.max()) for lab in labels)) + 1
        return LabelSpace("binary" if n <= 2 else "multiclass", max(n, 2))


def read_npz_split(path: Path, split: str) -> LabelledImages:
    """One split (``train``, ``val`` or ``test``) of a MedMNIST-style npz file."""
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        with np.load(path) as archive:
            keys = set(archive.files)
            wanted = (f"{split}_images", f"{split}_labels")
            missing = [k for k in wanted if k not in keys]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {', '.join(missing)} "
                    f"(found: {', '.join(sorted(keys)) or 'none'})"
                )
            images, labels = archive[wanted[0]], archive[wanted[1]]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    if images.ndim not in (3, 4):
        raise DataError(f"{path}: {split}_images has shape {images.shape}, expected (N, H, W[, C])")
    if images.dtype != np.uint8:
        images = _to_uint8(images, path)
    return LabelledImages(images, labels.astype(np.int64))


def _to_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(images).all():
        raise DataError(f"{path}: images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    scale = 255.0 if hi <= 1.0 and lo >= 0.0 else 1.0
    return np.clip(images * scale, 0, 255).astype(np.uint8)


def read_image_folder(
    images_dir: Path,
    labels_csv: Path,
    image_column: str = "image",
    label_column: str = "label",
    site_column: str | None = None,
) -> LabelledImages:
    """Images listed in a CSV (paths relative to ``images_dir``) with their labels."""
    if not labels_csv.is_file():
        raise DataError(f"label file not found: {labels_csv}")
    if not images_dir.is_dir():
        raise DataError(f"image folder not found: {images_dir}")
    try:
        table = pd.read_csv(labels_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{labels_csv}: not a readable CSV ({exc})") from exc
    needed = [image_column, label_column] + ([site_column] if site_column else [])
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise DataError(
            f"{labels_csv}: missing column(s) {', '.join(absent)} "
            f"(found: {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise DataError(f"{labels_csv}: no rows")
    files = [images_dir / str(name) for name in table[image_column]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{labels_csv}: {len(missing)} listed image(s) do not exist: {shown}")
    images = [_read_image(f) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = {im.shape: f for im, f in zip(images, files)}
        detail = "; ".join(f"{shape[1]}x{shape[0]}x{shape[2]} e.g. {f.name}" for shape, f in first.items())
        raise DataError(f"{images_dir}: images have mixed sizes ({detail}); resize them to one size")
    labels = _parse_labels(table[label_column], labels_csv, label_column)
    sites = None
    if site_column:
        sites = table[site_column].astype(str).to_numpy()
    return LabelledImages(np.stack(images), labels, sites)


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("L", "I", "I;16", "F", "1", "P") else im.convert("RGB")
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    return array[..., None] if array.ndim == 2 else array


def _parse_labels(column: pd.Series, csv: Path, name: str) -> np.ndarray:
    """Integer class labels, or ``a|b|c`` lists of 0/1 for multi-label data."""
    if column.isna().any():
        row = int(column.isna().to_numpy().argmax()) + 2  # 1-based, after the header
        raise DataError(f"{csv}: empty '{name}' on line {row}")
    text = column.astype(str)
    if text.str.contains("|", regex=False).any():
        rows = [t.split("|") for t in text]
        try:
            return np.array(rows, dtype=np.int64)
        except ValueError as exc:
            raise DataError(f"{csv}: '{name}' multi-label rows must be 0|1 lists of one length") from exc
    try:
        return text.astype(np.int64).to_numpy()
    except ValueError as exc:
        raise DataError(f"{csv}: '{name}' must hold integer class indices ({exc})") from exc


def load_experiment(cfg: DictConfig) -> ExperimentData:
    """The pool (MedMNIST train + val, or a folder's images) and the test set, of one image size."""
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
    return ExperimentData(pool, test, LabelSpace.infer(pool, test), source, int(pool.images.shape[1]))


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
