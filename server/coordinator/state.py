"""What ``medfed server start`` leaves in its state folder for ``status`` and ``stop``.

``state.json`` names the processes it started (PID and start time: `processes.Tracked`),
the SuperLink's address, the Flower home, the registered sites and the run. It is written
whole (temporary file, then rename) and removed once everything has stopped, so a state
file whose processes are gone means a coordinator that was killed, never one that
stopped cleanly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medfed.errors import MedfedError
from medfed.federation.processes import Tracked, alive

STATE_FILE = "state.json"
DEFAULT_STATE_DIR = Path("medfed-server")


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def write_state(state_dir: Path, state: dict) -> None:
    path = state_path(state_dir)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)


def read_state(state_dir: Path) -> dict:
    path = state_path(state_dir)
    if not path.is_file():
        raise MedfedError(f"no federation is running from {state_dir} ({STATE_FILE} not found); "
                          "give the folder used with 'medfed server start --state'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MedfedError(f"{path}: unreadable ({exc}); stop the processes it names by hand") from exc


def tracked(state: dict, role: str) -> Tracked | None:
    entry = state.get("processes", {}).get(role)
    return Tracked(**entry) if entry else None


def running(state: dict) -> list[Tracked]:
    """The processes of ``state`` that are still alive."""
    return [p for role in state.get("processes", {}) if (p := tracked(state, role)) and alive(p)]


def forget(state_dir: Path) -> None:
    state_path(state_dir).unlink(missing_ok=True)
