"""Simulated malicious and faulty sites: what each one sends instead of its honest update."""

import numpy as np
import pytest
from conftest import flower_message
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from medfed.config import load_config
from medfed.errors import ConfigError
from medfed.models.classification.data import LabelledImages
from medfed.simulation.adversary import SITE_DROPPED, Misbehaviour, flip_labels

GLOBAL = ArrayRecord({"w": Array(np.ones(4, np.float32)), "n": Array(np.array(3, np.int64))})


def _train_message(rnd: int) -> Message:
    content = RecordDict({"arrays": GLOBAL, "config": ConfigRecord({"server-round": rnd})})
    return flower_message(content, MessageType.TRAIN)


def _honest(step: float):
    """A site whose training adds ``step`` times the round to every weight."""

    def train(msg: Message, context: Context) -> Message:
        rnd = int(msg.content["config"]["server-round"])
        trained = {"w": Array(msg.content["arrays"]["w"].numpy() + step * rnd), "n": Array(np.array(9, np.int64))}
        return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord({"site": 0})}),
                       reply_to=msg)

    return train


def _context(site: int) -> Context:
    return Context(run_id=1, node_id=site, node_config={"partition-id": site}, state=RecordDict(), run_config={})


def _sent(mod: Misbehaviour, rnd: int = 1, context: Context | None = None) -> np.ndarray:
    reply = mod(_train_message(rnd), context or _context(0), _honest(0.5))
    assert reply.content["arrays"]["n"].numpy() == 9  # integer buffers are left alone
    return reply.content["arrays"]["w"].numpy()


@pytest.mark.parametrize("behaviour, expected", [
    ("none", 1.5), ("sign_flip", 0.5), ("scale", 1 + 50 * 0.5), ("nan", np.nan), ("label_flip", 1.5),
])
def test_a_malicious_site_corrupts_its_update(behaviour, expected):
    sent = _sent(Misbehaviour(seed=0, behaviour=behaviour, sites=(0,)))
    np.testing.assert_array_equal(sent, np.full(4, expected, np.float32))
    assert sent.dtype == np.float32


def test_gaussian_noise_is_added_to_the_trained_weights():
    sent = _sent(Misbehaviour(seed=0, behaviour="gaussian", sites=(0,), noise_std=2.0))
    assert not np.allclose(sent, 1.5) and abs(float(np.std(sent - 1.5)) - 2.0) < 2.0


def test_an_honest_site_is_left_alone():
    assert np.all(_sent(Misbehaviour(seed=0, behaviour="scale", sites=(3,))) == 1.5)


def test_a_stale_site_sends_the_update_of_an_earlier_round():
    mod, context = Misbehaviour(seed=0, behaviour="stale", sites=(0,), stale_rounds=2), _context(0)
    sent = [float(_sent(mod, rnd, context)[0]) for rnd in range(1, 6)]
    assert sent == [1.5, 1.5, 1.5, 2.0, 2.5]  # rounds 1, 1, 1, 2, 3: two rounds behind once it can be
    assert len(context.state.array_records) == 3  # only what it may still send is kept


def test_dropouts_and_stragglers_are_random_but_repeatable():
    mod = Misbehaviour(seed=4, dropout=0.3)
    outcome = {(rnd, site): mod(_train_message(rnd), _context(site), _honest(0.5)).has_error()
               for rnd in range(1, 11) for site in range(10)}
    again = {(rnd, site): mod(_train_message(rnd), _context(site), _honest(0.5)).has_error()
             for rnd in range(1, 11) for site in range(10)}
    assert outcome == again and 0.2 < np.mean(list(outcome.values())) < 0.4
    reply = next(mod(_train_message(r), _context(s), _honest(0.5)) for (r, s), dropped in outcome.items() if dropped)
    assert reply.error.code == SITE_DROPPED and "dropped out (simulated fault)" in reply.error.reason


def test_label_flipping_flips_every_label():
    data = LabelledImages(np.zeros((4, 2, 2), np.uint8), np.array([0, 1, 2, 1]))
    assert flip_labels(data, 3).labels.tolist() == [2, 1, 0, 1]
    multi = LabelledImages(np.zeros((2, 2, 2), np.uint8), np.array([[1, 0, 1], [0, 0, 1]]))
    assert flip_labels(multi, 3).labels.tolist() == [[0, 1, 0], [1, 1, 0]]


@pytest.mark.parametrize("overrides, words", [
    (["attack.behaviour=poison", "attack.sites=[0]"], "'poison' is not one of none, sign_flip"),
    (["attack.behaviour=scale"], "attack.sites': list the sites that scale"),
    (["attack.behaviour=nan", "attack.sites=[12]"], "[12] are not site indices (0 to 9"),
    (["faults.dropout=1.0"], "faults.dropout': must be in [0, 1)"),
    (["attack.behaviour=nan", "attack.sites=[0]", "mode=pooled"], "simulated in federated runs only"),
    (["attack.behaviour=label_flip", "attack.sites=[0]", "task=gan", "model.name=dcgan"], "label_flip needs"),
])
def test_bad_attack_settings_name_the_setting(overrides, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["partition.num_sites=10", *overrides])
    assert words in str(error.value)
