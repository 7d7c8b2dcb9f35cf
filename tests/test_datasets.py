import numpy as np
import pytest
from PIL import Image

from medfed.errors import DataError
from medfed.models.classification.data import LabelledImages, LabelSpace, read_image_folder, read_npz_split


def _write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"img{i}.png"
        Image.fromarray(np.full((h, w), i * 20, dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_npz_split_reads_real_pneumonia(small_pneumonia):
    data = read_npz_split(small_pneumonia / "pneumoniamnist.npz", "train")
    assert data.images.shape == (240, 28, 28, 1) and data.labels.shape == (240,)
    assert LabelSpace.infer(data) == LabelSpace("binary", 2)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.npz"):
        read_npz_split(tmp_path / "nope.npz", "train")


def test_npz_without_expected_keys(tmp_path):
    path = tmp_path / "odd.npz"
    np.savez(path, x=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="train_images"):
        read_npz_split(path, "train")


def test_corrupt_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.npz"):
        read_npz_split(path, "train")


def test_image_folder_with_csv(tmp_path):
    names = _write_images(tmp_path / "img", [(8, 8)] * 4)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label,hospital\n" + "".join(f"{n},{i % 3},h{i % 2}\n" for i, n in enumerate(names)))
    data = read_image_folder(tmp_path / "img", csv, site_column="hospital")
    assert data.images.shape == (4, 8, 8, 1)
    assert list(data.labels) == [0, 1, 2, 0]
    assert list(data.sites) == ["h0", "h1", "h0", "h1"]
    assert LabelSpace.infer(data) == LabelSpace("multiclass", 3)


def test_multilabel_rows(tmp_path):
    names = _write_images(tmp_path / "img", [(8, 8)] * 2)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"image,label\n{names[0]},1|0|1\n{names[1]},0|0|1\n")
    data = read_image_folder(tmp_path / "img", csv)
    assert data.multilabel and LabelSpace.infer(data) == LabelSpace("multilabel", 3)


def test_csv_naming_missing_files(tmp_path):
    _write_images(tmp_path / "img", [(8, 8)])
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\nimg0.png,0\nghost.png,1\n")
    with pytest.raises(DataError, match="ghost.png"):
        read_image_folder(tmp_path / "img", csv)


def test_images_of_mixed_sizes(tmp_path):
    names = _write_images(tmp_path / "img", [(8, 8), (10, 8)])
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\n" + "".join(f"{n},0\n" for n in names))
    with pytest.raises(DataError, match="mixed sizes"):
        read_image_folder(tmp_path / "img", csv)


def test_missing_label_file(tmp_path):
    with pytest.raises(DataError, match="label file not found"):
        read_image_folder(tmp_path, tmp_path / "labels.csv")


def test_missing_label_column(tmp_path):
    names = _write_images(tmp_path / "img", [(8, 8)])
    csv = tmp_path / "labels.csv"
    csv.write_text(f"image,diagnosis\n{names[0]},0\n")
    with pytest.raises(DataError, match="missing column.*label"):
        read_image_folder(tmp_path / "img", csv)


def test_labels_and_images_must_match():
    with pytest.raises(DataError, match="3 images but 2 labels"):
        LabelledImages(np.zeros((3, 4, 4), np.uint8), np.zeros(2, np.int64))


def test_a_failed_download_says_where_to_get_the_file_and_leaves_no_folder(tmp_path, monkeypatch):
    import sys
    import types

    from medfed.errors import DataError
    from medfed.models.classification.medmnist import medmnist_path

    fake = types.ModuleType("medmnist")  # the catalogue, pointing at an address that refuses at once
    fake.INFO = {"pneumoniamnist": {"url": "http://127.0.0.1:9/pneumoniamnist.npz", "MD5": "0" * 32}}
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    root = tmp_path / "new" / "data"
    with pytest.raises(DataError, match="zenodo.org/records/10519652") as info:
        medmnist_path("pneumoniamnist", 28, str(root))
    assert "the download failed" in str(info.value) and str(root) in str(info.value)
    assert not (tmp_path / "new").exists()


def test_missing_drive_says_where_it_comes_from(tmp_path):
    from omegaconf import OmegaConf

    from medfed.errors import DataError
    from medfed.models.segmentation.data import read_source

    source = OmegaConf.create({"format": "drive", "path": "DRIVE", "split": "train"})
    with pytest.raises(DataError, match="drive.grand-challenge.org"):
        read_source(source, tmp_path)
