"""A site's data checked before it joins a federation: nothing trains, nothing leaves the site.

Each file is read on its own with the training readers' helpers, so a bad file is listed
with its reason while the others are still checked. When every file reads, the data are
loaded once more exactly as the ClientApp will (pairing, label maps, validation split)
and a problem there is reported too. DICOM headers are searched for identifying fields;
the report names the fields, never their values, so it can be shared with the coordinator.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from omegaconf import DictConfig
from pydicom.misc import is_dicom

from medfed.client.site_daemon.phi import HeaderFindings, scan_header
from medfed.client.site_daemon.site_config import read_site_data
from medfed.errors import DataError
from medfed.models.classification.data import _parse_labels, _read_image, read_npz_split
from medfed.models.experiment_data import IMAGE_SUFFIXES
from medfed.models.segmentation.field_of_view import looks_like_fundus
from medfed.models.segmentation.readers import (
    _DICOM_ERRORS,
    MAX_LABELS,
    NIFTI_SUFFIXES,
    _grey,
    _list_files,
    _read_mask_volume,
    _read_nifti,
    _read_picture,
    _same_size,
    _volume,
    dicom_files,
    pair_files,
)
from medfed.site_terms import delta_problem, site_delta

REPORT_FILE = "site-check.json"


@dataclass
class _Headers:
    """The PHI findings of every DICOM file read, as names and file counts (`phi.scan_header`)."""

    files: int = 0
    attributes: Counter = field(default_factory=Counter)
    uids: Counter = field(default_factory=Counter)
    markers: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)
    private_files: int = 0
    private_tags: int = 0

    def add(self, found: HeaderFindings) -> None:
        self.files += 1
        self.attributes.update(found.attributes)
        self.uids.update(found.uids)
        self.markers.update(found.markers)
        self.verdicts[found.verdict] += 1
        self.private_files += bool(found.private_tags)
        self.private_tags += found.private_tags

    def report(self) -> dict:
        verdict = ("identifying" if self.verdicts["identifying"] else
                   "de-identified" if self.verdicts["de-identified"] == self.files else "no identifying attributes")
        return {"files": self.files, "verdict": verdict, "verdicts": dict(self.verdicts),
                "attributes": dict(self.attributes.most_common()), "uids": dict(self.uids.most_common()),
                "private_tags": {"files": self.private_files, "tags": self.private_tags},
                "markers": dict(self.markers)}


class _Scan:
    """What the per-file pass has seen so far."""

    def __init__(self) -> None:
        self.files = 0
        self.sizes: Counter = Counter()
        self.spacing: Counter = Counter()
        self.labels: Counter = Counter()
        self.mask_pixels: Counter = Counter()
        self.unreadable: list[dict] = []
        self.skipped: list[dict] = []  # images without their mask: training leaves them out
        self.fov_estimated = 0  # fundus photographs without a field-of-view mask
        self.dicom_files = 0
        self.headers = _Headers()

    def bad(self, path: Path, reason) -> None:
        text = str(reason)
        text = text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text
        if {"file": str(path), "reason": text} not in self.unreadable:
            self.unreadable.append({"file": str(path), "reason": text})

    def size(self, shape, count: int = 1) -> None:
        self.sizes[tuple(int(s) for s in shape)] += count

    def mask(self, mask: np.ndarray, path: Path) -> bool:
        values, counts = np.unique(mask, return_counts=True)
        whole = np.array_equal(values, np.round(values)) and (values >= 0).all()
        if len(values) > MAX_LABELS or not whole:
            self.bad(path, f"neither a binary mask nor a label map ({len(values)} distinct values)")
            return False
        self.mask_pixels.update({int(v): int(c) for v, c in zip(values, counts)})
        return True


def _scan_npz(d: DictConfig, scan: _Scan) -> None:
    path = Path(d.path)
    scan.files = 1
    for split in ("train", "val"):
        try:
            data = read_npz_split(path, split)
        except DataError as exc:
            scan.bad(path, exc)
            continue
        scan.size(data.images.shape[1:3], len(data))
        _count_labels(scan, data.labels)


def _count_labels(scan: _Scan, labels: np.ndarray) -> None:
    if labels.ndim == 2:  # multi-label: positives of each label
        scan.labels.update({int(j): int(n) for j, n in enumerate(labels.sum(axis=0))})
    else:
        scan.labels.update(int(v) for v in labels)


def _scan_folder(d: DictConfig, scan: _Scan) -> None:
    """Images listed in the CSV; the CSV itself must be readable, each image may fail alone."""
    root, csv = Path(d.path), Path(d.path) / d.labels_csv
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv}: not a readable CSV ({exc})") from exc
    absent = [c for c in (d.image_column, d.label_column) if c not in table.columns]
    if absent:
        raise DataError(f"{csv}: missing column(s) {', '.join(absent)} "
                        f"(found: {', '.join(map(str, table.columns))})")
    labels = _parse_labels(table[d.label_column], csv, d.label_column)
    readable = []
    for i, name in enumerate(table[d.image_column]):
        file = root / str(name)
        scan.files += 1
        if not file.is_file():
            scan.bad(file, f"listed in {csv.name} but not found")
            continue
        try:
            image = _read_image(file)
        except DataError as exc:
            scan.bad(file, exc)
            continue
        scan.size(image.shape[:2])
        readable.append(i)
    _count_labels(scan, labels[readable])


def _scan_masks(d: DictConfig, scan: _Scan) -> None:
    """2D images with a mask each (and a field of view): DRIVE or a plain image/mask folder."""
    root, images, masks, fov = Path(d.path), d.images, d.masks, d.fov
    if d.format == "drive":
        root = root / ("training" if d.split == "train" else "test")
        images, masks, fov = "images", "1st_manual", "mask"
    image_files = _list_files(root / images, IMAGE_SUFFIXES)
    if masks is None:
        _scan_pictures(d, image_files, scan)
        return
    mask_of = _pairs(scan, d, image_files, root / masks, IMAGE_SUFFIXES, "mask")
    fov_of = _pairs(scan, d, image_files, root / fov, IMAGE_SUFFIXES, "field-of-view mask") if fov else {}
    for file in image_files:
        scan.files += 1
        if file not in mask_of or (fov and file not in fov_of):
            continue
        mask_file = mask_of[file]
        try:
            picture = _read_picture(file, keep_palette=False)
            mask = _grey(_read_picture(mask_file, keep_palette=True), mask_file)
            if d.mask_threshold is not None:
                mask = (mask >= d.mask_threshold).astype(np.uint8)
            _same_size(file, picture, mask_file, mask)
            if fov:
                _same_size(file, picture, fov_of[file], _read_picture(fov_of[file], keep_palette=False))
        except DataError as exc:
            scan.bad(file, exc)
            continue
        if scan.mask(mask, mask_file):
            scan.size(picture.shape[:2])
            scan.fov_estimated += bool(not fov and d.estimate_fov and looks_like_fundus(picture))


def _scan_pictures(d: DictConfig, image_files: list[Path], scan: _Scan) -> None:
    """Images not labelled yet: each one read, its size, and the fields of view to estimate."""
    for file in image_files:
        scan.files += 1
        try:
            picture = _read_picture(file, keep_palette=False)
        except DataError as exc:
            scan.bad(file, exc)
            continue
        scan.size(picture.shape[:2])
        scan.fov_estimated += bool(not d.fov and d.estimate_fov and looks_like_fundus(picture))


def _pairs(scan: _Scan, d: DictConfig, image_files: list[Path], folder: Path, suffixes, what: str) -> dict:
    """Each image's file in ``folder``, as training pairs them; images without one are listed as
    skipped (unreadable under ``strict``), and an ambiguous pairing as unreadable."""
    if not folder.is_dir():  # the whole data set is unusable: stop, naming the folder
        raise DataError(f"{what} folder not found: {folder}")
    try:
        pairs, missing = pair_files(image_files, folder, suffixes, what)
    except DataError as exc:  # an ambiguous pairing: listed, and the check goes on
        scan.bad(folder, exc)
        return {}
    for image in missing:
        if d.strict:
            scan.bad(image, f"no {what} for it in {folder}")
        else:
            scan.skipped.append({"file": str(image), "reason": f"no {what} in {folder}"})
    return pairs


def _scan_nifti(d: DictConfig, scan: _Scan) -> None:
    import nibabel

    root = Path(d.path)
    image_files = _list_files(root / d.images, NIFTI_SUFFIXES)
    if d.masks is None:
        for file in image_files:
            scan.files += 1
            try:
                scan.size(_read_nifti(file).shape[:3])
            except DataError as exc:
                scan.bad(file, exc)
        return
    label_of = _pairs(scan, d, image_files, root / d.masks, NIFTI_SUFFIXES, "label map")
    for file in image_files:
        scan.files += 1
        if file not in label_of:
            continue
        label_file = label_of[file]
        try:
            volume, label = _volume(file, label_file, d.slices)
        except DataError as exc:
            scan.bad(file, exc)
            continue
        if not scan.mask(label, label_file):
            continue
        if d.slices == "2d":
            scan.size(volume.shape[:2], volume.shape[2])
        else:
            scan.size(volume.shape[:3])
        try:
            zooms = nibabel.load(str(file)).header.get_zooms()[:3]
            scan.spacing[tuple(round(float(z), 4) for z in zooms)] += 1
        except (OSError, ValueError):
            pass  # the volume was read above; only its header's spacing is missing


def _scan_dicom(d: DictConfig, scan: _Scan) -> None:
    """Every file of the series: readable pixels, spacing, identifying header fields; then the mask."""
    files = dicom_files(Path(d.path) / d.images)
    geometry: list[pydicom.Dataset] = []
    for file in files:
        scan.files += 1
        try:
            with _quiet_pydicom():
                ds = pydicom.dcmread(file)
        except _DICOM_ERRORS as exc:
            scan.bad(file, f"not a readable DICOM file ({exc})")
            continue
        scan.dicom_files += 1
        scan.headers.add(scan_header(ds))
        try:
            with _quiet_pydicom():
                pixels = ds.pixel_array
        except _DICOM_ERRORS as exc:
            scan.bad(file, f"unreadable pixel data ({exc})")
            continue
        if pixels.ndim != 2:
            scan.bad(file, f"pixel data of shape {pixels.shape}; expected one grey 2D slice")
            continue
        scan.size(pixels.shape)
        geometry.append(ds)
    _series_spacing(geometry, scan)
    if d.masks is None:
        return
    mask_path = _mask_file(d)
    if mask_path.is_file() and is_dicom(mask_path):  # a DICOM mask carries a header too
        with _quiet_pydicom():
            scan.headers.add(scan_header(pydicom.dcmread(mask_path, stop_before_pixels=True)))
    try:
        scan.mask(_read_mask_volume(mask_path), mask_path)
    except DataError as exc:
        scan.bad(mask_path, exc)


def _mask_file(d: DictConfig) -> Path:
    """A DICOM site's mask volume: ``data.masks``, relative to ``data.path`` unless absolute."""
    return Path(d.masks) if Path(d.masks).is_absolute() else Path(d.path) / d.masks


