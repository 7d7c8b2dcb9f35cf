"""What the deployment tests share: small site data, SITE.yaml, and the processes they start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medfed.demo_shards import write_shards
from medfed.federation import processes


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 28x28 images that differ in brightness."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 1))
    images = (np.where(labels[:, :, None] == 1, 170, 60) + rng.integers(0, 40, (n, 28, 28))).astype(np.uint8)
    return images, labels


def site_npz(path: Path, n_train: int = 24, n_val: int = 8, seed: int = 0) -> Path:
    (ti, tl), (vi, vl) = synthetic_images(n_train, seed), synthetic_images(n_val, seed + 1)
    np.savez(path, train_images=ti, train_labels=tl, val_images=vi, val_labels=vl)
    return path


def site_yaml(folder: Path, creds: Path, name: str = "north", policy: str = "", address: str = "127.0.0.1:8000",
              data: str | None = None, extra: str = "") -> Path:
    """A SITE.yaml for ``name``: ``policy`` lines go under ``policy:``, ``extra`` (``privacy:``,
    ``limits:`` sections) after it."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        site_npz(folder / "data.npz", seed=len(name))
        data = "{format: npz, path: data.npz}"
    path = folder / "SITE.yaml"
    path.write_text(f"""\
name: {name}
data: {data}
device: cpu
state_dir: state
coordinator:
  address: {address}
  ca_cert: {creds / 'ca.crt'}
  private_key: {creds / f'{name}.key'}
  trusted_entities: {creds / 'trusted-entities.yaml'}
policy:
  tasks: [classification]
  models: [cnn]
{policy}{extra}""")
    return path


def trial_credentials(cli, folder: Path, sites: list[str], others: tuple[str, ...] = ("rogue",)) -> tuple[Path, Path]:
    """``medfed certs`` with trial keys for ``sites`` and ``others``, and a folder of the public
    keys the coordinator allows (``sites`` only): (creds, allowed)."""
    creds, allowed = folder / "creds", folder / "allowed"
    assert cli("certs", "--out", creds, "--coordinator-host", "localhost",
               "--trial-site-keys", ",".join([*sites, *others])) == 0
    allowed.mkdir()
    for name in sites:
        (allowed / f"{name}.pub").write_bytes((creds / f"{name}.pub").read_bytes())
    return creds, allowed


def substitute_app(folder: Path, files: dict[str, str], components=("evil.server:app", "evil.client:app"),
                   config: str = 'output-dir = "/tmp/x"') -> Path:
    """A Flower app that is not medfed's, as anyone able to submit a run could write it."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(f"""\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "evil"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "evil"

[tool.flwr.app.components]
serverapp = "{components[0]}"
clientapp = "{components[1]}"

[tool.flwr.app.config]
{config}
""")
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def shards(source: Path, sites: list[str], out: Path) -> Path:
    """Small per-site shards of PneumoniaMNIST, and the coordinator's own test slice."""
    return write_shards(source, sites, out)


def experiment_yaml(path: Path, name: str, coordinator: Path, rounds: int) -> Path:
    """A fast deployed experiment: a small CNN, one local step per round, on the CPU."""
    path.write_text(f"""\
name: {name}
seed: 3
data: {{dataset: pneumoniamnist, root: {coordinator}}}
model: {{name: cnn}}
train: {{rounds: {rounds}, local_steps: 1, batch_size: 16, device: cpu, amp: false}}
strategy: {{min_sites: 2, timeout: 60}}
logging: {{progress: false}}
""")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Procs:
    """The processes a test starts, and every descendant seen, all ended at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.popen: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, processes.Tracked] = {}
        self.env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FLWR_DISABLE_UPDATE_CHECK="1",
                        FLWR_TELEMETRY_ENABLED="0")

    def start(self, name: str, *args) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (a name started again logs after)
        self.popen[name] = subprocess.Popen([sys.executable, "-m", "medfed.cli", *map(str, args)], stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.snapshot()
        return self.popen[name]

    def output(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def snapshot(self) -> None:
        for proc in self.popen.values():
            if proc.poll() is None:
                try:
                    for member in processes.tree(processes.track(proc.pid, "test")):
                        self.seen.setdefault(member.pid, member)
                except ProcessLookupError:
                    pass

    def kill(self, name: str) -> None:
        """Kill abruptly: the medfed process started as ``name`` and everything it started."""
        self.snapshot()
        members = processes.tree(processes.track(self.popen[name].pid, name))
        for member in members:
            self.seen.setdefault(member.pid, member)
            os.kill(member.pid, signal.SIGKILL)
        self.popen[name].wait(10)

    def wait(self, name: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.popen[name].poll() is None and time.monotonic() < deadline:
            self.snapshot()
            time.sleep(1)
        if self.popen[name].poll() is None:
            raise AssertionError(f"{name} still running after {timeout:.0f} s:\n{self.output(name)[-3000:]}")
        return self.popen[name].returncode

    def left_running(self) -> list[processes.Tracked]:
        return [p for p in self.seen.values() if processes.alive(p)]

    def end_all(self) -> None:
        for proc in self.popen.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        processes.stop(list(self.seen.values()), grace=5)
        for proc in self.popen.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def until(condition, timeout: float, what: str, procs: Procs) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{procs.output('server')[-3000:]}")
        procs.snapshot()
        time.sleep(0.5)
