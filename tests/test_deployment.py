"""A deployed federation: the site's controls, the deployed apps, and a real SuperLink with
three SuperNodes over TLS with node authentication on this machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pneumonia_or_skip
from deployment_helpers import (
    Procs,
    experiment_yaml,
    free_port,
    shards,
    site_yaml,
    synthetic_images,
    trial_credentials,
    until,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from medfed.client.site_daemon.audit_log import FIELDS, read_audit_log
from medfed.client.site_daemon.message_checks import HISTOGRAM_BINS, ReplyWithheld, check_reply, model_layout
from medfed.client.site_daemon.site_config import load_site_config
from medfed.client.site_daemon.site_control import SiteControl
from medfed.config import load_config
from medfed.errors import MedfedError
from medfed.federation import processes
from medfed.federation.credentials import create_credentials
from medfed.server.plan import initial_weights, model_spec, round_config
from medfed.wire import BUDGET_EXHAUSTED, MALFORMED_MESSAGE, POLICY_REFUSED, REPLY_WITHHELD, SITE_FAILED, weights_digest

ROUND = ["model.name=cnn", "train.local_steps=1", "train.batch_size=8", "train.device=cpu", "train.amp=false",
         "train.rounds=2", "logging.progress=false"]


# ---- helpers -------------------------------------------------------------------------------


@pytest.fixture
def creds(tmp_path) -> Path:
    out = tmp_path / "creds"
    create_credentials(out, "localhost", [], trial_sites=["north", "south", "east", "rogue"])
    return out


@pytest.fixture
def site(tmp_path, creds) -> Path:
    return site_yaml(tmp_path / "north", creds)


def _round(*overrides: str, rnd: int = 1):
    """A round's config and weights as medfed's ServerApp sends them."""
    cfg = load_config(None, [*ROUND, *overrides])
    segmentation = cfg.task == "segmentation"
    spec = model_spec(cfg, 2, "segmentation" if segmentation else "binary", 1, 0 if segmentation else 28)
    return round_config(cfg, spec, rnd), ArrayRecord(initial_weights(cfg, spec)), spec


def _message(config: dict, arrays: ArrayRecord, kind: str = MessageType.TRAIN, records=None) -> Message:
    metadata = Metadata(run_id=11, message_id=f"m-{kind}-{time.monotonic_ns()}", src_node_id=1, dst_node_id=2,
                        reply_to_message_id="", group_id=str(config.get("server-round", 1)),
                        created_at=time.time(), ttl=3600, message_type=kind, src_task_id=1, dst_task_id=2)
    content = records if records is not None else RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    return Message(content, metadata=metadata)


def _context(site_file: Path) -> Context:
    return Context(run_id=11, node_id=2, node_config={"site-config": str(site_file)}, state=RecordDict(),
                   run_config={})


def _must_not_run(msg, ctxt):
    raise AssertionError("the ClientApp ran a message the site should have refused")


def _control(site_file: Path) -> SiteControl:
    return SiteControl(load_site_config(site_file))


# ---- policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, words", [
    (["model.name=resnet18"], ["resnet18", "policy.models"]),
    (["task=segmentation", "model.name=unet", "partition.scheme=iid"], ["segmentation", "policy.tasks"]),
])
def test_policy_refuses_a_forbidden_model_or_task_before_building_it(site, overrides, words):
    config, arrays, _ = _round(*overrides)
    reply = _control(site)(_message(config, arrays), _context(site), _must_not_run)
    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert all(w in reply.error.reason for w in words), reply.error.reason
    log = read_audit_log(Path(site.parent / "state" / "audit.log"))
    assert [(e["direction"], e["status"]) for e in log] == [("in", "refused"), ("out", "refused")]
    assert all(w in log[0]["reason"] for w in words)


@pytest.mark.parametrize("policy, extra, overrides, words", [
    ("", "privacy: {max_epsilon: 2.0}\n", ["privacy.mechanism=sample", "privacy.target_epsilon=8"],
     ["epsilon 8", "privacy.max_epsilon=2"]),
    ("", "privacy: {max_epsilon: 2.0}\n", [], ["'none'", "privacy.max_epsilon=2"]),
    ("  require_dp: true\n", "", ["privacy.mechanism=client", "privacy.noise_multiplier=1"], ["'client'", "require_dp"]),
])
def test_policy_refuses_runs_beyond_the_sites_privacy_terms(tmp_path, creds, policy, extra, overrides, words):
    site = site_yaml(tmp_path / "north", creds, policy=policy, extra=extra)
    config, arrays, _ = _round(*overrides)
    reply = _control(site)(_message(config, arrays), _context(site), _must_not_run)
    assert reply.error.code == POLICY_REFUSED
    assert all(w in reply.error.reason for w in words), reply.error.reason


def test_a_round_past_the_budget_kept_on_disk_is_refused(tmp_path, creds):
    """The site's terms allow the round, but the site has already spent most of its
    budget in earlier rounds (its accountant's file in state_dir): this round is refused."""
    from medfed.client.privacy import SiteAccountant
    from medfed.client.site_daemon.deployed import app

    site = site_yaml(tmp_path / "north", creds, extra="privacy: {max_epsilon: 5.0, delta: 0.001}\n")
    spent = SiteAccountant(tmp_path / "north" / "state", "rdp")
    spent.save([(0.6, 1 / 3, 400)])
    assert spent.epsilon(1e-3) > 5.0
    config, arrays, _ = _round("privacy.mechanism=sample", "privacy.noise_multiplier=1.0", "privacy.delta=0.001")
    reply = app(_message(config, arrays), _context(site))
    assert reply.has_error() and reply.error.code == BUDGET_EXHAUSTED, reply.error
    assert "privacy budget" in reply.error.reason
    log = read_audit_log(tmp_path / "north" / "state" / "audit.log")
    assert [(e["direction"], e["status"]) for e in log] == [("in", "accepted"), ("out", "refused")]


# ---- audit log and what leaves the site ----------------------------------------------------


def test_audit_log_records_each_message_and_replies_carry_only_weights_and_metrics(site):
    from medfed.client.site_daemon.deployed import app

    config, arrays, spec = _round()
    train = app(_message(config, arrays), _context(site))
    evaluate = app(_message(config, arrays, MessageType.EVALUATE), _context(site))
    assert not train.has_error() and not evaluate.has_error()

    (sent,) = train.content.array_records.values()
    assert {k: tuple(a.shape) for k, a in sent.items()} == model_layout(spec)
    assert not train.content.config_records and not evaluate.content.array_records
    for reply in (train, evaluate):
        check_reply(_message(config, arrays, reply.metadata.message_type), reply)
        for name, value in next(iter(reply.content.metric_records.values())).items():
            assert not isinstance(value, list) or len(value) == HISTOGRAM_BINS, name

    log = read_audit_log(site.parent / "state" / "audit.log")
    assert [(e["direction"], e["kind"], e["status"]) for e in log] == [
        ("in", "train", "accepted"), ("out", "train", "sent"),
        ("in", "evaluate", "accepted"), ("out", "evaluate", "sent")]
    for entry in log:
        assert set(entry) == set(FIELDS) and entry["run_id"] == 11 and entry["round"] == 1 and entry["bytes"] > 0
    assert log[0]["weights_sha256"] == weights_digest(arrays)
    assert log[1]["weights_sha256"] == weights_digest(sent) != log[0]["weights_sha256"]
    assert log[1]["bytes"] > 100_000 > log[3]["bytes"]  # weights go out after training only
    assert log[3]["weights_sha256"] is None and "hist-pos" in log[3]["metrics"] and "train_loss" in log[1]["metrics"]
    assert os.stat(site.parent / "state" / "audit.log").st_mode & 0o077 == 0


@pytest.mark.parametrize("leak", ["extra arrays", "per-sample list", "undeclared metric", "config record",
                                  "pixels as validation metrics", "another task's metric", "pixels as a histogram",
                                  "negative counts", "more counts than images"])
def test_a_reply_with_more_than_weights_and_declared_metrics_is_withheld(site, leak):
    config, arrays, _ = _round()
    request = _message(config, arrays)
    metrics = MetricRecord({"train_loss": 0.5, "num-examples": 24})
    records = {"arrays": arrays, "metrics": metrics}
    histogram = [0] * HISTOGRAM_BINS
    if leak == "extra arrays":
        records["images"] = ArrayRecord({"x": Array(np.zeros((24, 28, 28), np.float32))})
    elif leak == "per-sample list":
        metrics["val_loss"] = [0.1] * 24
    elif leak == "undeclared metric":
        metrics["patient_ids"] = 3
    elif leak == "pixels as validation metrics":  # one image, a pixel per metric
        for i, value in enumerate(synthetic_images(1, 0)[0].reshape(-1)[:784]):
            metrics[f"val_px{i}"] = float(value)
    elif leak == "another task's metric":
        metrics["val_dice"] = 0.5  # a classification round declares no Dice
    elif leak == "pixels as a histogram":
        metrics["hist-pos"] = [float(v) / 255 for v in synthetic_images(1, 0)[0].reshape(-1)[:HISTOGRAM_BINS]]
    elif leak == "negative counts":
        metrics["hist-pos"] = [-1] + histogram[1:]
    elif leak == "more counts than images":
        metrics["hist-neg"] = [25] + histogram[1:]
    else:
        records["config"] = ConfigRecord({"path": "/data/north"})
    leaky = Message(RecordDict(records), reply_to=request)
    with pytest.raises(ReplyWithheld):
        check_reply(request, leaky)
    reply = _control(site)(request, _context(site), lambda msg, ctxt: leaky)
    assert reply.has_error() and reply.error.code == REPLY_WITHHELD and not reply.has_content()
    assert read_audit_log(site.parent / "state" / "audit.log")[-1]["status"] == "withheld"


def test_every_metric_a_task_produces_is_declared():
    from medfed.client.site_daemon.message_checks import VALIDATION_METRICS
    from medfed.models.classification import metrics as classification
    from medfed.models.segmentation import metrics as segmentation

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 12)
    for kind, labels, scores in (("binary", rng.integers(0, 2, 12), probs[:, :2] / probs[:, :2].sum(1, keepdims=True)),
                                 ("multiclass", rng.integers(0, 3, 12), probs),
                                 ("multilabel", rng.integers(0, 2, (12, 3)), probs)):
        names = {f"val_{k}" for k in classification.metrics(kind, labels, scores)}
        assert names <= VALIDATION_METRICS["classification"], kind
    truth = rng.integers(0, 2, (16, 16))
    per_image = segmentation.metrics(truth, np.stack([1 - truth, truth]).astype(np.float32), None)
    names = {f"val_{k}" for k in segmentation.summarise([per_image])}
    assert names == VALIDATION_METRICS["segmentation"]


