"""medfed: federated learning for medical imaging on Flower.

Sub-packages: `medfed.server` (ServerApp and round loop), `medfed.client` (ClientApp,
local training, a site's data loaders), `medfed.models` (networks and task metrics),
`medfed.strategies` (aggregation rules), `medfed.simulation` (public datasets, virtual
hospitals and the Simulation Engine harness).
"""

__version__ = "0.1.0"
