"""The conditional GAN, its local training with and without DP-SGD, and the metrics of
synthetic images, each on tiny data."""

import copy

import numpy as np
import pytest
import torch
from conftest import separable_images, train_settings
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.validators import ModuleValidator
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from medfed.client.privacy import BudgetExhausted, PrivateTraining, SiteAccountant
from medfed.errors import ConfigError
from medfed.models.classification.data import LabelledImages
from medfed.models.synthesis.metrics import frechet_distance, memorisation, tstr_auc
from medfed.models.synthesis.network import ConditionalGAN, generate, recalibrate_batchnorm
from medfed.models.synthesis.pictures import save_sample_grid
from medfed.models.synthesis.train import _step
from medfed.models.synthesis.train import train as train_gan
from medfed.wire import DPSettings

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: threads only wait on each other, the more so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gan(**kw):
    torch.manual_seed(0)
    return ConditionalGAN(**{"latent_dim": 16, "width": 8, **kw})


def _images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return LabelledImages(rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8), rng.integers(0, 2, n))


def _dp(**kw):
    return DPSettings(**{"noise_multiplier": 1.0, "target_epsilon": None, "planned_rounds": 3, "delta": 1e-5,
                         "max_grad_norm": 1.0, "max_epsilon": None, **kw})


@pytest.mark.parametrize("size", [28, 64])
def test_one_state_dict_and_samples_in_range(size):
    gan = _gan(image_size=size)
    keys = list(gan.state_dict())
    assert any(k.startswith("generator.") for k in keys) and any(k.startswith("discriminator.") for k in keys)
    assert all(k.startswith(("generator.", "discriminator.")) for k in keys)
    images = gan.sample(torch.tensor([0, 1, 1]), torch.Generator().manual_seed(1))
    assert images.shape == (3, 1, size, size) and 0.0 <= images.min() and images.max() <= 1.0
    raw = gan(torch.randn(4, 16), torch.tensor([0, 1, 0, 1]))
    assert raw.min() >= -1.0 and raw.max() <= 1.0
    assert gan.discriminator(raw, torch.tensor([0, 1, 0, 1])).shape == (4,)


def test_generate_is_uint8_per_class_and_seeded_and_leaves_the_model_alone():
    gan = _gan()
    train_gan(gan, _images(), train_settings(epochs=1, lr=2e-4), CPU)
    before = copy.deepcopy(gan.state_dict())
    out = generate(gan, {0: 3, 1: 5}, seed=7, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in gan.state_dict().items())
    assert out.images.shape == (8, 28, 28, 1) and out.images.dtype == np.uint8
    assert out.labels.tolist() == [0] * 3 + [1] * 5
    assert np.array_equal(out.images, generate(gan, {0: 3, 1: 5}, seed=7, device=CPU).images)
    assert len(generate(gan, 4, seed=0, device=CPU)) == 8


def test_recalibrated_batchnorm_holds_the_generators_own_statistics():
    gan = recalibrate_batchnorm(_gan(), batches=4, batch_size=64)
    norm = gan.generator.project[2]
    assert int(norm.num_batches_tracked) == 4 and norm.momentum == 0.1
    with torch.no_grad():
        h = gan.generator.project[:2](torch.cat([gan.noise(2048), gan.generator.embed(torch.arange(2048) % 2)], 1))
    torch.testing.assert_close(norm.running_mean, h.mean(dim=(0, 2, 3)), atol=0.02, rtol=0.05)


def test_bad_image_size_is_a_config_error():
    with pytest.raises(ConfigError, match="image size"):
        ConditionalGAN(image_size=100)


def test_discriminator_needs_no_fix_for_opacus():
    assert ModuleValidator.validate(_gan().discriminator, strict=False) == []
    assert ModuleValidator.validate(_gan(image_size=64).discriminator, strict=False) == []


def test_train_gan_without_privacy_updates_both_networks():
    gan = _gan()
    before = copy.deepcopy(gan.state_dict())
    result = train_gan(gan, _images(), train_settings(epochs=1, lr=2e-4), CPU)
    assert result["steps"] == 4 and result["num-examples"] == 64
    assert np.isfinite(result["train_loss"]) and np.isfinite(result["g_loss"])
    after = gan.state_dict()
    for prefix in ("generator.", "discriminator."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix))


