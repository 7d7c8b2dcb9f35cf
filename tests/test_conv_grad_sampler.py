"""medfed's per-sample convolution gradients equal Opacus' and per-example autograd."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from medfed.client.conv_grad_sampler import _covered, conv2d_grad_sample


@pytest.mark.parametrize(
    "in_channels, out_channels, kernel, stride, padding, dilation, bias, size",
    [
        (3, 8, 3, 1, 1, 1, False, 16),
        (1, 4, 3, 1, 0, 1, True, 14),
        (4, 6, (3, 5), (2, 1), (1, 2), 1, True, 24),
        (2, 5, 3, 1, 2, 2, True, 20),
    ],
)
def test_matches_opacus_own_sampler(in_channels, out_channels, kernel, stride, padding, dilation, bias, size):
    torch.manual_seed(0)
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=bias)
    x = torch.randn(5, in_channels, size, size)
    backprops = torch.randn_like(layer(x))
    assert _covered(layer, backprops)  # the configurations above take medfed's path
    ours = conv2d_grad_sample(layer, [x], backprops)
    theirs = compute_conv_grad_sample(layer, [x], backprops)
    assert ours.keys() == theirs.keys()
    for param in ours:
        assert ours[param].shape == (5, *param.shape)
        torch.testing.assert_close(ours[param], theirs[param], atol=1e-4, rtol=1e-4)


def test_small_maps_and_groups_go_to_opacus():
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    assert not _covered(grouped, torch.zeros(2, 4, 16, 16))
    assert not _covered(nn.Conv2d(4, 4, 3, padding=1), torch.zeros(2, 4, 7, 7))
    x, backprops = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    ours = conv2d_grad_sample(grouped, [x], backprops)[grouped.weight]
    torch.testing.assert_close(ours, compute_conv_grad_sample(grouped, [x], backprops)[grouped.weight])


def test_grad_sample_module_uses_it_and_gets_each_examples_gradient():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2),
                        nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.randn(6, 2, 16, 16), torch.randint(0, 2, (6,))
    net(x)  # materialise the lazy layer
    expected = []
    for i in range(6):  # one backward pass per example
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        expected.append([p.grad.clone() for p in net.parameters()])
    wrapped = GradSampleModule(net, loss_reduction="sum")
    assert wrapped.GRAD_SAMPLERS[nn.Conv2d] is conv2d_grad_sample
    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    for k, param in enumerate(net.parameters()):
        per_example = torch.stack([grads[k] for grads in expected])
        torch.testing.assert_close(param.grad_sample, per_example, atol=1e-5, rtol=1e-4)
