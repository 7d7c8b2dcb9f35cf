"""Privacy-utility sweep: the same federation at several epsilon targets.

Each target runs as its own experiment (its own folder with the full report); the
sweep collects test AUC, the epsilon actually spent and the membership-inference
attack into ``sweep.csv`` and plots AUC against epsilon in ``privacy_utility.png``.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from rich.console import Console  # noqa: E402

from medfed.errors import ConfigError  # noqa: E402
from medfed.simulation.experiment import run_experiment  # noqa: E402

COLUMNS = ("target_epsilon", "epsilon_spent", "test_auc", "test_accuracy", "attack_auc",
           "attack_tpr_at_1pct_fpr", "calibrated_attack_auc", "calibrated_attack_tpr_at_1pct_fpr",
           "canary_attack_auc", "canary_attack_tpr_at_1pct_fpr", "stopped_early", "run")


def parse_targets(text: str) -> list[float | None]:
    """``none,8,4,2,1`` -> [None, 8.0, 4.0, 2.0, 1.0]; ``none`` is the run without DP."""
    targets: list[float | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in ("none", "inf"):
            targets.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--epsilons: '{item}' is not a number or 'none'") from None
        if not value > 0:
            raise ConfigError(f"--epsilons: {value} must be > 0")
        targets.append(value)
    return targets


def run_sweep(cfg: DictConfig, targets: list[float | None], out: Path, console: Console) -> list[dict]:
    if cfg.privacy.mechanism == "none":
        raise ConfigError("a sweep needs privacy.mechanism=sample or client to choose the noise")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for target in targets:
        run_cfg = copy.deepcopy(cfg)  # DictConfig.copy() would share the nested nodes
        label = "none" if target is None else f"{target:g}"
        if target is None:
            run_cfg.privacy.mechanism = "none"
        else:
            run_cfg.privacy.target_epsilon, run_cfg.privacy.noise_multiplier = target, None
            run_cfg.privacy.max_epsilon = None
        console.print(f"[bold]sweep:[/] target epsilon {label}")
        run_dir = out / f"epsilon-{label}"
        summary = run_experiment(run_cfg, run_dir, resume=(run_dir / "config.yaml").is_file(), console=console) \
            if not (run_dir / "summary.json").is_file() else _read(run_dir)
        attack = summary["privacy"].get("membership_inference") or {}
        rows.append({
            "target_epsilon": "" if target is None else target,
            "epsilon_spent": summary["privacy"].get("epsilon"),
            "test_auc": summary["test"].get("auc"),
            "test_accuracy": summary["test"].get("accuracy"),
            "attack_auc": attack.get("auc"),
            "attack_tpr_at_1pct_fpr": attack.get("tpr_at_1pct_fpr"),
            "calibrated_attack_auc": attack.get("calibrated", {}).get("auc"),
            "calibrated_attack_tpr_at_1pct_fpr": attack.get("calibrated", {}).get("tpr_at_1pct_fpr"),
            "canary_attack_auc": attack.get("canaries", {}).get("auc"),
            "canary_attack_tpr_at_1pct_fpr": attack.get("canaries", {}).get("tpr_at_1pct_fpr"),
            "stopped_early": summary.get("stopped_early") or "",
            "run": run_dir.name,
        })
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_sweep(rows, out / "privacy_utility.png", cfg.name)
    return rows


def _read(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "summary.json").read_text())


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    private = [r for r in rows if r["target_epsilon"] != "" and r["test_auc"] is not None]
    baseline = [r for r in rows if r["target_epsilon"] == ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    if private:
        xs = [r["epsilon_spent"] or r["target_epsilon"] for r in private]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [private[i]["test_auc"] for i in order], marker="o", label="DP")
        ax.set_xscale("log")
    for r in baseline:
        if r["test_auc"] is not None and not math.isnan(r["test_auc"]):
            ax.axhline(r["test_auc"], color="grey", linestyle="--", label="no DP")
    ax.set(xlabel="epsilon spent (worst site)", ylabel="global test AUC", title=f"{title}: privacy-utility")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
