"""Progress in a log file: one flushed line per round, and a line for each long phase."""

import io

from conftest import FAST, REPO
from rich.console import Console

from medfed.server.progress import RunProgress, phase, sites_status


def _log() -> tuple[Console, io.StringIO]:
    file = io.StringIO()  # not a TTY, as a redirected stderr
    return Console(file=file, width=60), file


def test_rounds_without_a_terminal_are_one_line_each():
    console, file = _log()
    with RunProgress("federated rounds", 3, console=console) as progress:
        for rnd in range(1, 4):
            progress.advance(f"round {rnd}/3", 41.25, f"test auc 0.9{rnd}, {sites_status(10, 9, 1)}")
    lines = file.getvalue().splitlines()
    assert lines == [f"round {rnd}/3: 41.2 s, test auc 0.9{rnd}, sites 8 ok, 1 failed, 1 rejected"
                     for rnd in range(1, 4)]


def test_a_terminal_gets_the_bar_and_no_lines():
    file = io.StringIO()
    console = Console(file=file, force_terminal=True, width=100)
    with RunProgress("federated rounds", 2, console=console) as progress:
        assert progress.bar is not None
        progress.advance("round 1/2", 1.0, "test auc 0.910")
    assert "round 1/2:" not in file.getvalue()


def test_disabled_progress_writes_nothing():
    console, file = _log()
    with RunProgress("rounds", 2, enabled=False, console=console) as progress:
        progress.advance("round 1/2", 1.0, "")
    with phase(console, "partitioning", enabled=False):
        pass
    assert file.getvalue() == ""


def test_a_phase_says_it_started_and_how_long_it_took():
    console, file = _log()
    with phase(console, "membership-inference audit of the final model"):
        assert file.getvalue() == "membership-inference audit of the final model ...\n"  # before it ends
    assert file.getvalue().splitlines()[1].startswith("membership-inference audit of the final model: done in ")


def test_a_run_logs_one_line_per_round(cli, capsys, tmp_path, small_pneumonia):
    """The pooled baseline: the fastest real run (no Ray), with stderr captured (not a TTY)."""
    fast = [o for o in FAST if not o.startswith("logging.progress")]
    assert cli("simulate", REPO / "configs" / "pneumonia-fedavg.yaml", *fast, "mode=pooled", "train.rounds=3",
               "--output", tmp_path / "run", data_dir=small_pneumonia) == 0
    err = capsys.readouterr().err
    rounds = [line for line in err.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in rounds] == ["round 1/3", "round 2/3", "round 3/3"]
    assert all(" s, test auc 0." in line for line in rounds)
    assert "reading the data and partitioning it into sites ..." in err
    assert "┃ normal" in err and "pneumonia" in err  # the partition table names the classes
