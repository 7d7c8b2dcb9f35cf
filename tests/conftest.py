"""Shared fixtures: small real data cut from ../shared/datasets, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medfed.cli import main

if os.environ.get("PYTEST_XDIST_WORKER"):
    # several workers share the cores: one torch thread each (and in every process they
    # start), or their thread pools oversubscribe the machine many times over
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDFED_DATA_DIR") or REPO.parent / "shared" / "datasets")
PNEUMONIA = SHARED / "pneumoniamnist.npz"


def pneumonia_or_skip() -> Path:
    if not PNEUMONIA.is_file():
        pytest.skip(f"real data not available: {PNEUMONIA} (see shared/datasets/README.md)")
    return PNEUMONIA


@pytest.fixture
def small_pneumonia(tmp_path: Path) -> Path:
    """A folder with ``pneumoniamnist.npz`` holding a class-balanced slice of the real file."""
    return write_small_pneumonia(tmp_path / "data")


def write_small_pneumonia(folder: Path) -> Path:
    """``folder/pneumoniamnist.npz``: 240 training, 40 validation and 160 test images of the
    real file, half of each class; returns ``folder``."""
    source = np.load(pneumonia_or_skip())
    rng = np.random.default_rng(0)
    sizes = {"train": 240, "val": 40, "test": 160}
    arrays = {}
    for split, n in sizes.items():
        labels = source[f"{split}_labels"][:, 0]
        pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), n // 2, replace=False) for c in (0, 1)])
        pick.sort()
        arrays[f"{split}_images"] = source[f"{split}_images"][pick]
        arrays[f"{split}_labels"] = source[f"{split}_labels"][pick]
    folder.mkdir(parents=True)
    np.savez(folder / "pneumoniamnist.npz", **arrays)
    return folder


@pytest.fixture
def cli(monkeypatch):
    """Run ``medfed ...`` in-process with MEDFED_DATA_DIR set; returns the exit code."""

    def run(*args: str, data_dir: Path | None = None) -> int:
        if data_dir is not None:
            monkeypatch.setenv("MEDFED_DATA_DIR", str(data_dir))
        return main([str(a) for a in args])

    return run


def separable_images(n: int = 64, seed: int = 0):
    """Two classes of 12x12 images that differ in brightness: easy to learn."""
    from medfed.models.classification.data import LabelledImages

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = np.where(labels[:, None, None] == 1, 200, 40) + rng.integers(0, 30, (n, 12, 12))
    return LabelledImages(images.astype(np.uint8), labels)


def train_settings(**overrides):
    from medfed.wire import TrainSettings

    base = dict(kind="binary", num_classes=2, epochs=3, batch_size=16, lr=3e-3, seed=5)
    return TrainSettings(**{**base, **overrides})


# One Ray worker per simulated run (all the cores for one site): the test workers already
# share the cores, and each further Ray worker only adds its start-up (5-8 s of CPU).
ONE_RAY_WORKER = f"simulation.cpus_per_site={os.cpu_count() or 1}"
AUDIT = "evaluation.membership_audit=true"  # FAST leaves it out: tests of the audit add this
FAST = [
    "train.rounds=2", "partition.num_sites=3", "partition.scheme=iid", "logging.progress=false", ONE_RAY_WORKER,
    "evaluation.membership_audit=false",
]


def flower_message(content, kind: str = "train", src: int = 1, dst: int = 2):
    """A Flower Message with full metadata, as the Grid delivers it (``content``: a
    RecordDict, or an Error for a failed reply)."""
    import time

    from flwr.app import Message, Metadata

    metadata = Metadata(run_id=1, message_id=f"m-{src}-{time.monotonic_ns()}", src_node_id=src, dst_node_id=dst,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600,
                        message_type=kind, src_task_id=1, dst_task_id=2)
    return Message(content, metadata=metadata)
