"""Faulty and malicious sites end to end: the run survives them and says what happened."""

import csv
import json
from pathlib import Path

import pytest
from conftest import FAST, REPO

CONFIG = REPO / "configs" / "pneumonia-fedavg.yaml"
SITES5 = [*FAST, "partition.num_sites=5", "train.batch_size=16"]


def _rounds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_dropouts_and_killed_site_processes_do_not_stop_the_run(cli, capsys, tmp_path, small_pneumonia):
    run = tmp_path / "chaos"
    args = [*SITES5, "train.rounds=3", "faults.dropout=0.3", "faults.crash=0.2", "seed=9"]
    assert cli("simulate", CONFIG, *args, "--output", run, data_dir=small_pneumonia) == 0
    rows = _rounds(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    failures = [f for r in rows for f in r["sites_failed"]]
    assert any("dropped out (simulated fault)" in f for f in failures)
    assert any("ActorDiedError" in f for f in failures)  # a worker process was killed mid-round
    assert all(len(r["sites"]) + len([f for f in r["sites_failed"] if "evaluate" not in f]) >= 2 for r in rows)
    assert json.loads((run / "summary.json").read_text())["test"]["auc"] > 0.5

    # a checkpoint corrupted before a resume is an error, never a silent fresh start
    (run / "summary.json").unlink()
    checkpoint = run / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli("simulate", CONFIG, *args, "--output", run, "--resume", data_dir=small_pneumonia) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "corrupt" in err
    assert (run / "metrics.jsonl").read_text() == before and not (run / "summary.json").exists()


@pytest.mark.slow
def test_defence_report_drops_nan_updates_and_writes_its_grid(cli, tmp_path, small_pneumonia):
    out = tmp_path / "defence"
    assert cli("defend", CONFIG, *SITES5, "attack.sites=[1]", "--attacks", "none,nan", "--rules", "fedavg",
               "--output", out, data_dir=small_pneumonia) == 0
    rows = {r["attack"]: r for r in csv.DictReader((out / "defence.csv").open())}
    assert set(rows) == {"none", "nan"} and (out / "defence.png").is_file()
    assert rows["none"]["updates_rejected"] == "0" and rows["nan"]["updates_rejected"] == "2"
    assert float(rows["nan"]["test_auc"]) > 0.6 and rows["nan"]["failed"] == ""
    attacked = _rounds(out / rows["nan"]["run"])
    assert all("non-finite values" in r["updates_rejected"]["site-001"] for r in attacked)
    assert all("site-001" not in r["updates_rejected"] for r in _rounds(out / rows["none"]["run"]))


def test_defence_report_refuses_unknown_attacks_and_rules(cli, capsys):
    assert cli("defend", CONFIG, "--attacks", "none,poison") == 2
    assert "--attacks: 'poison' is not one of" in capsys.readouterr().err
    assert cli("defend", CONFIG, "--rules", "fedavg,krumm") == 2
    assert "--rules: 'krumm' is not one of" in capsys.readouterr().err
    assert cli("defend", CONFIG, "--attacks", "dropout=1.5") == 2
    assert "dropout probability must be in (0, 1)" in capsys.readouterr().err
