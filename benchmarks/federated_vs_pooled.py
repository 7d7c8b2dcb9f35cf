"""Wall time of the same workload pooled and federated, in one invocation.

Same data, model, epochs and therefore the same number of sample-gradient steps:
pooled trains ``local_epochs`` epochs over the union of the sites each round; the
federation trains ``local_epochs`` epochs at every site each round. Prints each mode's
steady-state training time, their ratio, the one-off start-up (Ray, workers, data) and
the peak resident memory of the whole process tree.

    python benchmarks/federated_vs_pooled.py [CONFIG] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from medfed.config import load_config
from medfed.errors import MedfedError
from medfed.simulation.experiment import run_experiment

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = ["train.rounds=5", "logging.progress=false"]


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants (Ray workers too)."""

    def __init__(self, every: float = 0.25) -> None:
        self.peak, self._stop, self.every = 0, threading.Event(), every
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            time.sleep(self.every)

    @staticmethod
    def _tree_rss() -> int:
        parents, rss = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                pid = int(entry.name)
                parents[pid], rss[pid] = int(stat[1]), int(stat[21]) * 4096
            except (OSError, IndexError, ValueError):
                continue
        import os

        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            children = [p for p, pp in parents.items() if pp == parent and p not in tree]
            tree.update(children)
            frontier += children
        return sum(rss.get(p, 0) for p in tree)


def measure(config: Path, overrides: list[str], mode: str, out: Path) -> dict:
    cfg = load_config(config, DEFAULTS + overrides + [f"mode={mode}"])
    started = time.perf_counter()
    with PeakMemory() as memory:
        summary = run_experiment(cfg, out / mode)
    total = time.perf_counter() - started
    lines = (out / mode / "metrics.jsonl").read_text().splitlines()
    rounds = [__import__("json").loads(line)["seconds"] for line in lines]
    steady_round = statistics.median(rounds[1:]) if len(rounds) > 1 else rounds[0]
    training = steady_round * len(rounds)
    return {
        "mode": mode, "total": total, "training": training, "startup": total - training,
        "peak_mib": memory.peak / 2**20, "auc": summary["test"]["auc"], "rounds": len(rounds),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Data is found as by 'medfed simulate' (data.root, MEDFED_DATA_DIR, ./data).")
    parser.add_argument("settings", nargs="*", metavar="[CONFIG] key=value",
                        help="an experiment config (default: configs/pneumonia-fedavg.yaml) and settings to "
                             "change (default: train.rounds=5)")
    settings = parser.parse_args(argv).settings
    config = Path(settings[0]) if settings and "=" not in settings[0] else REPO / "configs/pneumonia-fedavg.yaml"
    overrides = [a for a in settings if "=" in a]
    try:
        load_config(config, DEFAULTS + overrides)
    except MedfedError as exc:
        parser.exit(2, f"federated_vs_pooled: {exc}\n")
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(config, overrides, mode, Path(tmp)) for mode in ("pooled", "federated")]
    print(f"{'mode':<10} {'rounds':>6} {'training s':>11} {'start-up s':>11} {'total s':>8} {'peak MiB':>9} {'test AUC':>9}")
    for r in results:
        print(f"{r['mode']:<10} {r['rounds']:>6} {r['training']:>11.1f} {r['startup']:>11.1f} "
              f"{r['total']:>8.1f} {r['peak_mib']:>9.0f} {r['auc']:>9.3f}")
    pooled, federated = results
    print(f"federated/pooled training-time ratio (start-up excluded): {federated['training'] / pooled['training']:.2f}")
    print(f"federated one-off start-up: {federated['startup']:.1f} s (pooled: {pooled['startup']:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
