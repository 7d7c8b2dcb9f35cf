"""FedBN (Li et al., ICLR 2021): normalisation layers stay at each site.

Flower has no FedBN. The server side is FedAvg plus one flag in the round's config;
the site keeps its own normalisation parameters and statistics and puts them back
after loading each global model (see `keep_local_norm`). The server still averages
them, only so that the global checkpoint is a complete model that can be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from medfed.wire import FEDBN_FLAG

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class FedBN(FedAvg):
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[FEDBN_FLAG] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[FEDBN_FLAG] = True  # sites evaluate with their own normalisation layers
        return super().configure_evaluate(server_round, arrays, config, grid)


def norm_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every normalisation layer (weights and running statistics)."""
    keys = []
    for prefix, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            keys += [f"{prefix}.{name}" if prefix else name for name in module.state_dict()]
    return keys


def keep_local_norm(model: nn.Module, saved: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Put the site's saved normalisation state back into ``model``; return the keys' state.

    On a site's first round nothing is saved yet and the global values are kept.
    """
    if saved:
        model.load_state_dict(saved, strict=False)
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in norm_state_keys(model)}
