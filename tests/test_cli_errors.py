"""Bad input: one clear message naming the problem, exit code 2, no finished-looking run."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, REPO
from PIL import Image

CONFIG = REPO / "configs" / "pneumonia-fedavg.yaml"


def _expect_bad_input(cli, capsys, out: Path, *args, data_dir=None, message: str):
    code = cli("simulate", CONFIG, *FAST, *args, "--output", out, data_dir=data_dir)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err
    assert not (out / "summary.json").exists()
    return err


def test_missing_dataset_file(cli, capsys, tmp_path):
    _expect_bad_input(cli, capsys, tmp_path / "run", data_dir=tmp_path,
                      message=f"not found: {tmp_path / 'pneumoniamnist.npz'}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.dataset=imagenet", "unknown dataset 'imagenet'"),
        ("model.name=vgg99", "unknown model 'vgg99'"),
        ("strategy.name=fedmagic", "unknown strategy 'fedmagic'"),
        ("partition.alpha=0", "partition.alpha"),
        ("partition.num_sites=100000", "only 280 images"),
    ],
)
def test_bad_settings(cli, capsys, tmp_path, small_pneumonia, override, message):
    _expect_bad_input(cli, capsys, tmp_path / "run", override, data_dir=small_pneumonia, message=message)


def test_npz_without_expected_keys(cli, capsys, tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", images=np.zeros((4, 28, 28), np.uint8))
    _expect_bad_input(cli, capsys, tmp_path / "run", data_dir=tmp_path, message="missing key(s) train_images")


def _folder_dataset(tmp_path, sizes, extra_rows=""):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, size in enumerate(sizes):
        Image.fromarray(np.full(size, 10 * i, np.uint8)).save(images / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}\n")
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(rows) + extra_rows)
    return ["data.dataset=folder", "data.folder.images=images", "data.folder.labels_csv=labels.csv"]


def test_folder_with_mixed_sizes(cli, capsys, tmp_path):
    args = _folder_dataset(tmp_path, [(28, 28)] * 5 + [(32, 28)])
    _expect_bad_input(cli, capsys, tmp_path / "run", *args, data_dir=tmp_path, message="mixed sizes")


def test_csv_naming_missing_images(cli, capsys, tmp_path):
    args = _folder_dataset(tmp_path, [(28, 28)] * 6, extra_rows="lost.png,1\n")
    _expect_bad_input(cli, capsys, tmp_path / "run", *args, data_dir=tmp_path, message="lost.png")


def test_output_folder_of_another_run_is_not_overwritten(cli, capsys, tmp_path, small_pneumonia):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    _expect_bad_input(cli, capsys, out, data_dir=small_pneumonia, message="not empty")
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_exit_code_and_no_traceback_from_the_installed_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medfed.cli", "simulate", str(CONFIG), "train.roundz=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "train.roundz" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("strategy.name=fedavgg", "unknown strategy 'fedavgg' (did you mean 'fedavg'?)"),
    ("strategy.nmae=fedavg", "unknown setting 'strategy.nmae' (did you mean 'strategy.name'?)"),
    ("partiton.num_sites=3", "unknown setting 'partiton' (did you mean 'partition'?)"),
])
def test_typos_stop_before_any_data_or_folder_with_a_suggestion(cli, capsys, tmp_path, override, message):
    # no data folder at all: the config is refused before anything is read
    _expect_bad_input(cli, capsys, tmp_path / "run", override, data_dir=tmp_path / "no-data", message=message)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("override, key", [("train.device=cuda", "train.device"),
                                           ("train.device=cuda:1", "train.device"),
                                           ("simulation.gpus_per_site=0.25", "simulation.gpus_per_site")])
def test_a_gpu_asked_for_without_one_is_one_line_before_anything_runs(cli, capsys, tmp_path, override, key):
    err = _expect_bad_input(cli, capsys, tmp_path / "run", override, data_dir=tmp_path / "no-data", message=key)
    assert not (tmp_path / "run").exists()
    assert len(err.strip().splitlines()) <= 2  # the message, soft-wrapped at most once


@pytest.mark.slow
def test_a_failed_start_leaves_no_folder_that_blocks_the_corrected_rerun(cli, capsys, tmp_path, small_pneumonia):
    out = tmp_path / "run"
    # Krum cannot tolerate 3 attackers among 3 sites: refused once the strategy is built, after the
    # run folder was written (config, partition, site shards)
    _expect_bad_input(cli, capsys, out, "strategy.name=krum", "strategy.num_malicious=3",
                      data_dir=small_pneumonia, message="strategy.num_malicious")
    assert not out.exists()
    assert cli("simulate", CONFIG, *FAST, "strategy.name=krum", "strategy.num_malicious=0", "--output", out,
               data_dir=small_pneumonia) == 0  # the corrected command, as it is
