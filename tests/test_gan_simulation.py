"""The GAN as a federated task: generator and discriminator trained at the sites,
aggregated together, judged on the server; with DP-SGD on the discriminator."""

import json

import pytest
from conftest import FAST, REPO

CONFIG = REPO / "configs" / "pneumonia-gan.yaml"
SMALL = [*FAST, "gan.samples_per_class=40", "gan.tstr_epochs=1", "evaluation.every=2", "train.batch_size=16"]


@pytest.mark.slow
def test_federated_gan_run_reports_synthesis_metrics(cli, tmp_path, small_pneumonia):
    out = tmp_path / "run"
    assert cli("simulate", CONFIG, *SMALL, "--output", out, data_dir=small_pneumonia) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "gan"
    test = summary["test"]
    assert 0.0 <= test["tstr_auc"] <= 1.0
    assert test["frechet_distance"] > 0.0
    assert 0.0 <= test["memorised_fraction"] <= 1.0
    assert summary["privacy"]["membership_inference"] is None  # the audit attacks classifiers
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["round-001.png", "round-002.png"]
    assert (out / "samples.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["test"] == {} and "tstr_auc" in rows[1]["test"]  # judged every 2 rounds


@pytest.mark.slow
def test_dp_gan_spends_at_most_its_target(cli, tmp_path, small_pneumonia):
    out = tmp_path / "run"
    code = cli("simulate", CONFIG, *SMALL, "train.rounds=1", "privacy.mechanism=sample",
               "privacy.target_epsilon=4", "privacy.delta=1e-3", "--output", out, data_dir=small_pneumonia)
    assert code == 0
    privacy = json.loads((out / "summary.json").read_text())["privacy"]
    assert privacy["mechanism"].startswith("sample-level")
    assert privacy["epsilon"] == pytest.approx(4.0, rel=0.02)
    assert privacy["epsilon"] <= 4.0 + 1e-6
