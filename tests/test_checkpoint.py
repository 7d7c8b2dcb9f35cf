import pytest
import torch
from flwr.serverapp.strategy import FedAdam

from medfed.errors import CheckpointError
from medfed.server.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_restores_weights_and_strategy_state(tmp_path):
    path = tmp_path / "last.pt"
    strategy = FedAdam()
    strategy.m_t = {"w": torch.ones(3).numpy()}
    save_checkpoint(path, 4, {"w": torch.arange(3.0)}, strategy, "abc")
    fresh = FedAdam()
    round_, weights = load_checkpoint(path, fresh, "abc")
    assert round_ == 4 and torch.equal(weights["w"], torch.arange(3.0))
    assert fresh.m_t["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list(tmp_path.glob("*.partial"))


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, 1, {"w": torch.zeros(2)}, FedAdam(), "abc")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, FedAdam(), "abc")


def test_checkpoint_of_another_config_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, 1, {"w": torch.zeros(2)}, FedAdam(), "abc")
    with pytest.raises(CheckpointError, match="different configuration"):
        load_checkpoint(path, FedAdam(), "xyz")


def test_a_round_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    from medfed.server.outputs import METRICS, RunOutputs

    outputs = RunOutputs(tmp_path)
    outputs.log_round({"round": 1, "test": {"auc": 0.7}})
    outputs.log_round({"round": 2, "test": {"auc": 0.8}})
    with outputs.path(METRICS).open("a") as f:
        f.write('{"round": 3, "test": {"au')  # the process died while writing round 3
    assert [r["round"] for r in outputs.rounds()] == [1, 2]
    outputs.keep_rounds_up_to(1)
    assert outputs.path(METRICS).read_text() == '{"round": 1, "test": {"auc": 0.7}}\n'
