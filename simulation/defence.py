"""Defence report: the same federation under each attack, aggregated by each rule.

Every cell of the grid is its own experiment (its own folder with the full report),
and a finished cell is reused when the report is run again. The report collects test
AUC, how far it fell from the clean run of the same rule, and how many updates the
server rejected into ``defence.csv``, and draws the AUC grid in ``defence.png``.
A cell whose run fails (a rule that cannot aggregate what is left, say) is recorded
with its error and the grid goes on.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from rich.console import Console  # noqa: E402

from medfed.config import (  # noqa: E402
    ATTACKS,
    STRATEGIES,  # noqa: E402
    to_yaml,
    validate,
)
from medfed.errors import ConfigError, MedfedError  # noqa: E402
from medfed.server.outputs import CONFIG, RunOutputs  # noqa: E402
from medfed.simulation.experiment import run_experiment  # noqa: E402

COLUMNS = ("attack", "rule", "test_auc", "auc_drop", "updates_rejected", "sites_failed", "failed", "run")
NORM_CHECK = "+normcheck"  # rule suffix: the server's update norm check on, at DEFAULT_ZSCORE
DEFAULT_ZSCORE = 3.5
DEFAULT_DROPOUT = 0.3


def parse_attacks(text: str) -> list[str]:
    """``none,scale,nan,dropout=0.3``: behaviours of attack.sites, or random dropouts."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item.startswith("dropout"):
            _dropout(item)
        elif item not in ATTACKS:
            raise ConfigError(f"--attacks: '{item}' is not one of {', '.join(ATTACKS)} or dropout=P")
    return items


def parse_rules(text: str) -> list[str]:
    """``fedavg,fedavg+normcheck,fedmedian,krum``: strategy names, optionally with the norm check."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item.removesuffix(NORM_CHECK) not in STRATEGIES:
            raise ConfigError(f"--rules: '{item}' is not one of {', '.join(STRATEGIES)} (add {NORM_CHECK} "
                              "to turn the server's norm check on)")
    return items


def _dropout(item: str) -> float:
    _, _, value = item.partition("=")
    try:
        p = float(value) if value else DEFAULT_DROPOUT
    except ValueError:
        raise ConfigError(f"--attacks: '{item}' should be dropout=P with P a probability") from None
    if not 0 < p < 1:
        raise ConfigError(f"--attacks: '{item}': the dropout probability must be in (0, 1)")
    return p


def cell_config(cfg: DictConfig, attack: str, rule: str) -> DictConfig:
    """``cfg`` with one attack and one aggregation rule (checked as any config is)."""
    run = copy.deepcopy(cfg)  # DictConfig.copy() would share the nested nodes
    if attack.startswith("dropout"):
        run.attack.behaviour, run.faults.dropout = "none", _dropout(attack)
    else:
        run.attack.behaviour = attack
    if run.attack.behaviour == "none":
        run.attack.sites = []  # no one attacks: the same cell whichever sites the config marks
    run.strategy.name = rule.removesuffix(NORM_CHECK)
    if rule.endswith(NORM_CHECK):
        run.robustness.norm_zscore = cfg.robustness.norm_zscore or DEFAULT_ZSCORE
    validate(run)
    return run


def run_defence(cfg: DictConfig, attacks: list[str], rules: list[str], out: Path, console: Console) -> list[dict]:
    cells = [(attack, rule, cell_config(cfg, attack, rule)) for attack in attacks for rule in rules]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for attack, rule, run_cfg in cells:
        console.print(f"[bold]defence:[/] attack {attack}, rule {rule}")
        run_dir = out / f"{attack.replace('=', '')}--{rule.replace('+', '-')}"
        rows.append(_cell(attack, rule, run_cfg, run_dir, console))
    clean = {r["rule"]: r["test_auc"] for r in rows if r["attack"] == "none"}
    for row in rows:
        if row["rule"] in clean and row["test_auc"] is not None and clean[row["rule"]] is not None:
            row["auc_drop"] = clean[row["rule"]] - row["test_auc"]
    with (out / "defence.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_defence(rows, attacks, rules, out / "defence.png", cfg.name)
    return rows


def _cell(attack: str, rule: str, run_cfg: DictConfig, run_dir: Path, console: Console) -> dict:
    row = {"attack": attack, "rule": rule, "test_auc": None, "auc_drop": None, "updates_rejected": 0,
           "sites_failed": 0, "failed": "", "run": run_dir.name}
    if (run_dir / CONFIG).is_file() and (run_dir / CONFIG).read_text() != to_yaml(run_cfg):
        raise ConfigError(f"{run_dir} holds a run of another configuration: choose another --output")
    try:
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            summary = run_experiment(run_cfg, run_dir, resume=(run_dir / "config.yaml").is_file(), console=console)
    except MedfedError as exc:
        row["failed"] = str(exc)
    except Exception as exc:  # an attack may break a run in ways no check foresaw: record it, go on
        row["failed"] = f"{type(exc).__name__}: {exc}"
    rounds = RunOutputs(run_dir).rounds()
    if row["failed"]:
        console.print(f"[yellow]defence:[/] attack {attack}, rule {rule} failed: {row['failed']}", soft_wrap=True)
        # the test AUC of its last finished round, if any: how far it had fallen when it stopped
        row.update(test_auc=rounds[-1]["test"].get("auc") if rounds else None,
                   updates_rejected=sum(len(r.get("updates_rejected") or {}) for r in rounds))
    else:
        row.update(test_auc=summary["test"].get("auc"), updates_rejected=len(summary.get("updates_rejected") or []))
    row["sites_failed"] = sum(len(r.get("sites_failed") or []) for r in rounds)
    return row


def plot_defence(rows: list[dict], attacks: list[str], rules: list[str], path: Path, title: str) -> None:
    grid = np.full((len(attacks), len(rules)), np.nan)
    for row in rows:
        if row["test_auc"] is not None and math.isfinite(row["test_auc"]):
            grid[attacks.index(row["attack"]), rules.index(row["rule"])] = row["test_auc"]
    fig, ax = plt.subplots(figsize=(1.3 * len(rules) + 2, 0.6 * len(attacks) + 1.8))
    image = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for i in range(len(attacks)):
        for j in range(len(rules)):
            ax.text(j, i, "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}", ha="center", va="center",
                    fontsize=8)
    ax.set_xticks(range(len(rules)), rules, rotation=30, ha="right")
    ax.set_yticks(range(len(attacks)), attacks)
    ax.set(xlabel="aggregation rule", ylabel="attack", title=f"{title}: global test AUC")
    fig.colorbar(image, ax=ax, label="test AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
