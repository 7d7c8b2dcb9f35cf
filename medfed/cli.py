"""The ``medfed`` command line.

Every input problem ends in one line on stderr naming the file or setting, and exit
code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from medfed.errors import MedfedError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # the shell's codes for SIGINT and SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, CI, ``timeout``): stop exactly as on Ctrl-C. A KeyboardInterrupt, so
    that no ``except Exception`` in Flower or Ray swallows it on its way up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfed", description="Federated learning for medical imaging: simulations of virtual hospitals, "
        "and a coordinator and hospital sites on Flower. See README.md and docs/.")
    parser.add_argument("--version", action="version", version=_versions())
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
    defend = commands.add_parser(
        "defend", help="defence report: the federation under each attack, aggregated by each rule",
    )
    defend.add_argument("config", type=Path, help="YAML config whose attack.sites are the malicious sites")
    defend.add_argument("overrides", nargs="*", help="settings to change, as key=value")
    defend.add_argument("--attacks", default="none,scale,sign_flip,nan,dropout=0.3",
                        help="behaviours of attack.sites, or dropout=P (default: %(default)s)")
    defend.add_argument("--rules", default="fedavg,fedavg+normcheck,fedmedian,fedtrimmedavg,krum,multikrum,bulyan,"
                        "normbounded", help="aggregation rules; +normcheck turns the update norm check on "
                        "(default: %(default)s)")
    defend.add_argument("--output", "-o", type=Path, help="report folder (default: runs/NAME-defence)")
    defend.add_argument("--verbose", "-v", action="store_true", help="show Flower's and Ray's logs")
    certs = commands.add_parser(
        "certs", help="create the federation's CA, the coordinator's TLS files and the app-signing key",
    )
    certs.add_argument("--out", type=Path, required=True, help="folder for the files (none may exist yet)")
    certs.add_argument("--coordinator-host", required=True, help="DNS name the sites use to reach the coordinator")
    certs.add_argument("--coordinator-ip", nargs="+", action="extend", default=[], metavar="IP",
                       help="IP addresses of the coordinator (127.0.0.1 and localhost are always included)")
    certs.add_argument("--trial-site-keys", metavar="SITES",
                       help="also write these sites' key pairs (comma-separated), for a trial on one machine only; "
                       "in a real federation each site runs 'medfed site keygen'")
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates (default: %(default)s)")
    site = commands.add_parser("site", help="a hospital's own commands, driven by its SITE.yaml")
    site_commands = site.add_subparsers(dest="site_command", required=True)
    keygen = site_commands.add_parser("keygen", help="create the site's own key pair; send only NAME.pub")
    keygen.add_argument("name", metavar="NAME", help="the site's name (as in SITE.yaml)")
    keygen.add_argument("--out", type=Path, required=True,
                        help="folder for NAME.key and NAME.pub (made with mode 0700 if missing)")
    check = site_commands.add_parser("check", help="check the site's data and settings without training")
    check.add_argument("config", type=Path, help="the site's SITE.yaml")
    check.add_argument("--output", "-o", type=Path, help="JSON report (default: STATE_DIR/site-check.json)")
    site_start = site_commands.add_parser("start", help="run the site's SuperNode in the foreground (a daemon)")
    site_start.add_argument("config", type=Path, help="the site's SITE.yaml")
    site_start.add_argument("--runtime-port", type=int, default=9094,
                            help="local port of the SuperNode's Runtime API, on 127.0.0.1 (default: %(default)s)")
    site_start.add_argument("--max-retries", type=int, help="give up after this many failed connection attempts "
                            "(default: keep trying)")
    site_start.add_argument("--max-wait-time", type=float, help="give up after this many seconds without the "
                            "coordinator (default: keep trying)")
    audit = site_commands.add_parser("audit", help="the site's audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_commands.add_parser(
        "verify", help="check that no entry of the audit log was changed, reordered or removed")
    audit_verify.add_argument("config", type=Path, help="the site's SITE.yaml")
    server = commands.add_parser("server", help="the coordinator's commands: a federation on Flower's SuperLink")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    server_start = server_commands.add_parser(
        "start", help="start the SuperLink, register the sites and run the experiment (foreground)")
    server_start.add_argument("config", type=Path, help="YAML experiment config")
    server_start.add_argument("overrides", nargs="*", help="settings to change, as key=value")
    server_start.add_argument("--certs", type=Path, default=Path("creds"),
                              help="folder from 'medfed certs' with ca.crt, server.pem, server.key (default: creds)")
    server_start.add_argument("--sites-keys", type=Path,
                              help="folder of the allowed sites' SITE.pub files (default: --certs)")
    server_start.add_argument("--insecure", action="store_true",
                              help="no TLS and no site authentication: a trial on one machine only")
    server_start.add_argument("--host", default="127.0.0.1",
                              help="address to listen on (default: %(default)s; 0.0.0.0 accepts the sites)")
    server_start.add_argument("--port", type=int, default=8000, help="port of the SuperLink (default: %(default)s)")
    server_start.add_argument("--output", "-o", type=Path, help="run folder (default: runs/NAME-deployed-TIME)")
    server_start.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    server_start.add_argument("--wait-for-sites", type=float, default=300.0,
                              help="seconds to wait for every registered site before round 1 (default: %(default)s)")
    server_start.add_argument("--state", type=Path, default=Path("medfed-server"),
                              help="folder for the federation's state and logs (default: medfed-server)")
    for name, text in (("status", "show the connected sites and the run's progress"),
                       ("stop", "stop the federation and every process it started")):
        sub = server_commands.add_parser(name, help=text)
        sub.add_argument("--state", type=Path, default=Path("medfed-server"),
                         help="state folder of 'medfed server start' (default: medfed-server)")
    return parser


def _versions() -> str:
    """medfed's version and that of the libraries a bug report needs (without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    import medfed

    found = []
    for package in ("flwr", "torch", "opacus", "monai"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return f"medfed {medfed.__version__} ({', '.join(found)}; Python {sys.version.split()[0]})"


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


def _defend(args: argparse.Namespace, console: Console) -> int:
    from medfed.config import load_config
    from medfed.simulation.defence import parse_attacks, parse_rules, run_defence

    attacks, rules = parse_attacks(args.attacks), parse_rules(args.rules)
    cfg = load_config(args.config, args.overrides)
    out = args.output or Path("runs") / f"{cfg.name}-defence"
    rows = run_defence(cfg, attacks, rules, out, console)
    for row in rows:
        auc = "failed" if row["test_auc"] is None else f"{row['test_auc']:.3f}"
        console.print(f"attack {row['attack']}, rule {row['rule']}: test AUC {auc}, "
                      f"{row['updates_rejected']} update(s) rejected")
    console.print(f"[bold green]finished[/] defence report: {out / 'defence.csv'}, {out / 'defence.png'}")
    return 0


def _certs(args: argparse.Namespace, console: Console) -> int:
    from medfed.federation.credentials import create_credentials, parse_sites, print_placements

    trial = parse_sites(args.trial_site_keys) if args.trial_site_keys is not None else []
    placements = create_credentials(args.out, args.coordinator_host, args.coordinator_ip, args.days, trial)
    print_placements(placements, console)
    console.print(f"[bold green]created[/] {len(placements)} files in {args.out}; private keys have mode 0600")
    if trial:
        console.print(f"[yellow]{', '.join(f'{site}.key' for site in trial)}: for a trial on one machine only; "
                      "in a real federation each site runs 'medfed site keygen' and sends only its .pub[/]")
    else:
        console.print("each site makes its own key pair ('medfed site keygen NAME --out DIR') and sends you "
                      "NAME.pub: put those in --sites-keys")
    return 0


def _site_keygen(args: argparse.Namespace, console: Console) -> int:
    from medfed.client.site_daemon.site_keys import create_site_keys, print_site_keys

    print_site_keys(create_site_keys(args.name, args.out), console)
    return 0


def _site_check(args: argparse.Namespace, console: Console) -> int:
    from medfed.client.site_daemon.site_check import REPORT_FILE, check_site, print_report, save_report
    from medfed.client.site_daemon.site_config import load_site_config

    cfg = load_site_config(args.config)
    report = check_site(cfg)
    print_report(report, console)
    path = save_report(report, args.output or Path(cfg.state_dir) / REPORT_FILE)
    verdict = "[bold green]ready[/]" if report["ok"] else "[bold red]not ready[/]"
    console.print(f"{verdict}: report saved to {path}", highlight=False)
    return 0 if report["ok"] else EXIT_BAD_INPUT


def _site_start(args: argparse.Namespace, console: Console) -> int:
    from medfed.client.site_daemon.supernode import run_site

    return run_site(args.config, console, args.runtime_port, args.max_retries, args.max_wait_time)


def _site_audit_verify(args: argparse.Namespace, console: Console) -> int:
    from medfed.client.site_daemon.audit_log import verify_audit_log
    from medfed.client.site_daemon.site_config import load_site_config

    path = load_site_config(args.config).audit_log
    count = verify_audit_log(path)  # a broken chain is a MedfedError: exit code 2
    console.print(f"audit log {path}: {count} entries, chain intact, head matches"
                  if count else f"audit log {path}: no entries yet", highlight=False, soft_wrap=True)
    return 0


def _server(args: argparse.Namespace, console: Console) -> int:
    from medfed.server.coordinator.start import StartOptions, start_federation, stop_federation

    if args.server_command == "status":
        from medfed.server.coordinator.status import federation_status

        federation_status(args.state, console)
        return 0
    if args.server_command == "stop":
        return stop_federation(args.state, console)
    if args.resume and args.output is None:
        raise MedfedError("--resume needs --output: the folder of the run to continue")
    return start_federation(StartOptions(
        config=args.config, overrides=args.overrides, state_dir=args.state, certs=args.certs,
        sites_keys=args.sites_keys, insecure=args.insecure, host=args.host, port=args.port,
        output=args.output, resume=args.resume, wait_for_sites=args.wait_for_sites,
    ), console)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    # Ray's C++ crash handler (absl) would take SIGTERM from this handler in the Ray driver,
    # dump a stack and, on a busy machine, abort (rc 134): SIGTERM is a request to stop here
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _dispatch(args, console)
    except MedfedError as exc:
        console.print(f"[bold red]medfed:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        _stopped(console, EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:  # Ray's own SIGTERM handler exits with the signal's number
            raise
        _stopped(console, EXIT_TERMINATED)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 1


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "simulate":
        return _simulate(args, console)
    if args.command == "sweep":
        return _sweep(args, console)
    if args.command == "defend":
        return _defend(args, console)
    if args.command == "certs":
        return _certs(args, console)
    if args.command == "site" and args.site_command == "keygen":
        return _site_keygen(args, console)
    if args.command == "site" and args.site_command == "check":
        return _site_check(args, console)
    if args.command == "site" and args.site_command == "start":
        return _site_start(args, console)
    if args.command == "site" and args.site_command == "audit":
        return _site_audit_verify(args, console)
    if args.command == "server":
        return _server(args, console)
    return 1


def _stopped(console: Console, code: int) -> None:
    """End a run that was interrupted: the checkpoint stays, Ray's processes go, and the
    process exits at once (Flower's ServerApp thread may still wait for replies)."""
    console.print("[yellow]stopped: continue with the same command plus --output DIR --resume[/]")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()  # stop every Ray process this run started
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
