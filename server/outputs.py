"""A run's directory: what a finished (or stopped) run leaves for its users.

``config.yaml`` (resolved), ``metrics.jsonl`` (a line per round), plots as PNG, the
final model and, written last, ``summary.json``: a run without it never finished.
Optional wandb logging mirrors the round lines (offline unless the user logged in).

``metrics.jsonl`` is for people and plots; what ``--resume`` needs of the finished
rounds travels in the checkpoint, which puts the file back as it was when a run that was
killed (or a user) left it cut short, damaged or deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any

import torch

from medfed.errors import MedfedError
from medfed.server.plots import plot_learning_curves

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
MODEL, CURVES, CHECKPOINT = "model.pt", "learning_curves.png", "checkpoints/last.pt"
SITES = "sites.json"  # a deployed run's site-NNN -> name table
RUN_KEY = "checkpoints/run-key"  # the run's identity for the sites, kept across --resume
log = logging.getLogger("medfed.server")


class RunFileError(MedfedError):
    """A file of the run folder cannot be read back."""


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

    def run_key(self, resume: bool) -> str:
        """A random name for this run, made at its start and read back on ``--resume``: the
        sites tell a round sent again from another run's by it (Flower's run id changes)."""
        file = self.path(RUN_KEY)
        if resume and file.is_file() and (kept := file.read_text().strip()):
            return kept
        file.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(16)
        write_atomic(file, key + "\n")
        return key

    def rounds(self) -> list[dict]:
        """The round lines of ``metrics.jsonl``; `RunFileError` naming a damaged line."""
        file = self.path(METRICS)
        if not file.is_file():
            return []
        # a line without its newline was cut short by a kill: that round is redone on resume
        *complete, _torn = file.read_text().split("\n")
        return [_round_line(file, number, line) for number, line in enumerate(complete, 1) if line.strip()]

    def finished_rounds(self, last_round: int) -> list[str]:
        """The lines of rounds 1 to ``last_round`` from ``metrics.jsonl``, for a checkpoint
        that does not carry them (format 2); `RunFileError` if any is missing or damaged."""
        rows = [row for row in self.rounds() if row["round"] <= last_round]
        if [row["round"] for row in rows] != list(range(1, last_round + 1)):
            raise RunFileError(
                f"{self.path(METRICS)}: the checkpoint is after round {last_round}, but this file holds "
                f"rounds {[row['round'] for row in rows]}: the finished rounds cannot be recovered")
        return [json.dumps(row) for row in rows]

    def restore_rounds(self, lines: list[str]) -> None:
        """On resume: ``metrics.jsonl`` becomes exactly the finished rounds' ``lines`` (from
        the checkpoint); rounds after them are dropped, as they will be redone."""
        file, text = self.path(METRICS), "".join(line + "\n" for line in lines)
        if lines and not (file.is_file() and file.read_text(errors="replace").startswith(text)):
            log.warning("%s lacked finished rounds (cut short, damaged or deleted): rebuilt from the checkpoint",
                        file)
        write_atomic(file, text)

    def log_round(self, row: dict) -> str:
        """Append the round's line (strict JSON) to ``metrics.jsonl``; returns it."""
        row = json_safe(row)
        line = json.dumps(row)
        with self.path(METRICS).open("a") as f:
            f.write(line + "\n")
        if self.wandb_run is not None:
            flat = {f"test/{k}": v for k, v in row.get("test", {}).items()}
            for site, values in row.get("sites", {}).items():
                flat.update({f"{site}/{k}": v for k, v in values.items()})
            self.wandb_run.log(flat, step=row["round"])
        return line

    def save_model(self, weights: dict[str, torch.Tensor], meta: dict, file: str = MODEL) -> Path:
        """``model.pt`` (or ``file``, e.g. ``models/site-000.pt``), written whole."""
        path = self.path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save({"weights": weights, "meta": meta}, partial)
        partial.replace(path)
        return path

    def site_names(self) -> dict[str, str]:
        """``site-NNN -> name`` from ``sites.json`` (a deployed run's); none without it."""
        try:
            table = json.loads(self.path(SITES).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}

    def plot(self, site_names: dict[str, str] | None = None) -> None:
        """``learning_curves.png``, sites by name where known (``site_names``, else ``sites.json``)."""
        plot_learning_curves(self.rounds(), self.path(CURVES), site_names or self.site_names())

    def write_summary(self, summary: dict) -> None:
        """The last file of a run: its presence means the run finished."""
        write_atomic(self.path(SUMMARY), json.dumps(json_safe(summary), indent=2) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.summary.update(json_safe({"test": summary.get("test", {})}))
            self.wandb_run.finish()


def _round_line(file: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise RunFileError(f"{file}: line {number} is not a round's JSON line ({exc})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("round"), int):
        raise RunFileError(f"{file}: line {number} is not a round's JSON line (no round number)")
    return row


def start_wandb(enabled: bool, project: str, name: str, config: dict, run_dir: Path) -> Any:
    """A wandb run, offline unless the user has logged in (``WANDB_API_KEY`` or ``WANDB_MODE``)."""
    if not enabled:
        return None
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode)
