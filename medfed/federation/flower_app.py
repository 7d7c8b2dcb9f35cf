"""medfed's Flower app: the folder ``flwr run`` builds into a FAB for one deployed run.

It holds a single ``pyproject.toml``: medfed is installed on the coordinator and at every
site, so the app only names its components (``medfed.server.deployed:app``,
``medfed.client.site_daemon.deployed:app``) and carries the run config: the experiment as YAML,
the run folder and the registered sites. Every SuperNode receives the FAB, so the
experiment config is visible to the sites; it holds settings, never data.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import medfed
from medfed.errors import MedfedError
from medfed.federation.flwr_cli import toml_string

# the app's run config, read by the deployed ServerApp and checked by every site
CONFIG_KEY = "experiment-config"  # the experiment's YAML, as text
OUTPUT_KEY = "output-dir"  # the run folder on the coordinator
SITES_KEY = "site-nodes"  # registered sites: "NODE_ID=NAME,..."
WAIT_KEY = "wait-for-sites"  # seconds to wait for every registered site before round 1
RESUME_KEY = "resume"  # continue from the run folder's checkpoint

SERVER_APP = "medfed.server.deployed:app"
CLIENT_APP = "medfed.client.site_daemon.deployed:app"
PUBLISHER = "medfed"


def write_app(app_dir: Path, name: str, experiment_yaml: str, output_dir: Path, site_nodes: str,
              wait_for_sites: float, resume: bool) -> Path:
    """Write the app's pyproject.toml into ``app_dir``; returns its path."""
    run_config = {
        CONFIG_KEY: experiment_yaml,
        OUTPUT_KEY: str(output_dir),
        SITES_KEY: site_nodes,
        WAIT_KEY: float(wait_for_sites),
        RESUME_KEY: bool(resume),
    }
    version = getattr(medfed, "__version__", "0.1.0")
    text = "\n".join([
        "[project]",
        'name = "medfed-federation"',
        f"version = {toml_string(version)}",
        f"description = {toml_string(f'medfed deployed run: {name}')}",
        'license = "Apache-2.0"',
        "dependencies = []  # medfed is installed on the coordinator and at every site",
        "",
        "[tool.flwr.app]",
        f"publisher = {toml_string(PUBLISHER)}",
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {toml_string(SERVER_APP)}",
        f"clientapp = {toml_string(CLIENT_APP)}",
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_value(value)}" for key, value in run_config.items()),
        "",
    ])
    if tomllib.loads(text)["tool"]["flwr"]["app"]["config"] != run_config:  # the YAML must survive intact
        raise MedfedError(f"the experiment config of '{name}' cannot be carried in the app's run config")
    app_dir.mkdir(parents=True, exist_ok=True)
    path = app_dir / "pyproject.toml"
    path.write_text(text)
    return path


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return toml_string(str(value))
