"""A configured segmentation source (a dataset, or one hospital's folder) read from disk.

The same settings describe the simulation's datasets and a deployed site's own files:
``format`` picks the reader of `medfed.client.segmentation_data`, paths are relative to
the data root unless absolute.
"""

from __future__ import annotations

from pathlib import Path

from medfed.client.segmentation_data import (
    SegmentationImages, read_dicom_series, read_drive, read_mask_folder, read_nifti_folder,
)
from medfed.errors import DataError


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
        return read_mask_folder(path, source.images, source.masks, source.fov)
    if source.format == "nifti":
        return read_nifti_folder(path, source.images, source.masks, source.slices)
    mask = Path(source.masks) if Path(source.masks).is_absolute() else path / source.masks
    return read_dicom_series(path / source.images, mask)