def _malformed(config: dict, arrays: ArrayRecord) -> dict[str, Message]:
    without_lr = {k: v for k, v in config.items() if k != "lr"}
    return {
        "no config": _message(config, arrays, records=RecordDict({"arrays": arrays})),
        "lr as text": _message({**config, "lr": "fast"}, arrays),
        "unknown model": _message({**config, "model-name": "gpt"}, arrays),
        "no lr": _message(without_lr, arrays),
        "weights of another model": _message(config, ArrayRecord({"w": Array(np.zeros(3, np.float32))})),
        "text in the weights": _message(config, ArrayRecord({k: Array(np.full(a.shape, "x")) for k, a in arrays.items()})),
        "query message": _message(config, arrays, kind=MessageType.QUERY),
        "negative steps": _message({**config, "local-steps": -1}, arrays),
    }


def test_malformed_messages_are_logged_and_refused_without_crashing(site):
    from medfed.client.site_daemon.deployed import app

    config, arrays, _ = _round()
    for what, msg in _malformed(config, arrays).items():
        reply = app(msg, _context(site))
        assert reply.has_error() and reply.error.code == MALFORMED_MESSAGE, (what, reply)
        assert reply.error.reason.startswith("north: malformed message"), what
    log = read_audit_log(site.parent / "state" / "audit.log")
    assert len(log) == 2 * len(_malformed(config, arrays)) and {e["status"] for e in log} == {"refused"}

    def broken(msg, ctxt):
        raise RuntimeError("CUDA out of memory")

    reply = _control(site)(_message(config, arrays), _context(site), broken)
    assert reply.error.code == SITE_FAILED and "RuntimeError" in reply.error.reason


