"""Segmentation on multi-modal, multi-class volumes: whole runs, patient-level splits,
local models kept, per-class and per-region metrics, overlays of any channel count."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from medfed.config import load_config
from medfed.models.segmentation import metrics as segmentation
from medfed.models.segmentation import pictures as examples
from medfed.models.segmentation.readers import read_nifti_folder
from medfed.models.spec import ModelSpec
from medfed.simulation.partition import case_name, partition

CONFIG = REPO / "configs" / "drive-unet-fedavg.yaml"
REGIONS = "data.segmentation.regions={WT: [1, 2, 3], TC: [2, 3], ET: [3]}"


def tumours(root: Path, cases: int, size: int = 16, seed: int = 0) -> Path:
    """``cases`` NIfTI volumes of two modalities (X, Y, Z, 2) with nested spheres labelled
    1 (oedema), 2 (core) and 3 (enhancing), like a brain-tumour set, under images/ and labels/."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.mgrid[:size, :size, :size], axis=-1).astype(np.float32)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        centre = rng.uniform(size * 0.35, size * 0.65, 3)
        distance = np.linalg.norm(grid - centre, axis=-1)
        label = np.select([distance < 2, distance < 3.5, distance < 5.5], [3, 2, 1], 0).astype(np.uint8)
        flair = 50 + 60 * (label >= 1) + rng.normal(0, 8, label.shape)  # oedema bright in FLAIR
        t1c = 40 + 90 * (label == 3) + 30 * (label == 2) + rng.normal(0, 8, label.shape)  # enhancing rim in T1c
        image = np.stack([flair, t1c], axis=-1).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "images" / f"case{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"case{i:02d}_seg.nii.gz")
    return root


def _volumes(slices: str) -> list[str]:
    source = f"{{format: nifti, path: tumours, images: images, masks: labels, slices: {slices}}}"
    return [f"data.segmentation.train={source}", f"data.segmentation.test={source}"]


FAST_3D = ["model.spatial_dims=3", "model.channels=[8,16]", "model.strides=[2]", "model.norm=instance",
           "data.segmentation.patch_size=16", "train.rounds=1", "train.local_steps=2", "train.batch_size=2",
           "limits.min_batch_size=2", "partition.scheme=iid", "partition.num_sites=2", "shift.strength=0",
           "data.val_fraction=0.2", "data.segmentation.test_fraction=0.25", "data.segmentation.overlays=2",
           "data.segmentation.overlay_channels=[0,1]", REGIONS, "logging.progress=false",
           "simulation.cpus_per_site=1", *_volumes("3d")]


@pytest.mark.parametrize("mode", ["pooled", "local", pytest.param("federated", marks=pytest.mark.slow)])
def test_two_channel_four_class_volumes_finish_in_every_mode(cli, tmp_path, mode):
    tumours(tmp_path / "data" / "tumours", cases=12)
    out = tmp_path / "run"
    assert cli("simulate", CONFIG, *FAST_3D, f"mode={mode}", "--output", out, data_dir=tmp_path / "data") == 0
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    for key in ("dice", "dice_class_1", "dice_class_2", "dice_class_3", "hd95_class_3",
                "dice_WT", "dice_TC", "dice_ET", "hd95_WT"):
        assert key in test
    assert 0.0 <= test["dice_WT"] <= 1.0
    overlays = sorted(p.name for p in (out / "overlays").iterdir()) if mode != "local" else []
    assert mode == "local" or len(overlays) == 2
    cases = pd.read_csv(out / "cases.csv")
    assert cases.groupby("case").size().max() == 1  # every case in exactly one place
    assert set(cases.role) == {"train", "val", "test"} and len(cases) == 12
    site_test = {name: site["own_test"] for name, site in summary["per_site"].items() if "own_test" in site}
    assert set(site_test) == {"site-000", "site-001"}  # each site's own held-out cases, scored
    assert all("dice_class_1" in m for m in site_test.values())
    if mode == "local":  # every hospital's own model is kept
        assert sorted(p.name for p in (out / "models").iterdir()) == ["site-000.pt", "site-001.pt"]
        saved = torch.load(out / "models" / "site-000.pt", weights_only=False)
        assert saved["meta"]["site"] == "site-000" and saved["weights"]


def test_axial_slices_of_one_patient_stay_on_one_side_of_every_split(tmp_path):
    tumours(tmp_path / "tumours", cases=10)
    pool = read_nifti_folder(tmp_path / "tumours", "images", "labels", "2d")
    cfg = load_config(CONFIG, ["partition.scheme=iid", "partition.num_sites=2", "data.val_fraction=0.3",
                               "data.segmentation.test_fraction=0.2", "model.spatial_dims=2"])
    places: dict[str, set] = {}
    for site in partition(pool, cfg):
        for role, data in (("train", site.train), ("val", site.val), ("test", site.test)):
            for name in data.names:
                places.setdefault(case_name(name), set()).add((site.name, role))
    assert len(places) == 10
    assert all(len(where) == 1 for where in places.values()), places  # 16 slices each, one place
    assert {role for where in places.values() for _, role in where} == {"train", "val", "test"}


