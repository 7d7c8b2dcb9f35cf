"""Flower's own ``flwr`` command, as the coordinator uses it: register sites, submit and
watch runs, list and unregister SuperNodes.

Each federation medfed starts has its own Flower home (``FLWR_HOME``) in its state
folder, holding one SuperLink connection named ``medfed``, so nothing is read from or
written to the user's ``~/.flwr``. Every call asks for JSON and checks ``success``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from medfed.errors import MedfedError
from medfed.federation.processes import command, flower_env

CONNECTION = "medfed"
CALL_TIMEOUT = 120.0


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's, DEL aside)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def write_connection(flwr_home: Path, address: str, ca_cert: Path | None) -> Path:
    """``FLWR_HOME/config.toml`` with the ``medfed`` connection (TLS unless no CA)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f"default = {toml_string(CONNECTION)}", "", f"[superlink.{CONNECTION}]",
             f"address = {toml_string(address)}"]
    lines.append(f"root-certificates = {toml_string(str(ca_cert))}" if ca_cert else "insecure = true")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def flwr(flwr_home: Path, *args: str, timeout: float = CALL_TIMEOUT) -> dict:
    """``flwr ARGS --format json`` against the federation's SuperLink; the parsed reply."""
    argv = [command("flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=flower_env(FLWR_HOME=str(flwr_home)))
    except subprocess.TimeoutExpired:
        raise MedfedError(f"'flwr {' '.join(args)}' did not answer within {timeout:.0f} s") from None
    reply = _json_in(done.stdout)
    if reply is None or not reply.get("success", False):
        detail = (reply or {}).get("error-message") or done.stderr.strip() or done.stdout.strip()
        raise MedfedError(f"'flwr {' '.join(args)}' failed: {' '.join(str(detail).split())}")
    return reply


def _json_in(text: str) -> dict | None:
    """The JSON object in ``text`` (Flower may print notes before it)."""
    start = text.find("{")
    while start != -1:
        try:
            value = json.loads(text[start:])
            return value if isinstance(value, dict) else None
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return None


def register_site(flwr_home: Path, public_key: Path, name: str) -> int:
    """Register a site's public key with the SuperLink; its SuperNode's node id."""
    reply = flwr(flwr_home, "supernode", "register", str(public_key), CONNECTION, "--name", name)
    return int(reply["node-id"])


def submit_run(flwr_home: Path, app_dir: Path) -> int:
    """Submit the Flower app in ``app_dir`` as a run; its run id."""
    return int(flwr(flwr_home, "run", str(app_dir), CONNECTION)["run-id"])


def list_nodes(flwr_home: Path) -> list[dict]:
    return flwr(flwr_home, "supernode", "ls", CONNECTION)["nodes"]


def unregister_node(flwr_home: Path, node_id: int) -> None:
    """Unregister a SuperNode: the SuperLink drops it, and it cannot come back under that registration."""
    flwr(flwr_home, "supernode", "unregister", str(node_id), CONNECTION)


def run_info(flwr_home: Path, run_id: int) -> dict:
    runs = flwr(flwr_home, "ls", CONNECTION, "--run-id", str(run_id))["runs"]
    return runs[0] if runs else {}


def stop_run(flwr_home: Path, run_id: int) -> None:
    flwr(flwr_home, "stop", str(run_id), CONNECTION)
