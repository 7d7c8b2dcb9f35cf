import numpy as np
import torch
from conftest import train_settings

from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.models.classification.network import build_classifier
from medfed.simulation.audit import membership_attack
from medfed.simulation.partition import SiteShard


def _noise_images(n, seed):
    rng = np.random.default_rng(seed)
    return LabelledImages(rng.integers(0, 256, (n, 12, 12)).astype(np.uint8), rng.integers(0, 2, n))


def test_attacks_find_the_members_of_a_memorising_model():
    # random labels on random images: the only way to fit them is to memorise them
    sites = [SiteShard(f"s{i}", _noise_images(24, i), _noise_images(24, 10 + i)) for i in range(2)]
    torch.manual_seed(0)
    model = build_classifier("cnn", 1, 2, dropout=0.0)
    members = LabelledImages(np.concatenate([s.train.images for s in sites]),
                             np.concatenate([s.train.labels for s in sites]))
    device = torch.device("cpu")
    settings = train_settings(epochs=60, augment=False, class_weighting=False, lr=3e-3)
    training.train(model, members, settings, device)

    seen = []

    def same_as_target(reference, data):  # a reference equal to the target calibrates to zero
        seen.append(len(data))
        reference.load_state_dict(model.state_dict())

    result = membership_attack(model, sites, "binary", device, seed=0, reference=build_classifier("cnn", 1, 2),
                               train_reference=same_as_target, test=_noise_images(40, 99))
    assert result["attack"] == "loss-threshold" and result["members"] == result["non_members"] == 48
    assert result["auc"] > 0.8
    calibrated = result["calibrated"]
    assert seen == [40 + 24]  # test set + half of the non-members; the other half is audited
    assert calibrated["non_members"] == 24
    assert calibrated["auc"] == 0.5


def test_attack_auc_comes_with_a_bootstrap_interval():
    from medfed.simulation.audit import score_attack

    rng = np.random.default_rng(0)
    separated = score_attack("x", rng.normal(1.0, 1, 300), rng.normal(0, 1, 300), rng)
    low, high = separated["auc_ci95"]
    assert low < separated["auc"] < high and low > 0.7  # clearly not chance
    chance = score_attack("x", rng.normal(0, 1, 300), rng.normal(0, 1, 300), rng)
    assert chance["auc_ci95"][0] < 0.5 < chance["auc_ci95"][1]
    wide = score_attack("x", rng.normal(0, 1, 30), rng.normal(0, 1, 30), rng)["auc_ci95"]
    assert wide[1] - wide[0] > chance["auc_ci95"][1] - chance["auc_ci95"][0]
