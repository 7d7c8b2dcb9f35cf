"""Differential privacy end to end in the Simulation Engine, on a slice of real data."""

import json

import pytest
from conftest import AUDIT, FAST, REPO

from medfed.strategies.client_level_dp import client_epsilon

CONFIG = REPO / "configs" / "pneumonia-dp-eps8.yaml"
ARGS = FAST + ["train.batch_size=16", "train.local_epochs=1"]  # pinned: the budget test counts on them


def _summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_sample_level_dp_with_fedprox_reports_every_site(cli, capsys, tmp_path, small_pneumonia):
    run = tmp_path / "run"
    assert cli("simulate", CONFIG, *ARGS, "strategy.name=fedprox", "strategy.proximal_mu=0.1",
               "privacy.target_epsilon=4", AUDIT, "evaluation.audit_canaries=5", "--output", run,
               data_dir=small_pneumonia) == 0
    assert "ModuleValidator replaced 5 BatchNorm2d" in capsys.readouterr().err
    privacy = _summary(run)["privacy"]
    assert privacy["mechanism"].startswith("sample-level")
    assert sorted(privacy["sites"]) == ["site-000", "site-001", "site-002"]
    for site in privacy["sites"].values():
        assert 0 < site["epsilon"] <= 4.0 and site["noise-multiplier"] > 0 and site["delta"] == 1e-5
    assert privacy["epsilon"] == max(s["epsilon"] for s in privacy["sites"].values())
    assert 0 <= privacy["membership_inference"]["auc"] <= 1
    canaries = privacy["membership_inference"]["canaries"]
    assert canaries["members"] == canaries["non_members"] == 5 and 0 <= canaries["auc"] <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["privacy"]["epsilon"] < rows[1]["privacy"]["epsilon"]  # spending grows per round
    assert (run / "epsilon.png").is_file()


@pytest.mark.slow
def test_sites_refuse_past_their_budget_and_the_run_ends_cleanly(cli, tmp_path, small_pneumonia):
    run = tmp_path / "run"
    # at this noise a round costs epsilon 4.3, two 5.3, three 6.2: every site refuses round 3
    assert cli("simulate", CONFIG, *ARGS, "train.rounds=3", "privacy.target_epsilon=null",
               "privacy.noise_multiplier=1.0", "privacy.max_epsilon=5.8", "--output", run,
               data_dir=small_pneumonia) == 0
    summary = _summary(run)
    assert "privacy budget" in summary["stopped_early"]
    rounds = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rounds) == 2
    assert summary["privacy"]["epsilon"] <= 5.8


@pytest.mark.slow
def test_client_level_dp_epsilon_comes_from_the_accountant(cli, tmp_path, small_pneumonia):
    run = tmp_path / "run"
    assert cli("simulate", CONFIG, *ARGS, "privacy.mechanism=client", "privacy.target_epsilon=null",
               "privacy.noise_multiplier=1.5", "privacy.clipping_norm=0.5", "--output", run,
               data_dir=small_pneumonia) == 0
    privacy = _summary(run)["privacy"]
    assert privacy["mechanism"].startswith("client-level")
    assert privacy["rounds"] == 2 and privacy["noise_multiplier"] == 1.5
    assert privacy["epsilon"] == pytest.approx(client_epsilon(1.5, 2, 3, 1e-5), rel=1e-6)


def test_unreachable_epsilon_target_stops_before_anything_runs(cli, capsys, tmp_path, small_pneumonia):
    run = tmp_path / "run"
    code = cli("simulate", CONFIG, *ARGS, "privacy.target_epsilon=1e-9", "--output", run,
               data_dir=small_pneumonia)
    assert code == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert not run.exists()


def test_delta_must_stay_below_one_over_n(cli, capsys, tmp_path, small_pneumonia):
    code = cli("simulate", CONFIG, *ARGS, "privacy.delta=0.5", "--output", tmp_path / "run",
               data_dir=small_pneumonia)
    assert code == 2 and "not below 1/n" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_writes_one_row_per_target(cli, tmp_path, small_pneumonia):
    out = tmp_path / "sweep"
    assert cli("sweep", CONFIG, *ARGS, "train.rounds=1", AUDIT, "evaluation.audit_canaries=4", "--epsilons", "none,4",
               "--output", out, data_dir=small_pneumonia) == 0
    lines = (out / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("target_epsilon,epsilon_spent,test_auc")
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == ["", "4.0"]
    assert rows[0][1] == "" and 0 < float(rows[1][1]) <= 4.0
    canary_auc = lines[0].split(",").index("canary_attack_auc")
    assert all(0 <= float(r[canary_auc]) <= 1 for r in rows)
    assert (out / "privacy_utility.png").is_file()
    assert (out / "epsilon-none" / "summary.json").is_file() and (out / "epsilon-4" / "summary.json").is_file()


def test_sweep_rejects_a_bad_target(cli, capsys, tmp_path, small_pneumonia):
    assert cli("sweep", CONFIG, *ARGS, "--epsilons", "8,lots", "--output", tmp_path / "s",
               data_dir=small_pneumonia) == 2
    assert "'lots' is not a number" in capsys.readouterr().err
