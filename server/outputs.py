"""A run's directory: what a finished (or stopped) run leaves for its users.

``config.yaml`` (resolved), ``metrics.jsonl`` (a line per round), plots as PNG, the
final model and, written last, ``summary.json``: a run without it never finished.
Optional wandb logging mirrors the round lines (offline unless the user logged in).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from medfed.server.plots import plot_learning_curves

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
MODEL, CURVES, CHECKPOINT = "model.pt", "learning_curves.png", "checkpoints/last.pt"


def json_safe(value: Any) -> Any:
    """NaN and infinities become null, so every file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy and torch scalars
        return json_safe(value.item())
    return value


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


class RunOutputs:
    def __init__(self, run_dir: Path, wandb_run: Any = None) -> None:
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb_run

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_config(self, yaml_text: str) -> None:
        write_atomic(self.path(CONFIG), yaml_text)

    def rounds(self) -> list[dict]:
        file = self.path(METRICS)
        if not file.is_file():
            return []
        # a line without its newline was cut short by a kill: that round is redone on resume
        *complete, _torn = file.read_text().split("\n")
        return [json.loads(line) for line in complete if line.strip()]

    def keep_rounds_up_to(self, last_round: int) -> None:
        """On resume, forget lines of rounds after the checkpoint (they will be redone)."""
        kept = [r for r in self.rounds() if r["round"] <= last_round]
        write_atomic(self.path(METRICS), "".join(json.dumps(r) + "\n" for r in kept))

    def log_round(self, row: dict) -> None:
        row = json_safe(row)
        with self.path(METRICS).open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            flat = {f"test/{k}": v for k, v in row.get("test", {}).items()}
            for site, values in row.get("sites", {}).items():
                flat.update({f"{site}/{k}": v for k, v in values.items()})
            self.wandb_run.log(flat, step=row["round"])

    def save_model(self, weights: dict[str, torch.Tensor], meta: dict) -> None:
        partial = self.path(MODEL + ".partial")
        torch.save({"weights": weights, "meta": meta}, partial)
        partial.replace(self.path(MODEL))

    def plot(self) -> None:
        plot_learning_curves(self.rounds(), self.path(CURVES))

    def write_summary(self, summary: dict) -> None:
        """The last file of a run: its presence means the run finished."""
        write_atomic(self.path(SUMMARY), json.dumps(json_safe(summary), indent=2) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.summary.update(json_safe({"test": summary.get("test", {})}))
            self.wandb_run.finish()


def start_wandb(enabled: bool, project: str, name: str, config: dict, run_dir: Path) -> Any:
    """A wandb run, offline unless the user has logged in (``WANDB_API_KEY`` or ``WANDB_MODE``)."""
    if not enabled:
        return None
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode)
