"""End to end through the CLI on a slice of real PneumoniaMNIST."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AUDIT, FAST, REPO

CONFIG = REPO / "configs" / "pneumonia-fedavg.yaml"
RUN_ARGS = FAST + ["train.rounds=3", "train.batch_size=16"]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _rounds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_federated_run_writes_every_output(cli, tmp_path, small_pneumonia):
    run = tmp_path / "run"
    assert cli("simulate", CONFIG, *RUN_ARGS, "strategy.name=fedprox", "--output", run, data_dir=small_pneumonia) == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "partition.csv", "partition.png",
                 "learning_curves.png", "model.pt"):
        assert (run / name).is_file(), name
    rows = _rounds(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert sorted(rows[-1]["sites"]) == ["site-000", "site-001", "site-002"]
    assert all(r["sites"]["site-000"]["num-examples"] > 0 for r in rows)
    summary = _summary(run)
    assert set(summary["test"]) >= {"auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"}
    assert summary["test"] == rows[-1]["test"]
    assert summary["test"]["auc"] > 0.6  # learned something from 240 real X-rays
    assert "strategy:\n  name: fedprox" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("mode", ["pooled", "local"])
def test_baselines_use_the_same_sites_and_test_set(cli, tmp_path, small_pneumonia, mode):
    run = tmp_path / mode
    assert cli("simulate", CONFIG, *RUN_ARGS, f"mode={mode}", "--output", run, data_dir=small_pneumonia) == 0
    summary = _summary(run)
    assert summary["mode"] == mode and 0 <= summary["test"]["auc"] <= 1
    if mode == "local":
        assert sorted(summary["per_site"]) == ["site-000", "site-001", "site-002"]
        assert all("test_auc" in m for m in summary["per_site"].values())
    assert len(_rounds(run)) == 3


def _no_process_left(session: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[4]) == session:
                return False
    return True


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(cli, tmp_path, small_pneumonia):
    args = ["simulate", str(CONFIG), *RUN_ARGS]
    whole = tmp_path / "whole"
    assert cli(*args, "--output", whole, data_dir=small_pneumonia) == 0

    stopped = tmp_path / "stopped"
    env = {**os.environ, "MEDFED_DATA_DIR": str(small_pneumonia)}
    proc = subprocess.Popen([sys.executable, "-m", "medfed.cli", *args, "--output", str(stopped)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (stopped / "checkpoints" / "last.pt").is_file():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and every Ray process it started
    proc.wait()
    for _ in range(50):
        if _no_process_left(proc.pid):
            break
        time.sleep(0.1)
    assert _no_process_left(proc.pid)
    assert not (stopped / "summary.json").exists()
    assert len(_rounds(stopped)) < 3

    assert cli(*args, "--output", stopped, "--resume", data_dir=small_pneumonia) == 0
    assert [r["round"] for r in _rounds(stopped)] == [1, 2, 3]
    for key, value in _summary(whole)["test"].items():
        assert _summary(stopped)["test"][key] == pytest.approx(value, abs=1e-4), key


def test_resume_of_a_finished_run_is_refused(cli, capsys, tmp_path, small_pneumonia):
    run = tmp_path / "run"
    assert cli("simulate", CONFIG, *RUN_ARGS, "mode=pooled", "--output", run, data_dir=small_pneumonia) == 0
    assert cli("simulate", CONFIG, *RUN_ARGS, "mode=pooled", "--output", run, "--resume",
               data_dir=small_pneumonia) == 2
    assert "already finished" in capsys.readouterr().err


def test_wandb_logging_runs_offline(cli, tmp_path, small_pneumonia, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert cli("simulate", CONFIG, *RUN_ARGS, "mode=pooled", "train.rounds=1", "logging.wandb=true",
               "--output", run, data_dir=small_pneumonia) == 0
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].glob("*.wandb"))


@pytest.mark.slow
def test_fedbn_keeps_normalisation_layers_at_each_site(cli, tmp_path, small_pneumonia):
    import torch

    run = tmp_path / "run"
    assert cli("simulate", CONFIG, *RUN_ARGS, "train.rounds=2", "strategy.name=fedbn", "--output", run,
               data_dir=small_pneumonia) == 0
    saved = [torch.load(run / "sites" / f"site-00{i}" / "state" / "local_norm.pt") for i in range(3)]
    assert all(any("running_mean" in k for k in s) for s in saved)
    key = next(k for k in saved[0] if k.endswith("running_mean"))
    assert not torch.equal(saved[0][key], saved[1][key])  # each site's own statistics


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_keeps_the_checkpoint_and_leaves_no_process(cli, tmp_path, small_pneumonia):
    """What Slurm, CI and ``timeout`` send: exit 143, a resume hint, no Ray process left."""
    args = ["simulate", str(CONFIG), *RUN_ARGS]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "MEDFED_DATA_DIR": str(small_pneumonia)}
    proc = subprocess.Popen([sys.executable, "-m", "medfed.cli", *args, "--output", str(stopped)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (stopped / "checkpoints" / "last.pt").is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the run alone, as a scheduler does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    for _ in range(100):
        if _no_process_left(proc.pid):
            break
        time.sleep(0.1)
    assert _no_process_left(proc.pid)
    assert not (stopped / "summary.json").exists()

    assert cli(*args, "--output", stopped, "--resume", data_dir=small_pneumonia) == 0
    assert [r["round"] for r in _rounds(stopped)] == [1, 2, 3]


@pytest.mark.slow
def test_a_single_site_federation_finishes(cli, tmp_path, small_pneumonia):
    """Every minimum node count is capped at the number of sites: one site does not wait for two."""
    out = tmp_path / "one"
    assert cli("simulate", str(CONFIG), *FAST, AUDIT, "partition.num_sites=1", "train.rounds=1", "--output", out,
               data_dir=small_pneumonia) == 0
    assert [r["round"] for r in _rounds(out)] == [1]
    summary = _summary(out)
    assert summary["privacy"]["membership_inference"]["seconds"] > 0
    assert f"root: {small_pneumonia.resolve()}" in (out / "config.yaml").read_text()  # where the data was found
