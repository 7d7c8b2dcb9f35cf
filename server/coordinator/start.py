"""The coordinator's side of a deployment: ``medfed server start`` and ``medfed server stop``.

``start`` checks everything it can before starting anything (config, run folder,
certificates, site keys, port), then starts ``flower-superlink`` on loopback with TLS and
SuperNode authentication, nginx on ``--host``/``--port`` in front of it forwarding only the
sites' Fleet API (`medfed.server.coordinator.fleet_proxy`), registers each site's public key, submits
medfed's Flower app as a run
and follows it in the foreground until it ends. However it ends (finished, failed,
Ctrl-C, SIGTERM, ``medfed server stop``) every process it started is stopped and the
state folder says so. ``--insecure`` exists for a trial on one machine only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from medfed.app_signature import SIGNATURE_FILE, sign_app
from medfed.errors import ConfigError, MedfedError
from medfed.federation import flwr_cli
from medfed.federation.processes import Tracked, alive, command, flower_env, spawn, stop, track
from medfed.server.coordinator.state import forget, read_state, running, state_path, tracked, write_state

SUPERLINK_LOG = "superlink.log"
READY_TIMEOUT = 60.0
STATUS_EVERY = 30.0  # seconds between asking the SuperLink how the run is doing
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass
class StartOptions:
    config: Path
    overrides: list[str]
    state_dir: Path
    certs: Path
    sites_keys: Path | None = None
    insecure: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    output: Path | None = None
    resume: bool = False
    wait_for_sites: float = 300.0


def load_experiment(opts: StartOptions) -> DictConfig:
    from medfed.config import load_config, simulated_misbehaviour

    cfg = load_config(opts.config, opts.overrides)
    if cfg.mode != "federated":
        raise ConfigError(f"{opts.config}: a deployed run is federated; set mode: federated (not {cfg.mode})")
    if simulated_misbehaviour(cfg):
        raise ConfigError(f"{opts.config}: attack and faults are simulated by 'medfed simulate' only; "
                          "remove them from a deployed run")
    from medfed.models.experiment_data import data_dir, load_experiment_data

    # the ServerApp runs in another process and folder: the data folder must mean what it means here
    cfg.data.root = str(data_dir(cfg.data.root).resolve())
    load_experiment_data(cfg)  # the coordinator's test set: a missing file stops here, before any process
    return cfg


def check_output(out: Path, resume: bool, cfg: DictConfig) -> None:
    from medfed.config import to_yaml
    from medfed.server.outputs import CONFIG, SUMMARY

    if resume:
        if not (out / CONFIG).is_file():
            raise MedfedError(f"--resume: {out} holds no run to resume ({CONFIG} is missing)")
        if (out / SUMMARY).is_file():
            raise MedfedError(f"--resume: the run in {out} already finished ({SUMMARY} exists)")
        if (out / CONFIG).read_text() != to_yaml(cfg):
            raise MedfedError(f"--resume: the config differs from {out / CONFIG}; resume with that file")
    elif out.exists() and any(out.iterdir()):
        raise MedfedError(f"{out} is not empty: choose another --output, or add --resume to continue it")


def tls_files(certs: Path) -> tuple[Path, Path, Path]:
    """``ca.crt``, ``server.pem`` and ``server.key`` from ``--certs``, the certificate checked."""
    from medfed.federation.credentials import CA_CERT, SERVER_CERT, SERVER_KEY, check_certificate

    files = tuple((Path(certs) / name).resolve() for name in (CA_CERT, SERVER_CERT, SERVER_KEY))
    for path in files:
        if not path.is_file():
            raise MedfedError(f"--certs: {path} not found; create the federation's credentials with 'medfed certs'")
    check_certificate(files[1], files[0])
    return files


def app_signer(certs: Path) -> tuple:
    """The federation's app-signing key from ``--certs``: (key id, key)."""
    from medfed.federation.credentials import APP_SIGNING_KEY, load_app_signing_key

    path = Path(certs) / APP_SIGNING_KEY
    if not path.is_file():
        raise MedfedError(f"--certs: {path.resolve()} not found; 'medfed certs' creates it (the sites run only "
                          "apps signed with it)")
    return load_app_signing_key(path)


