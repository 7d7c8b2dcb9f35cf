"""The components of `flwr run .`: medfed's ServerApp and ClientApp in Flower's simulation.

Flower ships this file and ``configs/`` in the app's FAB; everything else comes from the
installed medfed (`medfed.simulation.flwr_run`), which finds the configs next to this file.
"""

from pathlib import Path

from medfed.simulation.flwr_run import client_app as _client_app
from medfed.simulation.flwr_run import server_app as _server_app

APP_DIR = Path(__file__).resolve().parent
server_app = _server_app(APP_DIR)
client_app = _client_app(APP_DIR)
