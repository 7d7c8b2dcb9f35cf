"""Only the registered sites take part in a deployed run: another node the SuperLink knows
of is sent nothing, its replies are dropped and recorded, and `medfed server start`
unregisters it. Everything runs in-process, with a fake Grid."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from deployment_helpers import synthetic_images
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from rich.console import Console

from medfed.config import load_config, to_yaml
from medfed.federation import flwr_cli, processes
from medfed.server.site_names import NOT_REGISTERED, NamedSites, NotRegistered

SOUTH, NORTH, ROGUE = 101, 102, 666
VALUES = {SOUTH: 1.0, NORTH: 3.0, ROGUE: 1e6}  # every float weight a site sends back
ROUND = ["model.name=cnn", "train.local_steps=1", "train.batch_size=8", "train.device=cpu", "train.amp=false",
         "train.rounds=1", "logging.progress=false"]


def _reply(message: Message, node: int) -> Message:
    """``node``'s answer to ``message``: every float weight set to ``VALUES[node]``."""
    if message.metadata.message_type == MessageType.TRAIN:
        arrays = next(iter(message.content.array_records.values()))
        sent = {k: Array(np.full(a.shape, VALUES[node], a.numpy().dtype) if a.numpy().dtype.kind == "f" else a.numpy())
                for k, a in arrays.items()}
        content = RecordDict({"arrays": ArrayRecord(sent),
                              "metrics": MetricRecord({"num-examples": 10, "train_loss": 0.5})})
    else:
        content = RecordDict({"metrics": MetricRecord({"num-examples": 10, "val_loss": 0.5})})
    asked = message.metadata
    # src_node_id is the given node's: a spoofed sender, when the message went elsewhere
    return Message(content, metadata=Metadata(
        run_id=asked.run_id, message_id=f"reply-{node}-{time.monotonic_ns()}", src_node_id=node, dst_node_id=1,
        reply_to_message_id=asked.message_id, group_id=asked.group_id, created_at=time.time(), ttl=asked.ttl,
        message_type=asked.message_type, src_task_id=2, dst_task_id=1))


class RogueGrid:
    """A SuperLink that knows two registered sites and a rogue node; the rogue answers
    every round, addressed or not, with weights that would swamp the average."""

    def __init__(self) -> None:
        self.addressed: list[int] = []

    def get_node_ids(self):
        return [SOUTH, NORTH, ROGUE]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.addressed += [m.metadata.dst_node_id for m in messages]
        replies = [_reply(m, m.metadata.dst_node_id) for m in messages]
        if ROGUE not in self.addressed:
            replies.append(_reply(messages[0], ROGUE))
        return replies

    def push_messages(self, messages):
        self.addressed += [m.metadata.dst_node_id for m in messages]
        return [m.metadata.message_id for m in messages]

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def set_run(self, run):
        pass

    run = None


@pytest.fixture
def identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 11), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


def _run(tmp_path: Path, site_nodes: str, *overrides: str) -> tuple[dict, list[dict], dict, RogueGrid]:
    """A deployed run on a RogueGrid: its summary, metrics rows, final weights and the grid."""
    from medfed.federation.flower_app import CONFIG_KEY, OUTPUT_KEY, SITES_KEY, WAIT_KEY
    from medfed.server.deployed import run_deployed

    (ti, tl), (vi, vl), (si, sl) = synthetic_images(32, 5), synthetic_images(8, 6), synthetic_images(24, 7)
    data = tmp_path / "coordinator"
    data.mkdir()
    np.savez(data / "pneumoniamnist.npz", train_images=ti, train_labels=tl, val_images=vi, val_labels=vl,
             test_images=si, test_labels=sl)
    cfg = load_config(None, [*ROUND, f"data.root={data}", *overrides])
    grid = RogueGrid()
    out = tmp_path / "run"
    summary = run_deployed(grid, {CONFIG_KEY: to_yaml(cfg), OUTPUT_KEY: str(out), SITES_KEY: site_nodes,
                                  WAIT_KEY: 0.0})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(out / "model.pt", weights_only=False)["weights"]
    return summary, rows, weights, grid


def _floats(weights: dict) -> list[torch.Tensor]:
    """The network's float32 weights (averaging turns its integer counters into float64)."""
    return [w for w in weights.values() if w.dtype == torch.float32]


def test_a_rogue_node_is_sent_nothing_and_its_reply_is_never_averaged(tmp_path, identity, caplog):
    summary, rows, weights, grid = _run(tmp_path, f"{SOUTH}=south,{NORTH}=north")
    assert ROGUE not in grid.addressed and set(grid.addressed) == {SOUTH, NORTH}
    assert all(torch.all(w == 2.0) for w in _floats(weights))  # (1 + 3) / 2: the rogue's 1e6 is not in it
    assert set(rows[0]["sites"]) == {"site-000", "site-001"} and not rows[0]["sites_failed"]
    assert rows[0]["intruders"] == [
        {"node": ROGUE, "reason": f"{NOT_REGISTERED}: connected, sent no work"},
        {"node": ROGUE, "reason": f"{NOT_REGISTERED}: its reply was dropped"},
        {"node": ROGUE, "reason": f"{NOT_REGISTERED}: its reply was dropped"},
    ]
    assert summary["intruders"] == [{"round": 1, **event} for event in rows[0]["intruders"]]
    assert summary["sites"] == {"site-000": "north", "site-001": "south"}  # no "unregistered node"
    assert f"node {ROGUE} is {NOT_REGISTERED}" in caplog.text


