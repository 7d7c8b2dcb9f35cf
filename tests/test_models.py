import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from medfed.config import load_config
from medfed.errors import ConfigError
from medfed.models.classification.metrics import loss_function, metrics
from medfed.models.classification.network import MODELS, build_classifier
from medfed.models.spec import UNET_CHANNELS, UNET_STRIDES, ModelSpec


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 64)])
def test_every_model_maps_images_to_logits(name, channels, size):
    model = build_classifier(name, channels, num_classes=4, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 4)


def test_a_unet_spec_reaches_the_site_with_its_levels():
    spec = ModelSpec(name="unet", in_channels=1, num_classes=2, image_size=32, dropout=0.0,
                     label_kind="segmentation", task="segmentation", channels=(8, 16, 32), strides=(1, 2))
    received = ModelSpec.from_config(ConfigRecord(spec.to_config()))  # as a site gets it
    assert received == spec
    model = received.build().eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert (first.out_channels, first.stride) == (8, (1, 1))  # the first level keeps full resolution
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_the_config_defaults_build_the_default_unet():
    model = load_config(None).model
    assert (tuple(model.channels), tuple(model.strides)) == (UNET_CHANNELS, UNET_STRIDES)


def test_unknown_model_is_named():
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        build_classifier("vgg", 1, 2)


def test_binary_metrics_on_a_known_case():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.95])
    m = metrics("binary", labels, np.stack([1 - p1, p1], axis=1))
    # predicted 0,1,0,1,1,0,1,1: tp 4, fn 1, tn 2, fp 1
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    # 15 positive-negative pairs; ranked wrongly: (0.6 > 0.4)
    assert m["auc"] == pytest.approx(14 / 15)


def test_auc_is_nan_for_a_single_class():
    m = metrics("binary", np.array([1, 1, 1]), np.array([[0.2, 0.8]] * 3))
    assert np.isnan(m["auc"]) and m["accuracy"] == 1.0


def test_multiclass_and_multilabel_metrics():
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[labels] * 0.8 + 0.2 / 3
    assert metrics("multiclass", labels, probs)["auc"] == pytest.approx(1.0)
    multi = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert metrics("multilabel", multi, multi * 0.9 + 0.05)["accuracy"] == 1.0


def test_class_weights_follow_inverse_frequency_and_skip_absent_classes():
    loss = loss_function("multiclass", np.array([0, 0, 0, 1]), num_classes=3)
    assert loss.weight.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])


def test_operating_threshold_maximises_youden_j():
    from medfed.models.classification.metrics import operating_threshold, score_histogram

    labels = np.array([0] * 6 + [1] * 6)
    p1 = np.array([0.05, 0.1, 0.2, 0.3, 0.62, 0.64, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99])
    pos, neg = score_histogram(labels, np.stack([1 - p1, p1], axis=1))
    assert sum(pos) == 6 and sum(neg) == 6
    threshold = operating_threshold(np.array(pos), np.array(neg))
    assert 0.64 < threshold <= 0.70  # separates the classes perfectly
    m = metrics("binary", labels, np.stack([1 - p1, p1], axis=1), threshold)
    assert m["accuracy"] == 1.0 and metrics("binary", labels, np.stack([1 - p1, p1], axis=1))["accuracy"] < 1.0


def test_operating_threshold_falls_back_for_a_single_class():
    from medfed.models.classification.metrics import operating_threshold

    assert operating_threshold(np.array([0, 3, 1]), np.zeros(3)) == 0.5
