"""Per-sample gradients of convolutions for DP-SGD, as one grouped weight-gradient call.

Opacus computes a convolution's per-sample weight gradients from the unfolded input
(im2col): a copy kernel-volume times the size of the activation, then many small matrix
products. On large feature maps that takes most of a DP-SGD step. The same gradients
are the weight gradient of a convolution whose groups are the examples of the batch
(Rochette et al. 2019): the batch folds into the channel axis, and the backend's own
weight-gradient kernel (oneDNN, cuDNN) computes every example's gradient in one call,
at about the cost of the ordinary weight gradient. Importing this module registers it
with Opacus for 1D, 2D and 3D convolutions; the layers it does not cover (padding given
as a string, padding modes other than zeros) go to Opacus' own sampler.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn


def _covered(layer: nn.Module, backprops: torch.Tensor) -> bool:
    return (
        layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)  # "same" may pad unevenly: left to Opacus
        and backprops.shape[0] > 0
    )


@register_grad_sampler([nn.Conv1d, nn.Conv2d, nn.Conv3d])
def conv_grad_sample(
    layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Each example's gradient of ``layer.weight`` (and bias), shaped ``(n, *param.shape)``."""
    if not _covered(layer, backprops):
        return compute_conv_grad_sample(layer, activations, backprops)
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out_channels, *per_group_kernel = layer.weight.shape
        # example i's input channels meet only example i's output gradient: groups = n x groups
        shape_only = backprops.new_empty((n * out_channels, *per_group_kernel))
        _, weight_grad, _ = torch.ops.aten.convolution_backward(
            backprops.reshape(1, n * out_channels, *backprops.shape[2:]),
            x.reshape(1, n * x.shape[1], *x.shape[2:]),
            shape_only, None, layer.stride, layer.padding, layer.dilation,
            False, [0] * len(layer.stride), n * layer.groups, (False, True, False),
        )
        grads[layer.weight] = weight_grad.view(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = backprops.sum(dim=tuple(range(2, backprops.ndim)))
    return grads
