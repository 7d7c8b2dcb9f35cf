"""A site's segmentation data: whole images with their label maps, read into memory.

Three layouts that hospitals hand over, each read with MONAI's readers (pydicom for DICOM):
- a folder of 2D images beside a folder of masks, optionally field-of-view masks (DRIVE);
- NIfTI volumes with label maps, kept as volumes or cut into axial slices;
- one DICOM series with its mask volume.
Images keep their own size and raw intensities: sites differ in scanners and cameras, and
resizing or normalising belongs to training. Every problem raises `DataError` naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from nibabel.filebasedimages import ImageFileError
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from medfed.errors import ConfigError, DataError
from medfed.models.experiment_data import IMAGE_SUFFIXES

log = logging.getLogger("medfed.data")

MAX_LABELS = 16  # a label map holds classes 0..15; more distinct values means a grey picture
NIFTI_SUFFIXES = (".nii.gz", ".nii")
GREY_HINT = "; masks resized with interpolation are grey: set the source's mask_threshold"
PAIR_SEPARATORS = "._- "  # what may follow an image's name in its mask's name
_DICOM_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError,
                 AttributeError, RuntimeError, NotImplementedError)


@dataclass
class SegmentationImages:
    """Whole images with their label maps, optionally a field-of-view mask each.

    images[i]: float32 array (*spatial, C) of raw intensities (2D: (H, W, C); 3D: (D, H, W, C)),
    masks[i]: uint8 label map (*spatial) with 0 = background, 1..K = classes,
    fov[i]: bool array (*spatial) or None (whole image counts), names[i]: a short id (file stem).
    Items keep their own sizes, so they are lists rather than one stacked array.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    fov: list[np.ndarray | None]
    names: list[str]

    def __post_init__(self) -> None:
        counts = (len(self.images), len(self.masks), len(self.fov), len(self.names))
        if len(set(counts)) > 1:
            raise DataError("{} images, {} masks, {} field-of-view masks and {} names; "
                            "expected one of each per item".format(*counts))
        self.images = [np.asarray(im, dtype=np.float32) for im in self.images]
        self.fov = [None if f is None else np.asarray(f, dtype=bool) for f in self.fov]
        self.masks = [_check_item(i, *item) for i, item in
                      enumerate(zip(self.images, self.masks, self.fov, self.names))]
        kinds = {(im.ndim, im.shape[-1]) for im in self.images}
        if len(kinds) > 1:
            raise DataError(f"items mix spatial dimensions or channel counts ({sorted(kinds)}); "
                            "one set must share both")

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index) -> SegmentationImages:
        """The items at ``index``: integers, a boolean mask or a slice."""
        picked = np.atleast_1d(np.arange(len(self))[index])
        return SegmentationImages([self.images[i] for i in picked], [self.masks[i] for i in picked],
                                  [self.fov[i] for i in picked], [self.names[i] for i in picked])

    @staticmethod
    def concat(parts: list[SegmentationImages]) -> SegmentationImages:
        """One set holding every item of ``parts``, in order."""
        return SegmentationImages([im for p in parts for im in p.images], [m for p in parts for m in p.masks],
                                  [f for p in parts for f in p.fov], [n for p in parts for n in p.names])

    @property
    def spatial_dims(self) -> int:
        return self._first_image().ndim - 1

    @property
    def channels(self) -> int:
        return int(self._first_image().shape[-1])

    @property
    def num_classes(self) -> int:
        """Largest label + 1, at least 2 (background and one class)."""
        return max([int(m.max()) for m in self.masks if m.size] + [1]) + 1

    def _first_image(self) -> np.ndarray:
        if not self.images:
            raise DataError("empty segmentation set: no image to take its shape from")
        return self.images[0]

    def save(self, path: Path) -> None:
        """One ``.npz`` of every array, written beside ``path`` then renamed: never half a file."""
        arrays = {"names": np.array(self.names, dtype=str)}
        for i, (image, mask, fov) in enumerate(zip(self.images, self.masks, self.fov)):
            arrays[f"image_{i}"], arrays[f"mask_{i}"] = image, mask
            if fov is not None:
                arrays[f"fov_{i}"] = fov
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_name(path.name + ".partial")
        try:
            with open(partial_path, "wb") as out:
                np.savez(out, **arrays)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial_path, path)
        finally:
            partial_path.unlink(missing_ok=True)

    @staticmethod
    def load(path: Path) -> SegmentationImages:
        """A set written by `save`."""
        _require_file(path, "segmentation file")
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a readable .npz file (not a zip archive; truncated?)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = [str(n) for n in archive["names"]]
                images = [archive[f"image_{i}"] for i in range(len(names))]
                masks = [archive[f"mask_{i}"] for i in range(len(names))]
                fov = [archive.get(f"fov_{i}") for i in range(len(names))]
        except KeyError as exc:
            raise DataError(f"{path}: {exc.args[0]}; not a file written by SegmentationImages.save") from exc
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
        try:
            return SegmentationImages(images, masks, fov, names)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc


