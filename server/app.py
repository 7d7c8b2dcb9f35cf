"""The ServerApp: runs the round loop of a `RoundPlan` on whatever Grid Flower gives it.

In simulation the Grid reaches virtual SuperNodes; in deployment, a hospital's
SuperNodes through the SuperLink. The plan is built before the app starts, so the
same ServerApp object serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.server.rounds import RoundPlan, run_rounds


@dataclass
class ServerResult:
    """What the ServerApp leaves for its caller: the final weights, or the error."""

    weights: dict[str, torch.Tensor] | None = None
    rounds: list[dict] = field(default_factory=list)
    error: BaseException | None = None


def make_server_app(plan: RoundPlan, result: ServerResult) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result.weights, result.rounds = run_rounds(grid, plan)
        except BaseException as exc:  # handed to the caller, who reports it to the user
            result.error = exc

    return app
