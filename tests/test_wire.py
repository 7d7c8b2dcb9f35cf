"""The wire codec: what the ServerApp writes, a site reads back and checks, one way."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import flower_message
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from medfed import wire
from medfed.client.site_daemon.message_checks import (
    ROUND_SETTINGS,
    SAMPLE_DP_SETTINGS,
    MalformedMessage,
    check_incoming,
)
from medfed.client.site_policy import PolicyRefusal, accept_round
from medfed.config import load_config
from medfed.models.spec import ModelSpec
from medfed.server.plan import initial_weights, model_spec, round_config, round_settings
from medfed.site_terms import SitePrivacy, SiteTerms
from medfed.wire import DPSettings, TrainSettings

SAMPLE_DP = ["model.name=cnn", "train.device=cpu", "train.rounds=3", "train.local_steps=5", "privacy.mechanism=sample",
             "privacy.target_epsilon=4", "privacy.noise_multiplier=null", "privacy.max_epsilon=null"]


def _round(*overrides: str):
    cfg = load_config(None, [*SAMPLE_DP, *overrides])
    spec = model_spec(cfg, 2, "binary", 1, 28)
    return cfg, spec, round_config(cfg, spec, 2)


def _message(config: dict, cfg, spec):
    return flower_message(RecordDict({"arrays": ArrayRecord(initial_weights(cfg, spec)),
                                      "config": ConfigRecord(config)}))


def test_the_sites_read_back_exactly_what_the_server_sends():
    cfg, spec, config = _round()
    assert TrainSettings.from_config(config, ModelSpec.from_config(config)) == round_settings(cfg, spec, 2)
    assert DPSettings.from_config(config) == DPSettings(
        noise_multiplier=None, target_epsilon=4.0, planned_rounds=3, delta=cfg.privacy.delta,
        max_grad_norm=cfg.privacy.max_grad_norm, max_epsilon=None, accountant=cfg.privacy.accountant)
    # unset settings are left out of the record, not sent as stand-in values
    assert not {"dp-noise-multiplier", "dp-max-epsilon", "proximal-mu"} & set(config)
    assert ConfigRecord(config)  # every value is one Flower's records hold


def test_unset_local_steps_means_epochs_and_is_absent_from_the_record():
    cfg, spec, config = _round("train.local_steps=null", "train.local_epochs=2", "train.batch_size=10")
    assert "local-steps" not in config
    settings = TrainSettings.from_config(config, spec)
    assert settings.steps is None and settings.planned_steps(95) == 2 * 10


def test_a_sites_seed_is_its_own_and_the_same_in_every_mode():
    cfg, spec, config = _round()
    settings = TrainSettings.from_config(config, spec)
    seeds = {settings.for_site(2, index).seed for index in range(3)}
    assert len(seeds) == 3 and settings.for_site(2, 1) == settings.for_site(2, 1)
    assert settings.for_site(3, 1).seed != settings.for_site(2, 1).seed


def test_the_message_checks_take_their_keys_from_the_wire_dataclasses():
    train_keys = {f.metadata[wire.WIRE] for f in dataclasses.fields(TrainSettings) if wire.WIRE in f.metadata}
    dp_keys = {f.metadata[wire.WIRE] for f in dataclasses.fields(DPSettings)}
    assert set(ROUND_SETTINGS) == train_keys | {wire.SERVER_ROUND}
    assert set(SAMPLE_DP_SETTINGS) == dp_keys
    assert {k for k, w in SAMPLE_DP_SETTINGS.items() if not w.required} == {
        "dp-noise-multiplier", "dp-target-epsilon", "dp-max-epsilon"}


@pytest.mark.parametrize("edit, words", [
    ({"dp-delta": None}, "no 'dp-delta'"),
    ({"dp-max-epsilon": "lots"}, "'dp-max-epsilon' = 'lots', not a number"),
    ({"local-steps": 0}, "local-steps (when given)"),
    ({"proximal-mu": True}, "'proximal-mu' = True, not a number"),
])
def test_a_missing_required_key_or_a_mistyped_optional_one_is_malformed(edit, words):
    cfg, spec, config = _round()
    config = {k: v for k, v in {**config, **edit}.items() if v is not None}
    with pytest.raises(MalformedMessage, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_incoming(_message(config, cfg, spec))


def test_an_optional_key_left_out_is_well_formed():
    cfg, spec, config = _round()
    assert "dp-noise-multiplier" not in config
    assert check_incoming(_message(config, cfg, spec)) == spec


@pytest.mark.parametrize("noise", [-1.0, -0.5, float("nan"), float("inf")])
def test_an_edited_noise_multiplier_is_refused_not_taken_as_find_the_noise(noise):
    """The old stand-in for "no noise given" (-1) and other non-multipliers, sent by an
    edited round config, are refused; only a left-out key asks the site to find the noise."""
    _, _, config = _round()
    terms = SiteTerms(privacy=SitePrivacy(delta=1e-5))
    assert accept_round(terms, config, 200).dp.noise_multiplier > 0  # left out: found for the target
    with pytest.raises(PolicyRefusal, match="is not a noise multiplier"):
        accept_round(terms, {**config, "dp-noise-multiplier": noise}, 200)


def test_every_error_code_is_distinct():
    codes = [v for k, v in vars(wire).items() if k.isupper() and isinstance(v, int)]
    assert len(codes) == len(set(codes)) == 8
