"""Hospitals' folders as they come: their image formats, their mask names, grey masks,
images without masks, and pairings that cannot be decided."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfed.errors import DataError
from medfed.models.segmentation.readers import pair_files, read_mask_folder

RNG = np.random.default_rng(0)


def _picture(path: Path, shape=(24, 32, 3), mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _mask(path: Path, shape=(24, 32), value: int = 255, grey_edge: bool = False) -> Path:
    mask = np.zeros(shape, np.uint8)
    mask[4:12, 6:20] = value
    if grey_edge:  # a label resized with interpolation by its publisher
        mask[12, 6:20], mask[3, 6:20] = 180, 40
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def test_stare_layout_ppm_images_with_observer_suffixed_labels(tmp_path):
    for i in (1, 2, 3):
        _picture(tmp_path / "stare-images" / f"im000{i}.ppm")
        _mask(tmp_path / "labels-ah" / f"im000{i}.ah.ppm")
    data = read_mask_folder(tmp_path, "stare-images", "labels-ah", fov=None)
    assert data.names == ["im0001", "im0002", "im0003"]
    assert data.images[0].shape == (24, 32, 3) and set(np.unique(data.masks[0])) == {0, 1}


def test_hrf_layout_upper_case_jpeg_with_tiff_masks_and_mask_suffixed_fov(tmp_path):
    for name in ("01_dr", "01_g", "01_h"):
        _picture(tmp_path / "images" / f"{name}.JPG")
        _mask(tmp_path / "manual1" / f"{name}.tif")
        _mask(tmp_path / "mask" / f"{name}_mask.tif", value=255)
    data = read_mask_folder(tmp_path, "images", "manual1", "mask")
    assert data.names == ["01_dr", "01_g", "01_h"]
    assert all(f is not None and f.any() for f in data.fov)


def test_chase_layout_prefix_names_and_gif_masks(tmp_path):
    for name in ("Image_01L", "Image_01R"):
        _picture(tmp_path / "images" / f"{name}.jpg")
        _mask(tmp_path / "labels" / f"{name}_1stHO.gif")
    assert read_mask_folder(tmp_path, "images", "labels", fov=None).names == ["Image_01L", "Image_01R"]


def test_an_image_without_its_mask_is_missing_not_ambiguous(tmp_path):
    images = [_picture(tmp_path / "images" / f"11_{k}.tif") for k in ("dr", "g", "h")]
    for k in ("dr", "g"):
        _mask(tmp_path / "labels" / f"11_{k}.tif")
    pairs, missing = pair_files(images, tmp_path / "labels", (".tif",), "mask")
    assert [p.name for p in missing] == ["11_h.tif"]
    assert {i.name: m.name for i, m in pairs.items()} == {"11_dr.tif": "11_dr.tif", "11_g.tif": "11_g.tif"}


def test_a_longer_image_name_keeps_its_own_mask(tmp_path):
    images = [_picture(tmp_path / "images" / f"{n}.png") for n in ("case1", "case12", "case1b")]
    for n in ("case1", "case12", "case1b"):
        _mask(tmp_path / "labels" / f"{n}_seg.png")
    pairs, missing = pair_files(images, tmp_path / "labels", (".png",), "label map")
    assert missing == [] and all(m.name == f"{i.stem}_seg.png" for i, m in pairs.items())


@pytest.mark.parametrize("images, masks, message", [
    (["im0001.ppm"], ["im0001.ah.ppm", "im0001.vk.ppm"], r"im0001.ppm: ambiguous mask: im0001.ah.ppm, im0001.vk.ppm"),
    (["21_training.tif", "21_extra.tif"], ["21_manual1.gif"], r"21_manual1.gif: mask matches both"),
])
def test_a_pairing_that_cannot_be_decided_is_an_error_naming_the_files(tmp_path, images, masks, message):
    for name in images:
        _picture(tmp_path / "images" / name)
    for name in masks:
        _mask(tmp_path / "labels" / name)
    with pytest.raises(DataError, match=message):
        read_mask_folder(tmp_path, "images", "labels", fov=None)


def test_grey_masks_need_a_threshold_which_makes_them_binary(tmp_path):
    for i in range(3):
        _picture(tmp_path / "images" / f"{i}.png")
        _mask(tmp_path / "labels" / f"{i}.png", grey_edge=True)
    with pytest.raises(DataError, match=r"0.png: neither a binary mask nor a label map.*mask_threshold"):
        read_mask_folder(tmp_path, "images", "labels", fov=None)
    data = read_mask_folder(tmp_path, "images", "labels", fov=None, mask_threshold=128)
    assert set(np.unique(data.masks[0])) == {0, 1}
    assert int(data.masks[0].sum()) == 9 * 14  # the 8 full rows and the 180 row; not the 40 row


def test_nothing_paired_is_an_error_naming_the_folders(tmp_path):
    _picture(tmp_path / "images" / "a.png")
    _mask(tmp_path / "labels" / "b.png")
    with pytest.raises(DataError, match=r"labels: no mask pairs with any image of .*images"):
        read_mask_folder(tmp_path, "images", "labels", fov=None)


def _fundus(shape=(60, 80), radius=26) -> np.ndarray:
    """A lit disc on black, with dark vessels inside, as a retinal camera takes it."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < radius**2
    picture = np.zeros((*shape, 3), np.uint8)
    picture[disc] = (200, 90, 40)
    vessel = (np.abs(yy - shape[0] / 2) < 2) & (np.abs(xx - shape[1] / 2) < radius - 6)
    picture[vessel] = (5, 5, 5)  # a vessel as dark as the frame, inside the disc
    return picture, disc


