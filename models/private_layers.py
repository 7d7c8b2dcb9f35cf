"""Networks that Opacus can train privately: the layers it cannot are replaced.

Every party rebuilds a DP-compatible network the same way from `ModelSpec.dp_compatible`,
so this sits with the networks, below the sites' DP-SGD and the server.
"""

from __future__ import annotations

from torch import nn


def make_private_model(model: nn.Module) -> nn.Module:
    """The model with every layer Opacus cannot train privately replaced (BatchNorm
    becomes GroupNorm); unchanged if it is already DP-compatible."""
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    for module in model.modules():  # Opacus' hooks cannot see through in-place activations
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


def incompatible_layers(model: nn.Module) -> dict[str, int]:
    """Layer types of ``model`` that `make_private_model` replaces, with their counts."""
    from opacus.validators import ModuleValidator

    counts: dict[str, int] = {}
    for module in model.modules():
        if type(module) in ModuleValidator.FIXERS:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts
