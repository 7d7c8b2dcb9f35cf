import torch
from conftest import separable_images as _separable
from conftest import train_settings as _settings

from medfed.models import local_training
from medfed.models.classification import train as training
from medfed.models.classification.network import build_classifier
from medfed.strategies.fedbn import keep_local_norm, norm_state_keys


def test_training_learns_a_separable_task():
    torch.manual_seed(0)  # the untrained model's accuracy depends on its initial weights
    data, model = _separable(), build_classifier("cnn", 1, 2)
    before = training.evaluate(model, data, "binary", torch.device("cpu"))["accuracy"]
    training.train(model, data, _settings(epochs=6), torch.device("cpu"))
    after = training.evaluate(model, data, "binary", torch.device("cpu"))
    assert after["accuracy"] >= 0.95 and after["auc"] > 0.99
    assert before < 0.9


def test_same_seed_gives_identical_weights():
    data = _separable()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_classifier("cnn", 1, 2)
        training.train(model, data, _settings(), torch.device("cpu"))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_local_steps_replace_epochs():
    result = training.train(build_classifier("cnn", 1, 2), _separable(), _settings(steps=5), torch.device("cpu"))
    assert result["steps"] == 5


def test_proximal_term_keeps_weights_closer_to_the_global_model():
    data = _separable()
    torch.manual_seed(0)
    start = build_classifier("cnn", 1, 2).state_dict()

    def drift(mu):
        model = build_classifier("cnn", 1, 2)
        model.load_state_dict(start)
        training.train(model, data, _settings(proximal_mu=mu, lr=1e-2), torch.device("cpu"))
        return sum(float((model.state_dict()[k].float() - start[k].float()).pow(2).sum())
                   for k in start if start[k].is_floating_point())

    assert drift(5.0) < 0.8 * drift(0.0)


def test_random_shift_moves_pixels_but_keeps_shape():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    shifted = local_training.random_shift(x, torch.Generator().manual_seed(3), 2)
    assert shifted.shape == x.shape and not torch.equal(shifted, x)


def test_fedbn_keeps_the_sites_own_norm_layers():
    model = build_classifier("resnet18", 1, 2)
    keys = norm_state_keys(model)
    assert keys and all(k in model.state_dict() for k in keys)
    local = {k: torch.full_like(v, 7) if v.is_floating_point() else v for k, v in keep_local_norm(model, None).items()}
    fresh = build_classifier("resnet18", 1, 2)  # stands for the next global model
    keep_local_norm(fresh, local)
    state = fresh.state_dict()
    assert all(torch.equal(state[k], local[k]) for k in keys)
    conv = next(k for k in state if "conv" in k and k.endswith("weight"))
    assert not torch.equal(state[conv], model.state_dict()[conv])  # shared layers are not kept
