"""The partition report: label counts per site as a table (CSV, terminal) and a heatmap PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from medfed.simulation.partition import SiteShard, strata  # noqa: E402


def label_counts(sites: list[SiteShard], num_classes: int) -> pd.DataFrame:
    """Rows: sites; columns: classes (train + validation) and the total."""
    rows = {}
    for site in sites:
        labels = np.concatenate([strata(site.train), strata(site.val)])
        rows[site.name] = np.bincount(labels, minlength=num_classes)[:num_classes]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[f"class {k}" for k in range(num_classes)])
    table["total"] = table.sum(axis=1)
    return table


def write_partition_report(
    sites: list[SiteShard], num_classes: int, folder: Path, title: str, scanners: list | None = None
) -> pd.DataFrame:
    """``partition.csv`` and ``partition.png`` in ``folder``; returns the table."""
    table = label_counts(sites, num_classes)
    if scanners and any(scanners):
        for key in ("gamma", "blur_sigma", "noise_std", "resolution"):
            table[key] = [s.describe()[key] if s else None for s in scanners]
    table.to_csv(folder / "partition.csv", index_label="site")

    counts = table[[c for c in table.columns if c.startswith("class ")]]
    height = 1.5 + 0.35 * len(counts)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * counts.shape[1], min(height, 40)))
    sns.heatmap(counts, annot=len(counts) <= 40, fmt="d", cmap="Blues", ax=ax, cbar_kws={"label": "images"})
    ax.set(title=title, xlabel="label", ylabel="site")
    fig.tight_layout()
    fig.savefig(folder / "partition.png", dpi=110)
    plt.close(fig)
    return table


def print_partition_table(table: pd.DataFrame, console: Console, limit: int = 20) -> None:
    view = Table(title="Label counts per site")
    view.add_column("site")
    for column in table.columns:
        view.add_column(str(column), justify="right")
    for name, row in list(table.iterrows())[:limit]:
        view.add_row(str(name), *[f"{v}" for v in row.to_numpy()])
    if len(table) > limit:
        view.add_row(f"... {len(table) - limit} more", *[""] * len(table.columns))
    console.print(view)
