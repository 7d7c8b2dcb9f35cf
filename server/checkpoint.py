"""Round checkpoints of the global model and the strategy, for ``--resume``.

A checkpoint holds the round just finished, the global weights, the strategy's own
state (server momentum, FedAdam moments), the configuration it was made with and the
``metrics.jsonl`` lines of the finished rounds (the privacy ledger and the report are
rebuilt from them, so resume does not depend on a file a kill can cut short). It is
written to a temporary file, flushed to disk and renamed, so a crash never leaves half
a checkpoint: the last one stays until the new one is whole.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medfed.errors import CheckpointError
from medfed.faults import kill_point

FORMAT = 3  # 3 carries the round lines; 2 did not (they are then read from metrics.jsonl)
READABLE = (2, 3)


@dataclass
class Checkpoint:
    round: int  # the last finished round
    weights: dict[str, torch.Tensor]  # the global model after it
    rounds: list[str] | None  # metrics.jsonl's lines of rounds 1..round; None in format 2


def strategy_state(strategy: object) -> dict[str, Any]:
    """The strategy's attributes that change between rounds (plain data, no callables).

    Objects that save themselves (Flower's privacy accountants) are kept as their
    ``state_dict``; a wrapped strategy (the DP wrappers) is saved the same way, nested.
    """
    state: dict[str, Any] = {}
    for key, value in vars(strategy).items():
        if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
            state[key] = ("state_dict", value.state_dict())
        elif hasattr(value, "configure_train"):
            state[key] = ("strategy", strategy_state(value))
        elif not callable(value):
            state[key] = ("value", value)
    return state


def restore_strategy(strategy: object, state: dict[str, Any]) -> None:
    for key, (kind, value) in state.items():
        if kind == "state_dict":
            getattr(strategy, key).load_state_dict(value)
        elif kind == "strategy":
            restore_strategy(getattr(strategy, key), value)
        else:
            setattr(strategy, key, value)


def save_checkpoint(
    path: Path, round_: int, weights: dict[str, torch.Tensor], strategy: object, fingerprint: str,
    rounds: list[str],
) -> None:
    """Write the checkpoint after ``round_``; ``rounds``: the metrics.jsonl lines so far."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        torch.save(
            {
                "format": FORMAT,
                "round": round_,
                "weights": weights,
                "strategy": pickle.dumps(strategy_state(strategy)),
                "fingerprint": fingerprint,
                "rounds": list(rounds),
            },
            f,
        )
        f.flush()
        os.fsync(f.fileno())
    kill_point("checkpoint-write", round_)
    partial.replace(path)


def load_checkpoint(path: Path, strategy: object, fingerprint: str) -> Checkpoint:
    """Restore the strategy's state from ``path``; return the rest of the checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {path}")
    try:
        # Our own file, written by save_checkpoint; it holds the pickled strategy state.
        data = torch.load(path, weights_only=False)
        state = pickle.loads(data["strategy"])
        saved = Checkpoint(int(data["round"]), data["weights"], data.get("rounds"))
    except Exception as exc:  # a truncated or foreign file fails in many ways
        raise CheckpointError(f"{path}: corrupt or not a medfed checkpoint ({exc})") from exc
    if data.get("format") not in READABLE:
        raise CheckpointError(f"{path}: checkpoint format {data.get('format')} is not {FORMAT}")
    if saved.rounds is not None and len(saved.rounds) != saved.round:
        raise CheckpointError(f"{path}: holds {len(saved.rounds)} round lines for {saved.round} rounds")
    if data.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: made with a different configuration; resume with the run's own config.yaml"
        )
    try:
        restore_strategy(strategy, state)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its strategy state does not fit this strategy ({exc})") from exc
    return saved