def test_a_supernode_without_a_site_config_answers_with_an_error(tmp_path):
    from medfed.client.site_daemon.deployed import app

    config, arrays, _ = _round()
    context = Context(run_id=11, node_id=2, node_config={}, state=RecordDict(), run_config={})
    reply = app(_message(config, arrays), context)
    assert reply.has_error() and "medfed site start" in reply.error.reason


# ---- the deployed ServerApp, in-process ----------------------------------------------------


class LoopbackGrid:
    """Flower's Grid with each node answered in-process by the deployed ClientApp."""

    def __init__(self, sites: dict[int, Path]) -> None:
        self.sites = sites

    def get_node_ids(self):
        return list(self.sites)

    def send_and_receive(self, messages, *, timeout=None):
        from medfed.client.site_daemon.deployed import app

        return [app(msg, _context(self.sites[msg.metadata.dst_node_id])) for msg in messages]

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def set_run(self, run):
        pass

    run = None


@pytest.fixture
def coordinator_data(tmp_path) -> Path:
    (ti, tl), (vi, vl), (si, sl) = synthetic_images(32, 5), synthetic_images(8, 6), synthetic_images(24, 7)
    folder = tmp_path / "coordinator"
    folder.mkdir()
    np.savez(folder / "pneumoniamnist.npz", train_images=ti, train_labels=tl, val_images=vi, val_labels=vl,
             test_images=si, test_labels=sl)
    return folder


