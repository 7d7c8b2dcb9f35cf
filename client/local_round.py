"""A site's local work in a round, for every task: train (with or without DP-SGD) and validate.

The ClientApp and the baselines go through these functions, so a task trains and is
validated the same way in every mode; the task's own loop comes from the task table.
"""

from __future__ import annotations

import torch
from torch import nn

from medfed.client.privacy import PrivateTraining, SiteAccountant
from medfed.tasks import task
from medfed.wire import DPSettings, TrainSettings


def local_train(model: nn.Module, data, s: TrainSettings, device: torch.device,
                dp: DPSettings | None = None, accountant: SiteAccountant | None = None) -> dict:
    """One round of local training in place; under DP (``dp`` with the site's
    ``accountant``: one `PrivateTraining` wrapper around the task's own loop) also the
    privacy spent. `BudgetExhausted` before anything trains when the round would pass the
    site's budget."""
    private = PrivateTraining(dp, accountant, len(data), s) if dp is not None else None
    return task(s.task).file("train").train(model, data, s, device, private)


def local_validate(model: nn.Module, data, s: TrainSettings, device: torch.device, histogram: bool = False) -> dict:
    """The model's metrics on a site's validation data (none for the GAN, whose quality
    is measured on the server's test set); ``histogram``: binary score histograms too."""
    return task(s.task).file("train").validate(model, data, s, device, histogram)
