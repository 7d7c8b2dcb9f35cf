import json

import pytest
import torch
from flwr.serverapp.strategy import FedAdam, FedAvg

from medfed.errors import CheckpointError
from medfed.server.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from medfed.server.outputs import CHECKPOINT, METRICS, RunFileError, RunOutputs
from medfed.server.rounds import RoundPlan, run_rounds


def test_round_trip_restores_weights_and_strategy_state(tmp_path):
    path = tmp_path / "last.pt"
    strategy = FedAdam()
    strategy.m_t = {"w": torch.ones(3).numpy()}
    lines = [f'{{"round": {r}}}' for r in range(1, 5)]
    save_checkpoint(path, 4, {"w": torch.arange(3.0)}, strategy, "abc", lines)
    fresh = FedAdam()
    saved = load_checkpoint(path, fresh, "abc")
    assert saved.round == 4 and torch.equal(saved.weights["w"], torch.arange(3.0))
    assert saved.rounds == lines
    assert fresh.m_t["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list(tmp_path.glob("*.partial"))


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, 1, {"w": torch.zeros(2)}, FedAdam(), "abc", ['{"round": 1}'])
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, FedAdam(), "abc")


def test_checkpoint_of_another_config_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, 1, {"w": torch.zeros(2)}, FedAdam(), "abc", ['{"round": 1}'])
    with pytest.raises(CheckpointError, match="different configuration"):
        load_checkpoint(path, FedAdam(), "xyz")




# ---- the finished rounds on resume: the checkpoint carries them -----------------------------

LINES = [json.dumps({"round": r, "test": {"auc": 0.5 + r / 10}, "privacy": None}) for r in (1, 2)]


def _damage(metrics, how: str) -> None:
    """What a kill, a full disk or a user can leave of metrics.jsonl."""
    if how == "truncated":
        metrics.write_text(LINES[0] + "\n" + LINES[1][:20])
    elif how == "emptied":
        metrics.write_text("")
    elif how == "deleted":
        metrics.unlink()
    elif how == "corrupt-line":
        metrics.write_text(LINES[0] + "\n" + '{"round": 2, "test": oops}\n')
    elif how == "later-round":  # killed between the round's line and its checkpoint
        metrics.write_text("".join(line + "\n" for line in LINES) + '{"round": 3}\n')


def _killed_after_round_2(tmp_path, fmt: int = FORMAT):
    """The run folder of a two-round run killed after its last checkpoint, and its plan."""
    outputs = RunOutputs(tmp_path)
    for line in LINES:
        outputs.log_round(json.loads(line))
    save_checkpoint(outputs.path(CHECKPOINT), 2, {"w": torch.ones(2)}, FedAvg(), "abc", LINES)
    if fmt != FORMAT:  # a checkpoint of an earlier medfed, without the round lines
        data = torch.load(outputs.path(CHECKPOINT), weights_only=False)
        data.update(format=fmt, rounds=None)
        torch.save(data, outputs.path(CHECKPOINT))
    plan = RoundPlan(strategy=FedAvg(), rounds=2, site_config=lambda rnd: {}, evaluate=None,
                     initial_weights=lambda: {"w": torch.zeros(2)}, outputs=outputs, fingerprint="abc",
                     resume=True, show_progress=False)
    return outputs, plan


@pytest.mark.parametrize("how", ["intact", "truncated", "emptied", "deleted", "corrupt-line", "later-round"])
def test_resume_rebuilds_metrics_jsonl_from_the_checkpoint(tmp_path, how):
    outputs, plan = _killed_after_round_2(tmp_path)
    _damage(outputs.path(METRICS), how)
    weights, rows = run_rounds(None, plan)  # every round is done: nothing is sent
    assert outputs.path(METRICS).read_text() == "".join(line + "\n" for line in LINES)
    assert [r["round"] for r in rows] == [1, 2] and torch.equal(weights["w"], torch.ones(2))


@pytest.mark.parametrize("how", ["truncated", "emptied", "deleted", "corrupt-line"])
def test_an_older_checkpoint_with_a_damaged_metrics_jsonl_is_refused_naming_the_file(tmp_path, how):
    outputs, plan = _killed_after_round_2(tmp_path, fmt=2)
    _damage(outputs.path(METRICS), how)
    with pytest.raises(RunFileError, match="metrics.jsonl"):
        run_rounds(None, plan)


def test_an_older_checkpoint_resumes_from_an_intact_metrics_jsonl(tmp_path):
    outputs, plan = _killed_after_round_2(tmp_path, fmt=2)
    _damage(outputs.path(METRICS), "later-round")
    assert [r["round"] for r in run_rounds(None, plan)[1]] == [1, 2]


def test_a_corrupt_line_is_an_error_naming_file_and_line(tmp_path):
    outputs = RunOutputs(tmp_path)
    _damage(outputs.path(METRICS), "corrupt-line")
    with pytest.raises(RunFileError, match=r"metrics.jsonl: line 2 is not"):
        outputs.rounds()


def test_the_run_key_is_made_once_and_kept_on_resume(tmp_path):
    outputs = RunOutputs(tmp_path)
    key = outputs.run_key(resume=False)
    assert outputs.run_key(resume=True) == key
    assert RunOutputs(tmp_path / "other").run_key(resume=False) != key
