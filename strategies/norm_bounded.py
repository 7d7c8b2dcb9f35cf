"""Norm-bounded FedAvg: each site's update is clipped to an L2 bound before averaging.

Flower lacks it as a plain robust rule: its fixed-clipping DP wrappers clip the same way
(and this module uses their clipping function) but always add noise and account privacy.
Bounding the norm caps what one site can move the model (Sun et al. 2019, "Can you
really backdoor federated learning?"). Without a fixed bound, each round's bound is the
median of that round's update norms, which adapts to the model and learning rate and
cannot be raised by a minority of sites.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm


class NormBoundedFedAvg(FedAvg):
    def __init__(self, norm_bound: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.norm_bound = norm_bound
        self.current_arrays: ArrayRecord | None = None
        self.last_bound: float | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays  # the updates are measured from the model sent out
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [r for r in replies if not r.has_error()]
        if valid and self.current_arrays is not None:
            current = self.current_arrays.to_numpy_ndarrays()
            updates = {id(r): [np.subtract(w, g) for w, g in zip(_arrays(r).to_numpy_ndarrays(), current)]
                       for r in valid}
            self.last_bound = self.norm_bound or float(np.median([get_norm(u) for u in updates.values()]))
            for reply in valid:
                record = _arrays(reply)
                weights = record.to_numpy_ndarrays()
                compute_clip_model_update(weights, current, self.last_bound)
                reply.content[self.arrayrecord_key] = ArrayRecord(
                    dict(zip(record.keys(), (Array(np.asarray(w)) for w in weights))))
        return super().aggregate_train(server_round, replies)


def _arrays(reply: Message) -> ArrayRecord:
    return next(iter(reply.content.array_records.values()))
