"""A sample-level DP run killed at any point of a round and resumed ends exactly as the
uninterrupted run: the same test metrics, the same epsilon, the same budget on each site.

Each kill comes from the ``MEDFED_KILL_AT`` test hook (`medfed.faults`): the run's whole
process group, Ray included, gets SIGKILL at the named point of round 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE_RAY_WORKER, REPO, write_small_pneumonia

from medfed.faults import KILL_AT

CONFIG = REPO / "configs" / "pneumonia-dp-eps8.yaml"
ARGS = ["train.rounds=2", "partition.num_sites=2", "partition.scheme=iid", "logging.progress=false",
        "train.batch_size=16", "train.local_epochs=1", "evaluation.membership_audit=false", ONE_RAY_WORKER]


def _medfed(data: Path, out: Path, *extra: str, kill_at: str | None = None) -> int:
    """``medfed simulate`` in a process group of its own; its exit code (-9: killed)."""
    env = {**os.environ, "MEDFED_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}
    env.pop(KILL_AT, None)
    if kill_at:
        env[KILL_AT] = kill_at
    with (out.parent / f"{out.name}.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "medfed.cli", "simulate", str(CONFIG), *ARGS,
                                 "--output", str(out), *extra], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        return proc.wait(600)
    finally:
        _end_session(proc.pid)


def _end_session(session: int) -> None:
    """Whatever the run left in its session (nothing, if the kill reached every process)."""
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _budgets(run: Path) -> dict[str, str]:
    """Each site's accountant file: what it has spent, as it keeps it."""
    return {p.parent.parent.name: p.read_text() for p in sorted(run.glob("sites/*/state/privacy_accountant.json"))}


def _damage_metrics(run: Path, how: str | None) -> None:
    metrics = run / "metrics.jsonl"
    if how == "deleted":
        metrics.unlink()
    elif how == "corrupt-line":
        metrics.write_text('{"round": 1, "test": oops}\n' + metrics.read_text().split("\n", 1)[1])


@pytest.mark.slow
def test_a_dp_run_killed_at_each_point_of_a_round_resumes_to_the_uninterrupted_result(tmp_path):
    """One run killed three times in round 2, resumed after each kill: first while the sites
    train (a site wrote its budget and died before storing its reply: redone from the
    state it began with), then with every reply in but nothing saved, then with the
    checkpoint half in place (sites answer from their stored replies). metrics.jsonl is
    deleted or damaged before two of the resumes. Then the uninterrupted run, to compare."""
    data = write_small_pneumonia(tmp_path / "data")
    run = tmp_path / "killed"
    kills = [("site-trained", None), ("round-replies", "deleted"), ("checkpoint-write", "corrupt-line")]
    for number, (point, damage) in enumerate(kills):
        assert _medfed(data, run, *(["--resume"] if number else []), kill_at=f"{point}:2") == -signal.SIGKILL, point
        assert (run / "checkpoints" / "last.pt").is_file() and not (run / "summary.json").exists()
        if point == "site-trained":  # a round begun at a site and never answered: noted
            assert list(run.glob("sites/*/state/round_cache/pending.json"))
        _damage_metrics(run, damage)
    assert _medfed(data, run, "--resume") == 0, (tmp_path / "killed.log").read_text()[-3000:]

    whole = tmp_path / "whole"
    assert _medfed(data, whole) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    resumed, expected = _summary(run), _summary(whole)
    assert resumed["stopped_early"] is None
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert resumed["test"] == pytest.approx(expected["test"], abs=1e-9)
    assert resumed["privacy"]["epsilon"] == expected["privacy"]["epsilon"]
    assert resumed["privacy"]["sites"] == expected["privacy"]["sites"]
    assert _budgets(run) == _budgets(whole)  # no site paid for round 2 twice
