"""Privacy accounting checked against independent computations, budgets and bad settings."""

import dp_accounting
import pytest
import torch
from conftest import separable_images, train_settings
from opacus.accountants import RDPAccountant

from medfed.client.local_round import local_train
from medfed.client.privacy import BudgetExhausted, SiteAccountant
from medfed.config import load_config
from medfed.errors import ConfigError
from medfed.models.classification.network import build_classifier
from medfed.models.private_layers import make_private_model
from medfed.strategies.client_level_dp import client_epsilon, client_noise_for
from medfed.wire import DPSettings


def _data():
    return separable_images(120)


def _settings(**kw):
    return train_settings(**{"epochs": 1, "lr": 1e-3, **kw})


def _dp(**kw):
    base = dict(noise_multiplier=1.1, target_epsilon=None, planned_rounds=3, delta=1e-5,
                max_grad_norm=1.0, max_epsilon=None)
    base.update(kw)
    return DPSettings(**base)


def _google_epsilon(noise, rate, steps, delta):
    accountant = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def _private_round(tmp_path, dp, rounds=1):
    accountant = SiteAccountant(tmp_path, "rdp")
    for r in range(rounds):  # a fresh model each round, as a site builds one per message
        model = make_private_model(build_classifier("cnn", 1, 2))
        result = local_train(model, _data(), _settings(seed=r), torch.device("cpu"), dp, accountant)
    return result


def test_site_epsilon_matches_opacus_and_google_accounting(tmp_path):
    result = _private_round(tmp_path, _dp(), rounds=2)
    rate, steps, noise = result["sample-rate"], result["total-steps"], result["noise-multiplier"]
    assert steps == 2 * 8 and rate == pytest.approx(1 / 8)  # 120 examples in batches of 16
    direct = RDPAccountant()
    direct.history = [(noise, rate, steps)]
    opacus_eps = direct.get_epsilon(delta=1e-5)
    google_eps = _google_epsilon(noise, rate, steps, 1e-5)
    assert result["epsilon"] == pytest.approx(opacus_eps, rel=0.01)
    assert result["epsilon"] == pytest.approx(google_eps, rel=0.01)


def test_budget_persists_on_disk_and_a_site_refuses_past_it(tmp_path):
    first = _private_round(tmp_path, _dp())
    assert (tmp_path / "privacy_accountant.json").is_file()
    again = SiteAccountant(tmp_path, "rdp")  # a restarted site reads its spending back
    assert again.epsilon(1e-5) == pytest.approx(first["epsilon"])
    tight = _dp(max_epsilon=first["epsilon"] * 1.2)
    with pytest.raises(BudgetExhausted, match="privacy budget"):
        model = make_private_model(build_classifier("cnn", 1, 2))
        local_train(model, _data(), _settings(), torch.device("cpu"), tight, again)
    assert SiteAccountant(tmp_path, "rdp").epsilon(1e-5) == pytest.approx(first["epsilon"])


def test_target_epsilon_is_met_over_the_planned_rounds(tmp_path):
    result = _private_round(tmp_path, _dp(noise_multiplier=None, target_epsilon=4.0, planned_rounds=2), rounds=2)
    assert 3.9 <= result["epsilon"] <= 4.0


def test_unreachable_target_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be reached"):
        _private_round(tmp_path, _dp(noise_multiplier=None, target_epsilon=1e-9, planned_rounds=50))


def test_batchnorm_is_replaced_for_dp():
    model = make_private_model(build_classifier("resnet18", 1, 2))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


def test_client_level_epsilon_matches_google_accounting():
    noise, rounds, sites = 1.2, 30, 100
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise), rounds))
    assert client_epsilon(noise, rounds, sites, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=0.01)
    found = client_noise_for(8.0, rounds, sites, 1e-5)
    assert client_epsilon(found, rounds, sites, 1e-5) <= 8.0 < client_epsilon(found * 0.98, rounds, sites, 1e-5)


@pytest.mark.parametrize(
    "override, key",
    [
        ("privacy.noise_multiplier=-0.5", "privacy.noise_multiplier"),
        ("privacy.max_grad_norm=0", "privacy.max_grad_norm"),
        ("privacy.clipping_norm=-1", "privacy.clipping_norm"),
        ("privacy.delta=1", "privacy.delta"),
        ("privacy.mechanism=quantum", "privacy.mechanism"),
    ],
)
def test_bad_privacy_settings(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["privacy.mechanism=sample", "privacy.noise_multiplier=1.0", override])