def site_public_keys(folder: Path) -> dict[str, Path]:
    """``SITE -> SITE.pub`` for every public key in ``folder``, each checked."""
    from medfed.federation.credentials import load_node_public_key

    if not Path(folder).is_dir():
        raise MedfedError(f"--sites-keys: folder not found: {folder}")
    keys = {path.stem: path.resolve() for path in sorted(Path(folder).glob("*.pub"))}
    if not keys:
        raise MedfedError(f"--sites-keys: no SITE.pub files in {folder}; copy each allowed site's public key there")
    for path in keys.values():
        load_node_public_key(path)
    return keys


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise MedfedError(f"--port: cannot listen on {host}:{port} ({exc.strerror}); "
                              "is another SuperLink running? choose another --port") from None


def local_address(host: str, port: int) -> str:
    """Where this machine reaches the SuperLink (the certificate always names loopback)."""
    if host in WILDCARD_HOSTS:
        return f"127.0.0.1:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superlink_args(port: int, tls: tuple[Path, Path, Path] | None) -> list[str]:
    """The SuperLink on loopback only: its Control API must not be reachable from the network
    (`medfed.server.coordinator.fleet_proxy` forwards the sites' Fleet API to it)."""
    args = [command("flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation"]  # medfed is installed; never fetch packages
    if tls is None:
        return args + ["--insecure"]
    ca, cert, key = tls
    return args + ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                   "--enable-supernode-auth"]


def wait_until_listening(process: Tracked, address: str, log_file: Path) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not alive(process):
            raise MedfedError(f"{process.command} stopped while starting:\n{_tail(log_file)}")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.5)
    raise MedfedError(f"{process.command} did not listen on {address} within {READY_TIMEOUT:.0f} s; see {log_file}")


def start_proxy(opts: StartOptions, state_dir: Path, superlink_port: int, tls) -> Tracked:
    """nginx on ``--host``/``--port``, forwarding the sites' Fleet API to the SuperLink."""
    from medfed.server.coordinator.fleet_proxy import PROXY_DIR, proxy_args, write_proxy_config

    config = write_proxy_config(state_dir, opts.host, opts.port, superlink_port, tls)
    process = spawn(proxy_args(config), state_dir / PROXY_DIR / "nginx.out", flower_env())
    proxy = track(process.pid, "nginx (Fleet API proxy)")
    wait_until_listening(proxy, local_address(opts.host, opts.port), state_dir / PROXY_DIR / "error.log")
    return proxy


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


class _Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def check_insecure_host(host: str) -> None:
    """``--insecure`` listens without TLS or site keys: anyone who reaches it can join and read
    the model, so it may listen on this machine's loopback only (nothing is resolved)."""
    from medfed.federation.credentials import is_loopback

    if not is_loopback(host):
        raise MedfedError(f"--insecure: --host {host} is not a loopback address; without TLS and site keys only "
                          "127.0.0.1, ::1 or localhost are allowed (a trial on one machine). To accept sites, "
                          "drop --insecure and use the federation's credentials ('medfed certs')")


