"""A deployed site's audit log: one JSON line per message in and out, in a hash chain.

Each line says when, which run and round, which way, what kind of message, how many bytes
(as Flower sends them), the SHA-256 of the weights it carried, the names of its metrics,
and whether the site accepted, refused or sent it. Values of metrics and weights are never
written: the log shows what left the site without holding any of it. The site's own
decisions (a run accepted or refused) are entries too (`AuditLog.event`).

The log must show an auditor that nothing was edited or removed, so every entry carries
its number (`seq`), the hash of the entry before it (`prev`) and its own `hash` (SHA-256
of its canonical JSON): an edited, inserted, removed or reordered line breaks the chain.
Lines cut from the end leave no gap, so the last entry's number and hash are also kept in
a second file, ``<log>.head``. `verify_audit_log` checks both. The chain proves that the
log is intact since it was written, not who wrote it: the site's account could rewrite the
whole chain, so keep copies of the head file elsewhere when that matters.

Each Flower message runs in a ClientApp process of its own, so appends hold an exclusive
lock (``<log>.lock``) around reading the last entry, writing the line and updating the head.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from medfed.errors import MedfedError
from medfed.wire import SERVER_ROUND, weights_digest

IN, OUT, SITE = "in", "out", "site"
CHAIN = ("seq", "prev", "hash")
FIELDS = ("time", "site", "run_id", "round", "direction", "kind", "message_id", "bytes",
          "weights_sha256", "metrics", "status", "reason", *CHAIN)
EVENT_FIELDS = ("time", "site", "direction", "kind", "status", "reason")
GENESIS = "0" * 64  # the `prev` of the first entry
# The entry an append writes first when the head file disagrees with the log: the
# disagreement stays in the chain, so the verifier reports it even after the head moves on.
HEAD_MISMATCH = ("audit", "head-mismatch")


def message_bytes(msg: Message) -> int:
    """The message's size as Flower transmits it: every object it is made of."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def round_of(msg: Message) -> int | None:
    """The server round a message belongs to: its config's, else Flower's group id."""
    try:
        if not msg.has_error():
            config = msg.content.config_records.get("config")
            if config is not None and isinstance(config.get(SERVER_ROUND), int):
                return int(config[SERVER_ROUND])
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


def entry_hash(entry: dict) -> str:
    """SHA-256 hex of ``entry``'s canonical JSON without its ``hash`` field."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def head_path(path: str | Path) -> Path:
    return Path(f"{path}.head")


def lock_path(path: str | Path) -> Path:
    return Path(f"{path}.lock")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends chained entries to ``path`` (JSON lines; the folder is created, files are 0600)."""

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
        return self._append({
            "time": _now(),
            "site": self.site,
            "run_id": msg.metadata.run_id,
            "round": rnd if rnd is not None else round_of(msg),
            "direction": direction,
            "kind": msg.metadata.message_type,
            "message_id": msg.metadata.message_id if direction == IN else msg.metadata.reply_to_message_id,
            **details,
            "status": status,
            "reason": reason,
        })

    def event(self, kind: str, status: str, reason: str | None = None, **fields) -> dict:
        """Write an entry about the site itself (e.g. kind "run", status "accepted", with
        ``run_id=``, ``fab_sha256=``) and return it; `OSError` if it cannot be written."""
        taken = set(fields) & {*EVENT_FIELDS, *CHAIN}
        if taken:
            raise ValueError(f"audit event fields {sorted(taken)} are set by the log itself")
        return self._append({"time": _now(), "site": self.site, "direction": SITE, "kind": kind,
                             "status": status, "reason": reason, **fields})

    def _append(self, entry: dict) -> dict:
        json.dumps(entry)  # a value JSON cannot hold fails here, before the log is touched
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(lock_path(self.path), fcntl.LOCK_EX, create=True):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                last_line, torn = _last_line(fd)
                point, mismatch = self._chain_point(last_line)
                lines = []
                if mismatch:
                    note = {"time": _now(), "site": self.site, "direction": SITE, "kind": HEAD_MISMATCH[0],
                            "status": HEAD_MISMATCH[1], "reason": mismatch}
                    point = _chain(note, point)
                    lines.append(note)
                point = _chain(entry, point)
                lines.append(entry)
                # A line torn by a crash gets its own line, so the new entry stays readable.
                text = ("\n" if torn else "") + "".join(json.dumps(e) + "\n" for e in lines)
                os.write(fd, text.encode())
                os.fsync(fd)  # recorded before the message it describes goes anywhere
            finally:
                os.close(fd)
            _write_head(head_path(self.path), point)
        return entry

    def _chain_point(self, last_line: bytes | None) -> tuple[tuple[int, str] | None, str | None]:
        """Where the next entry continues the chain (seq and hash of the last entry, None
        for a new chain), and why the head file disagrees with the log (None if it agrees)."""
        head_file = head_path(self.path)
        try:
            head = _read_head(head_file)
        except ValueError as exc:
            head, head_problem = None, str(exc)
        else:
            head_problem = None
        if last_line is None:
            if head is None and head_problem is None:
                return None, None
            said = head_problem or f"the head file {head_file} said entry {head[0]}"
            return None, f"the log was empty but {said}: entries had been removed"
        last = _chained(last_line)
        if last is None:  # the last line is broken; the verifier reports it, the head says where to go on
            return head, None
        if head == (last["seq"], last["hash"]):
            return head, None
        if head == (last["seq"] - 1, last["prev"]):  # the previous append stopped before its head update
            return (last["seq"], last["hash"]), None
        if head is None:
            said = head_problem or f"the head file {head_file} was missing"
        else:
            said = f"the head file {head_file} said entry {head[0]} (hash {head[1][:12]}...)"
        return (last["seq"], last["hash"]), (
            f"{said} but the log ended at entry {last['seq']} (hash {last['hash'][:12]}...)")


