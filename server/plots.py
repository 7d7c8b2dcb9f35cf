"""Learning curves and privacy spending of a run, as PNG.

Every axis is scaled to the values it shows (with a margin), not to a fixed 0-1:
test AUCs of 0.85-0.98 would otherwise be a flat strip. A site whose metric is
undefined (a validation set of one class has no AUC) draws no line, so the legend says
why; validation sets are often small, so the legend gives each one's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

TEST_METRICS = ("auc", "accuracy", "balanced_accuracy", "dice", "iou", "tstr_auc")
SITE_METRICS = ("dice", "auc")  # the first a run reports is drawn per site
LEGEND_SITES = 12  # more sites than this: their median, and a note instead of a legend entry each
# why a site's metric is undefined on its validation data (models/classification/metrics.py)
UNDEFINED = {"auc": "one class in validation"}
NO_VALUE = "no value from its validation data"
DISPLAY = {"auc": "AUC", "dice": "Dice", "tstr_auc": "TSTR AUC", "iou": "IoU"}


def display(metric: str) -> str:
    return DISPLAY.get(metric, metric.replace("_", " "))


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def fitted_limits(values: list[float], bounds: tuple[float, float] = (0.0, 1.0),
                  margin: float = 0.08, least: float = 0.05) -> tuple[float, float]:
    """A y-range around ``values``: their span plus ``margin`` of it on each side, at
    least ``least`` wide, kept within ``bounds`` (with a sliver, so that a line at 1.0
    is not hidden by the frame)."""
    if not values:
        return bounds
    low, high = min(values), max(values)
    pad = max((high - low) * margin, (least - (high - low)) / 2, 0.005)
    sliver = 0.01 * (bounds[1] - bounds[0])
    return max(low - pad, bounds[0] - sliver), min(high + pad, bounds[1] + sliver)


@dataclass
class SiteCurve:
    """One site's points of the drawn metric, and what the legend says about it."""

    site: str
    label: str
    points: list[tuple[int, float]] = field(default_factory=list)
    size: int | None = None  # images the metric is computed on (validation), or trained on (local)

    @property
    def undefined(self) -> bool:
        return not self.points


def site_curves(rows: list[dict], site_names: dict[str, str] | None = None) -> tuple[str, bool, list[SiteCurve]]:
    """The per-site metric to draw, whether it is the federated view, and each site's curve.

    Federated: the global model on each site's validation data; local baseline: each
    site's own model on the test set (there ``size`` is what it trained on)."""
    federated = any("global_model_at_sites" in r for r in rows)
    key, prefix = ("global_model_at_sites", "val_") if federated else ("sites", "test_")
    found = {m for r in rows for site in (r.get(key) or {}).values() for m in site}
    name = next((m for m in SITE_METRICS if prefix + m in found), "auc")
    curves = {}
    for row in rows:
        for site, metrics in (row.get(key) or {}).items():
            curve = curves.setdefault(site, SiteCurve(site, (site_names or {}).get(site, site)))
            if finite(metrics.get(prefix + name)):
                curve.points.append((row["round"], float(metrics[prefix + name])))
            if metrics.get("num-examples") is not None:
                curve.size = int(metrics["num-examples"])
    return name, federated, [curves[s] for s in sorted(curves)]


def _legend_label(curve: SiteCurve, metric: str, federated: bool) -> str:
    size = "" if curve.size is None else f" (n={curve.size})"
    if not curve.undefined:
        return curve.label + size
    return f"{curve.label}{size}: {_undefined(metric, federated)}"


def _undefined(metric: str, federated: bool) -> str:
    why = UNDEFINED.get(metric, NO_VALUE) if federated else "no value on the test set"
    return f"{display(metric)} undefined ({why})"


def _draw_global(ax, rows: list[dict]) -> list[float]:
    """The run's test metrics; each its own line style, as metrics often coincide
    (accuracy and balanced accuracy on a balanced test set)."""
    values = []
    styles = iter(zip(("-", "--", ":", "-.") * 2, ("o", "s", "^", "D", "v", "P")))
    for metric in TEST_METRICS:
        points = [(r["round"], r["test"][metric]) for r in rows if finite(r.get("test", {}).get(metric))]
        if points:  # rounds without a test evaluation (evaluation.every) are skipped
            line, marker = next(styles)
            ax.plot(*zip(*points), linestyle=line, marker=marker, label=f"test {display(metric)}")
            values += [v for _, v in points]
    whose, title = _test_model(rows)
    ax.set(xlabel="round", ylabel=f"{whose} on the test set", title=title, ylim=fitted_limits(values))
    if values:
        ax.legend(fontsize=8, loc="best")
    return values


def _test_model(rows: list[dict]) -> tuple[str, str]:
    """Whose test metrics a run's lines hold: the global model, the pooled one, or the
    mean of the sites' own models (the local baseline)."""
    if any("global_model_at_sites" in r for r in rows):
        return "global model", "Global model"
    if any(r.get("sites") for r in rows):
        return "mean of the local models", "Local models (mean over sites)"
    return "pooled model", "Pooled model (all training data in one place)"


