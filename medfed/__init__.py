"""medfed: federated learning for medical imaging on Flower.

Sub-packages, by where their code runs: `medfed.server` (the ServerApp and its round loop,
in simulation and in the SuperLink's ServerApp process), `medfed.server.coordinator`
(`medfed server ...`: the coordinator's processes), `medfed.client` (the ClientApp: a site's
round, its DP-SGD), `medfed.client.site_daemon` (`medfed site ...`: the SuperNode and the
site's controls), `medfed.federation` (what both deployed sides use), `medfed.wire` (the
contract between them), `medfed.tasks` (the task table), `medfed.models` (one folder per
task: data, network, train, metrics, pictures; wherever a model is trained or scored),
`medfed.strategies` (aggregation rules), `medfed.simulation` (virtual hospitals and the
Simulation Engine harness).
"""

__version__ = "0.1.0"
