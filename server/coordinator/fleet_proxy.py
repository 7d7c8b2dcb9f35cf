"""The coordinator's front door: nginx forwards the sites' Fleet API and nothing else.

Flower 1.42 serves its Fleet API (SuperNodes), Control API (``flwr``: run submission,
node registration, stop, logs) and Runtime API on one HTTP port, and its open-source
build has no account login: anyone who can reach that port and trusts ``ca.crt`` (every
site holds it) can steer the federation. So ``medfed server start`` keeps the SuperLink
on a loopback port of its own and puts nginx, a well-kept reverse proxy from the
system's packages, on ``--host``/``--port``. nginx terminates TLS with the federation's
server certificate, forwards exactly the POST endpoints a SuperNode calls
(``/v1/fleet/...``) to the SuperLink over TLS (verified against the federation's CA),
and answers everything else with 403. Flower's node authentication (signed headers)
passes through unchanged. The Control API stays reachable only from the coordinator's
own machine, where ``medfed server start`` itself uses it.

nginx runs in the foreground as a child of ``medfed server start`` (``daemon off``),
with every file it writes (pid, logs, temporary bodies) in ``STATE/proxy/``; medfed
stops it with the SuperLink.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from medfed.errors import MedfedError

PROXY_DIR = "proxy"
CONFIG_FILE = "nginx.conf"
# What a SuperNode calls (flwr/supernode/fleet_http_client.py in Flower 1.42).
SUPERNODE_ENDPOINTS = ("activate-node", "deactivate-node", "send-node-heartbeat", "pull-messages",
                       "push-messages", "get-run", "get-fab", "push-object", "pull-object",
                       "confirm-message-received")
# Without node authentication (a loopback trial) a SuperNode registers itself; with it,
# the SuperLink refuses these anyway, and the proxy does not even forward them.
SELF_REGISTRATION_ENDPOINTS = ("register-node", "unregister-node")
INSTALL_HINT = "install it with 'apt-get install nginx' (scripts/setup.sh does)"


NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")  # where packages put it, often off a user's PATH


def nginx_binary() -> str:
    path = shutil.which("nginx") or next((p for p in NGINX_PATHS if Path(p).is_file()), None)
    if path is None:
        raise MedfedError(f"nginx not found: the coordinator needs it in front of the SuperLink; {INSTALL_HINT}")
    return path


def free_loopback_port() -> int:
    """A port on 127.0.0.1 for the SuperLink itself, which only this machine reaches."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def allowed_endpoints(authenticated: bool) -> tuple[str, ...]:
    return SUPERNODE_ENDPOINTS if authenticated else SUPERNODE_ENDPOINTS + SELF_REGISTRATION_ENDPOINTS


def _listen(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        return str(port)
    if host == "::":
        return f"[::]:{port} ipv6only=off"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nginx_config(folder: Path, host: str, port: int, superlink_port: int,
                 tls: tuple[Path, Path, Path] | None) -> str:
    """The whole nginx.conf: listen on ``host:port``, forward the Fleet API only."""
    scheme = "https" if tls else "http"
    listen = _listen(host, port) + (" ssl" if tls else "")
    endpoints = "|".join(allowed_endpoints(tls is not None))
    tls_server = tls_upstream = ""
    if tls:
        ca, cert, key = tls
        tls_server = f"""
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;"""
        # the SuperLink's certificate is the federation's own, always valid for localhost
        tls_upstream = f"""
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;"""
    return f"""\
# Written by medfed server start: the sites reach the SuperLink's Fleet API, nothing else.
daemon off;
worker_processes 1;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log {folder / 'access.log'};
    client_body_temp_path {folder / 'tmp' / 'body'};
    proxy_temp_path {folder / 'tmp' / 'proxy'};
    fastcgi_temp_path {folder / 'tmp' / 'fastcgi'};
    uwsgi_temp_path {folder / 'tmp' / 'uwsgi'};
    scgi_temp_path {folder / 'tmp' / 'scgi'};
    server_tokens off;
    # Flower bounds its own messages; model weights travel as large objects
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    server {{
        listen {listen};{tls_server}
        location ~ ^/v1/fleet/({endpoints})$ {{
            limit_except POST {{ deny all; }}
            # $uri: the normalised path just matched, so the SuperLink sees only these exact paths
            proxy_pass {scheme}://127.0.0.1:{superlink_port}$uri;{tls_upstream}
        }}
        location / {{
            default_type text/plain;
            return 403 "medfed: only the Fleet API is served here\\n";
        }}
    }}
}}
"""


def write_proxy_config(state_dir: Path, host: str, port: int, superlink_port: int,
                       tls: tuple[Path, Path, Path] | None) -> Path:
    """Write ``STATE/proxy/nginx.conf`` (and its folders) and have nginx check it."""
    folder = state_dir / PROXY_DIR
    (folder / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    path.write_text(nginx_config(folder, host, port, superlink_port, tls))
    check = subprocess.run([nginx_binary(), "-t", "-q", "-c", str(path), "-e", str(folder / "error.log")],
                           capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        raise MedfedError(f"nginx refuses its configuration {path}: {' '.join(check.stderr.split())}")
    return path


def proxy_args(config: Path) -> list[str]:
    # -e: nginx would otherwise open its default error log before reading the config
    return [nginx_binary(), "-c", str(config), "-e", str(config.parent / "error.log")]
