"""The coordinator's proxy forwards the SuperNodes' Fleet API and nothing else.

nginx runs with the very configuration ``medfed server start`` writes, in front of a
stand-in for the SuperLink (on loopback, with the federation's TLS certificate) that
records which requests reach it. Every route Flower's SuperLink serves is tried.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading

import httpx
import pytest
from deployment_helpers import free_port
from flwr.superlink.routers.control.router import router as control_router
from flwr.superlink.routers.fleet.router import router as fleet_router

from medfed.federation.credentials import create_credentials
from medfed.federation.processes import stop, track
from medfed.server.coordinator.fleet_proxy import SUPERNODE_ENDPOINTS, proxy_args, write_proxy_config


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "8")
        self.end_headers()
        self.wfile.write(b"superlnk")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """(public URL, CA path, paths seen by the stand-in SuperLink)."""
    root = tmp_path_factory.mktemp("proxy")
    creds = root / "creds"
    create_credentials(creds, "localhost", [])
    tls = (creds / "ca.crt", creds / "server.pem", creds / "server.key")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[1], tls[2])
    upstream.socket = context.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    config = write_proxy_config(root, "127.0.0.1", port, upstream.server_address[1], tls)
    process = subprocess.Popen(proxy_args(config), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    nginx = track(process.pid, "nginx")
    try:
        with httpx.Client(verify=str(tls[0]), timeout=5) as client:
            for _ in range(100):
                try:
                    client.post(f"https://127.0.0.1:{port}/")
                    break
                except httpx.ConnectError:
                    threading.Event().wait(0.1)
        yield f"https://127.0.0.1:{port}", tls[0], _Recorder.seen
    finally:
        stop([nginx], grace=5)
        process.wait(10)
        upstream.shutdown()


def _post(proxy, path: str, method: str = "POST") -> httpx.Response:
    url, ca, _ = proxy
    with httpx.Client(verify=str(ca), timeout=5) as client:
        return client.request(method, url + path, content=b"\x08\x01")


def test_every_control_api_route_is_refused(proxy):
    paths = [route.path for route in control_router.routes]
    assert len(paths) > 30 and "/v1/control/start-run" in paths and "/v1/control/register-node" in paths
    for path in paths:
        assert _post(proxy, path).status_code == 403, path
    assert not [p for p in proxy[2] if p.startswith("/v1/control")]


@pytest.mark.parametrize("path", [
    "/v1/runtime/acquire-task", "/v1/runtime/pull-task-input", "/health",
    "/v1/fleet/register-node", "/v1/fleet/unregister-node",  # a SuperNode may not (un)register itself
    "/v1/fleet/pull-messages/../../control/list-runs", "/v1/fleet/pull-messages%2F..%2F..%2Fcontrol%2Fstop-run",
    "/v1/fleet/get-run/../../control/stop-run", "/v1/FLEET/pull-messages", "/v1/fleet/pull-messagesX",
    "/v1/fleet//pull-messages", "/v1/fleet/pull-messages?x=/v1/control/stop-run",
])
def test_nothing_but_the_supernode_endpoints_reaches_the_superlink(proxy, path):
    url, ca, seen = proxy
    before = len(seen)
    with httpx.Client(verify=str(ca), timeout=5) as client:
        request = client.build_request("POST", url, content=b"")
        request.url = request.url.copy_with(raw_path=path.encode())  # sent as written, not normalised
        code = client.send(request).status_code
    allowed = {f"/v1/fleet/{endpoint}" for endpoint in SUPERNODE_ENDPOINTS}
    if len(seen) > before:  # forwarded: then as one of the SuperNode's own paths, nothing else
        assert code == 200 and seen[before:] == ["/v1/fleet/pull-messages"], (path, seen[before:])
    else:
        assert code in (400, 403), (path, code)
    assert set(seen) <= allowed


def test_the_supernode_endpoints_reach_the_superlink(proxy):
    for endpoint in SUPERNODE_ENDPOINTS:
        response = _post(proxy, f"/v1/fleet/{endpoint}")
        assert response.status_code == 200 and response.content == b"superlnk", endpoint
        assert proxy[2][-1] == f"/v1/fleet/{endpoint}"
        assert _post(proxy, f"/v1/fleet/{endpoint}", method="GET").status_code == 403
    # a SuperNode's endpoints are all of Flower's Fleet routes but self-(un)registration
    fleet = {route.path.rsplit("/", 1)[1] for route in fleet_router.routes}
    assert fleet - set(SUPERNODE_ENDPOINTS) == {"register-node", "unregister-node"}
