"""medfed's per-sample convolution gradients equal Opacus' and per-example autograd."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from medfed.client.conv_grad_sampler import _covered, conv_grad_sample


@pytest.mark.parametrize(
    "layer, size",
    [
        (nn.Conv2d(3, 8, 3, padding=1, bias=False), (16, 16)),
        (nn.Conv2d(1, 4, 3), (14, 14)),
        (nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2)), (24, 24)),
        (nn.Conv2d(2, 5, 3, padding=2, dilation=2), (20, 20)),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), (12, 12)),
        (nn.Conv1d(3, 4, 5, stride=2, padding=2), (30,)),
        (nn.Conv3d(2, 3, 3, padding=1), (8, 8, 8)),
    ],
)
def test_matches_opacus_own_sampler(layer, size):
    torch.manual_seed(0)
    x = torch.randn(5, layer.in_channels, *size)
    backprops = torch.randn_like(layer(x))
    assert _covered(layer, backprops)  # every layer above takes medfed's path
    ours = conv_grad_sample(layer, [x], backprops)
    theirs = compute_conv_grad_sample(layer, [x], backprops)
    assert ours.keys() == theirs.keys()
    for param in ours:
        assert ours[param].shape == (5, *param.shape)
        torch.testing.assert_close(ours[param], theirs[param], atol=1e-4, rtol=1e-4)


def test_string_padding_and_other_padding_modes_go_to_opacus():
    assert not _covered(nn.Conv2d(2, 2, 3, padding="same"), torch.zeros(2, 2, 8, 8))
    assert not _covered(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), torch.zeros(2, 2, 8, 8))
    layer, x = nn.Conv2d(2, 3, 3, padding="same"), torch.randn(2, 2, 8, 8)
    backprops = torch.randn_like(layer(x))
    torch.testing.assert_close(conv_grad_sample(layer, [x], backprops)[layer.weight],
                               compute_conv_grad_sample(layer, [x], backprops)[layer.weight])


def test_grad_sample_module_uses_it_and_gets_each_examples_gradient():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2),
                        nn.Flatten(), nn.Linear(3 * 7 * 7, 2))
    x, y = torch.randn(6, 2, 16, 16), torch.randint(0, 2, (6,))
    expected = []
    for i in range(6):  # one backward pass per example
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        expected.append([p.grad.clone() for p in net.parameters()])
    wrapped = GradSampleModule(net, loss_reduction="sum")
    assert wrapped.GRAD_SAMPLERS[nn.Conv2d] is conv_grad_sample
    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    for k, param in enumerate(net.parameters()):
        per_example = torch.stack([grads[k] for grads in expected])
        torch.testing.assert_close(param.grad_sample, per_example, atol=1e-5, rtol=1e-4)


def test_dp_rounds_keep_freed_memory_on_glibc(monkeypatch):
    import ctypes
    import platform

    from medfed.client import allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    monkeypatch.setattr(allocator, "_outcome", None)
    assert allocator.keep_freed_memory()

    def no_libc(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory()  # once per process: the C library is not asked again
    monkeypatch.setattr(allocator, "_outcome", None)
    assert not allocator.keep_freed_memory()  # without one, the default allocator stays