def start_federation(opts: StartOptions, console: Console) -> int:
    """Start the SuperLink, register the sites, run the experiment; stop everything at the end."""
    if opts.insecure:
        check_insecure_host(opts.host)  # before anything is read, written or started
    cfg = load_experiment(opts)
    out = (opts.output or Path("runs") / f"{cfg.name}-deployed-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    check_output(out, opts.resume, cfg)
    tls = None if opts.insecure else tls_files(opts.certs)
    keys = {} if opts.insecure else site_public_keys(opts.sites_keys or opts.certs)
    signer = None if opts.insecure else app_signer(opts.certs)
    state_dir = opts.state_dir.resolve()
    if state_path(state_dir).is_file() and running(read_state(state_dir)):
        raise MedfedError(f"a federation is already running from {state_dir}; "
                          f"'medfed server stop --state {opts.state_dir}' first")
    check_port(opts.host, opts.port)
    from medfed.server.coordinator.fleet_proxy import free_loopback_port, nginx_binary

    nginx_binary()  # a missing nginx stops here, before anything is written or started
    if opts.insecure:
        console.print("[bold red]WARNING: --insecure: no TLS and no site authentication. Anyone who can reach "
                      f"port {opts.port} can join and read the model. For a trial on one machine only.[/]")

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    flwr_home, log_file = state_dir / "flwr", state_dir / SUPERLINK_LOG
    superlink_port = free_loopback_port()
    address = f"127.0.0.1:{superlink_port}"  # the Control API: this machine only
    flwr_cli.write_connection(flwr_home, address, tls[0] if tls else None)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    state: dict = {"processes": {}, "address": address, "host": opts.host, "port": opts.port,
                   "flwr_home": str(flwr_home), "log": str(log_file), "output": str(out),
                   "rounds": cfg.train.rounds, "insecure": opts.insecure, "sites": {}, "run_id": None}
    superlink: Tracked | None = None
    proxy: Tracked | None = None
    try:
        state["processes"]["coordinator"] = track(os.getpid(), "medfed server start").as_dict()
        process = spawn(superlink_args(superlink_port, tls), log_file, flower_env(FLWR_HOME=str(flwr_home)))
        superlink = track(process.pid, "flower-superlink")
        state["processes"]["superlink"] = superlink.as_dict()
        write_state(state_dir, state)
        wait_until_listening(superlink, address, log_file)
        proxy = start_proxy(opts, state_dir, superlink_port, tls)
        state["processes"]["proxy"] = proxy.as_dict()
        write_state(state_dir, state)
        console.print(f"sites connect to {opts.host}:{opts.port} "
                      f"({'TLS, site authentication' if tls else 'INSECURE'}): nginx forwards the Fleet API "
                      f"only; SuperLink on {address} (this machine only), log: {log_file}")
        if opts.host in ("127.0.0.1", "localhost", "::1"):
            console.print("  only this machine can connect; '--host 0.0.0.0' accepts the sites")
        for name, key in keys.items():
            state["sites"][name] = flwr_cli.register_site(flwr_home, key, name)
            console.print(f"  registered site {name} (node {state['sites'][name]})")
        write_state(state_dir, state)
        return _run(cfg, opts, state, state_dir, out, [superlink, proxy], signer, console)
    except (KeyboardInterrupt, _Stop):
        console.print("[yellow]stopping: every process of the federation is being stopped[/]")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        ended = stop([p for p in (proxy, superlink) if p is not None])
        forget(state_dir)
        console.print(f"stopped {len(ended)} process(es); nothing of this federation is left running")


def _run(cfg, opts: StartOptions, state: dict, state_dir: Path, out: Path, daemons: list[Tracked], signer,
         console: Console) -> int:
    from medfed.config import to_yaml
    from medfed.federation.flower_app import write_app
    from medfed.server.site_names import format_site_nodes

    nodes = {node: name for name, node in state["sites"].items()}
    if opts.resume:
        from medfed.server.deployed import FAILED_FILE

        # the failure of an earlier attempt (a ServerApp that lost its SuperLink writes one) would
        # end this attempt at once: follow_run reads it as this run's
        (out / FAILED_FILE).unlink(missing_ok=True)
    app_dir = state_dir / "app"
    pyproject = write_app(app_dir, cfg.name, to_yaml(cfg), out, format_site_nodes(nodes), opts.wait_for_sites,
                          opts.resume)
    signature = app_dir / SIGNATURE_FILE
    signature.unlink(missing_ok=True)
    if signer is not None:  # the sites run only an app signed by the federation's key
        signature.write_text(sign_app(pyproject.read_text(), *signer))
    state["run_id"] = flwr_cli.submit_run(Path(state["flwr_home"]), app_dir)
    write_state(state_dir, state)
    console.print(f"run {state['run_id']} submitted: {cfg.name}, {cfg.train.rounds} rounds -> {out}")
    console.print(f"  waiting for sites ({', '.join(state['sites']) or 'any'}): each starts "
                  "'medfed site start SITE.yaml'")
    return follow_run(state, out, daemons, console)


def follow_run(state: dict, out: Path, daemons: list[Tracked], console: Console, poll: float = 2.0) -> int:
    """Report rounds as they finish; 0 when the run finished, `MedfedError` when it failed."""
    from medfed.server.deployed import FAILED_FILE
    from medfed.server.outputs import SUMMARY
    from medfed.server.rounds import headline

    shown, asked, flwr_home = 0, time.monotonic(), Path(state["flwr_home"])
    while True:
        rows = read_rounds(out)
        for row in rows[shown:]:
            failed = len(row.get("sites_failed", []))
            console.print(f"round {row['round']}/{state['rounds']}: {len(row.get('sites', {}))} site(s) updated"
                          f"{f', {failed} failed' if failed else ''}; {headline(row.get('test', {})) or 'no test'}")
        shown = len(rows)
        if (out / SUMMARY).is_file():
            summary = json.loads((out / SUMMARY).read_text())
            stopped = f" (stopped early: {summary['stopped_early']})" if summary.get("stopped_early") else ""
            console.print(f"[bold green]finished[/] run {state['run_id']}{stopped}: {out}")
            return 0
        if (out / FAILED_FILE).is_file():
            raise MedfedError(f"run {state['run_id']} failed: {json.loads((out / FAILED_FILE).read_text())['error']}")
        for daemon in daemons:
            if not alive(daemon):
                raise MedfedError(f"{daemon.command} stopped during the run; see {state['log']}")
        if time.monotonic() - asked > STATUS_EVERY:
            asked = time.monotonic()
            unregister_intruders(state, console)
            try:
                info = flwr_cli.run_info(flwr_home, state["run_id"])
            except MedfedError as exc:  # a busy or unreachable SuperLink: ask again later
                console.print(f"[yellow]no run status this time: {exc}[/]", highlight=False)
                info = {}
            if str(info.get("status", "")).startswith("finished") and not _appears(out / SUMMARY, 5.0):
                raise MedfedError(f"run {state['run_id']} ended as {info['status']} "
                                  f"({info.get('status-details', 'no details')}); see {state['log']}")
        time.sleep(poll)


def unregister_intruders(state: dict, console: Console) -> list[int]:
    """Unregister every SuperNode the SuperLink knows of that is not one of the sites
    registered by this ``start``; the node ids unregistered.

    Whoever can reach the SuperLink's Control API can register a key of their own; the
    ServerApp already sends such a node nothing, and unregistering it keeps it out of
    the federation. Without a site table (``--insecure``) no node is registered.
    """
    if state.get("insecure") or not state.get("sites"):
        return []
    flwr_home, ours = Path(state["flwr_home"]), {int(node) for node in state["sites"].values()}
    try:
        nodes = flwr_cli.list_nodes(flwr_home)
    except MedfedError as exc:  # a busy SuperLink: ask again later
        console.print(f"[yellow]no node list this time: {exc}[/]", highlight=False)
        return []
    done = []
    for node in nodes:
        node_id = int(node["node-id"])
        if node_id in ours or node.get("status") == "unregistered":  # unregistered already: nothing to do
            continue
        console.print(f"[bold red]WARNING: node {node_id} ({node.get('status')}) is not a registered site: "
                      "unregistering it[/]", highlight=False)
        try:
            flwr_cli.unregister_node(flwr_home, node_id)
            done.append(node_id)
        except MedfedError as exc:  # tried again at the next status
            console.print(f"[bold red]could not unregister node {node_id}: {exc}[/]", highlight=False)
    return done


def _appears(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    return path.is_file()


def read_rounds(out: Path) -> list[dict]:
    """The run's finished rounds, ignoring a line still being written."""
    from medfed.server.outputs import METRICS

    rows = []
    try:
        lines = (out / METRICS).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def stop_federation(state_dir: Path, console: Console, grace: float = 30.0) -> int:
    """Ask ``medfed server start`` to stop, then make sure every process it started ended."""
    state = read_state(state_dir)
    coordinator = tracked(state, "coordinator")
    daemons = [p for role in ("proxy", "superlink") if (p := tracked(state, role)) is not None]
    if coordinator is not None and alive(coordinator):
        with contextlib.suppress(ProcessLookupError):
            os.kill(coordinator.pid, signal.SIGTERM)  # it stops its own processes, as on Ctrl-C
        deadline = time.monotonic() + grace
        while alive(coordinator) and time.monotonic() < deadline:
            time.sleep(0.2)
    ended = stop(daemons)
    forget(state_dir)
    left = [p for p in ended if alive(p)]
    if left:
        raise MedfedError(f"could not stop process(es) {', '.join(str(p.pid) for p in left)}")
    console.print(f"[bold]stopped[/] the federation of {state_dir}")
    return 0