def _run_config(tmp_path: Path, coordinator: Path, overrides=()) -> dict:
    from medfed.config import to_yaml
    from medfed.federation.flower_app import CONFIG_KEY, OUTPUT_KEY, SITES_KEY, WAIT_KEY

    cfg = load_config(None, [*ROUND, "train.rounds=1", f"data.root={coordinator}", *overrides])
    return {CONFIG_KEY: to_yaml(cfg), OUTPUT_KEY: str(tmp_path / "run"), SITES_KEY: "101=south,102=north",
            WAIT_KEY: 0.0}


def test_deployed_server_app_runs_its_rounds_and_names_sites_by_their_keys(tmp_path, creds, coordinator_data,
                                                                        monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from medfed.server.deployed import run_deployed

    for key, value in (("_run_id", 11), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)
    grid = LoopbackGrid({101: site_yaml(tmp_path / "south", creds, "south"),
                         102: site_yaml(tmp_path / "north", creds, "north")})
    summary = run_deployed(grid, _run_config(tmp_path, coordinator_data))
    assert summary["mode"] == "deployed" and summary["rounds_done"] == 1 and "auc" in summary["test"]
    assert summary["sites"] == {"site-000": "north", "site-001": "south"}
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(row["sites"]) == {"site-000", "site-001"} and not row["sites_failed"]
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "model.pt").is_file()


