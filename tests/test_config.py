from pathlib import Path

import pytest

from medfed.config import load_config
from medfed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
UNET = "task=segmentation model.name=unet partition.scheme=iid"


def test_shipped_configs_are_valid():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_override_changes_a_setting():
    cfg = load_config(REPO / "configs/pneumonia-fedavg.yaml", ["train.rounds=3", "strategy.name=fedprox"])
    assert cfg.train.rounds == 3 and cfg.strategy.name == "fedprox"


def test_unknown_key_in_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  roundz: 3\n")
    with pytest.raises(ConfigError, match="train.roundz"):
        load_config(bad)


def test_unknown_override_is_named():
    with pytest.raises(ConfigError, match="partition.alfa"):
        load_config(None, ["partition.alfa=0.1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.rounds"):
        load_config(None, ["train.rounds=many"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("partition.alpha=0", "partition.alpha"),
        ("partition.alpha=-1", "partition.alpha"),
        ("mode=centralised", "mode"),
        ("partition.scheme=random", "partition.scheme"),
        ("train.device=tpu", "train.device"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("shift.strength=2", "shift.strength"),
        ("evaluation.audit_canaries=-1", "evaluation.audit_canaries"),
        ("data.segmentation.contrast=gamma", "data.segmentation.contrast"),
        ("evaluation.membership_audit=false evaluation.audit_canaries=10", "evaluation.audit_canaries"),
        (f"{UNET} model.strides=[1,2]", "model.strides"),
        (f"{UNET} model.strides=[0,2,2]", "model.strides"),
        (f"{UNET} model.channels=[16] model.strides=[]", "model.channels"),
        (f"{UNET} model.norm=group model.channels=[12,24,48,96]", "model.channels"),
        (f"{UNET} data.segmentation.patch_size=32 model.strides=[2,2,16]", "data.segmentation.patch_size"),
    ],
)
def test_bad_values_are_rejected(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, override.split())


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.rounds"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