def _draw_sites(ax, rows: list[dict], site_names: dict[str, str] | None) -> list[SiteCurve]:
    metric, federated, curves = site_curves(rows, site_names)
    if len(curves) > LEGEND_SITES:
        values = _draw_crowd(ax, curves)
    else:
        values = _draw_each(ax, curves, metric, federated)
    where = "each site's validation data" if federated else "the test set"
    whose = "global model" if federated else "local model"
    ax.set(xlabel="round", ylabel=f"{whose}'s {display(metric)} on {where}",
           title="Sites" + ("" if federated else " (each trained alone)"), ylim=fitted_limits(values))
    if 0 < len(curves) <= LEGEND_SITES:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                  title=f"site (n: {'validation' if federated else 'training'} images;\nwider line: larger n)",
                  title_fontsize=7)
    elif curves:
        if values:
            ax.legend(fontsize=7, loc="best")
        ax.text(0.0, -0.2, _sites_note(curves, metric, federated), transform=ax.transAxes, fontsize=7,
                va="top", wrap=True)
    return curves


def _draw_each(ax, curves: list[SiteCurve], metric: str, federated: bool) -> list[float]:
    """A line and a legend entry per site; sites without a value get an entry saying why."""
    largest = max((c.size or 0 for c in curves), default=0)
    values = []
    for curve in sorted(curves, key=lambda c: c.undefined):  # sites with a line first
        label = _legend_label(curve, metric, federated)
        if curve.undefined:
            ax.add_line(Line2D([], [], color="grey", marker="x", linestyle="none", label=label))
            continue
        ax.plot(*zip(*curve.points), alpha=0.8, marker="." if len(curve.points) < 30 else None, label=label,
                linewidth=_width(curve.size, largest))
        values += [v for _, v in curve.points]
    return values


def _draw_crowd(ax, curves: list[SiteCurve]) -> list[float]:
    """Too many sites for a colour each: every site faint, the median and middle half over sites bold."""
    per_round: dict[int, list[float]] = {}
    for curve in curves:
        if curve.points:
            ax.plot(*zip(*curve.points), color="grey", alpha=0.25, linewidth=0.7)
        for rnd, value in curve.points:
            per_round.setdefault(rnd, []).append(value)
    if not per_round:
        return []
    rounds = sorted(per_round)
    low, median, high = np.array([np.percentile(per_round[r], [25, 50, 75]) for r in rounds]).T
    ax.fill_between(rounds, low, high, color="tab:blue", alpha=0.25, label="middle half of the sites")
    ax.plot(rounds, median, color="tab:blue", linewidth=2.5, marker="o", label="median over sites")
    ax.add_line(Line2D([], [], color="grey", alpha=0.5, linewidth=0.7, label="each site"))
    return [v for values in per_round.values() for v in values]


def _width(size: int | None, largest: int) -> float:
    """Thicker lines for larger sets: a 4-image validation AUC jumps about, a 300-image one does not."""
    if not size or not largest:
        return 1.5
    return 0.8 + 2.2 * math.sqrt(size / largest)


def _sites_note(curves: list[SiteCurve], metric: str, federated: bool) -> str:
    """What the legend would say, for too many sites to list."""
    sizes = [c.size for c in curves if c.size is not None]
    text = f"{len(curves)} sites"
    if sizes:
        text += f", {'validation' if federated else 'training'} sets of {min(sizes)}-{max(sizes)} images"
    undefined = [c.label for c in curves if c.undefined]
    if undefined:
        shown = ", ".join(undefined[:8]) + (f" and {len(undefined) - 8} more" if len(undefined) > 8 else "")
        text += f"; no line for {shown}: {_undefined(metric, federated)}"
    return text


def learning_curves_figure(rows: list[dict], site_names: dict[str, str] | None = None) -> Figure | None:
    """Test metrics per round (left) and each site's metric (right; none for the pooled
    baseline); the caller closes the figure. ``site_names`` maps ``site-NNN`` to a name (deployed runs)."""
    if not rows:
        return None
    with_sites = any(r.get("global_model_at_sites") or r.get("sites") for r in rows)  # not pooled
    fig, axes = plt.subplots(1, 1 + with_sites, figsize=(12 if with_sites else 6.5, 4.4), squeeze=False)
    _draw_global(axes[0, 0], rows)
    if with_sites:
        _draw_sites(axes[0, 1], rows, site_names)
    for axis in axes[0]:
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_learning_curves(rows: list[dict], path: Path, site_names: dict[str, str] | None = None) -> None:
    fig = learning_curves_figure(rows, site_names)
    if fig is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def plot_privacy(rows: list[dict], path: Path, site_names: dict[str, str] | None = None) -> None:
    """Epsilon spent after each round: every site (sample-level) or the federation (client-level)."""
    rows = [r for r in rows if r.get("privacy")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = [r["round"] for r in rows]
    sites = sorted({s for r in rows for s in r["privacy"].get("sites", {})})
    for site in sites:
        ax.plot(rounds, [r["privacy"]["sites"].get(site, {}).get("epsilon") for r in rows], alpha=0.7,
                label=(site_names or {}).get(site, site))
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
