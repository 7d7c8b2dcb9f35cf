"""``medfed server status``: the federation's processes, its sites and its run, at a glance.

Read from the state folder of ``medfed server start`` and asked of the SuperLink with
Flower's ``flwr`` (which sites are online, how the run stands); the rounds come from
the run folder's ``metrics.jsonl``. Nothing is changed.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from medfed.errors import MedfedError
from medfed.federation import flwr_cli
from medfed.federation.processes import alive
from medfed.server.coordinator.start import read_rounds
from medfed.server.coordinator.state import read_state, tracked


def federation_status(state_dir: Path, console: Console) -> dict:
    """Print the status of the federation started from ``state_dir``; return it as a dict."""
    state = read_state(state_dir)
    superlink = tracked(state, "superlink")
    up = superlink is not None and alive(superlink)
    status = {"superlink": {"pid": superlink.pid if superlink else None, "running": up,
                            "address": state.get("address"), "log": state.get("log")},
              "run": {"id": state.get("run_id"), "output": state.get("output")}, "sites": []}
    rows = read_rounds(Path(state["output"])) if state.get("output") else []
    status["run"].update(rounds_done=len(rows), rounds=state.get("rounds"))
    if up:
        flwr_home = Path(state["flwr_home"])
        status["sites"] = _sites(state, flwr_cli.list_nodes(flwr_home))
        if state.get("run_id"):
            info = flwr_cli.run_info(flwr_home, state["run_id"])
            status["run"].update(flower_status=info.get("status"), elapsed=info.get("elapsed"))
    _print(status, state_dir, console)
    if not up:
        raise MedfedError(f"the SuperLink of {state_dir} is not running (stale state: stop it with "
                          f"'medfed server stop --state {state_dir}')")
    return status


INTRUDER = "INTRUDER (not registered)"


def _sites(state: dict, nodes: list[dict]) -> list[dict]:
    names = {int(node): name for name, node in state.get("sites", {}).items()}
    seen = {int(n["node-id"]): n for n in nodes}
    # with a site table any other node was registered behind medfed's back; without one
    # (--insecure) no node is registered, and none is an intruder
    rows = [{"site": names.get(node, "-" if names else "(unregistered)"), "node": node,
             "status": INTRUDER if names and node not in names else n.get("status"),
             "online_since": n.get("online-at")} for node, n in seen.items()]
    rows += [{"site": name, "node": node, "status": "never connected", "online_since": None}
             for node, name in names.items() if node not in seen]
    return sorted(rows, key=lambda r: r["site"])


def _print(status: dict, state_dir: Path, console: Console) -> None:
    link, run = status["superlink"], status["run"]
    console.print(f"SuperLink: {'running' if link['running'] else 'NOT running'} (pid {link['pid']}) on "
                  f"{link['address']}; log {link['log']}", highlight=False)
    console.print(f"run {run['id']}: {run.get('flower_status', 'unknown')}, round {run['rounds_done']} of "
                  f"{run['rounds']} done; results in {run['output']}", highlight=False)
    table = Table(title=f"sites of the federation in {state_dir}")
    for column in ("site", "node", "status", "online since"):
        table.add_column(column)
    for row in status["sites"]:
        cell = f"[bold red]{INTRUDER}[/]" if row["status"] == INTRUDER else str(row["status"])
        table.add_row(row["site"], str(row["node"]), cell, str(row["online_since"] or ""))
    console.print(table)