def _series_spacing(slices: list[pydicom.Dataset], scan: _Scan) -> None:
    """Voxel spacing of a series: rows and columns from ``PixelSpacing``, the slice axis from
    the slices' positions along their normal (``SliceThickness`` is the slab's thickness,
    which may differ from the gap between slices); the thickness only for a single slice."""
    try:
        rows = {tuple(round(float(v), 4) for v in ds.PixelSpacing) for ds in slices}
        orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        depths = np.sort([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds in slices])
        gaps = np.diff(depths)
        gap = float(np.median(gaps)) if len(gaps) else float(slices[0].SliceThickness)
    except (AttributeError, TypeError, ValueError, IndexError):
        return  # no geometry in the headers: the spacing is left out of the report
    for row in rows:
        scan.spacing[(*row, round(gap, 4))] += len(slices)


@contextmanager
def _quiet_pydicom():
    """pydicom's warnings about a damaged file, kept off the console: its reason is reported."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


SCANNERS = {"npz": _scan_npz, "folder": _scan_folder, "drive": _scan_masks, "masks": _scan_masks,
            "nifti": _scan_nifti, "dicom": _scan_dicom}


def check_site(cfg: DictConfig) -> dict:
    """The site's data report (plain JSON types). ``report["ok"]`` is false when a file is
    unreadable or the data cannot be loaded for training; PHI gives warnings only."""
    d = cfg.data
    scan = _Scan()
    SCANNERS[d.format](d, scan)
    segmentation = d.format not in ("npz", "folder")
    labelled = not segmentation or d.masks is not None
    problems, counts, delta = [], None, None
    if not scan.unreadable and labelled:
        try:
            train, val = read_site_data(cfg)
            counts = {"train": len(train), "val": len(val)}
        except DataError as exc:
            problems.append(str(exc))
    if counts:  # the site's delta depends on how many patients it protects
        delta = site_delta(cfg.privacy, counts["train"])
        problem = delta_problem(delta, counts["train"])
        if problem:
            problems.append(f"{problem}: lower it, or leave it out for 1/(10 n)")
    warnings = []
    if not labelled:
        warnings.append(f"not labelled yet (data.masks: null): {scan.files} images checked for reading, sizes and "
                        "identifying headers; the site cannot train until data.masks names its masks")
    if scan.skipped:
        warnings.append(f"{len(scan.skipped)} image(s) without their mask are left out of training (listed under "
                        "'skipped'; data.strict: true refuses them)")
    phi = scan.headers.report() if d.format == "dicom" else None
    if phi and phi["verdict"] == "identifying":
        shown = ", ".join(phi["attributes"])
        private = phi["private_tags"]
        warnings.append(f"identifying DICOM headers in {phi['verdicts']['identifying']} of {phi['files']} files: "
                        f"{len(phi['attributes'])} attributes of DICOM's Basic Confidentiality Profile ({shown}), "
                        f"private tags in {private['files']} files (values not shown); de-identify before joining")
        if cfg.policy.require_deidentified:
            problems.append("policy.require_deidentified: true, and DICOM headers still identify patients")
    return {
        "site": cfg.name,
        "format": d.format,
        "path": d.path,
        "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": scan.files,
        "unreadable": scan.unreadable,
        "skipped": scan.skipped,
        "fov_estimated": scan.fov_estimated if d.format == "masks" else None,
        "counts": counts,
        "labelled": labelled,
        "labels": None if segmentation else {str(k): v for k, v in sorted(scan.labels.items())},
        "mask_classes": _fractions(scan.mask_pixels) if segmentation else None,
        "sizes": _summary(scan.sizes),
        "spacing_mm": _summary(scan.spacing) if d.format in ("nifti", "dicom") else None,
        "phi": phi,
        "privacy": {"delta": delta, "accountant": cfg.privacy.accountant, "max_epsilon": cfg.privacy.max_epsilon},
        "problems": problems,
        "warnings": warnings,
        "ok": not scan.unreadable and not problems,
    }


def _fractions(pixels: Counter) -> dict[str, float]:
    """Share of pixels per class, with one foreground value (0/255 masks) counted as class 1,
    as training reads them."""
    foreground = [v for v in pixels if v != 0]
    if len(foreground) <= 1:
        pixels = Counter({0: pixels.get(0, 0), 1: sum(pixels[v] for v in foreground)})
    total = sum(pixels.values()) or 1
    return {str(k): round(v / total, 6) for k, v in sorted(pixels.items())}


def _summary(counter: Counter) -> dict | None:
    """Smallest, largest (by area or volume) and most common of some shapes or spacings."""
    if not counter:
        return None

    def text(key) -> str:
        return "x".join(f"{k:g}" for k in key)

    by_area = sorted(counter, key=lambda k: (float(np.prod(k)), k))
    return {"min": text(by_area[0]), "max": text(by_area[-1]),
            "most_common": text(counter.most_common(1)[0][0]), "distinct": len(counter)}


def save_report(report: dict, path: Path) -> Path:
    """Write the report as JSON beside ``path`` then rename it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _under(text: str, root: str) -> str:
    """``text`` with the data folder's path left out, so that a table shows the names."""
    prefix = str(Path(root).resolve()) + os.sep
    return text.replace(prefix, "").replace(str(root).rstrip(os.sep) + os.sep, "")