def _check_item(i: int, image: np.ndarray, mask: np.ndarray, fov: np.ndarray | None, name: str) -> np.ndarray:
    """The item's mask as uint8, once its shapes agree with its image."""
    item = f"item {i} ({name})"
    mask = np.asarray(mask)
    if image.ndim not in (3, 4):
        raise DataError(f"{item}: image has shape {image.shape}; expected (H, W, C) or (D, H, W, C)")
    for what, array in (("mask", mask), ("field-of-view mask", fov)):
        if array is not None and array.shape != image.shape[:-1]:
            raise DataError(f"{item}: {what} has shape {array.shape} but its image {image.shape}")
    if mask.dtype != np.uint8:
        whole = mask.dtype.kind in "biu" or np.array_equal(mask, np.round(mask))
        if mask.size and (not whole or mask.min() < 0 or mask.max() > 255):
            raise DataError(f"{item}: mask values must be whole numbers 0..255")
        mask = mask.astype(np.uint8)
    return mask


def read_drive(root: Path, split: str) -> SegmentationImages:
    """One split of DRIVE (``train`` or ``test``): retinal photographs, vessel and field-of-view masks."""
    folders = {"train": "training", "test": "test"}
    if split not in folders:
        raise ConfigError(f"DRIVE split must be 'train' or 'test', not {split!r}")
    return read_mask_folder(root / folders[split], "images", "1st_manual", "mask")


def read_mask_folder(root: Path, images: str = "images", masks: str = "1st_manual", fov: str | None = "mask",
                     mask_threshold: float | None = None, strict: bool = False,
                     estimate_fov: bool = True) -> SegmentationImages:
    """2D images in ``root/images`` with a mask each in ``root/masks`` (and ``root/fov``), paired
    by name (`pair_files`). Images without their mask or field of view are skipped and logged
    (refused with ``strict``). ``mask_threshold``: masks whose values were interpolated (a
    label resized by its publisher) become binary, foreground where the value is at least it.
    Without ``fov``, fundus photographs get an estimated field of view (``estimate_fov``)."""
    image_files = _list_files(root / images, IMAGE_SUFFIXES)
    image_files, mask_files = _paired(image_files, root / masks, IMAGE_SUFFIXES, "mask", strict)
    fov_files = []
    if fov:
        kept, fov_files = _paired(image_files, root / fov, IMAGE_SUFFIXES, "field-of-view mask", strict)
        kept_set = set(kept)
        mask_files = [m for image, m in zip(image_files, mask_files) if image in kept_set]
        image_files = kept
    pictures = [_read_picture(f, keep_palette=False) for f in image_files]
    if len({p.ndim for p in pictures}) > 1:  # a few grey pictures among colour ones
        pictures = [np.repeat(p[..., None], 3, axis=-1) if p.ndim == 2 else p for p in pictures]
    label_pictures = [_grey(_read_picture(f, keep_palette=True), f) for f in mask_files]
    if mask_threshold is not None:
        label_pictures = [(m >= mask_threshold).astype(np.uint8) for m in label_pictures]
    fov_masks = [_read_picture(f, keep_palette=False) != 0 for f in fov_files]
    fov_masks = [m.any(axis=-1) if m.ndim == 3 else m for m in fov_masks]
    if not fov and estimate_fov:
        fov_masks = _estimated_fov(pictures, root / images)
    for other_files, others in ((mask_files, label_pictures), (fov_files, fov_masks)):
        for image_file, picture, other_file, other in zip(image_files, pictures, other_files, others):
            _same_size(image_file, picture, other_file, other)
    return SegmentationImages([p[..., None] if p.ndim == 2 else p for p in pictures],
                              _label_maps(label_pictures, mask_files),
                              fov_masks or [None] * len(pictures), [f.stem for f in image_files])


