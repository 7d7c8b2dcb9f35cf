"""A deployed site's audit log: one JSON line per message in and out.

Each line says when, which run and round, which way, what kind of message, how many bytes
(as Flower sends them), the SHA-256 of the weights it carried, the names of its metrics,
and whether the site accepted, refused or sent it. Values of metrics and weights are never
written: the log shows what left the site without holding any of it. Lines are appended
with a single write to a file only the site's account can read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from flwr.app import ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

IN, OUT = "in", "out"
FIELDS = ("time", "site", "run_id", "round", "direction", "kind", "message_id", "bytes",
          "weights_sha256", "metrics", "status", "reason")


def weights_digest(record: ArrayRecord) -> str:
    """SHA-256 over the arrays' names, types, shapes and bytes, in order: the same weights
    give the same digest at the site and at the coordinator."""
    digest = hashlib.sha256()
    for name, array in record.items():
        digest.update(f"{name}\0{array.dtype}\0{tuple(array.shape)}\0".encode())
        digest.update(array.data)
    return digest.hexdigest()


def message_bytes(msg: Message) -> int:
    """The message's size as Flower transmits it: every object it is made of."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def round_of(msg: Message) -> int | None:
    """The server round a message belongs to: its config's, else Flower's group id."""
    try:
        if not msg.has_error():
            config = msg.content.config_records.get("config")
            if config is not None and isinstance(config.get("server-round"), int):
                return int(config["server-round"])
        return int(msg.metadata.group_id)
    except (TypeError, ValueError, KeyError):
        return None


def describe(msg: Message) -> dict:
    """Size, weights digest and metric names of ``msg`` (an error message has none)."""
    if msg.has_error():
        return {"bytes": message_bytes(msg), "weights_sha256": None, "metrics": []}
    content = msg.content
    digests = [weights_digest(record) for record in content.array_records.values()]
    names = sorted({name for record in content.metric_records.values() for name in record})
    return {
        "bytes": message_bytes(msg),
        "weights_sha256": digests[0] if len(digests) == 1 else (digests or None),
        "metrics": names,
    }


class AuditLog:
    """Appends entries to ``path`` (JSON lines; the folder is created, the file is 0600)."""

    def __init__(self, path: str | Path, site: str) -> None:
        self.path = Path(path)
        self.site = site

    def record(self, msg: Message, direction: str, status: str, reason: str | None = None,
               rnd: int | None = None) -> dict:
        """Write the entry of ``msg`` and return it; `OSError` if it cannot be written."""
        try:
            details = describe(msg)
        except Exception as exc:  # noqa: BLE001 (a message too broken to measure is still logged)
            details = {"bytes": None, "weights_sha256": None, "metrics": [], "unmeasurable": repr(exc)}
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "site": self.site,
            "run_id": msg.metadata.run_id,
            "round": rnd if rnd is not None else round_of(msg),
            "direction": direction,
            "kind": msg.metadata.message_type,
            "message_id": msg.metadata.message_id if direction == IN else msg.metadata.reply_to_message_id,
            **details,
            "status": status,
            "reason": reason,
        }
        self._append(json.dumps(entry) + "\n")
        return entry

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read_audit_log(path: str | Path) -> list[dict]:
    """Every entry of the log at ``path``, oldest first."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
