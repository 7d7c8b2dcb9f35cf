"""Checks of the sites' updates before aggregation: one bad update never reaches the model.

An update must hold exactly the global model's arrays (names, shapes, dtypes), every
value finite, and its distance from the global model must not lie far outside the
round's distribution. That last test is a robust z-score of the log norm of the update
(median and median absolute deviation, which the outliers themselves cannot shift);
log, because faults and attacks scale an update by a factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.supercore.differential_privacy import get_norm

MIN_UPDATES_FOR_NORM_CHECK = 5  # with fewer, the median absolute deviation says little
MIN_LOG_SPREAD = 0.1  # floor of the MAD of log norms: honest sites whose norms differ by
# less than about 1.7x are never outliers, however alike the rest of the round is
MAD_TO_SIGMA = 0.6745  # the MAD of a normal distribution in standard deviations


def reply_arrays(reply: Message) -> ArrayRecord | None:
    records = list(reply.content.array_records.values())
    return records[0] if len(records) == 1 else None


def layout_problem(update: ArrayRecord | None, reference: ArrayRecord) -> str | None:
    """Why ``update`` does not fit the network whose initial weights are ``reference``, or
    None if it fits. Dtypes are the network's own: averaging may turn the global model's
    integer counters into floats, but a site loads them back into its network's types."""
    if update is None:
        return "no weights (expected exactly one array record)"
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        return f"wrong keys (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        got = update[name]
        if tuple(got.shape) != tuple(ref.shape):
            return f"wrong shape for {name}: {tuple(got.shape)}, expected {tuple(ref.shape)}"
        if got.dtype != ref.dtype:
            return f"wrong dtype for {name}: {got.dtype}, expected {ref.dtype}"
    for name, array in update.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"non-finite values (NaN or Inf) in {name}"
    return None


def update_norm(update: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 distance of the update's floating-point weights from the global model's."""
    diffs = [np.subtract(update[name].numpy(), ref.numpy(), dtype=np.float64)
             for name, ref in reference.items() if np.issubdtype(ref.numpy().dtype, np.floating)]
    return get_norm(diffs)


def norm_outliers(norms: dict[str, float], threshold: float) -> dict[str, str]:
    """The sites whose update norm has a robust z-score above ``threshold``, with the reason."""
    if len(norms) < MIN_UPDATES_FOR_NORM_CHECK:
        return {}
    logs = {site: math.log(max(n, 1e-12)) for site, n in norms.items()}
    centre = float(np.median(list(logs.values())))
    spread = max(float(np.median([abs(v - centre) for v in logs.values()])), MIN_LOG_SPREAD)
    median_norm = math.exp(centre)
    flagged = {}
    for site, value in logs.items():
        z = MAD_TO_SIGMA * (value - centre) / spread
        if abs(z) > threshold:
            flagged[site] = (f"update norm {norms[site]:.3g} is far from the round's median {median_norm:.3g} "
                             f"(robust z-score {z:+.1f}, limit {threshold:g}: robustness.norm_zscore)")
    return flagged


def check_updates(replies: Sequence[Message], sites: Sequence[str], layout: ArrayRecord,
                  reference: ArrayRecord, norm_zscore: float | None) -> tuple[list[Message], dict[str, str]]:
    """The replies fit to aggregate, and the reason for each site's rejected update.

    ``sites`` names the site of each reply, ``layout`` holds the network's initial weights
    (names, shapes, dtypes), ``reference`` the global model the sites started from.
    Replies that carry an error are passed on: the strategy skips them and the round loop
    reports them."""
    rejected, norms = {}, {}
    for reply, site in zip(replies, sites):
        if reply.has_error():
            continue
        update = reply_arrays(reply)
        problem = layout_problem(update, layout)
        if problem:
            rejected[site] = problem
        elif norm_zscore is not None:
            norms[site] = update_norm(update, reference)
    if norm_zscore is not None:
        rejected.update(norm_outliers(norms, norm_zscore))
    return [r for r, site in zip(replies, sites) if site not in rejected], rejected


def rejections(rows: list[dict]) -> list[dict]:
    """Every update rejected during a run, for the summary."""
    return [{"round": row["round"], "site": site, "reason": reason}
            for row in rows for site, reason in (row.get("updates_rejected") or {}).items()]
