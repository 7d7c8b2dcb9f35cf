import numpy as np
import pytest
import torch
from conftest import train_settings

from medfed.errors import ConfigError
from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.models.classification.network import build_classifier
from medfed.simulation.canaries import canary_attack, plant_canaries, wrong_labels
from medfed.simulation.partition import SiteShard


def _sites(sizes, seed=0):
    rng = np.random.default_rng(seed)
    sites = []
    for i, n in enumerate(sizes):
        images = rng.integers(0, 256, (n, 12, 12)).astype(np.uint8)
        images[:, 0, 0] = np.arange(n)  # every image of a site is told apart by its first pixel
        images[:, 0, 1] = i
        sites.append(SiteShard(f"s{i}", LabelledImages(images, rng.integers(0, 2, n)),
                               LabelledImages(images[:2], rng.integers(0, 2, 2))))
    return sites


def test_members_stay_relabelled_and_outsiders_are_withdrawn():
    sites = _sites([40, 80])
    before = [s.train.labels.copy() for s in sites]
    canaries = plant_canaries(sites, 15, 2, seed=3)
    assert len(canaries.members) == len(canaries.outsiders) == 15
    assert len(sites[0].train) + len(sites[1].train) == 120 - 15
    trained = {(int(im[0, 1, 0]), int(im[0, 0, 0])): int(lab)
               for s in sites for im, lab in zip(s.train.images, s.train.labels)}
    for image, label in zip(canaries.members.images, canaries.members.labels):
        site, index = int(image[0, 1, 0]), int(image[0, 0, 0])
        assert trained[(site, index)] == label != before[site][index]  # trained on the wrong label
    for image, label in zip(canaries.outsiders.images, canaries.outsiders.labels):
        site, index = int(image[0, 1, 0]), int(image[0, 0, 0])
        assert (site, index) not in trained and label != before[site][index]
    ordinary = canaries.without_members(sites)
    assert sum(len(s.train) for s in ordinary) == 120 - 30
    member_keys = {(int(im[0, 1, 0]), int(im[0, 0, 0])) for im in canaries.members.images}
    assert not member_keys & {(int(im[0, 1, 0]), int(im[0, 0, 0])) for s in ordinary for im in s.train.images}
    again = _sites([40, 80])
    assert np.array_equal(plant_canaries(again, 15, 2, seed=3).members.images, canaries.members.images)


def test_wrong_labels_are_never_right():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    wrong = wrong_labels(labels, 5, rng)
    assert (wrong != labels).all() and set(np.unique(wrong)) == set(range(5))
    multi = rng.integers(0, 2, (20, 4))
    assert np.array_equal(wrong_labels(multi, 4, rng), 1 - multi)


def test_too_many_canaries_is_a_config_error():
    with pytest.raises(ConfigError, match="evaluation.audit_canaries=30"):
        plant_canaries(_sites([40, 60]), 30, 2, seed=0)


def test_the_attack_finds_canaries_a_model_memorised():
    sites = _sites([60, 60])
    canaries = plant_canaries(sites, 20, 2, seed=1)
    torch.manual_seed(0)
    model = build_classifier("cnn", 1, 2, dropout=0.0)
    data = LabelledImages.concat([s.train for s in sites])
    training.train(model, data, train_settings(epochs=60, augment=False, class_weighting=False), torch.device("cpu"))
    result = canary_attack(model, canaries, "binary", torch.device("cpu"))
    assert result["members"] == result["non_members"] == 20
    assert result["auc"] > 0.8
    untrained = canary_attack(build_classifier("cnn", 1, 2), canaries, "binary", torch.device("cpu"))
    assert abs(untrained["auc"] - 0.5) < 0.25
