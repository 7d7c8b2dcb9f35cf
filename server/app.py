"""The ServerApp: runs the round loop of a `RoundPlan` on whatever Grid Flower gives it.

In simulation the Grid reaches virtual SuperNodes; in deployment, a hospital's
SuperNodes through the SuperLink. The plan is built before the app starts, so the
same ServerApp object serves both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.server.rounds import RoundPlan, run_rounds

# a simulation's virtual SuperNodes all exist from the start, but on a busy machine one can
# come online a moment after the ServerApp starts, and Flower samples the nodes online then
SIMULATED_SITES_PATIENCE = 60.0
log = logging.getLogger("medfed.server")


@dataclass
class ServerResult:
    """What the ServerApp leaves for its caller: the final weights, or the error."""

    weights: dict[str, torch.Tensor] | None = None
    rounds: list[dict] = field(default_factory=list)
    error: BaseException | None = None


def wait_for_sites(grid: Grid, expected: int, patience: float, poll: float = 1.0) -> int:
    """Wait up to ``patience`` seconds for ``expected`` sites; the number connected."""
    deadline = time.monotonic() + patience
    while (connected := len(list(grid.get_node_ids()))) < expected and time.monotonic() < deadline:
        time.sleep(poll)
    log.info("%d of %d sites connected", connected, expected)
    return connected


def make_server_app(plan: RoundPlan, result: ServerResult, sites: int = 0) -> ServerApp:
    """The ServerApp of ``plan``; with ``sites`` (a simulation's), round 1 waits until that
    many SuperNodes are online (`SIMULATED_SITES_PATIENCE` at most), so every run starts
    with every site."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            if sites:
                wait_for_sites(grid, sites, SIMULATED_SITES_PATIENCE, poll=0.1)
            result.weights, result.rounds = run_rounds(grid, plan)
        except BaseException as exc:  # handed to the caller, who reports it to the user
            result.error = exc

    return app