def test_a_test_set_sharing_patients_with_training_is_refused(cli, tmp_path, capsys):
    tumours(tmp_path / "data" / "tumours", cases=6)
    out = tmp_path / "run"
    fast = [a for a in FAST_3D if "test_fraction" not in a] + ["data.segmentation.test_fraction=0"]
    assert cli("simulate", CONFIG, *fast, "mode=pooled", "--output", out, data_dir=tmp_path / "data") == 2
    assert not out.exists()
    assert "data.segmentation.test reads the same images as data.segmentation.train" in capsys.readouterr().err


def test_overlay_channels_beyond_the_images_are_refused_before_anything_runs(cli, tmp_path, capsys):
    tumours(tmp_path / "data" / "tumours", cases=6)
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, *FAST_3D, "mode=pooled", "data.segmentation.overlay_channels=[2]",
               "--output", out, data_dir=tmp_path / "data")
    assert code == 2 and not out.exists()
    assert "data.segmentation.overlay_channels" in capsys.readouterr().err


def test_per_class_and_region_scores_follow_their_definitions():
    truth = np.zeros((24, 24), np.uint8)
    truth[4:16, 4:16], truth[6:12, 6:12], truth[8:10, 8:10] = 1, 2, 3
    pred = truth.copy()
    pred[4:16, 14:18] = 1  # class 1 spills to the right; classes 2 and 3 exact
    probs = np.eye(4, dtype=np.float32)[pred].transpose(2, 0, 1)
    m = segmentation.metrics(truth, probs, None, per_class=True, regions={"WT": [1, 2, 3], "ET": [3]})

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert m["dice_class_1"] == pytest.approx(dice(truth == 1, pred == 1))
    assert m["dice_class_2"] == pytest.approx(1.0) and m["dice_class_3"] == pytest.approx(1.0)
    assert m["dice_WT"] == pytest.approx(dice(truth > 0, pred > 0))
    assert m["dice_ET"] == pytest.approx(1.0) and m["hd95_ET"] == pytest.approx(0.0)
    assert m["hd95_WT"] > 0
    assert "dice_class_1" not in segmentation.metrics(truth, probs, None)  # a site's replies stay as declared


def test_a_failed_overlay_is_logged_and_the_others_are_drawn(tmp_path, monkeypatch, caplog):
    tumours(tmp_path / "tumours", cases=3)
    test = read_nifti_folder(tmp_path / "tumours", "images", "labels", "3d")
    spec = ModelSpec(name="unet", in_channels=2, num_classes=4, image_size=16, dropout=0.0,
                     label_kind="segmentation", task="segmentation", spatial_dims=3, channels=(8, 16), strides=(2,))
    draw = examples._overlay

    def fail_on_the_second(*args):
        if args[-1].name.startswith("case01"):
            raise ValueError("no room on the canvas")
        return draw(*args)

    monkeypatch.setattr(examples, "_overlay", fail_on_the_second)
    with caplog.at_level(logging.WARNING, logger="medfed"):
        written = examples.save_overlays(spec, spec.build().state_dict(), test, tmp_path / "overlays", 3, "cpu", [1])
    assert [p.name for p in written] == ["case00.png", "case02.png"]
    assert "overlay of case01 not drawn: ValueError: no room on the canvas" in caplog.text


def test_overlays_show_a_colour_per_class_and_a_two_channel_composite():
    image = np.zeros((8, 8, 2), np.float32)
    image[..., 0], image[..., 1] = np.arange(8)[:, None], np.arange(8)[None, :]
    shown = examples.shown_channels(image, [0, 1])
    assert shown.shape == (8, 8, 3) and shown[..., 2].max() == 0  # red and green, no blue
    assert shown[7, 0, 0] == pytest.approx(1.0) and shown[0, 7, 1] == pytest.approx(1.0)
    assert examples.shown_channels(image, [1]).shape == (8, 8)
    colours = examples.class_colours(4)
    assert len({tuple(c) for c in colours}) == 4 and tuple(colours[0]) == (0, 0, 0)
    mask = np.zeros((5, 4, 4), np.uint8)
    mask[3, 1:3, 1:3] = 2
    assert examples.representative_slice(mask) == 3
    assert examples.representative_slice(np.zeros((5, 4, 4), np.uint8)) == 2


def test_a_deployed_coordinator_refuses_held_out_site_cases(tmp_path):
    from medfed.errors import ConfigError
    from medfed.server.deployed import build_plan

    cfg = load_config(CONFIG, ["data.segmentation.test_fraction=0.2"])
    with pytest.raises(ConfigError, match="data.segmentation.test_fraction"):
        build_plan(cfg, tmp_path / "run", 2, False)
    assert not (tmp_path / "run").exists()
