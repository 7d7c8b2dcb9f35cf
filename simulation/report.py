"""The partition report: label counts per site as a table (CSV, terminal) and stacked bars (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from medfed.simulation.partition import SiteShard, case_name, strata  # noqa: E402

CASES = "cases.csv"


def label_counts(sites: list[SiteShard], class_names: list[str]) -> pd.DataFrame:
    """Rows: sites; columns: classes (train + validation) and the total."""
    rows = {}
    for site in sites:
        labels = np.concatenate([strata(site.train), strata(site.val)])
        rows[site.name] = np.bincount(labels, minlength=len(class_names))[:len(class_names)]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=class_names)
    table["total"] = table.sum(axis=1)
    return table


def write_partition_report(
    sites: list[SiteShard], class_names: list[str], folder: Path, title: str, scanners: list | None = None
) -> pd.DataFrame:
    """``partition.csv`` and ``partition.png`` in ``folder``; returns the table."""
    table = label_counts(sites, class_names)
    if scanners and any(scanners):
        for key in ("gamma", "blur_sigma", "noise_std", "resolution"):
            table[key] = [s.describe()[key] if s else None for s in scanners]
    table.to_csv(folder / "partition.csv", index_label="site")
    fig = partition_figure(table[class_names], title)
    fig.savefig(folder / "partition.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return table


def partition_figure(counts: pd.DataFrame, title: str):
    """Each site's label mix: images per class (left) and each class's share (right),
    under a bar of all sites together.

    A colour scale over raw counts is set by the largest site, which hides the skew the
    partition exists to show; shares put every site on the same footing. The caller
    closes the figure."""
    sites, classes = counts.shape
    if classes == 1:  # segmentation: no labels to mix, only sizes
        return _sizes_figure(counts, title)
    colours = sns.color_palette("colorblind" if classes <= 10 else "husl", classes)
    fig = plt.figure(figsize=(11, min(2.2 + 0.3 * sites, 40)), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 2], height_ratios=[0.5, max(1.5, 0.3 * sites)])
    key, pooled = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    left = fig.add_subplot(grid[1, 0])
    right = fig.add_subplot(grid[1, 1], sharey=left, sharex=pooled)
    _stacked(left, counts, colours)
    _stacked(right, counts.div(counts.sum(axis=1).replace(0, 1), axis=0), colours)
    total = counts.sum().to_frame("all sites").T
    _stacked(pooled, total / max(total.to_numpy().sum(), 1), colours)
    pooled.set(title="label mix of all sites together", xlim=(0, 1))
    pooled.tick_params(axis="x", labelbottom=False)
    if classes == 2:  # one boundary: a line through every site shows who is off the mix
        right.axvline(float(total.iloc[0, 0] / max(total.to_numpy().sum(), 1)), color="black",
                      linestyle="--", linewidth=1)
    _label_sizes(left, counts)
    right.set(xlabel="share of the site's images", title="label mix per site"
              + (" (dashed: all sites)" if classes == 2 else ""))
    right.tick_params(axis="y", left=False, labelleft=False)
    key.axis("off")
    key.legend(handles=[Patch(color=c, label=str(name)) for c, name in zip(colours, counts.columns)],
               loc="center", ncol=min(classes, 3), frameon=False, title="label", fontsize=9)
    fig.suptitle(title)
    return fig


def _sizes_figure(counts: pd.DataFrame, title: str):
    fig, ax = plt.subplots(figsize=(7, min(1.5 + 0.3 * len(counts), 40)), layout="constrained")
    _stacked(ax, counts, sns.color_palette("colorblind", 1))
    _label_sizes(ax, counts)
    ax.set_title(title)
    return fig


def _label_sizes(ax, counts: pd.DataFrame) -> None:
    """Site names down the side, first on top as in partition.csv, each bar's total at its end."""
    sites = len(counts)
    if sites <= 40:
        for row, n in enumerate(counts.sum(axis=1)):
            ax.annotate(f"{n}", (n, row), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.margins(x=0.08)  # room for the totals
    ax.set(xlabel="images", ylabel="site", title="images per site")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8 if sites <= 40 else 6)


def _stacked(ax, table: pd.DataFrame, colours) -> None:
    """Horizontal bars, one per site, stacked by class."""
    rows = np.arange(len(table))
    left = np.zeros(len(table))
    for colour, column in zip(colours, table.columns):
        values = table[column].to_numpy(dtype=float)
        ax.barh(rows, values, left=left, color=colour, height=0.8)
        left += values
    ax.set_yticks(rows, [str(name) for name in table.index])
    ax.margins(y=0.01)


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


def write_case_split(sites: list[SiteShard], test, out: Path) -> Path:
    """``cases.csv``: where every case (patient) went, one row per case and role: the site
    and ``train``/``val``/``test``, or the global ``test`` set (site empty), with its item count."""
    rows = []
    parts = [(site.name, role, data) for site in sites
             for role, data in (("train", site.train), ("val", site.val), ("test", site.test)) if data is not None]
    held_out = any(site.test is not None for site in sites)  # then the global test set is their union
    parts += [] if held_out else [("", "test", test)]
    for site, role, data in parts:
        counts = pd.Series([case_name(n) for n in data.names]).value_counts(sort=False)
        rows += [{"case": case, "site": site, "role": role, "items": int(n)} for case, n in counts.items()]
    table = pd.DataFrame(rows, columns=["case", "site", "role", "items"])
    path = out / CASES
    partial = path.with_name(CASES + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(path)
    return path

