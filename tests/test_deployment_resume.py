"""A coordinator killed mid-run and started again with --resume finishes the same run,
while the sites' daemons keep running and rejoin the new SuperLink. Under sample-level
DP the round that was under way costs the sites nothing more: they answer it again with
the reply they had sent, and end with the epsilon of an uninterrupted run."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import pneumonia_or_skip
from deployment_helpers import Procs, experiment_yaml, free_port, shards, site_yaml, until

from medfed.client.privacy import SiteAccountant
from medfed.client.site_daemon.audit_log import read_audit_log
from medfed.faults import KILL_AT
from medfed.federation import processes

# DP-SGD at every site, one step per round at a fixed noise: epsilon is known in advance
PRIVACY = "privacy: {mechanism: sample, target_epsilon: null, noise_multiplier: 1.0, delta: 1.0e-3}\n"


def _train_entries(audit_log, direction: str, rnd: int) -> list[dict]:
    return [e for e in read_audit_log(audit_log)
            if e["direction"] == direction and e["kind"] == "train" and e["round"] == rnd]


def _uninterrupted_epsilon(folder, site: dict, rounds: int) -> float:
    """What a site accounts for ``rounds`` rounds of one step at its noise, sampling rate
    and delta: the epsilon of a run that was never killed."""
    accountant = SiteAccountant(folder, "rdp")
    accountant.history = [(site["noise-multiplier"], site["sample-rate"], 1)] * rounds
    return accountant.epsilon(site["delta"])


@pytest.mark.deployment
def test_a_killed_coordinator_resumes_its_run_and_the_sites_rejoin(tmp_path, cli):
    source = pneumonia_or_skip()
    sites = ["north", "south"]
    creds = tmp_path / "creds"
    assert cli("certs", "--out", creds, "--coordinator-host", "localhost", "--trial-site-keys", ",".join(sites)) == 0
    coordinator = shards(source, sites, tmp_path)
    port = free_port()
    for name in sites:
        site_yaml(tmp_path / name, creds, name, address=f"127.0.0.1:{port}")
    config = experiment_yaml(tmp_path / "experiment.yaml", "resume", coordinator, rounds=3)
    config.write_text(config.read_text() + PRIVACY)
    audits = {name: tmp_path / name / "state" / "audit.log" for name in sites}
    state, out = tmp_path / "coordinator-state", tmp_path / "run"
    metrics, state_file = out / "metrics.jsonl", state / "state.json"

    def rounds() -> list[int]:
        return [json.loads(line)["round"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []

    def start_server(*extra) -> None:  # both starts log to server.log
        procs.start("server", "server", "start", config, "--certs", creds, "--port", port, "--state", state,
                    "--output", out, "--wait-for-sites", 120, *extra)

    procs = Procs(tmp_path)
    try:
        procs.env[KILL_AT] = "round-replies:2"  # the ServerApp dies with round 2's replies in hand
        start_server()
        del procs.env[KILL_AT]
        until(lambda: state_file.is_file() and len(json.loads(state_file.read_text())["sites"]) == 2, 90,
              "the sites' registration", procs)
        first = processes.Tracked(**json.loads(state_file.read_text())["processes"]["superlink"])
        for name in sites:
            procs.start(name, "site", "start", tmp_path / name / "SITE.yaml", "--runtime-port", free_port())
        # round 1 is checkpointed and both sites have sent (and stored) their round-2 update
        until(lambda: rounds() == [1] and (out / "checkpoints" / "last.pt").is_file()
              and all(audits[name].is_file() and _train_entries(audits[name], "out", 2) for name in sites),
              240, "round 2's updates", procs)

        if procs.popen["server"].poll() is None:
            procs.kill("server")  # the coordinator's machine dies: SIGKILL to medfed, the SuperLink and its helpers
        assert not processes.alive(first) and rounds() == [1]
        assert not (out / "summary.json").exists()
        round_1 = metrics.read_text().splitlines()[0]

        start_server("--resume")  # same port, state and run folder; the sites were not touched
        assert procs.wait("server", 400) == 0, procs.output("server")[-4000:]

        assert rounds() == [1, 2, 3] and metrics.read_text().splitlines()[0] == round_1
        trained = [e["round"] for e in read_audit_log(tmp_path / "north" / "state" / "audit.log")
                   if e["direction"] == "in" and e["kind"] == "train"]
        assert trained.count(1) == 1 and {2, 3} <= set(trained)  # round 1 came from the checkpoint
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds_done"] == 3 and "auc" in summary["test"]
        assert summary["sites"] == {"site-000": "north", "site-001": "south"}
        for name in sites:  # round 2 was sent twice and answered twice with the same update
            replies = _train_entries(audits[name], "out", 2)
            assert len(_train_entries(audits[name], "in", 2)) == 2 and len(replies) == 2
            assert replies[0]["weights_sha256"] == replies[1]["weights_sha256"]
        for site in summary["privacy"]["sites"].values():  # three rounds spent, not four
            assert site["total-steps"] == 3
            assert site["epsilon"] == pytest.approx(_uninterrupted_epsilon(tmp_path, site, 3), rel=1e-12)
        for name in sites:
            # the same daemon: its SuperNode, refused by the new SuperLink, was started again
            assert procs.popen[name].poll() is None, f"{name} stopped:\n{procs.output(name)[-3000:]}"
            assert "starting it again" in procs.output(name)
            procs.popen[name].send_signal(signal.SIGTERM)
            assert procs.wait(name, 30) == 0
    finally:
        procs.end_all()
    assert procs.left_running() == []
    assert not state_file.exists()
