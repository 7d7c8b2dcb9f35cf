"""Idempotent training rounds at a site: a round sent again gets the reply already made.

A coordinator that restarts (``--resume``) redoes the round that was under way and sends
the sites the same model and settings again. Training again would spend a DP site's
budget a second time on an update it has already sent (the site would count a round the
federation never used, and refuse the run's last round), and would start from site
state (FedBN's layers) that the first attempt already moved on. So a site stores its
last training reply, keyed by the run, the round, the weights received and the round's
settings, and sends that reply again, unchanged: repeating a release costs no privacy.

A round that never produced a reply (the site was killed while training) left a note of
the site's state files as they were before it; the same round sent again puts them back
first, so the redone round starts where the first attempt did and ends the same. Nothing
the first attempt computed left the site, so undoing its spending is sound. Any other
round replaces the note, so state written since is never undone.

In ``<state_dir>/round_cache/``, each file replaced in one rename: ``reply.pt`` (key,
weights, metrics) and ``pending.json`` (key, the state files before the round).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from medfed.faults import kill_point
from medfed.wire import RUN_KEY, SERVER_ROUND, weights_digest

CACHE_DIR = "round_cache"
REPLY_FILE, PENDING_FILE, LOCK_FILE = "reply.pt", "pending.json", "lock"
log = logging.getLogger("medfed.client")

Reply = tuple[ArrayRecord, MetricRecord]


def round_key(arrays: ArrayRecord, config: ConfigRecord) -> str | None:
    """SHA-256 of the round's settings (run key and round among them) and of the weights
    received; None without a run key, when nothing tells this run from another."""
    if not isinstance(config.get(RUN_KEY), str):
        return None
    settings = json.dumps(dict(config), sort_keys=True, default=repr)
    return hashlib.sha256(f"{settings}\0{weights_digest(arrays)}".encode()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, flush it to disk, and rename it over ``path``."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


class RoundCache:
    """A site's last training reply, and the note of a round begun but not answered.

    ``state_files`` are the names, in ``state_dir``, of the files a round of training
    changes (the privacy accountant, FedBN's layers).
    """

    def __init__(self, state_dir: Path, state_files: Sequence[str]) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / CACHE_DIR
        self.state_files = tuple(state_files)

    def answer(self, arrays: ArrayRecord, config: ConfigRecord, train: Callable[[], Reply]) -> Reply:
        """The reply to a training message: the stored one if this very round was answered
        before, else ``train()``'s, stored before it is returned (and so before it leaves)."""
        key = round_key(arrays, config)
        if key is None:
            return train()
        rnd = int(config.get(SERVER_ROUND, 0))
        with self._locked():
            cached = self.reply(key)
            if cached is not None:
                log.info("round %d sent again: answering with the reply already made, without training", rnd)
                return cached
            self.begin(key)
            reply = train()
            kill_point("site-trained", rnd)
            self.store(key, *reply)
            kill_point("site-stored", rnd)
            return reply

    def reply(self, key: str) -> Reply | None:
        """The stored reply, if it answers the round ``key``."""
        path = self.dir / REPLY_FILE
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as exc:  # written in one rename, so only a disk fault gets here: train
            log.warning("%s is unreadable (%s): the round is trained", path, exc)
            return None
        if saved.get("key") != key:
            return None
        return ArrayRecord(saved["weights"]), MetricRecord(saved["metrics"])

    def begin(self, key: str) -> None:
        """Before training round ``key``: if it was begun and never answered, put the state
        files back as they were before it; otherwise note them as they are now."""
        pending = self._pending()
        if pending is not None and pending.get("key") == key:
            log.info("this round was begun and never answered: its state is put back before it is redone")
            self._restore(pending["files"])
            return
        files = {name: self._read(name) for name in self.state_files}
        self._write(PENDING_FILE, json.dumps({"key": key, "files": files}).encode())

    def store(self, key: str, arrays: ArrayRecord, metrics: MetricRecord) -> None:
        """Keep the reply to round ``key`` (replacing the last one); the round is answered."""
        buffer = io.BytesIO()
        torch.save({"key": key, "weights": arrays.to_torch_state_dict(), "metrics": dict(metrics)}, buffer)
        self._write(REPLY_FILE, buffer.getvalue())
        (self.dir / PENDING_FILE).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One training round at a time at this site: two ClientApp processes (an old one
        still training after a coordinator restart, or two runs) never interleave their
        reads and writes of the state files. The lock goes with the process."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self.dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _pending(self) -> dict | None:
        try:
            return json.loads((self.dir / PENDING_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _read(self, name: str) -> str | None:
        path = self.state_dir / name
        return base64.b64encode(path.read_bytes()).decode() if path.is_file() else None

    def _restore(self, files: dict[str, str | None]) -> None:
        for name, data in files.items():
            if data is None:
                (self.state_dir / name).unlink(missing_ok=True)
            else:
                write_atomic(self.state_dir / name, base64.b64decode(data))

    def _write(self, name: str, data: bytes) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.dir / name, data)
