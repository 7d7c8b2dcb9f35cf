"""Segmentation as a federated task: metrics, training, DP-SGD and whole runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from monai.data import get_track_meta
from opacus.accountants import RDPAccountant
from PIL import Image

from medfed.client.local_round import local_train
from medfed.client.privacy import SiteAccountant
from medfed.models.segmentation import metrics as segmentation
from medfed.models.segmentation.network import build_unet
from medfed.models.segmentation.readers import SegmentationImages
from medfed.models.segmentation.train import Patches, evaluate_segmentation
from medfed.models.segmentation.train import train as train_segmentation
from medfed.wire import DPSettings, TrainSettings

CONFIG = REPO / "configs" / "drive-unet-fedavg.yaml"


def disks(n: int, size: int = 32, seed: int = 0, fov: bool = True) -> SegmentationImages:
    """Grey images with one bright disk each (the foreground) on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, fovs = [], [], []
    for _ in range(n):
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 7))]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        images.append((40 + 150 * mask + rng.normal(0, 20, mask.shape))[..., None])
        masks.append(mask)
        fovs.append(np.ones_like(mask, bool) if fov else None)
    return SegmentationImages(images, masks, fovs, [f"im{i}" for i in range(n)])


def settings(**overrides) -> TrainSettings:
    base = dict(kind="segmentation", num_classes=2, steps=40, batch_size=8, lr=5e-3, seed=3,
                task="segmentation", patch_size=16)
    return TrainSettings(**{**base, **overrides})


def test_perfect_prediction_scores_perfectly():
    truth = np.zeros((20, 20), np.uint8)
    truth[5:12, 6:14] = 1
    probs = np.stack([1.0 - truth, truth]).astype(np.float32)
    m = segmentation.metrics(truth, probs, None)
    assert m["dice"] == pytest.approx(1.0) and m["iou"] == pytest.approx(1.0)
    assert m["hd95"] == pytest.approx(0.0) and m["auc"] == pytest.approx(1.0)


def test_metrics_ignore_everything_outside_the_field_of_view():
    truth = np.zeros((20, 20), np.uint8)
    truth[5:12, 6:14] = 1
    probs = np.stack([1.0 - truth, truth]).astype(np.float32)
    probs[:, :, 16:] = [[[0.0]], [[1.0]]]  # false alarms in columns 16+
    fov = np.ones_like(truth, bool)
    fov[:, 16:] = False
    assert segmentation.metrics(truth, probs, fov)["dice"] == pytest.approx(1.0)
    assert segmentation.metrics(truth, probs, None)["dice"] < 0.7


def test_dice_matches_its_definition():
    rng = np.random.default_rng(1)
    truth = (rng.random((24, 24)) < 0.3).astype(np.uint8)
    pred = (rng.random((24, 24)) < 0.3).astype(np.int64)
    probs = np.stack([1.0 - pred, pred]).astype(np.float32)
    expected = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
    assert segmentation.metrics(truth, probs, None)["dice"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["unet", "basicunet"])
def test_unets_have_no_layer_opacus_rejects(name):
    from opacus.validators import ModuleValidator

    model = build_unet(name, 2, 1, 2, "group")
    assert ModuleValidator.validate(model, strict=False) == []
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def test_clahe_brings_out_a_faint_line_in_a_dark_region():
    rng = np.random.default_rng(0)
    image = 30.0 + rng.normal(0, 2, (64, 64))
    image[:, 16] += 8  # a faint vessel in the dark half
    image[:, 32:] = rng.uniform(100, 250, (64, 32))  # a bright, busy half sets the global statistics
    image = np.clip(image, 0, 255).astype(np.uint8)[..., None]
    fov = np.ones((64, 64), bool)
    fov[:, :2] = False

    def line_contrast(x):
        return float(np.mean(x[0, :, 16] - (x[0, :, 15] + x[0, :, 17]) / 2))

    plain, equalised = segmentation.normalise(image, fov), segmentation.normalise(image, fov, "clahe")
    assert line_contrast(equalised) > 2 * line_contrast(plain) > 0
    assert abs(equalised[:, fov].mean()) < 1e-4 and equalised[:, fov].std() == pytest.approx(1, abs=1e-3)
    assert not equalised[:, ~fov].any()


def test_training_learns_the_foreground():
    data, test = disks(12), disks(4, seed=9)
    torch.manual_seed(0)
    model = build_unet("unet", 2, 1, 2)
    before = evaluate_segmentation(model, test, 32, torch.device("cpu"))["dice"]
    result = train_segmentation(model, data, settings(), torch.device("cpu"))
    after = evaluate_segmentation(model, test, 32, torch.device("cpu"))
    assert result["steps"] == 40 and result["num-examples"] == 12
    assert after["dice"] > 0.7 > before
    assert after["images"] == 4


