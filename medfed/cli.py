"""The ``medfed`` command line.

Every input problem ends in one line on stderr naming the file or setting, and exit
code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from medfed.errors import MedfedError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser(
        "simulate",
        help="run a federated simulation (or its pooled/local baseline) from a YAML config",
    )
    sim.add_argument("config", type=Path, help="YAML config, e.g. configs/pneumonia-fedavg.yaml")
    sim.add_argument("overrides", nargs="*", help="settings to change, as key=value (e.g. train.rounds=5)")
    sim.add_argument("--output", "-o", type=Path, help="run folder (default: runs/NAME-MODE-TIME)")
    sim.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    sim.add_argument("--verbose", "-v", action="store_true", help="show Flower's and Ray's logs")
    sweep = commands.add_parser(
        "sweep", help="privacy-utility sweep: the same federation at several epsilon targets",
    )
    sweep.add_argument("config", type=Path, help="YAML config with privacy.mechanism sample or client")
    sweep.add_argument("overrides", nargs="*", help="settings to change, as key=value")
    sweep.add_argument("--epsilons", default="none,8,4,2,1", help="targets, 'none' for no DP (default: %(default)s)")
    sweep.add_argument("--output", "-o", type=Path, help="sweep folder (default: runs/NAME-sweep)")
    sweep.add_argument("--verbose", "-v", action="store_true", help="show Flower's and Ray's logs")
    return parser


def _simulate(args: argparse.Namespace, console: Console) -> int:
    from medfed.config import load_config
    from medfed.simulation.experiment import run_experiment

    if args.resume and args.output is None:
        raise MedfedError("--resume needs --output: the folder of the run to continue")
    cfg = load_config(args.config, args.overrides)
    summary = run_experiment(cfg, args.output, resume=args.resume, console=console)
    console.print(f"[bold green]finished[/] {summary['mode']} run: test {json.dumps(summary['test'])}")
    return 0


def _sweep(args: argparse.Namespace, console: Console) -> int:
    from medfed.config import load_config
    from medfed.simulation.sweep import parse_targets, run_sweep

    targets = parse_targets(args.epsilons)
    cfg = load_config(args.config, args.overrides)
    out = args.output or Path("runs") / f"{cfg.name}-sweep"
    rows = run_sweep(cfg, targets, out, console)
    for row in rows:
        console.print(f"epsilon {row['target_epsilon'] or 'none'}: test AUC {row['test_auc']:.3f}")
    console.print(f"[bold green]finished[/] sweep: {out / 'sweep.csv'}, {out / 'privacy_utility.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "simulate":
            return _simulate(args, console)
        if args.command == "sweep":
            return _sweep(args, console)
    except MedfedError as exc:
        console.print(f"[bold red]medfed:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("[yellow]stopped: continue with the same command plus --output DIR --resume[/]")
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()  # stop every Ray process this run started
        sys.stderr.flush()
        # Flower's ServerApp thread may still wait for replies and would keep us alive.
        os._exit(130)
    return 1


if __name__ == "__main__":
    sys.exit(main())
