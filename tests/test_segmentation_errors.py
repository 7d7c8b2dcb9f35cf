"""Bad segmentation input through the command line: a message naming the file, exit
code 2, and no run folder left behind."""

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO
from PIL import Image

CONFIG = REPO / "configs" / "drive-unet-fedavg.yaml"


def _site(root, n=4, size=32):
    for sub in ("images", "labels", "fov"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size), 100, np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(root / "labels" / f"{i}.png")
        Image.fromarray(np.full((size, size), 255, np.uint8)).save(root / "fov" / f"{i}.png")


def _mask_of_wrong_size(root):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "train" / "labels" / "2.png")
    return "2.png"


def _grey_picture_as_mask(root):
    Image.fromarray(np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)).save(
        root / "train" / "labels" / "1.png")
    return "neither a binary mask nor a label map"


def _missing_fov_file(root):
    (root / "train" / "fov" / "3.png").unlink()
    return "3"


def _empty_folder(root):
    for f in (root / "train" / "images").iterdir():
        f.unlink()
    return str(root / "train" / "images")


@pytest.mark.parametrize("spoil", [_mask_of_wrong_size, _grey_picture_as_mask, _missing_fov_file, _empty_folder])
def test_bad_mask_folder(cli, capsys, tmp_path, spoil):
    root = tmp_path / "data"
    _site(root / "train")
    _site(root / "test")
    named = spoil(root)
    source = "{{format: masks, path: {}, images: images, masks: labels, fov: fov, strict: true}}"
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, f"data.segmentation.train={source.format('train')}",
               f"data.segmentation.test={source.format('test')}", "data.segmentation.patch_size=16",
               "partition.num_sites=1", "--output", out, data_dir=root)
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err
    assert not out.exists()


def test_nifti_of_the_wrong_dimensionality(cli, capsys, tmp_path):
    root = tmp_path / "data" / "ct"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2, 2), np.float32), np.eye(4)), root / "images" / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), root / "labels" / "a.nii.gz")
    source = "{format: nifti, path: ct, images: images, masks: labels, slices: 3d}"
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, f"data.segmentation.train={source}", f"data.segmentation.test={source}",
               "model.spatial_dims=3", "--output", out, data_dir=tmp_path / "data")
    err = capsys.readouterr().err
    assert code == 2 and "a.nii.gz" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("override, message", [
    ("data.segmentation.train.format=jpeg", "data.segmentation.train.format"),
    ("partition.scheme=dirichlet", "partition.scheme"),
    ("model.name=cnn", "unknown model 'cnn' for task segmentation"),
    ("data.segmentation.patch_size=50", "data.segmentation.patch_size"),
    ("data.segmentation.train.path=nowhere", "nowhere"),
    ("data.segmentation.train.mask_threshold=0", "data.segmentation.train.mask_threshold"),
    ("data.segmentation.test.strict=maybe", "data.segmentation.test.strict"),
])
def test_bad_segmentation_settings(cli, capsys, tmp_path, override, message):
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, override, "--output", out, data_dir=tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()