def test_patches_are_plain_tensors_and_leave_monai_tracking_as_it_was():
    patches = Patches(disks(3), 16, torch.Generator().manual_seed(0))
    assert get_track_meta()
    image, label = patches[1]
    assert type(image) is torch.Tensor and type(label) is torch.Tensor  # no MetaTensor bookkeeping
    assert image.shape == (1, 16, 16) and label.shape == (1, 16, 16) and label.dtype == torch.long
    assert get_track_meta()


def test_private_training_reports_the_accountants_epsilon(tmp_path):
    data = disks(16)
    dp = DPSettings(noise_multiplier=1.1, target_epsilon=None, planned_rounds=1, delta=1e-3,
                    max_grad_norm=1.0, max_epsilon=None)
    torch.manual_seed(0)
    model = build_unet("unet", 2, 1, 2, "group")
    result = local_train(model, data, settings(steps=6), torch.device("cpu"), dp, SiteAccountant(tmp_path, "rdp"))
    independent = RDPAccountant()
    independent.history = [(1.1, result["sample-rate"], 6)]
    assert result["sample-rate"] == pytest.approx(0.5)  # one over the batches of an epoch: 16 / 8
    assert result["epsilon"] == pytest.approx(independent.get_epsilon(1e-3), rel=0.01)


def _write_site(folder: Path, data: SegmentationImages) -> None:
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for image, mask, name in zip(data.images, data.masks, data.names):
        Image.fromarray(np.clip(image[..., 0], 0, 255).astype(np.uint8)).save(folder / "images" / f"{name}.png")
        Image.fromarray(mask * 255).save(folder / "labels" / f"{name}.png")


@pytest.fixture
def hospitals(tmp_path) -> Path:
    """Two hospitals' folders and a test folder of PNG images with masks (no field of view)."""
    root = tmp_path / "data"
    for i, name in enumerate(("north", "south", "test")):
        _write_site(root / name, disks(6, size=48, seed=i))
    return root


def _source(path: str) -> str:
    return f"{{format: masks, path: {path}, images: images, masks: labels, fov: null}}"


FAST_SEGMENTATION = ["train.rounds=2", "train.local_steps=3", "train.batch_size=4", "limits.min_batch_size=4",
                     "data.segmentation.patch_size=16", "logging.progress=false", "data.segmentation.overlays=2",
                     f"data.segmentation.test={_source('test')}"]


@pytest.mark.slow
def test_natural_multi_site_run_end_to_end_with_dp(cli, hospitals, tmp_path):
    sites = f"data.segmentation.sites=[{_source('north')}, {_source('south')}]"
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, *FAST_SEGMENTATION, "partition.scheme=natural", "shift.strength=0.5",
               sites, "simulation.cpus_per_site=1", "privacy.mechanism=sample", "privacy.noise_multiplier=1.0",
               "privacy.delta=0.01", "data.segmentation.contrast=clahe", "--output", out, data_dir=hospitals)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert set(privacy["sites"]) == {"site-000", "site-001"}
    site = privacy["sites"]["site-000"]
    assert site["sample-rate"] == pytest.approx(0.5)  # 5 training images in batches of 4
    independent = RDPAccountant()
    independent.history = [(1.0, 0.5, 3)] * 2  # 3 steps in each of 2 rounds
    assert privacy["epsilon"] == pytest.approx(independent.get_epsilon(0.01), rel=0.01)
    assert summary["task"] == "segmentation" and summary["sites"] == 2
    assert set(summary["test"]) >= {"dice", "iou", "hd95", "auc"}
    assert 0.0 <= summary["test"]["dice"] <= 1.0
    assert set(summary["per_site"]) == {"site-000", "site-001"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["im0.png", "im1.png"]
    assert (out / "learning_curves.png").is_file()


def test_pooled_baseline_and_evaluation_every_k_rounds(cli, hospitals, tmp_path):
    sites = f"data.segmentation.train={_source('north')}"
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, *FAST_SEGMENTATION, "mode=pooled", "partition.num_sites=2", sites,
               "train.rounds=3", "evaluation.every=2", "data.segmentation.contrast=clahe", "--output", out,
               data_dir=hospitals)
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [bool(r["test"]) for r in rows] == [False, True, True]  # round 2, and the last round
    assert json.loads((out / "summary.json").read_text())["test"]["images"] == 6