def _chain(entry: dict, point: tuple[int, str] | None) -> tuple[int, str]:
    """Give ``entry`` its place after ``point``; returns the new point."""
    entry["seq"], entry["prev"] = (0, GENESIS) if point is None else (point[0] + 1, point[1])
    entry.pop("hash", None)
    entry["hash"] = entry_hash(entry)
    return entry["seq"], entry["hash"]


def _chained(line: bytes) -> dict | None:
    """The entry on ``line`` if it is one of the chain (an object with seq, prev, hash)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
        return None
    if not all(isinstance(entry.get(key), str) for key in ("prev", "hash")):
        return None
    return entry


def _last_line(fd: int, block: int = 65536) -> tuple[bytes | None, bool]:
    """The file's last non-empty line (None if it has none) and whether it lacks its
    newline. Read backwards from the end: an append costs the same however long the log."""
    end = os.fstat(fd).st_size
    if end == 0:
        return None, False
    torn = os.pread(fd, 1, end - 1) != b"\n"
    tail, pos = b"", end
    while pos > 0:
        start = max(0, pos - block)
        tail = os.pread(fd, pos - start, start) + tail
        pos = start
        lines = tail.rstrip().split(b"\n")
        if len(lines) > 1 or pos == 0:
            return (lines[-1].strip() or None), torn
    return None, torn


def _read_head(path: Path) -> tuple[int, str] | None:
    """The head file's (seq, hash); None if it does not exist, `ValueError` if unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"the head file {path} cannot be read ({exc})") from exc
    try:
        head = json.loads(text)
    except ValueError:
        raise ValueError(f"the head file {path} is not valid JSON") from None
    if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)):
        raise ValueError(f"the head file {path} does not hold an entry's seq and hash")
    return head["seq"], head["hash"]


def _write_head(path: Path, point: tuple[int, str]) -> None:
    """Replace the head file in one rename: a reader sees the old head or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"seq": point[0], "hash": point[1]}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path, operation: int, create: bool):
    """Hold ``flock(operation)`` on ``path``; without ``create``, no lock if it does not exist
    (no writer has ever used it)."""
    try:
        fd = os.open(path, (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o600)
    except FileNotFoundError:
        if create:
            raise
        yield
        return
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_audit_log(path: str | Path) -> list[dict]:
    """Every entry of the log at ``path``, oldest first."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def verify_audit_log(path: str | Path) -> int:
    """Check the chain of the log at ``path`` and its head file; return the number of
    entries. `MedfedError` names the file and the first line that breaks the chain."""
    path = Path(path)
    try:
        # A shared lock: an append between reading the log and its head is no false alarm.
        with _locked(lock_path(path), fcntl.LOCK_SH, create=False):
            return _verify(path)
    except OSError as exc:
        raise MedfedError(f"audit log {path} cannot be read: {exc}") from exc


def _verify(path: Path) -> int:
    def broken(message: str) -> MedfedError:
        return MedfedError(f"audit log {path}: {message}")

    last = None
    try:
        log = path.open("rb")
    except FileNotFoundError:
        log = contextlib.nullcontext([])
    with log as lines:
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                raise broken(f"line {number} is not valid JSON") from None
            if not isinstance(entry, dict) or any(key not in entry for key in CHAIN):
                raise broken(f"line {number} is not an entry of the chain (it has no seq, prev and hash)")
            if entry["hash"] != entry_hash(entry):
                raise broken(f"line {number} was changed (its hash does not match its content)")
            if last is None and entry["prev"] != GENESIS:
                raise broken(f"line {number} does not start the chain (its prev hash is not {GENESIS[:8]}...: "
                             "lines were removed from the start)")
            if last is not None and entry["prev"] != last["hash"]:
                raise broken(f"line {number} does not follow line {number - 1} (prev hash differs: "
                             "a line was removed, inserted or reordered)")
            expected = 0 if last is None else last["seq"] + 1
            if entry["seq"] != expected:
                raise broken(f"line {number}: seq {expected} expected, found {entry['seq']}")
            if (entry.get("kind"), entry.get("status")) == HEAD_MISMATCH and entry.get("direction") == SITE:
                raise broken(f"line {number} records that, when it was written, {entry.get('reason')}")
            last = entry
    _verify_head(path, last, broken)
    return 0 if last is None else last["seq"] + 1


def _verify_head(path: Path, last: dict | None, broken) -> None:
    head_file = head_path(path)
    try:
        head = _read_head(head_file)
    except ValueError as exc:
        raise broken(str(exc)) from None
    if head is None:
        if last is not None:
            raise broken(f"its head file {head_file} is missing, so the log cannot be shown complete "
                         "(entries may have been removed from the end)")
        return
    if last is None:
        raise broken(f"the log has no entries but its head file {head_file} says it ends at entry {head[0]}: "
                     "entries were removed")
    seq, line = last["seq"], last["seq"] + 1
    if head[0] > seq:
        raise broken(f"the log ends at entry {seq} (line {line}) but its head file {head_file} says {head[0]}: "
                     "entries were removed from the end")
    if head[0] < seq:
        raise broken(f"the log ends at entry {seq} (line {line}) but its head file {head_file} says {head[0]}: "
                     "entries were added without updating the head (or the last append was interrupted)")
    if head[1] != last["hash"]:
        raise broken(f"the hash of its last entry {seq} (line {line}) differs from its head file {head_file}: "
                     "the end of the log was replaced")
