"""medfed: federated learning for medical imaging on Flower.

Sub-packages, by where their code runs: `medfed.server` (the ServerApp and its round loop,
in simulation and in the SuperLink's ServerApp process), `medfed.server.coordinator`
(`medfed server ...`: the coordinator's processes), `medfed.client` (the ClientApp: local
training per task, DP-SGD, a site's terms and data readers), `medfed.client.site_daemon`
(`medfed site ...`: the SuperNode and the site's controls), `medfed.federation` (what
both deployed sides use), `medfed.wire` (the contract between them), `medfed.models`
(networks and task metrics), `medfed.strategies` (aggregation rules), `medfed.simulation`
(public datasets, virtual hospitals and the Simulation Engine harness).
"""

__version__ = "0.1.0"
