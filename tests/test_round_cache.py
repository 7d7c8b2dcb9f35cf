"""A site answers a round sent again (a restarted coordinator redoing it) with the reply it
already made: no training, no privacy spent. Any other round, weights or settings train."""

from __future__ import annotations

import time

import numpy as np
import pytest
from deployment_helpers import site_npz
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from medfed.client import app as client_app
from medfed.client import round_cache
from medfed.client.privacy import ACCOUNTANT_FILE, SiteAccountant
from medfed.client.round_cache import RoundCache, round_key
from medfed.client.site import Site
from medfed.config import load_config
from medfed.models.classification.data import read_npz_split
from medfed.server.plan import initial_weights, model_spec, round_config
from medfed.wire import RUN_KEY, weights_digest

STEPS = 2  # DP-SGD steps per round
DP_ROUND = ["model.name=cnn", f"train.local_steps={STEPS}", "train.batch_size=8", "train.device=cpu", "train.amp=false",
            "train.rounds=3", "privacy.mechanism=sample", "privacy.target_epsilon=null",
            "privacy.noise_multiplier=1.0", "privacy.delta=0.001"]


class Killed(Exception):
    """Stands for the site's process dying at a fault-injection point."""


@pytest.fixture
def site(tmp_path) -> Site:
    data = site_npz(tmp_path / "data.npz")
    return Site("north", 0, read_npz_split(data, "train"), read_npz_split(data, "val"), tmp_path / "state",
                device="cpu")


@pytest.fixture
def trainings(monkeypatch) -> list[int]:
    """The rounds the site really trained, in order."""
    done: list[int] = []
    real = client_app.train_site

    def counted(site, arrays, config):
        done.append(int(config["server-round"]))
        return real(site, arrays, config)

    monkeypatch.setattr(client_app, "train_site", counted)
    return done


def _round(rnd: int = 1, run_key: str = "run-a", *overrides: str) -> tuple[dict, ArrayRecord]:
    cfg = load_config(None, [*DP_ROUND, *overrides])
    spec = model_spec(cfg, 2, "binary", 1, 28)
    return round_config(cfg, spec, rnd, run_key), ArrayRecord(initial_weights(cfg, spec))


def _send(site: Site, config: dict, arrays: ArrayRecord) -> Message:
    """The round as a train message through the site's ClientApp; the reply (never an error)."""
    metadata = Metadata(run_id=int(time.monotonic_ns()), message_id=f"m-{time.monotonic_ns()}", src_node_id=1,
                        dst_node_id=2, reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600,
                        message_type=MessageType.TRAIN, src_task_id=1, dst_task_id=2)
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), metadata=metadata)
    app = client_app.make_client_app(lambda node_config: site)
    reply = app(msg, Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={}))
    assert not reply.has_error(), reply.error
    return reply


def _weights(reply: Message) -> str:
    return weights_digest(reply.content["arrays"])


def _spent(site: Site) -> list:
    """The site's accountant history: (noise, sampling rate, steps), like rounds merged."""
    return SiteAccountant(site.state_dir, "rdp").history


def _steps(site: Site) -> int:
    return sum(steps for _, _, steps in _spent(site))


def test_a_round_sent_again_is_answered_from_the_cache_without_training_or_spending(site, trainings):
    config, arrays = _round()
    first = _send(site, config, arrays)
    accountant = (site.state_dir / ACCOUNTANT_FILE).read_bytes()
    again = _send(site, config, arrays)  # a new message (new run id, after a restart), the same round

    assert trainings == [1]
    assert (site.state_dir / ACCOUNTANT_FILE).read_bytes() == accountant
    assert _weights(again) == _weights(first)
    assert dict(again.content["metrics"]) == dict(first.content["metrics"])
    assert again.content["metrics"]["epsilon"] > 0


@pytest.mark.parametrize("change", ["round", "weights", "settings", "run"])
def test_another_round_weights_settings_or_run_trains(site, trainings, change):
    config, arrays = _round()
    _send(site, config, arrays)
    if change == "round":
        config, _ = _round(2)
    elif change == "weights":
        arrays = ArrayRecord({k: Array(a.numpy() + (1e-3 if a.numpy().dtype.kind == "f" else 0))
                              for k, a in arrays.items()})
    elif change == "settings":
        config, _ = _round(1, "run-a", "train.lr=0.002")
    else:
        config, _ = _round(1, "run-b")
    _send(site, config, arrays)
    assert len(trainings) == 2
    assert _steps(site) == 2 * STEPS  # each trained round is accounted


def test_a_round_without_a_run_key_is_never_taken_from_the_cache(site, trainings):
    config, arrays = _round()
    del config[RUN_KEY]
    _send(site, config, arrays)
    _send(site, config, arrays)
    assert trainings == [1, 1] and _steps(site) == 2 * STEPS


@pytest.mark.parametrize("point", ["site-trained", "site-stored"])
def test_a_site_killed_in_a_round_gives_the_same_reply_when_it_is_sent_again(tmp_path, site, monkeypatch, point):
    """Killed after training (budget written, no reply stored) the round is redone from the
    state it began with; killed after storing its reply, the stored reply is sent."""
    config, arrays = _round(2)
    clean = Site(site.name, site.index, site.train, site.val, tmp_path / "clean-state", device="cpu")
    for each in (site, clean):
        _send(each, *_round(1))  # the site has spent some budget already
    expected = _send(clean, config, arrays)

    def die(name: str, rnd: int) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(round_cache, "kill_point", die)
    with pytest.raises(Killed):
        _send(site, config, arrays)
    assert _steps(site) == 2 * STEPS  # the dead attempt wrote its spending
    monkeypatch.setattr(round_cache, "kill_point", lambda name, rnd: None)

    again = _send(site, config, arrays)
    assert _weights(again) == _weights(expected)
    assert dict(again.content["metrics"]) == dict(expected.content["metrics"])
    assert _spent(site) == _spent(clean)  # spent once, as if never killed
    assert not (site.state_dir / round_cache.CACHE_DIR / round_cache.PENDING_FILE).exists()


def test_the_key_covers_run_round_weights_and_settings():
    config, arrays = _round()
    key = round_key(arrays, config)
    assert key == round_key(arrays, dict(config))
    assert key != round_key(arrays, {**config, "server-round": 2})
    assert key != round_key(arrays, {**config, RUN_KEY: "run-b"})
    assert key != round_key(ArrayRecord({k: Array(np.zeros_like(a.numpy())) for k, a in arrays.items()}), config)
    assert round_key(arrays, {k: v for k, v in config.items() if k != RUN_KEY}) is None


def test_a_damaged_cache_file_means_training_again(site, trainings):
    config, arrays = _round()
    _send(site, config, arrays)
    (site.state_dir / round_cache.CACHE_DIR / round_cache.REPLY_FILE).write_bytes(b"garbage")
    _send(site, config, arrays)
    assert trainings == [1, 1]
    assert RoundCache(site.state_dir, ()).reply(round_key(arrays, config)) is not None  # stored again