def test_a_run_every_site_refuses_fails_with_the_sites_reasons(tmp_path, creds, coordinator_data, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from medfed.server.coordinator.start import follow_run
    from medfed.server.deployed import FAILED_FILE, run_deployed
    from medfed.server.rounds import RoundFailed

    for key, value in (("_run_id", 11), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)
    grid = LoopbackGrid({101: site_yaml(tmp_path / "south", creds, "south"),
                         102: site_yaml(tmp_path / "north", creds, "north")})
    with pytest.raises(RoundFailed, match="refused by the site's policy: model 'resnet18'"):
        run_deployed(grid, _run_config(tmp_path, coordinator_data, ["model.name=resnet18"]))
    assert "north: refused" in json.loads((tmp_path / "run" / FAILED_FILE).read_text())["error"]

    me = processes.track(os.getpid(), "test")
    state = {"run_id": 7, "rounds": 1, "flwr_home": str(tmp_path), "log": "superlink.log"}
    from rich.console import Console

    with pytest.raises(MedfedError, match="run 7 failed: round 1: only 0 of 2 sites.*policy.models"):
        follow_run(state, tmp_path / "run", [me], Console(stderr=True))


def test_the_flower_app_is_valid_and_carries_the_experiment_intact(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    from medfed.config import to_yaml
    from medfed.federation.flower_app import write_app
    from medfed.server.deployed import experiment_from

    cfg = load_config(None, ROUND)
    cfg.name = 'quotes "and" \\backslashes\\ and ünïcode\x7f'
    path = write_app(tmp_path / "app", cfg.name, to_yaml(cfg), tmp_path / "out", "1=a,2=b", 30.0, False)
    config, _ = load_and_validate(path)
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "medfed.server.deployed:app", "clientapp": "medfed.client.site_daemon.deployed:app"}
    assert to_yaml(experiment_from(config["tool"]["flwr"]["app"]["config"])) == to_yaml(cfg)


# ---- bad inputs at the command line --------------------------------------------------------


def test_site_start_stops_with_a_clear_message_on_bad_settings(cli, capsys, tmp_path, creds):
    wrong = site_yaml(tmp_path / "a", creds, address="coordinator.invalid:8000")
    assert cli("site", "start", wrong) == 2
    assert "coordinator.address: cannot resolve 'coordinator.invalid'" in capsys.readouterr().err

    missing = site_yaml(tmp_path / "b", creds, data="{format: folder, path: scans}")
    assert cli("site", "start", missing) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "folder not found" in err and str(missing) in err

    other = tmp_path / "other"  # a coordinator whose certificate comes from another federation
    create_credentials(other, "localhost", [], trial_sites=["north"])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _TLS_SERVER, str(other), str(port)])
    try:
        _wait_for_port(port)
        foreign = site_yaml(tmp_path / "c", creds, address=f"127.0.0.1:{port}")
        assert cli("site", "start", foreign) == 2
        assert "cannot trust" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()


_TLS_SERVER = """
import socket, ssl, sys
creds, port = sys.argv[1], int(sys.argv[2])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{creds}/server.pem", f"{creds}/server.key")
with socket.create_server(("127.0.0.1", port)) as s:
    for _ in range(3):
        conn, _ = s.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass
"""


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_server_commands_stop_with_a_clear_message_on_bad_inputs(cli, capsys, tmp_path, coordinator_data):
    config = tmp_path / "exp.yaml"
    config.write_text(f"name: t\ndata: {{root: {coordinator_data}}}\nmodel: {{name: cnn}}\n")
    assert cli("server", "start", config, "--certs", tmp_path / "nothing", "--state", tmp_path / "s") == 2
    assert "ca.crt not found" in capsys.readouterr().err
    assert cli("server", "status", "--state", tmp_path / "s") == 2
    assert "no federation is running" in capsys.readouterr().err
    assert cli("server", "start", config, "mode=pooled", "--state", tmp_path / "s") == 2
    assert "mode: federated" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing started, nothing written


