"""Attacks on a live loopback federation built as docs/deployment.md says, each failing.

``medfed certs``, ``medfed server start`` and two ``medfed site start`` sites run as
separate processes. Then, while medfed's run goes on:

- an outsider holding only ``ca.crt`` uses the stock ``flwr`` CLI against the coordinator's
  address: list runs and nodes, register a key, unregister a site, stop the run, read its
  logs, submit an app. Every call is refused (HTTP 403 from the proxy);
- whoever holds the coordinator's own Control API (a dishonest coordinator) submits a
  substitute app whose ClientApp reads the site's data and key, and medfed's own signed app
  with its run config overridden. Both sites refuse both runs before anything of them runs:
  the substitute's code never runs, what the sites send back is an error and no arrays, and
  each refusal is in the site's audit log with the run's FAB hash.

medfed's own run finishes with both sites in every round.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pneumonia_or_skip
from deployment_helpers import (
    Procs,
    experiment_yaml,
    free_port,
    shards,
    site_yaml,
    substitute_app,
    trial_credentials,
    until,
)
from flwr.cli.build import build_fab_from_disk

from medfed.client.site_daemon.audit_log import read_audit_log
from medfed.wire import APP_REFUSED

pytestmark = pytest.mark.deployment

EVIL_SERVER = """\
import json, time
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    messages = [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                        message_type="train") for node in grid.get_node_ids()]
    replies = grid.send_and_receive(messages, timeout=120)
    record = [{"node": r.metadata.src_node_id, "error": r.error.code if r.has_error() else None,
               "reason": r.error.reason if r.has_error() else None,
               "arrays": 0 if r.has_error() else sum(len(a) for a in r.content.array_records.values())}
              for r in replies]
    Path(context.run_config["record"]).write_text(json.dumps(record))
"""

EVIL_CLIENT = """\
from pathlib import Path
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

@app.train()
def steal(msg: Message, context: Context) -> Message:
    site = Path(context.node_config["site-config"])
    (site.parent / "EVIL_RAN").write_text("the substitute app ran at this site")
    images = np.load(site.parent / "data.npz")["train_images"]
    return Message(RecordDict({"loot": ArrayRecord({"images": Array(images)})}), reply_to=msg)
