"""Learning curves of a run, as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


TEST_METRICS = ("auc", "accuracy", "balanced_accuracy", "dice", "iou", "tstr_auc")
SITE_METRICS = ("dice", "auc")  # the first a run reports is drawn per site


def plot_learning_curves(rows: list[dict], path: Path) -> None:
    """Global test metrics per round (left) and each site's validation AUC (right)."""
    if not rows:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for metric in TEST_METRICS:
        points = [(r["round"], r["test"].get(metric)) for r in rows if r["test"].get(metric) is not None]
        if points:  # rounds without a test evaluation (evaluation.every) are skipped
            left.plot(*zip(*points), marker="o", label=f"test {metric}")
    left.set(xlabel="round", ylabel="global test metric", title="Global model", ylim=(0, 1.02))
    left.legend()
    # federated: the global model on each site's validation data; local: each site's own model on the test set
    federated = any("global_model_at_sites" in r for r in rows)
    key, prefix = ("global_model_at_sites", "val_") if federated else ("sites", "test_")
    found = {m for r in rows for site in r.get(key, {}).values() for m in site}
    name = next((m for m in SITE_METRICS if prefix + m in found), "auc")
    metric = prefix + name
    ylabel = (f"global model's {name} on site validation data" if federated else f"local model's test {name}")
    sites = sorted({s for r in rows for s in r.get(key, {})})
    for site in sites:
        points = [(r["round"], r[key][site].get(metric)) for r in rows if site in r.get(key, {})]
        right.plot([p[0] for p in points], [p[1] for p in points], alpha=0.7, label=site)
    right.set(xlabel="round", ylabel=ylabel, title="Sites", ylim=(0, 1.02))
    for axis in (left, right):
        axis.xaxis.get_major_locator().set_params(integer=True)
    if 0 < len(sites) <= 12:
        right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_privacy(rows: list[dict], path: Path) -> None:
    """Epsilon spent after each round: every site (sample-level) or the federation (client-level)."""
    rows = [r for r in rows if r.get("privacy")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = [r["round"] for r in rows]
    sites = sorted({s for r in rows for s in r["privacy"].get("sites", {})})
    for site in sites:
        ax.plot(rounds, [r["privacy"]["sites"].get(site, {}).get("epsilon") for r in rows], alpha=0.7, label=site)
    ax.plot(rounds, [r["privacy"].get("epsilon") for r in rows], color="black", linewidth=2,
            marker="o", label="worst case" if sites else "federation")
    ax.set(xlabel="round", ylabel=f"epsilon (delta={rows[-1]['privacy'].get('delta')})",
           title=rows[-1]["privacy"]["mechanism"])
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(sites) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