def test_a_fundus_photograph_without_a_fov_mask_gets_its_disc(tmp_path):
    from medfed.models.segmentation.field_of_view import estimate_fov, looks_like_fundus

    picture, disc = _fundus()
    assert looks_like_fundus(picture) and not looks_like_fundus(RNG.integers(0, 256, (60, 80, 3)).astype(np.uint8))
    assert (estimate_fov(picture) == disc).mean() > 0.995  # the dark vessel stays inside
    for i in range(2):
        Image.fromarray(picture).save(_parent(tmp_path / "images" / f"{i}.png"))
        _mask(tmp_path / "labels" / f"{i}.png", shape=(60, 80))
    data = read_mask_folder(tmp_path, "images", "labels", fov=None)
    assert data.fov[0] is not None and (data.fov[0] == disc).mean() > 0.995
    assert read_mask_folder(tmp_path, "images", "labels", fov=None, estimate_fov=False).fov == [None, None]


def test_the_estimated_fov_matches_drives_own_masks_on_its_test_images():
    from conftest import SHARED

    from medfed.models.segmentation.field_of_view import estimate_fov, looks_like_fundus
    from medfed.models.segmentation.readers import read_drive

    if not (SHARED / "DRIVE").is_dir():
        pytest.skip(f"real data not available: {SHARED / 'DRIVE'} (see shared/datasets/README.md)")
    test = read_drive(SHARED / "DRIVE", "test")
    ious = []
    for image, fov in zip(test.images, test.fov):
        assert looks_like_fundus(image)
        estimated = estimate_fov(image)
        ious.append((estimated & fov).sum() / (estimated | fov).sum())
    assert min(ious) > 0.98, ious


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _volumes(n: int):
    from medfed.models.segmentation.readers import SegmentationImages

    images = [np.full((4, 8, 8, 1), i, np.float32) for i in range(n)]
    masks = [np.zeros((4, 8, 8), np.uint8) for _ in range(n)]
    return SegmentationImages(images, masks, [None] * n, [f"case{i}" for i in range(n)])


def test_a_site_with_two_volumes_trains_on_both_and_validates_on_one(tmp_path, caplog):
    from medfed.client.site_daemon.site_config import split_validation
    from medfed.simulation.partition import split_site

    with caplog.at_level("WARNING"):
        train, val = split_validation(_volumes(2), 0.1, 0, tmp_path)
        shard = split_site("hospital", _volumes(2), np.arange(2), 0.1, np.random.default_rng(0), "its own folder")
    assert train.names == ["case0", "case1"] and len(val) == 1 and val.names[0] in train.names
    assert sorted(shard.train.names) == ["case0", "case1"] and shard.val.names[0] in shard.train.names
    assert caplog.text.count("validation figures are optimistic") == 2
    with pytest.raises(DataError, match=r"only 1 item\(s\); a site needs at least 2"):
        split_validation(_volumes(1), 0.1, 0, tmp_path)
    with pytest.raises(DataError, match=r"hospital gets only 2 image\(s\) with its own folder; each site needs "
                                        r"at least 3 \(2 to train, 1 to test\)"):
        split_site("hospital", _volumes(2), np.arange(2), 0.1, np.random.default_rng(0), "its own folder", 0.5)
    three = split_site("hospital", _volumes(3), np.arange(3), 0.1, np.random.default_rng(0), "its own folder")
    assert len(three.train) == 2 and len(three.val) == 1 and three.val.names[0] not in three.train.names
