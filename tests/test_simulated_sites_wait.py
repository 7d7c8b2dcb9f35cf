"""A simulation's ServerApp starts round 1 with every virtual site, even one that comes
online late on a busy machine (Flower samples the nodes online when a round starts)."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from medfed.server import app as server_app


class _LateGrid:
    """A Grid whose third SuperNode comes online at the fourth look."""

    def __init__(self) -> None:
        self.looks = 0

    def get_node_ids(self):
        self.looks += 1
        return [1, 2, 3] if self.looks >= 4 else [1, 2]


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def test_round_one_waits_for_every_simulated_site(monkeypatch):
    seen = []

    def run_rounds(grid, plan):
        seen.append(len(grid.get_node_ids()))  # the sites round 1 would sample from
        return None, []

    monkeypatch.setattr(server_app, "run_rounds", run_rounds)
    result = server_app.ServerResult()
    server_app.make_server_app(plan=None, result=result, sites=3)(_LateGrid(), _context())
    assert result.error is None and seen == [3]


def test_the_wait_has_a_bound(monkeypatch):
    monkeypatch.setattr(server_app, "SIMULATED_SITES_PATIENCE", 0.3)
    grid = _LateGrid()
    grid.get_node_ids = lambda: [1, 2]  # the third site never comes
    assert server_app.wait_for_sites(grid, 3, server_app.SIMULATED_SITES_PATIENCE, poll=0.05) == 2
