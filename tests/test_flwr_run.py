"""`flwr run .` from the repository root: the Flower-native entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from deployment_helpers import free_port
from flwr.cli.build import build_fab_from_disk


def test_the_fab_carries_the_components_and_configs_but_not_a_second_medfed(tmp_path):
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))).namelist()
    assert "flwr_app.py" in names and "configs/pneumonia-fedavg.yaml" in names
    # a copy of medfed's folders in the FAB would be imported instead of the installed package
    shadowing = [n for n in names if n.split("/")[0] in ("medfed", "client", "server", "simulation", "models")]
    assert shadowing == []


def _local_superlinks(flwr_home: Path) -> list[int]:
    """Pids of the local SuperLink that `flwr run` started for this FLWR_HOME (it stays up)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "flower-superlink" in cmdline and str(flwr_home) in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_flwr_run_from_the_repository_root_completes_a_short_run(tmp_path, small_pneumonia):
    home, out = tmp_path / "flwr-home", tmp_path / "run"
    env = dict(os.environ, FLWR_HOME=str(home), MEDFED_DATA_DIR=str(small_pneumonia),
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               FLWR_DISABLE_UPDATE_CHECK="1", FLWR_TELEMETRY_ENABLED="0", OMP_NUM_THREADS="1")
    overrides = "train.rounds=1 train.local_steps=2 evaluation.membership_audit=false logging.progress=false"
    try:
        done = subprocess.run(
            ["flwr", "run", ".", "--stream", "-c", f"overrides='{overrides}' output='{out}'",
             "--federation-config", "num-supernodes=2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    finally:
        for pid in _local_superlinks(home):  # Flower leaves its local SuperLink running: end ours
            os.kill(pid, signal.SIGTERM)
    log = done.stdout + done.stderr
    assert (out / "summary.json").is_file(), log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["sites"] == 2 and summary["rounds"] == 1
    assert 0.0 <= summary["test"]["auc"] <= 1.0
    assert "medfed: finished" in log
    assert sorted(p.name for p in (out / "sites").iterdir()) == ["site-000", "site-001"]
