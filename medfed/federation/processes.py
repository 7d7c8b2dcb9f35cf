"""Processes medfed starts for Flower (SuperLink, SuperNode) and how it ends them all.

Flower's daemons start helpers of their own: ``flower-superlink`` a detached
``flower-superexec`` (its own session) that starts ``flwr-serverapp``; ``flower-supernode``
a ``flower-superexec`` that starts ``flwr-clientapp``. Killing the daemon alone can leave
them behind for a while, so medfed ends the whole tree: it reads the tree from /proc
before signalling, asks politely (SIGTERM), then insists (SIGKILL). A process is known by
its PID and its start time, so a PID the system has since reused is never signalled.
Linux only (/proc).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Tracked:
    """A process medfed started: enough to find it again, and only it."""

    pid: int
    started: int  # start time in clock ticks since boot (/proc/PID/stat field 22)
    command: str

    def as_dict(self) -> dict:
        return asdict(self)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(process: Tracked) -> bool:
    """Running (not a zombie) and still the process that was started."""
    fields = _stat(process.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == process.started


def track(pid: int, command: str) -> Tracked:
    started = start_time(pid)
    if started is None:
        raise ProcessLookupError(pid)
    return Tracked(pid, started, command)


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid``, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def group(process: Tracked) -> list[int]:
    """Living members of the process group ``process`` leads (medfed starts each daemon in
    a session of its own), started after it: found even once the leader has exited."""
    members = []
    for entry in PROC.iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[2]) == process.pid and int(fields[19]) >= process.started:
            members.append(int(entry.name))
    return members


def tree(process: Tracked) -> list[Tracked]:
    """``process`` (if alive), its descendants and its process group, each tracked by its
    own start time."""
    pids = descendants(process.pid) if alive(process) else []
    members = [process] if alive(process) else []
    for pid in dict.fromkeys(pids + group(process)):
        if pid == process.pid:
            continue
        try:
            members.append(track(pid, "child"))
        except ProcessLookupError:
            continue
    return members


def _signal(process: Tracked, sig: int) -> None:
    if alive(process):
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass


def stop(processes: list[Tracked], grace: float = 10.0) -> list[Tracked]:
    """End ``processes`` and all their descendants: SIGTERM, then SIGKILL after ``grace``
    seconds. Returns every process that was signalled."""
    members = list({p.pid: p for root in processes for p in tree(root)}.values())
    for process in members:
        _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in members) and time.monotonic() < deadline:
        time.sleep(0.2)
    late = [p for root in members for p in tree(root)]  # helpers started while stopping, too
    for process in late:
        _signal(process, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in late) and time.monotonic() < deadline:
        time.sleep(0.1)
    return list({p.pid: p for p in members + late}.values())


def flower_env(**extra: str) -> dict[str, str]:
    """The environment for Flower's commands: this Python's scripts first on PATH (Flower
    starts ``flower-superexec`` and ``flwr-*app`` by name), no update checks or telemetry
    (coordinators and hospitals often have no internet)."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.update(extra)
    return env


def command(name: str) -> str:
    """The full path of one of Flower's commands, from this Python's installation."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        from medfed.errors import MedfedError

        raise MedfedError(f"{name} not found next to {sys.executable}: install medfed's dependencies "
                          "(flwr) in this environment")
    return str(path)


def spawn(args: list[str], log_file: Path | None, env: dict[str, str]) -> subprocess.Popen:
    """Start ``args`` in a session of its own (a Ctrl-C in the terminal reaches medfed,
    which then stops it), output appended to ``log_file`` or inherited."""
    output = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (the child keeps it)
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT if output
                                else None, env=env, start_new_session=True)
    finally:
        if output is not None:
            output.close()
