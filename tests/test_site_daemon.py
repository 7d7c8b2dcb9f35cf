"""The site daemon's processes: the SuperNode never runs apps itself, medfed's launcher does,
and the launcher is started again if it stops."""

from __future__ import annotations

import sys

from rich.console import Console

from medfed.client.site_daemon.supernode import _supervise, supernode_args
from medfed.federation.processes import alive, spawn, track


def test_the_supernode_starts_no_app_process_of_its_own(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"insecure": False, "coordinator": {
        "address": "fl.example.org:8000", "ca_cert": "ca.crt", "private_key": "north.key"}})
    args = supernode_args(cfg, tmp_path / "node.toml", 9094, None, None)
    assert args[args.index("--isolation") + 1] == "process"  # no flower-superexec, no flwr-clientapp
    assert args[args.index("--host") + 1] == "127.0.0.1"


def test_a_stopped_launcher_is_started_again_and_everything_ends_with_the_supernode(tmp_path):
    launchers = []

    def start_launcher():  # a launcher that dies after half a second
        process = spawn([sys.executable, "-c", "import time; time.sleep(0.5)"], None, {})
        launchers.append(track(process.pid, "launcher"))
        return launchers[-1]

    supernode = [sys.executable, "-c", "import time; time.sleep(3)"]
    code = _supervise(supernode, {}, start_launcher, Console(file=open(tmp_path / "out", "w")), check_every=0.5)
    assert code == 0
    assert len(launchers) >= 3  # started again after each stop
    assert not any(alive(p) for p in launchers)
    assert "app launcher stopped; starting it again" in (tmp_path / "out").read_text()
