"""What a tighter accountant buys: the DP configs with noise calibrated by RDP and by PRV.

For the same target epsilon, Opacus' PRV accountant (close to dp-accounting's PLD)
bounds epsilon more tightly than RDP, so each site can train with less noise. This
script shows how much less, and with ``--train`` what that is worth in test AUC.

    python benchmarks/dp_accountants.py                       # the noise each site gets: seconds
    python benchmarks/dp_accountants.py --train --output runs/dp-accountants   # 4 federated runs
    python benchmarks/dp_accountants.py --train --set seed=7 --output runs/dp-accountants-seed7

Without ``--train`` it prints, for every config and site, the noise multiplier that
medfed chooses (medfed/noise_calibration.py) under ``privacy.accountant`` rdp and prv,
and the epsilon of each by all four accountants. With ``--train`` it runs
``medfed simulate CONFIG privacy.accountant=A --output OUTPUT/NAME-A`` for each config
and accountant, one at a time (a finished run is read back, not repeated), and prints
test AUC, the worst site's epsilon as reported and as dp-accounting recomputes it from
the run's ``summary.json`` (RDP and PLD), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from medfed.client.privacy import steps_per_round
from medfed.config import load_config
from medfed.models.experiment_data import load_experiment_data
from medfed.noise_calibration import calibrated_noise, dp_accounting_epsilon, opacus_epsilon
from medfed.simulation.partition import partition
from medfed.wire import TrainSettings

CONFIGS = ["configs/pneumonia-dp-eps8.yaml", "configs/pneumonia-dp-eps1.yaml"]
ACCOUNTANTS = ["rdp", "prv"]


def site_mechanisms(config: str) -> tuple[object, list[tuple[float, int]]]:
    """The config and, per site, its Poisson sampling rate and its steps over all rounds."""
    cfg = load_config(config)
    sites = partition(load_experiment_data(cfg).pool, cfg)
    t = cfg.train
    settings = TrainSettings(kind="binary", num_classes=2, epochs=t.local_epochs, steps=t.local_steps,
                             batch_size=t.batch_size, task=cfg.task)
    mechanisms = []
    for site in sites:
        rate, steps = steps_per_round(len(site.train), settings)
        mechanisms.append((rate, steps * t.rounds))
    return cfg, mechanisms


def all_epsilons(noise: float, rate: float, steps: int, delta: float) -> dict[str, float]:
    return {
        "Opacus RDP": opacus_epsilon("rdp", noise, rate, steps, delta),
        "dp-acc. RDP": dp_accounting_epsilon("rdp", noise, rate, steps, delta),
        "Opacus PRV": opacus_epsilon("prv", noise, rate, steps, delta),
        "dp-acc. PLD": dp_accounting_epsilon("prv", noise, rate, steps, delta),
    }


def print_noise(config: str) -> None:
    """Each site's noise under both calibrations, and its epsilon by every accountant."""
    cfg, mechanisms = site_mechanisms(config)
    target, delta = cfg.privacy.target_epsilon, cfg.privacy.delta
    print(f"\n{config}: target epsilon {target}, delta {delta:g}")
    print("site  rate    steps | noise rdp  noise prv  less | epsilon at rdp noise (Opacus RDP, dp-acc. RDP, "
          "Opacus PRV, dp-acc. PLD) | at prv noise")
    ratios = []
    for index, (rate, steps) in enumerate(mechanisms):
        started = time.perf_counter()
        noise = {a: calibrated_noise(target, delta, rate, steps, a) for a in ACCOUNTANTS}
        seconds = time.perf_counter() - started
        ratios.append(noise["prv"] / noise["rdp"])
        at = {a: all_epsilons(noise[a], rate, steps, delta) for a in ACCOUNTANTS}
        print(f"{index:03d}  {rate:.4f} {steps:5d} | {noise['rdp']:9.4f}  {noise['prv']:9.4f}  "
              f"{1 - ratios[-1]:5.1%} | " + " ".join(f"{e:.4f}" for e in at["rdp"].values()) + " | "
              + " ".join(f"{e:.4f}" for e in at["prv"].values()) + f"   ({seconds:.1f} s)")
    print(f"PRV calibration: {1 - sum(ratios) / len(ratios):.1%} less noise on average over the sites")


def run(config: str, accountant: str, output: Path, overrides: list[str]) -> tuple[dict, float | None]:
    """The run's summary, training it first unless it has finished already; its minutes."""
    name = f"{Path(config).stem}-{accountant}"
    folder = output / name
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text()), None
    command = [str(Path(sys.executable).with_name("medfed")), "simulate", config,
               *overrides, f"privacy.accountant={accountant}", "--output", str(folder)]
    if folder.exists():
        command.append("--resume")
    print("running:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    with open(output / f"{name}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((folder / "summary.json").read_text()), (time.perf_counter() - started) / 60


def recomputed(privacy: dict) -> dict[str, float]:
    """The worst site's epsilon by dp-accounting (RDP and PLD), from each site's report."""
    worst = {"rdp": 0.0, "prv": 0.0}
    for site in privacy["sites"].values():
        mechanism = (site["noise-multiplier"], site["sample-rate"], int(site["total-steps"]), site["delta"])
        for kind in worst:
            worst[kind] = max(worst[kind], dp_accounting_epsilon(kind, *mechanism))
    return worst


def print_training(output: Path, overrides: list[str]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    print("\n| config | accountant | target | epsilon reported (worst site) | dp-acc. RDP | dp-acc. PLD "
          "| within by both | mean noise | test AUC | accuracy | minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for config in CONFIGS:
        target = load_config(config).privacy.target_epsilon
        for accountant in ACCOUNTANTS:
            summary, minutes = run(config, accountant, output, overrides)
            privacy, test = summary["privacy"], summary["test"]
            again = recomputed(privacy)
            # the site reports Opacus' epsilon or its pair's, whichever is larger
            within = "yes" if max(privacy["epsilon"], again[accountant]) <= target else "NO"
            noise = [s["noise-multiplier"] for s in privacy["sites"].values()]
            took = minutes if minutes is not None else summary["seconds"]["total"] / 60
            print(f"| {Path(config).stem} | {accountant} | {target:g} | {privacy['epsilon']:.6f} "
                  f"| {again['rdp']:.6f} | {again['prv']:.6f} | {within} | {sum(noise) / len(noise):.3f} "
                  f"| {test['auc']:.3f} | {test['accuracy']:.3f} | {took:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="also train each config with each accountant")
    parser.add_argument("--output", type=Path, default=Path("runs/dp-accountants"))
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings for every run, e.g. seed=7 (a separate --output for each set)")
    args = parser.parse_args()
    CONFIGS[:] = args.configs
    for config in CONFIGS:
        print_noise(config)
    if args.train:
        print_training(args.output, args.set)


if __name__ == "__main__":
    main()
