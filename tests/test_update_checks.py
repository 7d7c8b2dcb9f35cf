"""The server's checks of each update, and the robust aggregation rules built on Flower's."""

import numpy as np
import pytest
from conftest import flower_message
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from medfed.config import load_config
from medfed.errors import ConfigError
from medfed.server.update_checks import check_updates, layout_problem, norm_outliers
from medfed.strategies import build_strategy
from medfed.strategies.norm_bounded import NormBoundedFedAvg

GLOBAL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32), "count": np.array(4, np.int64)}


def _record(**changes) -> ArrayRecord:
    arrays = {k: v.copy() for k, v in GLOBAL.items()}
    arrays.update(changes)
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _reply(site: int, record: ArrayRecord | None = None, examples: int = 10, error: Error | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord({"site": site, "num-examples": examples})})
    if record is not None:
        content["arrays"] = record
    return flower_message(error or content, src=100 + site, dst=0)


@pytest.mark.parametrize("record, words", [
    (ArrayRecord({"w": Array(GLOBAL["w"]), "b": Array(GLOBAL["b"])}), "wrong keys (missing ['count']"),
    (_record(extra=np.ones(1, np.float32)), "unexpected ['extra']"),
    (_record(w=np.zeros((2, 3), np.float32)), "wrong shape for w: (2, 3), expected (3, 2)"),
    (_record(w=np.zeros((3, 2), np.float16)), "wrong dtype for w: float16, expected float32"),
    (_record(b=np.array([0.0, np.nan], np.float32)), "non-finite values (NaN or Inf) in b"),
    (_record(b=np.array([np.inf, 0.0], np.float32)), "non-finite values (NaN or Inf) in b"),
    (None, "no weights"),
])
def test_an_update_that_does_not_fit_the_model_is_named_with_its_fault(record, words):
    assert words in layout_problem(record, _record())
    assert layout_problem(_record(w=np.ones((3, 2), np.float32)), _record()) is None


def test_norm_outliers_are_flagged_both_ways_and_honest_spread_is_not():
    honest = {f"site-{i}": n for i, n in enumerate([1.0, 1.3, 0.8, 1.1, 0.9, 1.6, 0.7])}
    assert norm_outliers(honest, 3.5) == {}
    flagged = norm_outliers({**honest, "big": 50.0, "tiny": 0.01}, 3.5)
    assert set(flagged) == {"big", "tiny"} and "robustness.norm_zscore" in flagged["big"]
    assert norm_outliers({"a": 1.0, "b": 1.0, "c": 1.0, "d": 500.0}, 3.5) == {}  # too few to judge


def test_check_updates_drops_bad_updates_and_passes_errors_on():
    good = [_reply(i, _record(w=np.full((3, 2), 0.1 * (1 + i % 3), np.float32))) for i in range(6)]
    nan = _reply(6, _record(b=np.array([np.nan, 0.0], np.float32)))
    scaled = _reply(7, _record(w=np.full((3, 2), 20.0, np.float32)))
    dropped = _reply(8, error=Error(code=490, reason="gone"))
    replies = [*good, nan, scaled, dropped]
    names = [f"site-{i:03d}" for i in range(9)]
    kept, rejected = check_updates(replies, names, _record(), _record(), norm_zscore=3.5)
    assert set(rejected) == {"site-006", "site-007"} and "NaN" in rejected["site-006"]
    assert kept == [*good, dropped]
    kept, rejected = check_updates(replies, names, _record(), _record(), norm_zscore=None)
    assert set(rejected) == {"site-006"} and scaled in kept  # structure is always checked, norms on request


def _aggregate(strategy, replies, current):
    strategy.current_arrays = current
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays.to_numpy_ndarrays()


def test_norm_bounded_fedavg_clips_each_update_before_averaging():
    updates = [np.full((3, 2), v, np.float32) for v in (1.0, 1.0, 100.0)]
    replies = [_reply(i, _record(w=u)) for i, u in enumerate(updates)]
    fixed = NormBoundedFedAvg(norm_bound=np.sqrt(6.0))  # the norm of the honest updates
    w, _, _ = _aggregate(fixed, replies, _record())
    np.testing.assert_allclose(w, np.ones((3, 2)), rtol=1e-6)  # the scaled update counts as an honest one
    median = NormBoundedFedAvg()
    replies = [_reply(i, _record(w=u)) for i, u in enumerate([np.full((3, 2), v, np.float32) for v in (1, 2, 100)])]
    w, _, _ = _aggregate(median, replies, _record())
    assert median.last_bound == pytest.approx(2 * np.sqrt(6.0))
    np.testing.assert_allclose(w, np.full((3, 2), 5 / 3), rtol=1e-6)


@pytest.mark.parametrize("rule, sites, words", [
    ("bulyan", 10, "bulyan with f=2 needs at least 11 sites per round, the federation samples 10"),
    ("krum", 6, "krum with f=2 needs at least 7 sites per round"),
])
def test_byzantine_rules_refuse_a_federation_too_small_for_f(rule, sites, words):
    cfg = load_config(None, [f"strategy.name={rule}", "strategy.num_malicious=2", f"partition.num_sites={sites}"])
    with pytest.raises(ConfigError, match=words):
        build_strategy(cfg, sites)


def test_multikrum_selects_sites_minus_f_by_default():
    cfg = load_config(None, ["strategy.name=multikrum", "strategy.num_malicious=2"])
    assert build_strategy(cfg, 10).num_nodes_to_select == 8
