"""What a reader sees: learning curves scaled to the data, the partition's label mix by name."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from medfed.config import load_config
from medfed.models.classification.data import LabelledImages
from medfed.server.plots import fitted_limits, learning_curves_figure, plot_learning_curves
from medfed.simulation.class_names import class_names
from medfed.simulation.partition import SiteShard
from medfed.simulation.report import partition_figure, write_partition_report

SITE_SIZES = {"site-000": 57, "site-001": 303, "site-002": 4, "site-003": 3}


def _rows(rounds: int = 4, sites: dict[str, int] = SITE_SIZES) -> list[dict]:
    """Round lines as a federated run writes them; site-003 validates on one class (no AUC)."""
    rows = []
    for rnd in range(1, rounds + 1):
        test_auc = 0.85 + 0.13 * (rnd - 1) / (rounds - 1)
        at_sites = {site: {"val_auc": None if site == "site-003" else 0.9 + 0.02 * rnd - 0.01 * k,
                           "num-examples": n}
                    for k, (site, n) in enumerate(sites.items())}
        rows.append({"round": rnd, "test": {"auc": test_auc, "accuracy": test_auc - 0.02},
                     "sites": {}, "global_model_at_sites": at_sites})
    return rows


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_learning_curves_fit_the_range_of_the_data():
    fig = learning_curves_figure(_rows())
    try:
        (low, high), (site_low, site_high) = (ax.get_ylim() for ax in fig.axes)
    finally:
        plt.close(fig)
    assert 0.75 < low < 0.83 and 0.98 < high <= 1.01  # 0.83-0.98 with a margin, not 0-1
    assert 0.85 < site_low < 0.90 and 0.98 < site_high <= 1.01  # sites: 0.90-0.98


def test_fitted_limits_stay_within_bounds_and_open_a_flat_line():
    assert fitted_limits([0.5, 0.5]) == pytest.approx((0.475, 0.525))
    low, high = fitted_limits([0.0, 1.0])
    assert -0.011 < low < 0 and 1 < high < 1.011
    assert fitted_limits([]) == (0.0, 1.0)


def test_undefined_metric_sites_and_sizes_are_in_the_legend():
    fig = learning_curves_figure(_rows(), site_names={"site-001": "north"})
    try:
        labels = _legend(fig.axes[1])
        lines = [line.get_label() for line in fig.axes[1].get_lines() if len(line.get_xdata())]
    finally:
        plt.close(fig)
    assert "site-003 (n=3): AUC undefined (one class in validation)" in labels
    assert "north (n=303)" in labels and "site-000 (n=57)" in labels
    assert not any(label.startswith("site-003") for label in lines)  # no line, only the note


def test_many_sites_are_summed_up_by_their_median_and_a_note():
    sizes = {f"site-{i:03d}": 10 + i for i in range(20)}
    rows = _rows(sites=sizes)
    for row in rows:
        row["global_model_at_sites"]["site-005"]["val_auc"] = float("nan")
    fig = learning_curves_figure(rows)
    try:
        notes = " ".join(t.get_text() for t in fig.axes[1].texts)
        assert _legend(fig.axes[1]) == ["middle half of the sites", "median over sites", "each site"]
    finally:
        plt.close(fig)
    assert "20 sites, validation sets of 10-29 images" in notes
    assert "site-003" in notes and "site-005" in notes and "AUC undefined (one class in validation)" in notes


def test_learning_curves_png_is_written(tmp_path):
    plot_learning_curves(_rows(), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_class_names_of_medmnist_and_others():
    assert class_names(load_config(None, []), 2) == ["normal", "pneumonia"]
    assert class_names(load_config(None, ["data.dataset=bloodmnist"]), 3) == ["class 0", "class 1", "class 2"]


def test_class_names_from_the_folder_csv(tmp_path):
    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "label": [1, 0, 1],
                  "label_name": ["tumour", "healthy", "tumour"]}).to_csv(tmp_path / "labels.csv", index=False)
    cfg = load_config(None, ["data.dataset=folder", f"data.root={tmp_path}", "data.folder.images=.",
                             "data.folder.labels_csv=labels.csv"])
    assert class_names(cfg, 3) == ["healthy", "tumour", "class 2"]
    pd.DataFrame({"image": ["a.png"], "label": [0]}).to_csv(tmp_path / "labels.csv", index=False)
    assert class_names(cfg, 2) == ["class 0", "class 1"]  # no name column


def _shard(name: str, labels: list[int]) -> SiteShard:
    images = np.zeros((len(labels), 4, 4), np.uint8)
    data = LabelledImages(images, np.array(labels))
    return SiteShard(name, data.subset(np.arange(1, len(labels))), data.subset(np.arange(1)))


def test_partition_report_names_classes_and_sites(tmp_path):
    sites = [_shard("north", [0] * 30 + [1] * 2), _shard("south", [1] * 200)]
    table = write_partition_report(sites, ["normal", "pneumonia"], tmp_path, "test")
    assert list(pd.read_csv(tmp_path / "partition.csv", index_col="site").loc["north"]) == [32 - 2, 2, 32]
    assert list(table.columns) == ["normal", "pneumonia", "total"]
    fig = partition_figure(table[["normal", "pneumonia"]], "test")
    try:
        legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        sites_shown = [t.get_text() for t in fig.axes[2].get_yticklabels()]
        shares = [p.get_width() for p in fig.axes[3].patches]  # each site's class shares, class by class
    finally:
        plt.close(fig)
    assert legend == ["normal", "pneumonia"]
    assert sites_shown == ["north", "south"]
    assert shares == pytest.approx([30 / 32, 0, 2 / 32, 1])  # the skew shows whatever a site's size


def test_a_deployed_runs_plot_names_its_sites(tmp_path, monkeypatch):
    """``sites.json`` (written by the deployed ServerApp) turns site-NNN into the sites' names."""
    import json

    from medfed.server import outputs as run_outputs

    drawn = {}
    monkeypatch.setattr(run_outputs, "plot_learning_curves",
                        lambda rows, path, names: drawn.update(rows=rows, names=names))
    outputs = run_outputs.RunOutputs(tmp_path)
    for row in _rows():
        outputs.log_round(row)
    (tmp_path / "sites.json").write_text(json.dumps({"site-000": "north", "site-001": "south"}))
    outputs.plot()
    assert drawn["names"] == {"site-000": "north", "site-001": "south"} and len(drawn["rows"]) == 4
    fig = learning_curves_figure(drawn["rows"], drawn["names"])
    try:
        assert {"north (n=57)", "south (n=303)"} <= set(_legend(fig.axes[1]))
    finally:
        plt.close(fig)


def test_the_pooled_baseline_has_one_panel_named_for_its_model():
    rows = [{"round": r, "test": {"auc": 0.8 + 0.05 * r}, "sites": {}} for r in (1, 2)]
    fig = learning_curves_figure(rows)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["Pooled model (all training data in one place)"]
    finally:
        plt.close(fig)