def _estimated_fov(pictures: list[np.ndarray], folder: Path) -> list[np.ndarray | None]:
    """A field of view for each fundus photograph (`field_of_view`), None for other pictures."""
    from medfed.models.segmentation.field_of_view import estimate_fov, looks_like_fundus

    estimated = [estimate_fov(p) if looks_like_fundus(p) else None for p in pictures]
    count = sum(f is not None for f in estimated)
    if count:
        log.info("%s: field of view estimated for %d of %d fundus-like images", folder, count, len(pictures))
    return estimated if count else []


def read_nifti_folder(root: Path, images: str = "images", labels: str = "labels",
                      mode: str = "2d", strict: bool = False) -> SegmentationImages:
    """NIfTI volumes with label maps: one 3D item each (``mode="3d"``) or their axial slices (``"2d"``).

    Arrays are taken as stored (no reorientation); the last spatial axis is the slice axis and
    comes first in 3D items, so ``volume_item[z]`` is the 2D item ``stem:z``.
    """
    if mode not in ("2d", "3d"):
        raise ConfigError(f"NIfTI mode must be '2d' or '3d', not {mode!r}")
    image_files = _list_files(root / images, NIFTI_SUFFIXES)
    image_files, label_files = _paired(image_files, root / labels, NIFTI_SUFFIXES, "label map", strict)
    volumes = [_volume(f, g, mode) for f, g in zip(image_files, label_files)]
    label_maps = _label_maps([lab for _, lab in volumes], label_files)
    out, names = [], []
    for (volume, _), label, f in zip(volumes, label_maps, image_files):
        if mode == "3d":
            out.append((np.moveaxis(volume, 2, 0), np.moveaxis(label, 2, 0)))
            names.append(_stem(f))
        else:
            out += [(volume[:, :, z], label[:, :, z]) for z in range(volume.shape[2])]
            names += [f"{_stem(f)}:{z}" for z in range(volume.shape[2])]
    return SegmentationImages([np.ascontiguousarray(v) for v, _ in out],
                              [np.ascontiguousarray(lab) for _, lab in out], [None] * len(out), names)


