import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medfed.errors import DataError
from medfed.models.segmentation.readers import (
    SegmentationImages,
    read_dicom_series,
    read_drive,
    read_mask_folder,
    read_nifti_folder,
)

REPO = Path(__file__).resolve().parents[1]
DRIVE = Path(os.environ.get("MEDFED_DATA_DIR") or REPO.parent / "shared" / "datasets") / "DRIVE"


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _site(root: Path, sizes=((40, 30), (24, 36)), fov=True) -> Path:
    """Colour images of different sizes with 0/255 masks (DRIVE naming) and FOV masks."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes, start=1):
        _write(root / "images" / f"{i:02d}_scan.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 5:15] = 255
        _write(root / "1st_manual" / f"{i:02d}_manual1.png", mask)
        if fov:
            inside = np.zeros((h, w), np.uint8)
            inside[1:-1, 1:-1] = 255
            _write(root / "mask" / f"{i:02d}_scan_mask.png", inside)
    return root


def _small_set() -> SegmentationImages:
    images = [np.full((4, 5, 1), i, np.float32) for i in range(3)]
    masks = [np.eye(4, 5, dtype=np.uint8) * (i % 2) for i in range(3)]
    fov = [None, np.ones((4, 5), bool), None]
    return SegmentationImages(images, masks, fov, ["a", "b", "c"])


def test_drive_training_split():
    if not DRIVE.is_dir():
        pytest.skip(f"real data not available: {DRIVE} (see shared/datasets/README.md)")
    data = read_drive(DRIVE, "train")
    assert len(data) == 20 and data.names[0] == "21_training"
    assert all(im.shape == (584, 565, 3) and im.dtype == np.float32 for im in data.images)
    assert (data.spatial_dims, data.channels, data.num_classes) == (2, 3, 2)
    for mask, fov in zip(data.masks, data.fov):
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert fov is not None and fov.dtype == bool and 0.5 < fov.mean() < 0.9
        assert 0.05 < mask[fov].mean() < 0.20  # vessels inside the field of view


def test_synthetic_folder_keeps_sizes_and_maps_0_255_to_0_1(tmp_path):
    data = read_mask_folder(_site(tmp_path))
    assert data.names == ["01_scan", "02_scan"]
    assert [im.shape for im in data.images] == [(40, 30, 3), (24, 36, 3)]
    raw = np.asarray(Image.open(tmp_path / "images" / "02_scan.png"), dtype=np.float32)
    np.testing.assert_array_equal(data.images[1], raw)  # raw intensities
    assert data.masks[0].sum() == 100 and data.masks[0].max() == 1
    assert data.fov[1].sum() == 22 * 34 and not data.fov[1][0, 0]


def test_grey_label_maps_without_fov(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[:2], labels[2:4], labels[4:5] = 1, 2, 3
    _write(tmp_path / "img" / "case.png", np.full((8, 8), 7, np.uint8))
    _write(tmp_path / "lab" / "case.png", labels)
    data = read_mask_folder(tmp_path, "img", "lab", fov=None)
    assert data.images[0].shape == (8, 8, 1) and data.fov == [None]
    np.testing.assert_array_equal(data.masks[0], labels)
    assert data.num_classes == 4


def test_save_load_round_trip(tmp_path):
    data = _small_set()
    path = tmp_path / "cache" / "site.npz"
    data.save(path)
    assert path.is_file() and not list(path.parent.glob("*.partial"))
    back = SegmentationImages.load(path)
    assert back.names == data.names and back.fov[0] is None
    for a, b in zip(data.images + data.masks + [data.fov[1]], back.images + back.masks + [back.fov[1]]):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_subset_and_concat():
    data = _small_set()
    assert data.subset([2, 0]).names == ["c", "a"]
    assert data.subset(np.array([False, True, True])).names == ["b", "c"]
    assert data.subset(1).names == ["b"]
    both = SegmentationImages.concat([data, data.subset(slice(0, 1))])
    assert both.names == ["a", "b", "c", "a"] and len(both) == 4 and both.fov[1] is not None


def test_item_shapes_are_checked():
    with pytest.raises(DataError, match=r"item 0 \(x\): mask has shape"):
        SegmentationImages([np.zeros((4, 4, 1))], [np.zeros((4, 5), np.uint8)], [None], ["x"])


def test_mask_size_differs_from_image(tmp_path):
    _site(tmp_path)
    _write(tmp_path / "1st_manual" / "02_manual1.png", np.zeros((10, 10), np.uint8))
    expected = r"02_manual1.png: size 10x10 differs from its image .*02_scan.png \(36x24\)"
    with pytest.raises(DataError, match=expected):
        read_mask_folder(tmp_path)


def test_jpeg_mask_is_neither_binary_nor_labels(tmp_path):
    _site(tmp_path)
    path = tmp_path / "1st_manual" / "02_manual1.png"
    mask = np.asarray(Image.open(path))
    path.unlink()
    Image.fromarray(mask).save(path.with_suffix(".jpg"), quality=75)  # compression greys the edges
    with pytest.raises(DataError, match=r"02_manual1.jpg: neither a binary mask nor a label map \(\d+ distinct"):
        read_mask_folder(tmp_path)


def test_missing_fov_file_skips_the_image_or_is_refused_when_strict(tmp_path, caplog):
    _site(tmp_path)
    (tmp_path / "mask" / "02_scan_mask.png").unlink()
    with caplog.at_level("WARNING", logger="medfed.data"):
        data = read_mask_folder(tmp_path)
    assert "02_scan" not in data.names and len(data) > 0
    assert "1 image(s) without a field-of-view mask skipped: 02_scan.png" in caplog.text
    with pytest.raises(DataError, match=r"mask: no field-of-view mask for 1 image\(s\): 02_scan.png \(strict"):
        read_mask_folder(tmp_path, strict=True)


def test_missing_fov_folder(tmp_path):
    _site(tmp_path, fov=False)
    with pytest.raises(DataError, match="field-of-view mask folder not found: .*mask"):
        read_mask_folder(tmp_path)


def test_empty_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="images: no files ending in"):
        read_mask_folder(tmp_path)


def test_image_without_mask_skips_it_or_is_refused_when_strict(tmp_path, caplog):
    _site(tmp_path)
    (tmp_path / "1st_manual" / "01_manual1.png").unlink()
    with caplog.at_level("WARNING", logger="medfed.data"):
        assert "01_scan" not in read_mask_folder(tmp_path).names
    assert "without a mask skipped: 01_scan.png" in caplog.text
    with pytest.raises(DataError, match=r"1st_manual: no mask for 1 image\(s\): 01_scan.png"):
        read_mask_folder(tmp_path, strict=True)


def test_ambiguous_pairing(tmp_path):
    _site(tmp_path)
    _write(tmp_path / "1st_manual" / "01_manual2.png", np.zeros((40, 30), np.uint8))
    with pytest.raises(DataError, match="01_scan.png: ambiguous mask: 01_manual1.png, 01_manual2.png"):
        read_mask_folder(tmp_path)


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def _volumes(root: Path) -> np.ndarray:
    image = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4) - 50
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:3, 1:3, 1] = 1
    label[3:5, 2:4, 2] = 2
    _nifti(root / "images" / "p1.nii.gz", image)
    _nifti(root / "labels" / "p1_seg.nii.gz", label)
    _nifti(root / "images" / "p2.nii", image[:4, :4, :3] * 2)
    _nifti(root / "labels" / "p2.nii", label[:4, :4, :3])
    return image


def test_nifti_3d_mode(tmp_path):
    image = _volumes(tmp_path)
    data = read_nifti_folder(tmp_path, mode="3d")
    assert data.names == ["p1", "p2"] and data.spatial_dims == 3 and data.num_classes == 3
    assert data.images[0].shape == (4, 6, 5, 1) and data.masks[1].shape == (3, 4, 4)
    np.testing.assert_array_equal(data.images[0][2, ..., 0], image[:, :, 2])  # slice axis first


def test_nifti_2d_mode_cuts_axial_slices(tmp_path):
    image = _volumes(tmp_path)
    data = read_nifti_folder(tmp_path, mode="2d")
    assert len(data) == 4 + 3 and data.names[:2] == ["p1:0", "p1:1"] and data.spatial_dims == 2
    np.testing.assert_array_equal(data.images[1][..., 0], image[:, :, 1])
    assert data.masks[1].sum() == 4 and data.masks[2].max() == 2


def test_nifti_multichannel_image_with_3d_label(tmp_path):
    _nifti(tmp_path / "images" / "b.nii.gz", np.ones((6, 5, 4, 2), np.float32))
    _nifti(tmp_path / "labels" / "b_label.nii.gz", np.zeros((6, 5, 4), np.uint8))
    assert read_nifti_folder(tmp_path, mode="3d").images[0].shape == (4, 6, 5, 2)


def test_nifti_wrong_dimensionality(tmp_path):
    _nifti(tmp_path / "images" / "flat.nii.gz", np.zeros((6, 5), np.float32))
    _nifti(tmp_path / "labels" / "flat.nii.gz", np.zeros((6, 5), np.uint8))
    with pytest.raises(DataError, match=r"flat.nii.gz: shape \(6, 5\) is 2D; 3d mode"):
        read_nifti_folder(tmp_path, mode="3d")


def test_nifti_label_shape_mismatch(tmp_path):
    _nifti(tmp_path / "images" / "p.nii.gz", np.zeros((6, 5, 4), np.float32))
    _nifti(tmp_path / "labels" / "p_mask.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"p_mask.nii.gz: label shape \(6, 5, 3\) differs"):
        read_nifti_folder(tmp_path)


def _series(folder: Path) -> np.ndarray:
    """Three CT slices saved in shuffled order; returns the pixels in ascending position."""
    folder.mkdir()
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stored = []
    for k in (2, 0, 1):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = (source.pixel_array + 100 * k).astype(source.pixel_array.dtype)
        ds.PixelData = pixels.tobytes()
        ds.InstanceNumber = k + 1
        x, y, z = source.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, float(z) + 5 * k]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{'cab'[k]}.dcm")  # file names in another order than positions
        stored.append((k, pixels))
    return np.stack([p for _, p in sorted(stored, key=lambda kp: kp[0])])


def test_dicom_series_in_position_order_with_rescale(tmp_path):
    pixels = _series(tmp_path / "ct")
    mask = np.zeros((3, 128, 128), np.uint8)
    mask[1, 40:60, 40:60] = 1
    np.save(tmp_path / "ct_mask.npy", mask)
    data = read_dicom_series(tmp_path / "ct", tmp_path / "ct_mask.npy")
    assert data.names == ["ct"] and data.images[0].shape == (3, 128, 128, 1)
    np.testing.assert_array_equal(data.images[0][..., 0], pixels.astype(np.float32) - 1024)
    np.testing.assert_array_equal(data.masks[0], mask)


def test_corrupt_dicom_file(tmp_path):
    _series(tmp_path / "ct")
    (tmp_path / "ct" / "broken.dcm").write_bytes(b"not a DICOM file" * 10)
    np.save(tmp_path / "m.npy", np.zeros((4, 128, 128), np.uint8))
    with pytest.raises(DataError, match="broken.dcm: not a readable DICOM image"):
        read_dicom_series(tmp_path / "ct", tmp_path / "m.npy")


def test_dicom_mask_shape_mismatch(tmp_path):
    _series(tmp_path / "ct")
    np.save(tmp_path / "m.npy", np.zeros((2, 128, 128), np.uint8))
    with pytest.raises(DataError, match=r"m.npy: mask shape \(2, 128, 128\) differs"):
        read_dicom_series(tmp_path / "ct", tmp_path / "m.npy")


def test_truncated_saved_file(tmp_path):
    path = tmp_path / "site.npz"
    _small_set().save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="site.npz: not a readable .npz file"):
        SegmentationImages.load(path)
