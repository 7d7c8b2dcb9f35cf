"""``medfed site start SITE.yaml``: the hospital's SuperNode, run as a foreground daemon.

The site only ever connects out, to ``coordinator.address``; Flower's SuperNode also
serves its local Runtime API to its own ClientApp processes on 127.0.0.1
(``--runtime-port``). Before starting, the site checks what it can: SITE.yaml, that
the coordinator's name resolves, and, when the coordinator answers, that its TLS
certificate is valid for that name and signed by ``coordinator.ca_cert``.

The SuperNode runs with ``--isolation process``: it never starts app processes itself.
Beside it, medfed's launcher (`medfed.client.site_daemon.app_launcher`) takes each ClientApp task and
runs medfed's installed ClientApp once the run's app has passed the site's check; it is
started again if it ever stops.

``flower-supernode`` retries on its own while the network is down (without limit unless
``--max-retries``/``--max-wait-time``, after which medfed stops too). It ends itself when
a restarted coordinator no longer knows it; medfed then starts it again after a pause that
grows to five minutes, for as long as it once connected. If it ends at once on its first
start (a key the coordinator did not register), medfed stops with the reason. Only
Ctrl-C or SIGTERM end a running site with exit code 0, stopping its ClientApp processes.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from medfed.client.site_daemon.deployed_site import SITE_CONFIG_KEY
from medfed.errors import DataError, MedfedError
from medfed.federation.flwr_cli import toml_string
from medfed.federation.processes import Tracked, alive, command, flower_env, spawn, stop, track

NODE_CONFIG_FILE = "supernode-node-config.toml"
DEFAULT_RUNTIME_PORT = 9094
MIN_UPTIME = 60.0  # a SuperNode that ran this long had connected: start it again when it exits
MAX_PAUSE = 300.0
EARLY_EXIT_HINT = ("the coordinator turned this site away or could not be reached; 'Failed to activate "
                   "SuperNode' above means the coordinator has not registered this site's public key "
                   "(its SITE.pub must be in the coordinator's --sites-keys folder)")


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_coordinator(cfg: DictConfig, console: Console, timeout: float = 5.0) -> None:
    """Stop on what will never work (a name that does not resolve, a certificate of the
    wrong name or federation); only warn while the coordinator is merely unreachable."""
    host, port = host_port(cfg.coordinator.address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MedfedError(f"coordinator.address: cannot resolve '{host}' ({exc.strerror}); "
                          "check the coordinator's name in SITE.yaml") from None
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if cfg.insecure:
                return
            context = ssl.create_default_context(cafile=cfg.coordinator.ca_cert)
            with context.wrap_socket(raw, server_hostname=host):
                return
    except ssl.SSLCertVerificationError as exc:
        raise MedfedError(f"coordinator.address: the coordinator at {host}:{port} has a certificate this site "
                          f"cannot trust ({exc.verify_message}): it must be valid for '{host}' and signed by "
                          f"coordinator.ca_cert ({cfg.coordinator.ca_cert})") from None
    except (OSError, ssl.SSLError) as exc:
        console.print(f"[yellow]the coordinator at {host}:{port} does not answer yet ({exc}); "
                      "the SuperNode keeps trying[/]")


def write_node_config(cfg: DictConfig, site_yaml: Path) -> Path:
    """The SuperNode's node config as a TOML file: a path with spaces stays one value."""
    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    path = state / NODE_CONFIG_FILE
    path.write_text(f"{SITE_CONFIG_KEY} = {toml_string(str(site_yaml.resolve()))}\n")
    return path


def supernode_args(cfg: DictConfig, node_config: Path, runtime_port: int, max_retries: int | None,
                   max_wait_time: float | None) -> list[str]:
    # --isolation process: the SuperNode starts no flwr-clientapp of its own (it would install and
    # import the run's FAB); medfed's launcher runs medfed's ClientApp instead (`app_launcher`)
    args = [command("flower-supernode"), "--superlink", cfg.coordinator.address, "--node-config", str(node_config),
            "--host", "127.0.0.1", "--port", str(runtime_port), "--isolation", "process"]
    if cfg.insecure:
        args.append("--insecure")
    else:
        args += ["--root-certificates", cfg.coordinator.ca_cert, "--auth-supernode-private-key",
                 cfg.coordinator.private_key]
    if max_retries is not None:
        args += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        args += ["--max-wait-time", str(max_wait_time)]
    return args