def _volume(image_file: Path, label_file: Path, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Image as (X, Y, Z, C) and label as (X, Y, Z); a 4D image is multi-channel beside a 3D label."""
    image, label = _read_nifti(image_file), _read_nifti(label_file)
    if label.ndim == 4 and label.shape[-1] == 1:
        label = label[..., 0]
    allowed = (2, 3, 4) if mode == "2d" else (3, 4)
    if image.ndim not in allowed:
        raise DataError(f"{image_file}: shape {image.shape} is {image.ndim}D; {mode} mode reads "
                        f"{' or '.join(f'{n}D' for n in allowed)} NIfTI images")
    spatial = image.shape[:3] if image.ndim == 4 else image.shape
    if label.shape != spatial:
        raise DataError(f"{label_file}: label shape {label.shape} differs from its image "
                        f"{image_file.name} {image.shape} (expected {spatial})")
    if image.ndim == 2:
        image, label = image[:, :, None], label[:, :, None]
    return (image if image.ndim == 4 else image[..., None]), label


def dicom_files(series_dir: Path) -> list[Path]:
    """The files of a DICOM series folder, sorted (hidden files and DICOMDIR left out);
    `DataError` when the folder is missing or holds none."""
    if not series_dir.is_dir():
        raise DataError(f"DICOM series folder not found: {series_dir}")
    files = [f for f in sorted(series_dir.iterdir())
             if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR"]
    if not files:
        raise DataError(f"{series_dir}: no DICOM files")
    return files


def read_dicom_series(series_dir: Path, mask_path: Path) -> SegmentationImages:
    """One DICOM series as a (D, H, W, 1) item of rescaled values, slices in ascending patient
    position, with its mask: a NIfTI or .npy array stored as (D, H, W), taken as is."""
    files = dicom_files(series_dir)
    slices = [_read_dicom(f) for f in files]
    for f, (ds, pixels) in zip(files, slices):
        if ds.get("SeriesInstanceUID") != slices[0][0].get("SeriesInstanceUID"):
            raise DataError(f"{f}: belongs to another series than {files[0].name}; one folder per series")
        if pixels.shape != slices[0][1].shape:
            raise DataError(f"{f}: slice of {pixels.shape} but {files[0].name} has {slices[0][1].shape}")
    order = _slice_order([ds for ds, _ in slices], files)
    volume = np.stack([slices[i][1] for i in order])
    mask = _read_mask_volume(mask_path)
    if mask.shape != volume.shape:
        raise DataError(f"{mask_path}: mask shape {mask.shape} differs from the series {series_dir} "
                        f"(D, H, W) = {volume.shape}")
    return SegmentationImages([volume[..., None]], _label_maps([mask], [mask_path]), [None],
                              [series_dir.name])


def _read_dicom(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """A slice's dataset and its pixels in modality units (rescale slope and intercept applied)."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except _DICOM_ERRORS as exc:
        raise DataError(f"{path}: not a readable DICOM image ({exc})") from exc
    if pixels.ndim != 2:
        raise DataError(f"{path}: pixel data of shape {pixels.shape}; expected one grey 2D slice")
    slope, intercept = float(ds.get("RescaleSlope") or 1), float(ds.get("RescaleIntercept") or 0)
    return ds, pixels.astype(np.float32) * slope + intercept


def _slice_order(datasets: list[pydicom.Dataset], files: list[Path]) -> list[int]:
    """Slices sorted along the slice normal by ImagePositionPatient, else by InstanceNumber."""
    try:
        normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
        keys = [float(normal @ np.asarray(ds.ImagePositionPatient, float)) for ds in datasets]
    except (AttributeError, TypeError, ValueError):
        keys = [int(ds.get("InstanceNumber") or 0) for ds in datasets]
    first = {}
    for f, key in zip(files, keys):
        if key in first and len(files) > 1:
            raise DataError(f"{f}: same slice position or number as {first[key].name}; "
                            "cannot order the series")
        first[key] = f
    return sorted(range(len(files)), key=keys.__getitem__)


def _read_mask_volume(path: Path) -> np.ndarray:
    _require_file(path, "mask file")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: a mask volume must be NIfTI (.nii, .nii.gz) or .npy")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from exc


def _read_nifti(path: Path) -> np.ndarray:
    from monai.data import NibabelReader  # MONAI is imported when files are read: 1.7 s of CPU

    reader = NibabelReader()  # arrays as stored: no reorientation, no squeezing
    try:
        return np.asarray(reader.get_data(reader.read(path))[0])
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({exc})") from exc


def _read_picture(path: Path, keep_palette: bool) -> np.ndarray:
    """A 2D picture as (H, W) or (H, W, 3); palette indices kept for masks, where they are labels."""
    from monai.data import PILReader

    reader = PILReader(converter=partial(_plain_mode, keep_palette=keep_palette), reverse_indexing=False)
    try:
        return reader.get_data(reader.read(path))[0]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def _plain_mode(im: Image.Image, keep_palette: bool) -> Image.Image:
    """Grey stays grey (8, 16 bit or float, or a palette of greys), anything else becomes RGB;
    a mask's colour palette stays indices, which are its classes. The file is closed."""
    grey_palette = im.mode == "P" and _all_grey(np.asarray(im.convert("RGB")))
    keep = im.mode in ("I", "F") or im.mode.startswith("I;16")
    if keep or (keep_palette and im.mode == "P" and not grey_palette):
        plain = im.copy()
    else:
        plain = im.convert("L" if im.mode in ("1", "L", "LA") or grey_palette else "RGB")
    im.close()
    return plain


def _all_grey(rgb: np.ndarray) -> bool:
    return bool((rgb == rgb[..., :1]).all())


def _grey(picture: np.ndarray, path: Path) -> np.ndarray:
    """A mask saved in colour with equal channels (grey) as one channel."""
    if picture.ndim == 3:
        if not _all_grey(picture):
            raise DataError(f"{path}: a colour mask; expected a grey binary mask or label map")
        picture = picture[..., 0]
    return picture


def _same_size(image_file: Path, picture: np.ndarray, other_file: Path, other: np.ndarray) -> None:
    if other.shape[:2] != picture.shape[:2]:
        (h, w), (oh, ow) = picture.shape[:2], other.shape[:2]
        raise DataError(f"{other_file}: size {ow}x{oh} differs from its image {image_file} ({w}x{h})")


def _label_maps(masks: list[np.ndarray], files: list[Path]) -> list[np.ndarray]:
    """uint8 label maps. A set whose masks use one foreground value (0/255, 0/1, ...) is binary and
    becomes 0/1; otherwise masks must hold classes 0..15 and are kept (a mask missing class 1 stays)."""
    values = []
    for mask, path in zip(masks, files):
        v = np.unique(mask).astype(np.float64)
        if len(v) > MAX_LABELS or (v < 0).any() or not np.array_equal(v, np.round(v)):
            raise DataError(f"{path}: neither a binary mask nor a label map ({len(v)} distinct values){GREY_HINT}")
        values.append(v)
    foreground = {x for v in values for x in v if x != 0}
    if len(foreground) <= 1:
        return [(m != 0).astype(np.uint8) for m in masks]
    for v, path in zip(values, files):
        if v.max() >= MAX_LABELS:
            shown = ", ".join(f"{x:g}" for x in sorted(foreground)[:6])
            raise DataError(f"{path}: neither a binary mask nor a label map ({len(v)} distinct values, up "
                            f"to {v.max():g}; the set's masks hold foreground values {shown}){GREY_HINT}")
    return [m.astype(np.uint8) for m in masks]


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes``, by name; hidden ones (``._x.nii``) left out."""
    return sorted(f for f in folder.iterdir()
                  if f.name.lower().endswith(suffixes) and not f.name.startswith("."))


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    files = _files(folder, suffixes)
    if not files:
        raise DataError(f"{folder}: no files ending in {', '.join(suffixes)}")
    return files


def pair_files(image_files: list[Path], folder: Path, suffixes: tuple[str, ...],
               what: str) -> tuple[dict[Path, Path], list[Path]]:
    """Each image's file in ``folder`` (its mask, field of view or label map), and the images
    that have none. Written by hand: MONAI's readers take paired lists, and hospitals name
    their files in their own ways.

    A file belongs to the image whose name (without extension) its own name starts with,
    followed by a separator or nothing, the longest such name winning: ``im0001.ah.ppm`` and
    ``im0001.ppm``, ``01_dr_mask.tif`` and ``01_dr.JPG``, ``case1_seg.nii.gz`` and
    ``case1.nii.gz``. An image left without one takes the file with its first number that
    no image has claimed (DRIVE: ``21_manual1.gif`` for ``21_training.tif``). Two files for
    one image, or one file for two, is an error naming them."""
    if not folder.is_dir():
        raise DataError(f"{what} folder not found: {folder}")
    stems = {_stem(image).casefold(): image for image in image_files}
    claimed: dict[Path, list[Path]] = {}
    by_number: dict[int | None, list[Path]] = {}
    for candidate in _files(folder, suffixes):
        owner = _owner(_stem(candidate).casefold(), stems)
        if owner is not None:
            claimed.setdefault(owner, []).append(candidate)
        else:
            by_number.setdefault(_number(candidate), []).append(candidate)
    by_number.pop(None, None)
    pairs: dict[Path, Path] = {}
    missing: list[Path] = []
    for image in image_files:
        found = claimed.get(image) or by_number.get(_number(image), [])
        if len(found) > 1:
            raise DataError(f"{image}: ambiguous {what}: {', '.join(c.name for c in found)}")
        if not found:
            missing.append(image)
            continue
        taken = next((other for other, c in pairs.items() if c == found[0]), None)
        if taken is not None:
            raise DataError(f"{found[0]}: {what} matches both {taken.name} and {image.name}")
        pairs[image] = found[0]
    return pairs, missing


def _owner(stem: str, images: dict[str, Path]) -> Path | None:
    """The image whose stem starts ``stem`` and ends at a separator or at its end (longest
    first): one lookup per separator in ``stem``, so large folders pair in linear time."""
    cuts = [len(stem)] + [i for i in range(len(stem) - 1, 0, -1) if stem[i] in PAIR_SEPARATORS]
    for cut in cuts:
        if stem[:cut] in images:
            return images[stem[:cut]]
    return None


def _paired(image_files: list[Path], folder: Path, suffixes: tuple[str, ...], what: str,
            strict: bool) -> tuple[list[Path], list[Path]]:
    """The images that have their file in ``folder``, with those files. An image without one
    is skipped and listed in the log, or refused with ``strict``."""
    pairs, missing = pair_files(image_files, folder, suffixes, what)
    if missing:
        listed = ", ".join(f.name for f in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        if strict:
            raise DataError(f"{folder}: no {what} for {len(missing)} image(s): {listed} (strict: true refuses them)")
        log.warning("%s: %d image(s) without a %s skipped: %s", folder, len(missing), what, listed)
    if not pairs:
        raise DataError(f"{folder}: no {what} pairs with any image of {image_files[0].parent}")
    return list(pairs), list(pairs.values())


def _stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def _number(path: Path) -> int | None:
    digits = re.search(r"\d+", _stem(path))
    return int(digits.group()) if digits else None


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