def test_server_start_without_nginx_stops_before_starting_anything(cli, capsys, tmp_path, coordinator_data,
                                                                    monkeypatch):
    from medfed.server.coordinator import fleet_proxy

    create_credentials(tmp_path / "creds", "localhost", [], trial_sites=["north"])
    config = tmp_path / "exp.yaml"
    config.write_text(f"name: t\ndata: {{root: {coordinator_data}}}\nmodel: {{name: cnn}}\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(fleet_proxy, "NGINX_PATHS", ())
    assert cli("server", "start", config, "--certs", tmp_path / "creds", "--state", tmp_path / "s",
               "--port", free_port()) == 2
    assert "nginx not found" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing started, nothing written


# ---- end to end: a SuperLink and three SuperNodes as separate processes ---------------------


@pytest.mark.deployment
def test_deployed_federation_over_tls_with_node_authentication(tmp_path, cli):
    source = pneumonia_or_skip()
    sites = ["north", "south", "east"]
    creds, keys = trial_credentials(cli, tmp_path, sites)
    coordinator = shards(source, [*sites, "rogue"], tmp_path)
    port = free_port()
    for name in [*sites, "rogue"]:
        site_yaml(tmp_path / name, creds, name, address=f"127.0.0.1:{port}")
    config = experiment_yaml(tmp_path / "experiment.yaml", "loopback", coordinator, rounds=2)
    state, out = tmp_path / "coordinator-state", tmp_path / "run"
    procs = Procs(tmp_path)
    try:
        procs.start("server", "server", "start", config, "--certs", creds, "--sites-keys", keys, "--port", port,
                    "--state", state, "--output", out, "--wait-for-sites", 90)
        state_file = state / "state.json"
        until(lambda: state_file.is_file() and len(json.loads(state_file.read_text())["sites"]) == 3, 90,
              "the sites' registration", procs)
        superlink = processes.Tracked(**json.loads(state_file.read_text())["processes"]["superlink"])
        for name in [*sites, "rogue"]:
            procs.start(name, "site", "start", tmp_path / name / "SITE.yaml", "--runtime-port", free_port())

        assert procs.wait("rogue", 90) == 2  # an unregistered key is turned away
        assert "Failed to activate SuperNode" in procs.output("rogue")
        assert "public key" in procs.output("rogue")

        status = subprocess.run([sys.executable, "-m", "medfed.cli", "server", "status", "--state", state],
                                check=False, capture_output=True, text=True, env=procs.env, timeout=60)
        assert status.returncode == 0, status.stderr
        assert all(name in status.stderr for name in sites) and "run " in status.stderr

        until(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip(), 150,
              "round 1", procs)
        procs.kill("east")  # a site dies as round 2 starts
        assert procs.wait("server", 150) == 0, procs.output("server")[-3000:]

        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        # Whether the SuperLink saw east go before or after round 2 sampled its sites (a race the test cannot
        # fix), round 2 completes with the two live sites.
        assert len(rows[0]["sites"]) == 3 and sorted(rows[1]["sites"]) == ["site-001", "site-002"]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["sites"] == {"site-000": "east", "site-001": "north", "site-002": "south"}
        assert "auc" in summary["test"]
        assert not processes.alive(superlink)

        audit = read_audit_log(tmp_path / "north" / "state" / "audit.log")
        messages = [e for e in audit if e["direction"] in ("in", "out")]
        assert {(e["round"], e["direction"], e["kind"]) for e in messages} >= {
            (1, "in", "train"), (1, "out", "train"), (2, "in", "train"), (2, "out", "train")}
        assert all(set(e) == set(FIELDS) and e["status"] in ("accepted", "sent") for e in messages)
        # before each message, the site checked the run's app: medfed's own, signed by the federation
        apps = [e for e in audit if e["kind"] == "app"]
        assert len(apps) == len(messages) // 2 and all(e["status"] == "accepted" and e["signed_by"] for e in apps)

        for name in ("north", "south"):
            procs.popen[name].send_signal(signal.SIGTERM)
            assert procs.wait(name, 30) == 0
    finally:
        procs.end_all()
    assert procs.left_running() == []
    assert not (state / "state.json").exists()