"""


def _flwr(flwr_home: Path, *args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "flwr"), *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
                          env=env | {"FLWR_HOME": str(flwr_home)})


def _refused(done: subprocess.CompletedProcess) -> bool:
    text = done.stdout + done.stderr
    return "403" in text and '"success": true' not in text


def test_outsiders_and_substitute_apps_fail_against_a_live_federation(tmp_path, cli):
    source = pneumonia_or_skip()
    sites = ["north", "south"]
    creds, keys = trial_credentials(cli, tmp_path, sites)
    coordinator = shards(source, sites, tmp_path)
    port = free_port()
    for name in sites:
        site_yaml(tmp_path / name, creds, name, address=f"127.0.0.1:{port}")
    config = experiment_yaml(tmp_path / "experiment.yaml", "attacked", coordinator, rounds=3)
    # three runs share two cores while the attacks go on: give each round time
    config.write_text(config.read_text().replace("timeout: 60", "timeout: 150"))
    state, out = tmp_path / "coordinator-state", tmp_path / "run"
    procs = Procs(tmp_path)
    try:
        procs.start("server", "server", "start", config, "--certs", creds, "--sites-keys", keys, "--port", port,
                    "--state", state, "--output", out, "--wait-for-sites", 120)
        state_file = state / "state.json"
        until(lambda: state_file.is_file() and json.loads(state_file.read_text()).get("run_id"), 90,
              "the run's submission", procs)
        coordinator_state = json.loads(state_file.read_text())
        run_id, north_node = int(coordinator_state["run_id"]), coordinator_state["sites"]["north"]

        # -- an outsider with the federation's ca.crt, the stock flwr CLI and the coordinator's address
        outsider = tmp_path / "outsider"
        outsider.mkdir()
        (outsider / "config.toml").write_text(f'[superlink]\ndefault = "coord"\n\n[superlink.coord]\n'
                                              f'address = "127.0.0.1:{port}"\nroot-certificates = "{creds / "ca.crt"}"\n')
        evil = substitute_app(tmp_path / "evil-app", {"evil/__init__.py": "", "evil/server.py": EVIL_SERVER,
                                                      "evil/client.py": EVIL_CLIENT},
                              config=f'record = "{tmp_path / "evil-record.json"}"')
        attempts = {
            "list runs": ("ls", "coord", "--format", "json"),
            "list nodes": ("supernode", "ls", "coord", "--format", "json"),
            "register a key": ("supernode", "register", creds / "rogue.pub", "coord", "--format", "json"),
            "unregister a site": ("supernode", "unregister", north_node, "coord", "--format", "json"),
            "stop the run": ("stop", run_id, "coord", "--format", "json"),
            "read the logs": ("log", run_id, "coord", "--show"),
            "submit an app": ("run", evil, "coord", "--format", "json"),
        }
        for what, args in attempts.items():
            done = _flwr(outsider, *args, env=procs.env)
            assert _refused(done), f"{what}: {done.stdout[-800:]} {done.stderr[-800:]}"

        # -- the coordinator's own Control API submits a substitute app, and medfed's app overridden
        flwr_home = Path(coordinator_state["flwr_home"])
        done = _flwr(flwr_home, "run", evil, "medfed", "--format", "json", env=procs.env)
        assert '"success": true' in done.stdout, done.stdout + done.stderr
        evil_run = int(json.loads(done.stdout[done.stdout.find("{"):])["run-id"])
        elsewhere = tmp_path / "elsewhere"
        done = _flwr(flwr_home, "run", state / "app", "medfed", "--run-config", f'output-dir="{elsewhere}"',
                     "--format", "json", env=procs.env)
        assert '"success": true' in done.stdout, done.stdout + done.stderr
        override_run = int(json.loads(done.stdout[done.stdout.find("{"):])["run-id"])

        for name in sites:
            procs.start(name, "site", "start", tmp_path / name / "SITE.yaml", "--runtime-port", free_port())

        record = tmp_path / "evil-record.json"
        until(record.is_file, 240, "the substitute ServerApp's record of the sites' replies", procs)
        replies = json.loads(record.read_text())
        assert len(replies) == 2
        assert all(r["error"] == APP_REFUSED and r["arrays"] == 0 for r in replies), replies
        assert all("holds files medfed's app never has" in r["reason"] for r in replies), replies
        assert procs.wait("server", 240) == 0, procs.output("server")[-3000:]
        until(lambda: (elsewhere / "failed.json").is_file(), 120, "the overridden run to fail", procs)
        assert "overrides the app's config" in (elsewhere / "failed.json").read_text()

        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [len(r["sites"]) for r in rows] == [2, 2, 2]
        assert json.loads((out / "summary.json").read_text())["intruders"] == []

        evil_hash = hashlib.sha256(build_fab_from_disk(evil)).hexdigest()
        for name in sites:
            assert not (tmp_path / name / "EVIL_RAN").exists()
            audit = read_audit_log(tmp_path / name / "state" / "audit.log")
            verdicts = {(e["run_id"], e["status"]) for e in audit if e["kind"] == "app"}
            assert {(run_id, "accepted"), (evil_run, "refused"), (override_run, "refused")} <= verdicts
            assert {e["fab_sha256"] for e in audit if e["kind"] == "app" and e["run_id"] == evil_run} == {evil_hash}
            # nothing of the refused runs left the site but the error replies
            assert not [e for e in audit if e["run_id"] in (evil_run, override_run) and e["kind"] != "app"]
            assert cli("site", "audit", "verify", tmp_path / name / "SITE.yaml") == 0
        assert not list(tmp_path.rglob("EVIL_RAN"))

        for name in sites:
            procs.popen[name].send_signal(signal.SIGTERM)
            assert procs.wait(name, 30) == 0
    finally:
        procs.end_all()
    assert procs.left_running() == []
    assert not (state / "state.json").exists()
    assert os.path.exists(out / "summary.json")