def print_report(report: dict, console) -> None:
    """The report as rich tables on ``console``: figures, then unreadable files, warnings, problems."""
    from rich.table import Table

    table = Table(title=f"site {report['site']}: {report['format']} data in {report['path']}", show_header=False)
    table.add_column("check")
    table.add_column("result")
    table.add_row("image files checked", str(report["files"]))
    table.add_row("unreadable", str(len(report["unreadable"])))
    table.add_row("skipped (no mask)", str(len(report.get("skipped", []))))
    if report.get("fov_estimated"):
        table.add_row("field of view", f"estimated for {report['fov_estimated']} fundus photographs (none given)")
    if report["counts"]:
        table.add_row("items", f"{report['counts']['train']} train, {report['counts']['val']} validation")
    privacy = report["privacy"]
    if privacy["delta"] is not None:
        budget = "no budget" if privacy["max_epsilon"] is None else f"max epsilon {privacy['max_epsilon']:g}"
        table.add_row("privacy", f"delta {privacy['delta']:.3g}, {privacy['accountant']} accountant, {budget}")
    if report["labels"] is not None:
        table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in report["labels"].items()) or "none")
    if report["mask_classes"] is not None:
        table.add_row("mask classes", ", ".join(f"{k}: {v:.2%}" for k, v in report["mask_classes"].items()))
    for key, name in (("sizes", "image size"), ("spacing_mm", "spacing (mm)")):
        if report[key]:
            s = report[key]
            table.add_row(name, f"min {s['min']}, max {s['max']}, most common {s['most_common']} "
                                f"({s['distinct']} distinct)")
    console.print(table)
    for key, title in (("unreadable", "unreadable files"), ("skipped", "skipped: left out of training")):
        if report.get(key):
            rows = Table(title=f"{title} (under {report['path']})")
            rows.add_column("file", overflow="fold")
            rows.add_column("reason", overflow="fold")
            for row in report[key]:
                rows.add_row(_under(row["file"], report["path"]), _under(row["reason"], report["path"]))
            console.print(rows)
    for line in report["warnings"]:
        console.print(f"[bold yellow]WARNING[/] {line}", highlight=False, soft_wrap=True)
    for line in report["problems"]:
        console.print(f"[bold red]problem[/] {line}", highlight=False, soft_wrap=True)


def identifying_headers(cfg: DictConfig) -> str | None:
    """Why the site must not start under ``policy.require_deidentified``: its DICOM files'
    headers (series and mask), scanned as the site check does; None when none identifies."""
    if cfg.data.format != "dicom":
        return None
    headers = _Headers()
    d = cfg.data
    files = dicom_files(Path(d.path) / d.images)
    mask = _mask_file(d) if d.masks is not None else None
    if mask is not None and mask.is_file() and is_dicom(mask):
        files.append(mask)
    for file in files:
        try:
            with _quiet_pydicom():
                headers.add(scan_header(pydicom.dcmread(file, stop_before_pixels=True)))
        except _DICOM_ERRORS as exc:
            return f"{file}: not a readable DICOM file ({exc})"
    report = headers.report()
    if report["verdict"] != "identifying":
        return None
    return (f"policy.require_deidentified: true, but {report['verdicts']['identifying']} of {report['files']} DICOM "
            f"files identify patients ({len(report['attributes'])} Basic Profile attributes, private tags in "
            f"{report['private_tags']['files']}): run 'medfed site check' for the list")
