"""The noise chosen for a target epsilon keeps epsilon within it by two independent
accountants, each computed here directly from its library, and is barely more than the
least noise that does so."""

import dp_accounting
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from medfed.client.privacy import noise_for
from medfed.noise_calibration import calibrated_noise
from medfed.strategies.client_level_dp import client_epsilon, client_noise_for
from medfed.wire import DPSettings

TARGETS = [1.0, 2.0, 4.0, 8.0]
# (sampling rate, steps, delta): a large site over many rounds, a small one, one batch per epoch
SAMPLE_LEVEL = [(0.02, 1000, 1e-5), (0.2, 200, 1e-6), (1.0, 40, 1e-5)]
NEEDED = 0.99  # 1% less noise than chosen must break the target by at least one accountant


def opacus(kind, noise, rate, steps, delta):
    accountant = RDPAccountant() if kind == "rdp" else PRVAccountant()
    accountant.history = [(noise, rate, steps)]
    return accountant.get_epsilon(delta)


def dp_accounting_sampled(kind, noise, rate, steps, delta):
    accountant = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def both(kind, noise, rate, steps, delta):
    return opacus(kind, noise, rate, steps, delta), dp_accounting_sampled(kind, noise, rate, steps, delta)


@pytest.mark.parametrize("rate, steps, delta", SAMPLE_LEVEL)
@pytest.mark.parametrize("target", TARGETS)
def test_rdp_noise_keeps_opacus_and_dp_accounting_within_the_target(target, rate, steps, delta):
    noise = calibrated_noise(target, delta, rate, steps, "rdp")
    assert max(both("rdp", noise, rate, steps, delta)) <= target
    assert max(both("rdp", noise * NEEDED, rate, steps, delta)) > target


@pytest.mark.parametrize("rate, steps, delta", [(0.05, 400, 1e-5), (1.0, 20, 1e-6)])
@pytest.mark.parametrize("target", TARGETS)
def test_prv_noise_keeps_opacus_prv_and_dp_accounting_pld_within_the_target(target, rate, steps, delta):
    noise = calibrated_noise(target, delta, rate, steps, "prv")
    assert max(both("prv", noise, rate, steps, delta)) <= target
    assert max(both("prv", noise * NEEDED, rate, steps, delta)) > target
    assert noise < calibrated_noise(target, delta, rate, steps, "rdp")  # what the tighter bound buys


def test_opacus_search_alone_can_pass_the_target_by_dp_accounting():
    """The case that calls for two accountants: a site of 3 batches, 120 steps, epsilon 8."""
    rate, steps, delta = 1 / 3, 120, 1e-5
    searched = get_noise_multiplier(target_epsilon=8, target_delta=delta, sample_rate=rate, steps=steps)
    opacus_eps, google_eps = both("rdp", searched, rate, steps, delta)
    assert opacus_eps <= 8 < google_eps
    assert max(both("rdp", calibrated_noise(8.0, delta, rate, steps, "rdp"), rate, steps, delta)) <= 8


def test_a_site_takes_the_calibrated_noise_for_its_planned_rounds():
    dp = DPSettings(noise_multiplier=None, target_epsilon=4.0, planned_rounds=5, delta=1e-5,
                    max_grad_norm=1.0, max_epsilon=None, accountant="rdp")
    assert noise_for(dp, 0.2, 40) == calibrated_noise(4.0, 1e-5, 0.2, 200, "rdp")


def gaussian_by_dp_accounting(noise, rounds, delta):
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise), rounds))
    return accountant.get_epsilon(delta)


def client_level(noise, rounds, sites, delta):
    """Flower's accountant (what the server reports), dp-accounting and Opacus (no sampling)."""
    return (client_epsilon(noise, rounds, sites, delta), gaussian_by_dp_accounting(noise, rounds, delta),
            opacus("rdp", noise, 1.0, rounds, delta))


@pytest.mark.parametrize("rounds, sites", [(10, 100), (30, 20)])
@pytest.mark.parametrize("target", TARGETS)
def test_client_level_noise_keeps_every_accountant_within_the_target(target, rounds, sites):
    noise = client_noise_for(target, rounds, sites, 1e-5)
    assert max(client_level(noise, rounds, sites, 1e-5)) <= target
    assert max(client_level(noise * NEEDED, rounds, sites, 1e-5)) > target