def test_without_a_site_table_every_node_takes_part_as_before(tmp_path, identity):
    summary, rows, weights, grid = _run(tmp_path, "", "partition.num_sites=3")
    assert sorted(set(grid.addressed)) == [SOUTH, NORTH, ROGUE]
    mean = (1.0 + 3.0 + 1e6) / 3
    assert all(torch.allclose(w, torch.full_like(w, mean)) for w in _floats(weights))
    assert len(rows[0]["sites"]) == 3 and "intruders" not in rows[0] and summary["intruders"] == []
    assert f"unregistered node {ROGUE}" in summary["sites"].values()


def test_a_message_for_an_unregistered_node_is_refused(identity):
    grid = RogueGrid()
    sites = NamedSites(grid, {SOUTH: "south", NORTH: "north"})
    assert list(sites.get_node_ids()) == [SOUTH, NORTH]
    assert list(sites.get_node_ids()) == [SOUTH, NORTH]
    assert sites.take_intruders() == [{"node": ROGUE, "reason": f"{NOT_REGISTERED}: connected, sent no work"}]
    assert sites.take_intruders() == []  # listed once, however often the nodes are asked for
    to_rogue = Message(RecordDict(), dst_node_id=ROGUE, message_type=MessageType.TRAIN)
    for send in (lambda: sites.send_and_receive([to_rogue]), lambda: sites.push_messages([to_rogue]),
                 lambda: sites.create_message(RecordDict(), MessageType.TRAIN, ROGUE, "1")):
        with pytest.raises(NotRegistered, match=f"node {ROGUE}: {NOT_REGISTERED}"):
            send()
    assert grid.addressed == []
    assert sites.create_message(RecordDict(), MessageType.TRAIN, NORTH, "1").metadata.dst_node_id == NORTH


# ---- the coordinator's commands ---------------------------------------------------------


def test_server_status_marks_a_node_that_is_not_a_registered_site():
    from medfed.server.coordinator.status import INTRUDER, _sites

    nodes = [{"node-id": str(NORTH), "status": "online", "online-at": "t"},
             {"node-id": str(ROGUE), "status": "online", "online-at": "t"}]
    rows = {r["node"]: r for r in _sites({"sites": {"north": NORTH, "south": SOUTH}}, nodes)}
    assert rows[ROGUE]["status"] == INTRUDER == "INTRUDER (not registered)"
    assert rows[NORTH]["status"] == "online" and rows[SOUTH]["status"] == "never connected"
    insecure = _sites({"sites": {}, "insecure": True}, nodes)  # no node is registered in a trial
    assert {r["site"] for r in insecure} == {"(unregistered)"} and {r["status"] for r in insecure} == {"online"}


def test_unregister_node_calls_flwr_supernode_unregister(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(flwr_cli, "flwr", lambda home, *args: calls.append((home, args)) or {"success": True})
    flwr_cli.unregister_node(tmp_path, ROGUE)
    assert calls == [(tmp_path, ("supernode", "unregister", str(ROGUE), "medfed"))]


@pytest.mark.parametrize("insecure", [False, True])
def test_server_start_unregisters_intruders_while_it_follows_the_run(monkeypatch, tmp_path, insecure):
    from medfed.server.coordinator import start as coordinator

    out = tmp_path / "run"
    out.mkdir()
    nodes = [{"node-id": str(NORTH), "status": "online"}, {"node-id": str(ROGUE), "status": "online"},
             {"node-id": "7", "status": "unregistered"}]  # unregistered at an earlier status: left alone
    unregistered = []

    def unregister(home, node):
        unregistered.append(node)
        (out / "summary.json").write_text("{}")  # and the run ends

    monkeypatch.setattr(coordinator, "STATUS_EVERY", -1.0)
    monkeypatch.setattr(flwr_cli, "list_nodes", lambda home: nodes)
    monkeypatch.setattr(flwr_cli, "run_info", lambda home, run: {})
    monkeypatch.setattr(flwr_cli, "unregister_node", unregister)
    if insecure:  # nothing to unregister: the run ends on its own
        monkeypatch.setattr(flwr_cli, "run_info", lambda home, run: (out / "summary.json").write_text("{}") and {})
    state = {"run_id": 7, "rounds": 1, "flwr_home": str(tmp_path), "log": "superlink.log", "insecure": insecure,
             "sites": {} if insecure else {"north": NORTH, "south": SOUTH}}
    console = Console(file=io.StringIO(), width=200)
    assert coordinator.follow_run(state, out, [processes.track(os.getpid(), "test")], console, poll=0) == 0
    assert unregistered == ([] if insecure else [ROGUE])
    said = console.file.getvalue()
    assert (f"node {ROGUE} (online) is not a registered site: unregistering it" in said) != insecure
