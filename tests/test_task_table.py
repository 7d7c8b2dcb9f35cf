"""The task table: every task is one folder with the same files and functions, callers
ask the table instead of branching on a task's name, and every task's loop takes the
same shared pieces (mixed precision here; FedProx in test_fedprox_every_task)."""

from __future__ import annotations

import re
from contextlib import nullcontext

import pytest
import torch
from conftest import REPO, train_settings
from test_fedprox_every_task import TASKS as TASK_CASES

from medfed.client.local_round import local_train
from medfed.errors import ConfigError
from medfed.models import local_training
from medfed.models.spec import ModelSpec
from medfed.tasks import TASKS, task

FILES = {
    "data": ("load_experiment",),
    "network": ("build",),
    "train": ("train", "validate"),
    "metrics": ("METRIC_NAMES", "scorer"),
}
PACKAGES = ("medfed", "client", "server", "models", "strategies", "simulation")


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_folder_has_the_same_files_and_functions(name):
    row = TASKS[name]
    for file, names in {**FILES, **({"pictures": ("save_pictures",)} if row.pictures else {})}.items():
        module = row.file(file)
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, f"models/{row.folder}/{file}.py lacks {missing}"
    assert not (REPO / "models" / row.folder / "pictures.py").exists() or row.pictures


@pytest.mark.parametrize("name", list(TASKS))
def test_every_network_a_row_names_builds_from_its_spec(name):
    for network in TASKS[name].networks:
        spec = ModelSpec(network, in_channels=1, num_classes=2, image_size=32 if name != "gan" else 28,
                         dropout=0.0, label_kind="binary", task=name)
        assert sum(p.numel() for p in spec.build().parameters()) > 0, network


def test_a_network_of_another_task_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="model.name"):
        ModelSpec("unet", 1, 2, 28, 0.0, "binary", task="classification").build()
    with pytest.raises(ConfigError, match=r"unknown task 'detection' \(task\)"):
        task("detection")


def test_no_caller_branches_on_a_tasks_name():
    branch = re.compile(r"""\btask\s*(==|!=)\s*["']|\btask\s+(not\s+)?in\s*[({\[]\s*["']""")
    found = [f"{path.relative_to(REPO)}:{i}" for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
             for i, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert found == []


class _SpyPrecision(local_training.MixedPrecision):
    made: list[bool] = []
    steps = 0

    def __init__(self, enabled, device, private=False):
        super().__init__(enabled, device, private)
        _SpyPrecision.made.append(enabled)

    def step(self, optimizer):
        _SpyPrecision.steps += 1
        super().step(optimizer)


@pytest.mark.parametrize("name", list(TASK_CASES))
def test_every_tasks_loop_takes_train_amp_through_one_mixed_precision(name, monkeypatch):
    monkeypatch.setattr(local_training, "MixedPrecision", _SpyPrecision)
    _SpyPrecision.made, _SpyPrecision.steps = [], 0
    build, data, settings = TASK_CASES[name]
    local_train(build(), data(), train_settings(**settings, amp=True), torch.device("cpu"))
    assert _SpyPrecision.made == [True]  # the loop asked for train.amp
    assert _SpyPrecision.steps >= settings["steps"]  # and stepped its optimiser(s) through it


def test_mixed_precision_only_on_cuda_and_never_under_dp_sgd():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        assert local_training.MixedPrecision(True, cuda).enabled
    assert not local_training.MixedPrecision(True, cuda, private=True).enabled
    assert not local_training.MixedPrecision(True, cpu).enabled
    assert not local_training.MixedPrecision(False, cuda).enabled


def test_the_readme_lists_every_task_folder():
    readme = (REPO / "README.md").read_text()
    for row in TASKS.values():
        assert f"`models/{row.folder}/`" in readme