def test_private_round_accounts_like_opacus_and_refuses_past_the_budget(tmp_path):
    gan = _gan()
    accountant = SiteAccountant(tmp_path, "rdp")
    s = train_settings(epochs=2, lr=2e-4)
    result = train_gan(gan, _images(), s, CPU, PrivateTraining(_dp(), accountant, 64, s))
    assert result["steps"] == result["total-steps"] == 8 and result["sample-rate"] == pytest.approx(0.25)
    direct = RDPAccountant()
    direct.history = [(result["noise-multiplier"], result["sample-rate"], result["total-steps"])]
    assert result["epsilon"] == pytest.approx(direct.get_epsilon(delta=1e-5), rel=0.01)
    # Opacus' hooks are gone: the discriminator is a plain module again
    assert not any(hasattr(p, "grad_sample") for p in gan.discriminator.parameters())
    assert all(not m._forward_hooks for m in gan.discriminator.modules())
    tight = _dp(max_epsilon=result["epsilon"] * 0.9)
    with pytest.raises(BudgetExhausted, match="privacy budget"):
        train_gan(gan, _images(), s, CPU, PrivateTraining(tight, accountant, 64, s))
    assert SiteAccountant(tmp_path, "rdp").epsilon(1e-5) == pytest.approx(result["epsilon"])


def test_private_step_equals_plain_gradients_and_generator_step_leaves_no_trace():
    """Without noise or clipping, two private steps move the discriminator exactly as
    plain steps on the summed per-row loss do: the generator's step in between leaves
    no activations or per-sample gradients behind in the Opacus module."""
    private, plain = _gan(), _gan()
    data = _images(32)
    x, y = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.from_numpy(data.labels)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    private_d, opt_d, _ = PrivacyEngine().make_private(
        module=private.discriminator, optimizer=torch.optim.SGD(private.discriminator.parameters(), lr=0.1),
        data_loader=loader, noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False,
    )
    opt_g = torch.optim.SGD(private.generator.parameters(), lr=0.1)
    plain_d = torch.optim.SGD(plain.discriminator.parameters(), lr=0.1)
    plain_g = torch.optim.SGD(plain.generator.parameters(), lr=0.1)
    for step in range(2):
        real, labels, fake_labels = x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8], y[:8].flip(0)
        torch.manual_seed(step)
        _step(private, private_d, opt_d, opt_g, real, labels, fake_labels, private=True)
        torch.manual_seed(step)
        _step(plain, plain.discriminator, plain_d, plain_g, real, labels, fake_labels)
        # the plain step used real mean + fake mean: with 8 + 8 rows that equals sum / 8
        for p, q in zip(private.discriminator.parameters(), plain.discriminator.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    for p, q in zip(private.generator.parameters(), plain.generator.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_frechet_distance_is_zero_for_the_same_features_and_the_squared_mean_shift():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    shift = np.full(8, 0.5)
    assert frechet_distance(features, features + shift) == pytest.approx(shift @ shift, rel=1e-4)
    assert frechet_distance(features, features + 2 * shift) > frechet_distance(features, features + shift)


def test_memorisation_flags_copies_and_not_fresh_images():
    train, holdout = _images(200, seed=1).images, _images(50, seed=2).images
    copies = memorisation(train[:40], train, holdout)
    assert copies["memorised_fraction"] == 1.0 and copies["median_generated_nn"] == 0.0
    fresh = memorisation(_images(40, seed=3).images, train, holdout)
    assert fresh["memorised_fraction"] <= 0.05  # about the quantile, as for real unseen images
    assert fresh["median_real_nn"] > fresh["threshold"] > 0


def test_tstr_auc_on_separable_synthetic_images():
    generated, test = separable_images(128, seed=1), separable_images(64, seed=2)
    assert tstr_auc(generated, test, train_settings(epochs=3), CPU) > 0.9


def test_sample_grid_is_a_png_with_one_row_per_class(tmp_path):
    out = generate(_gan(), 5, seed=0, device=CPU)
    path = save_sample_grid(out.images, out.labels, tmp_path / "grid" / "samples.png", per_class=4)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (4 * 29 - 1, 2 * 29 - 1)
    assert [p.name for p in path.parent.iterdir()] == ["samples.png"]