def check_runtime_port(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise MedfedError(f"--runtime-port: 127.0.0.1:{port} is in use ({exc.strerror}); another SuperNode on "
                              "this machine? give each its own --runtime-port") from None


class _Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def run_site(site_yaml: Path, console: Console, runtime_port: int = DEFAULT_RUNTIME_PORT,
             max_retries: int | None = None, max_wait_time: float | None = None) -> int:
    """Run the site's SuperNode until stopped; the exit code for the shell."""
    from medfed.client.site_daemon.site_config import UNLABELLED_FORMATS, load_site_config

    cfg = load_site_config(site_yaml)
    if cfg.data.format in UNLABELLED_FORMATS and cfg.data.masks is None:
        raise DataError("data.masks is null: the site's images are not labelled yet, so it cannot train; "
                        "name its masks in SITE.yaml (medfed site check shows what it has)")
    if cfg.policy.require_deidentified:
        from medfed.client.site_daemon.site_check import identifying_headers

        problem = identifying_headers(cfg)
        if problem:
            raise DataError(problem)
    if cfg.insecure:
        console.print("[bold red]WARNING: insecure: true: no TLS and no key; this site's updates travel in "
                      "clear text. For a trial on one machine only.[/]")
    check_coordinator(cfg, console)
    check_runtime_port(runtime_port)
    args = supernode_args(cfg, write_node_config(cfg, Path(site_yaml)), runtime_port, max_retries, max_wait_time)
    env = flower_env(FLWR_HOME=str(Path(cfg.state_dir) / "flwr"))  # the site's Flower files stay in its state
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    pause, connected = 10.0, False
    try:
        while True:
            console.print(f"site {cfg.name}: connecting to {cfg.coordinator.address} "
                          f"(audit log {cfg.audit_log})", highlight=False)
            started = time.monotonic()
            code = _supervise(args, env, lambda: _start_launcher(runtime_port, Path(site_yaml), env), console)
            ran = time.monotonic() - started
            # Flower exits 1 when its first activation fails, but 0 when it stops itself after the
            # SuperLink refused its heartbeat, which only an activated SuperNode sends: it had
            # connected, however briefly (a coordinator restarted soon after the site started).
            connected = connected or code == 0
            if ran < MIN_UPTIME and not connected:
                raise MedfedError(f"flower-supernode stopped at once (exit code {code}): {EARLY_EXIT_HINT}")
            if max_retries is not None or max_wait_time is not None:
                raise MedfedError(f"flower-supernode ended (exit code {code}) and --max-retries/--max-wait-time "
                                  "ask not to start it again")
            if ran >= MIN_UPTIME:
                connected, pause = True, 10.0
            console.print(f"[yellow]flower-supernode ended (exit code {code}): the coordinator restarted or "
                          f"forgot this site; starting it again in {pause:.0f} s[/]")
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
    except (KeyboardInterrupt, _Stop):
        console.print(f"site {cfg.name}: stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_launcher(runtime_port: int, site_yaml: Path, env: dict[str, str]) -> Tracked:
    """medfed's ClientApp launcher (`medfed.client.site_daemon.app_launcher`), beside the SuperNode."""
    process = spawn([sys.executable, "-m", "medfed.client.site_daemon.app_launcher", "--runtime-api-address",
                     f"127.0.0.1:{runtime_port}", "--site-config", str(site_yaml.resolve())], None, env)
    return track(process.pid, "medfed app launcher")


def _supervise(args: list[str], env: dict[str, str], start_launcher: Callable[[], Tracked], console: Console,
               check_every: float = 5.0) -> int:
    """Run flower-supernode to its end, with medfed's launcher beside it (started again if it
    ever stops: without it the site would take no task); on any interruption, end both and
    their helpers first."""
    process = spawn(args, None, env)
    supernode = track(process.pid, "flower-supernode")
    launcher = start_launcher()
    try:
        while True:
            try:
                return process.wait(timeout=check_every)
            except subprocess.TimeoutExpired:
                if not alive(launcher):
                    console.print("[yellow]medfed's app launcher stopped; starting it again[/]")
                    launcher = start_launcher()
    finally:
        stop([supernode, launcher])
        process.poll()
